"""Add-ons: methods that wrap another method rather than classify on their own (`METHOD+ship`: SHIP synthesizes
features for the classes without data, and METHOD trains on them)."""
