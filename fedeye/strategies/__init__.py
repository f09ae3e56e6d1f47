"""Aggregation strategies, one algorithm a file, selectable by name."""

from fedeye.strategies import fairfedavg  # noqa: F401  (registers "fairfedavg")
from fedeye.strategies import fedavg  # noqa: F401  (registers "fedavg")
from fedeye.strategies.base import build_strategy, list_strategies, register_strategy

__all__ = ["build_strategy", "list_strategies", "register_strategy"]
