"""The package version: what a saved classifier records (imports nothing, so any module can use it)."""

__version__ = "0.2.0"
