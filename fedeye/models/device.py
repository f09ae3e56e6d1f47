"""Pick the compute device and its mixed-precision context."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from fedeye.errors import ConfigError
from fedeye.models.config import DeviceChoice


def select_device(preferred: DeviceChoice = "auto") -> torch.device:
    """Return the device to train on.

    Parameters
    ----------
    preferred : {"auto", "cpu", "cuda"}
        ``auto`` takes CUDA when available, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        ``cuda`` was asked for but no CUDA device is available.
    """
    if preferred == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preferred == "cuda":
        raise ConfigError(
            "device 'cuda' was requested but PyTorch sees no CUDA GPU; "
            "set device = 'auto' or 'cpu', or install a CUDA build of PyTorch"
        )
    return torch.device("cpu")


def autocast_context(device: torch.device) -> AbstractContextManager[Any]:
    """Mixed precision for ``device``: bf16 (or fp16) autocast on CUDA, nothing on CPU.

    Parameters
    ----------
    device : torch.device
        Device the forward pass runs on.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast`` on CUDA; ``nullcontext()`` elsewhere. With fp16
        (GPUs without bf16) pair it with ``torch.amp.GradScaler``.
    """
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
