"""Atomic file writes: a temporary file beside the target, fsynced, then renamed into place.

A reader sees the old file or the new one, never a half-written one; a
failed write leaves no temporary file behind.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> atomic_write_text(folder / "a.toml", "x = 1\\n").read_text()
'x = 1\\n'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``.

    Parameters
    ----------
    path
        Target file; its folder must exist.
    data
        The whole new content.
    mode
        Permission bits of the new file; ``None`` keeps ``mkstemp``'s 0600.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str, *, mode: int | None = None, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`); return ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)
