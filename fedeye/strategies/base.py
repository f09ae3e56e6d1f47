"""Strategy registry and the observation hook every FedEye strategy shares.

FedEye strategies are Flower ``flwr.serverapp.strategy`` classes with one
addition: an :class:`ObservedStrategy` mixin that hands every round's site
replies to an observer (the run recorder: store, checkpoints, progress)
without changing how the parent aggregates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedeye.errors import ConfigError

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig


class RoundObserver(Protocol):
    """Receives what happens in each round; implemented by the server's recorder."""

    def on_round_start(self, server_round: int, phase: str, num_sites: int) -> None: ...

    def on_replies(self, server_round: int, phase: str, replies: list[Message]) -> None: ...


class ObservedStrategy:
    """Mixin placed before a Flower strategy class; forwards replies to ``observer``."""

    observer: RoundObserver | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        if self.observer:
            self.observer.on_round_start(server_round, "train", len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self.observer:
            self.observer.on_replies(server_round, "train", replies)
        return super().aggregate_train(server_round, replies)  # type: ignore[misc,no-any-return]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if self.observer:
            self.observer.on_replies(server_round, "evaluate", replies)
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc,no-any-return]


class FedEyeStrategy(Protocol):
    """What the registry holds: a Flower strategy buildable from a StrategyConfig."""

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> Strategy: ...


S = TypeVar("S", bound=type[Any])
_REGISTRY: dict[str, type[Any]] = {}


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator adding a strategy under ``name``; refuses duplicates."""

    def add(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return add


def list_strategies() -> list[str]:
    """Names accepted in ``[strategy] name = ...``."""
    return sorted(_REGISTRY)


def build_strategy(cfg: StrategyConfig, *, observer: RoundObserver | None = None) -> Strategy:
    """Instantiate the configured strategy and attach ``observer``."""
    if cfg.name not in _REGISTRY:
        raise ConfigError(
            f"strategy.name: unknown strategy {cfg.name!r}; choose one of {', '.join(list_strategies())}"
        )
    strategy = _REGISTRY[cfg.name].from_config(cfg)
    strategy.observer = observer
    return strategy  # type: ignore[no-any-return]
