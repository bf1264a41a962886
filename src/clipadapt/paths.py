"""Where clipadapt keeps what it generates and caches, and the one way it writes a file. Imports nothing of
clipadapt's, so that any module (the world generator in data/, the feature cache, the CLI) can use it without an
import cycle."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    """`$CLIPADAPT_CACHE`, else `~/.cache/clipadapt`: features, split files and the default world live under it."""
    return Path(os.environ.get("CLIPADAPT_CACHE", Path.home() / ".cache" / "clipadapt"))


def write_atomic(
    path: str | Path, write: Callable[[Path], object], tmp: Path | None = None, keep_previous: Path | None = None
) -> Path:
    """Write `path` through `write(temp file)`, flush it to disk and rename it into place: a reader, or a run
    killed mid-write, sees the old file or the new one, never half of one. `tmp`: the temp file's name (default
    `.<name>.<random>.tmp` beside it, unique even among processes of several machines that share the folder);
    `keep_previous`: where the file it replaces is kept (a fallback for checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if keep_previous is not None and path.is_file():
            path.replace(keep_previous)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) to `path` through `write_atomic`. File names that are not UTF-8 (read from the disk as
    surrogate escapes) are written back as the bytes they were."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))


def safe_name(text: str, limit: int = 80, keep_end: bool = False) -> str:
    """`text` as one file or folder name: each run of characters other than letters, digits and `._+-` becomes
    `_`; at most `limit` characters, the first ones (the last with `keep_end`: a data set spec's path ends in
    its name)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
    return (name[-limit:] if keep_end else name[:limit]) or "_"
