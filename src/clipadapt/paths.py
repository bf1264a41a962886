"""Where clipadapt keeps what it generates and caches. Imports nothing of clipadapt's, so that any module (the
world generator in data/, the feature cache, the CLI) can use it without an import cycle."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$CLIPADAPT_CACHE`, else `~/.cache/clipadapt`: features, split files and the default world live under it."""
    return Path(os.environ.get("CLIPADAPT_CACHE", Path.home() / ".cache" / "clipadapt"))
