"""Aggregation strategies, one algorithm a file, selectable by name."""

from fedeye.strategies import fairfedavg  # noqa: F401  (registers "fairfedavg")
from fedeye.strategies import fedadam  # noqa: F401  (registers "fedadam")
from fedeye.strategies import fedavg  # noqa: F401  (registers "fedavg")
from fedeye.strategies import fedbn  # noqa: F401  (registers "fedbn")
from fedeye.strategies import fedprox  # noqa: F401  (registers "fedprox")
from fedeye.strategies import fedyogi  # noqa: F401  (registers "fedyogi")
from fedeye.strategies import prompt_experts  # noqa: F401  (registers "prompt-experts")
from fedeye.strategies.base import build_strategy, list_strategies, register_strategy

__all__ = ["build_strategy", "list_strategies", "register_strategy"]
