"""Aggregation strategies, one algorithm a file, selectable by name."""

from fedeye.strategies import (
    fairfedavg,  # noqa: F401  (registers "fairfedavg")
    fedadam,  # noqa: F401  (registers "fedadam")
    fedavg,  # noqa: F401  (registers "fedavg")
    fedbn,  # noqa: F401  (registers "fedbn")
    fedprox,  # noqa: F401  (registers "fedprox")
    fedyogi,  # noqa: F401  (registers "fedyogi")
    prompt_experts,  # noqa: F401  (registers "prompt-experts")
)
from fedeye.strategies.base import build_strategy, list_strategies, register_strategy

__all__ = ["build_strategy", "list_strategies", "register_strategy"]
