"""Device selection and mixed precision."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from fedeye.errors import ConfigError
from fedeye.models import autocast_context, select_device


def test_cpu_is_always_available() -> None:
    assert select_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="auto"):
        select_device("cuda")


def test_no_autocast_on_cpu() -> None:
    assert isinstance(autocast_context(torch.device("cpu")), nullcontext)
