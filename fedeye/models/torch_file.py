"""Read a file a user names as a PyTorch checkpoint, whatever it really holds.

:func:`load_tensors` is ``torch.load(weights_only=True)`` (tensors and plain
values only, never pickled code) with every way an arbitrary file makes it
fail turned into a :class:`~fedeye.errors.ModelError` that names the file: a
folder, a text file, a truncated download. A refused pickle
(:class:`pickle.UnpicklingError`) passes through: each caller explains it in
its own terms.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from fedeye.errors import ModelError

#: How a ``torch.save`` file starts: a zip archive (PyTorch >= 1.6) or a pickle of protocol 2 or more (older files).
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
#: What ``torch.load`` raises on a file that is truncated or not a checkpoint (its parsers do not wrap them).
LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    OSError,
    zipfile.BadZipFile,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    struct.error,
    OverflowError,
    MemoryError,
)


def load_tensors(path: Path, *, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that cannot be one raises :class:`ModelError`.

    Parameters
    ----------
    path : Path
        The file; callers check first that it exists.
    what : str
        What the file should be, for the message (``"model file"``, ``"backbone checkpoint"``).
    fix : str
        What to do, ending the message.

    Raises
    ------
    ModelError
        ``path`` is a folder, cannot be read, does not start like a ``torch.save`` file, or is truncated or corrupt.
    pickle.UnpicklingError
        The file holds objects other than tensors and plain values.
    """
    if path.is_dir():
        raise ModelError(f"{what} {path} is a folder; pass the file itself ({fix})")
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise ModelError(f"cannot read {what} {path}: {err.strerror or err}; check its permissions") from None
    if not head.startswith(TORCH_MAGIC):
        why = "it is empty" if not head else f"it starts with {head!r}"
        raise ModelError(f"{what} {path} is not a readable PyTorch checkpoint ({why}); {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except LOAD_ERRORS as err:
        raise ModelError(f"{what} {path} is corrupt or truncated ({err.__class__.__name__}: {err}); {fix}") from err
