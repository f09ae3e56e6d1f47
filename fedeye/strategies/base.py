"""Strategy registry and the behaviour every FedEye strategy shares.

FedEye strategies are Flower ``flwr.serverapp.strategy`` classes with an
:class:`ObservedStrategy` mixin in front. Before the parent aggregates, the
mixin judges every site reply:

- an error reply is ``failed``;
- a site that declined to train because its privacy budget is spent is
  ``left-budget`` and is not sampled for training again;
- arrays with other names or shapes than the global model, non-finite values,
  or (with ``max_update_norm``) an oversized update are ``rejected``.

Only ``ok`` replies are aggregated, with their metrics cut to the names all of
them share (Flower averages identical key sets only). Every reply, with its
verdict, goes to the ``observer`` (the run recorder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedeye.errors import ConfigError, FedEyeError
from fedeye.protocol import ARRAYS, METRICS, NUM_EXAMPLES, SITE_CATEGORY, SITE_REASON, SiteStatus, site_field, site_status
from fedeye.strategies._utils import common_metric_keys, update_problem

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig

LEFT_BUDGET = SiteStatus.LEFT_BUDGET.value


@dataclass(frozen=True)
class Verdict:
    """How the coordinator treats one reply: ok, failed, left-budget or rejected."""

    status: str
    reason: str = ""


class BudgetExhausted(FedEyeError):
    """Every site has left the federation because its privacy budget is spent."""


class RoundObserver(Protocol):
    """Receives what happens in each round; implemented by the server's recorder."""

    def on_round_start(self, server_round: int, phase: str, num_sites: int) -> None: ...

    def on_replies(self, server_round: int, phase: str, replies: list[Message], verdicts: list[Verdict]) -> None: ...


def report_missing(observer: object, server_round: int, phase: str, sampled: set[int], replies: list[Message]) -> None:
    """Tell ``observer`` (if it listens: ``on_missing``) which sampled nodes never replied.

    A site that disappears mid-round does not stall it: Flower's round
    timeout ends the wait, the round aggregates the replies it has, and the
    nodes that stayed silent are reported here.
    """
    missing = sorted(sampled - {m.metadata.src_node_id for m in replies})
    hook = getattr(observer, "on_missing", None)
    if missing and hook is not None:
        hook(server_round, phase, missing)


class _TrainingGrid:
    """A view of the grid without the nodes that left the federation."""

    def __init__(self, grid: Grid, departed: set[int]) -> None:
        self._grid = grid
        self._departed = departed

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._departed]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def failure_verdict(msg: Message) -> Verdict | None:
    """``failed`` for an error reply or a reply whose site says ``failed`` (reason: its category), else None."""
    if msg.has_error():
        return Verdict("failed", str(msg.error.reason))
    if site_status(msg.content) is SiteStatus.FAILED:
        return Verdict("failed", site_field(msg.content, SITE_CATEGORY, "failed"))
    return None


def judge_reply(msg: Message, global_arrays: ArrayRecord | None, *, max_update_norm: float | None) -> Verdict:
    """The verdict on one training reply (see the module docstring).

    ``global_arrays`` is what the reply must match: the global model, or the
    part of it this site was asked to send back.
    """
    if (failed := failure_verdict(msg)) is not None:
        return failed
    content = msg.content
    if site_status(content) is SiteStatus.LEFT_BUDGET:
        return Verdict(LEFT_BUDGET, site_field(content, SITE_REASON, "privacy budget spent"))
    if ARRAYS not in content.array_records:
        return Verdict("rejected", "the reply carries no model arrays")
    if global_arrays is None:
        return Verdict("ok")
    problem = update_problem(_numpy(global_arrays), _numpy(content[ARRAYS]), max_update_norm=max_update_norm)
    return Verdict("rejected", problem) if problem else Verdict("ok")


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def _for_aggregation(replies: list[Message], *, with_arrays: bool, equal_weights: bool = False) -> list[Message]:
    """Copies holding only the arrays and the metric names every reply shares.

    ``equal_weights`` sets every site's ``num-examples`` weight to 1 (client-level
    DP is calibrated to an unweighted mean).
    """
    keys = common_metric_keys([set(m.content[METRICS].keys()) for m in replies])
    copies = []
    for msg in replies:
        metrics = {k: msg.content[METRICS][k] for k in sorted(keys)}
        if equal_weights and NUM_EXAMPLES in metrics:
            metrics[NUM_EXAMPLES] = 1
        record = RecordDict({METRICS: MetricRecord(metrics)})
        if with_arrays:
            record[ARRAYS] = msg.content[ARRAYS]
        copies.append(make_message(msg.metadata, content=record))
    return copies


class ObservedStrategy:
    """Mixin placed before a Flower strategy class (see the module docstring)."""

    observer: RoundObserver | None = None
    max_update_norm: float | None = None
    equal_weights: bool = False  # set by client-level DP
    num_nodes: int = 0  # connected nodes at the last configure_train
    num_sampled: int = 0  # nodes sampled to train at the last configure_train
    sampled_nodes: frozenset[int] = frozenset()  # their node ids
    evaluated_nodes: frozenset[int] = frozenset()  # nodes asked to evaluate at the last configure_evaluate
    global_arrays: ArrayRecord | None = None  # the model sent in the current round

    @property
    def departed(self) -> set[int]:
        """Nodes that left for budget reasons; never sampled to train again."""
        return self.__dict__.setdefault("_departed", set())  # type: ignore[no-any-return]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = arrays
        remaining = len([n for n in grid.get_node_ids() if n not in self.departed])
        if self.departed and remaining == 0:
            raise BudgetExhausted(f"every site has spent its privacy budget; no site can train in round {server_round}")
        self._lower_minimums(remaining if self.departed else None)
        messages = list(super().configure_train(server_round, arrays, config, _TrainingGrid(grid, self.departed)))  # type: ignore[misc]
        messages = [self.tailor(m) for m in messages]
        self.num_nodes, self.num_sampled = len(list(grid.get_node_ids())), len(messages)
        self.sampled_nodes = frozenset(m.metadata.dst_node_id for m in messages)
        if self.observer:
            self.observer.on_round_start(server_round, "train", len(messages))
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = [self.tailor(m) for m in super().configure_evaluate(server_round, arrays, config, grid)]  # type: ignore[misc]
        self.evaluated_nodes = frozenset(m.metadata.dst_node_id for m in messages)
        return messages

    def tailor(self, msg: Message) -> Message:
        """One node's message of a round; strategies that send per-site content override this.

        Flower builds one message per sampled node, all sharing one content
        record; an override must build a new record rather than change it.
        """
        return msg

    def expected_reply_arrays(self, msg: Message) -> ArrayRecord | None:
        """What the arrays of ``msg`` (a training reply) must match: by default the global model."""
        return self.global_arrays

    def _lower_minimums(self, remaining: int | None) -> None:
        """After sites leave, do not wait for more nodes than can still train."""
        if remaining is None:
            return
        for name in ("min_train_nodes", "min_available_nodes"):
            if getattr(self, name, 0) > remaining:
                setattr(self, name, remaining)

    def judge_train_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Judge and record every reply; return the ones to aggregate.

        Wrappers that must see only acceptable replies (client-level DP clips
        before aggregating) call this first and set ``prejudged_round``, so the
        following ``aggregate_train`` of that round does not judge again.
        """
        report_missing(self.observer, server_round, "train", set(self.sampled_nodes), replies)
        verdicts = [judge_reply(m, self.expected_reply_arrays(m), max_update_norm=self.max_update_norm) for m in replies]
        self.departed.update(m.metadata.src_node_id for m, v in zip(replies, verdicts) if v.status == LEFT_BUDGET)
        if self.observer:
            self.observer.on_replies(server_round, "train", replies, verdicts)
        return [m for m, v in zip(replies, verdicts) if v.status == "ok"]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        prejudged = self.__dict__.pop("prejudged_round", None) == server_round
        accepted = replies if prejudged else self.judge_train_replies(server_round, replies)
        if not accepted:
            return None, None
        copies = _for_aggregation(accepted, with_arrays=True, equal_weights=self.equal_weights)
        return super().aggregate_train(server_round, copies)  # type: ignore[misc,no-any-return]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        report_missing(self.observer, server_round, "evaluate", set(self.evaluated_nodes), replies)
        verdicts = [failure_verdict(m) or Verdict("ok") for m in replies]
        if self.observer:
            self.observer.on_replies(server_round, "evaluate", replies, verdicts)
        accepted = [m for m, v in zip(replies, verdicts) if v.status == "ok"]
        if not accepted:
            return None
        return super().aggregate_evaluate(server_round, _for_aggregation(accepted, with_arrays=False))  # type: ignore[misc,no-any-return]


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


def sampling_kwargs(cfg: StrategyConfig) -> dict[str, Any]:
    """The sampling settings every Flower strategy takes, from the run's ``[strategy]``."""
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": cfg.min_evaluate_nodes,
        "min_available_nodes": cfg.min_available_nodes,
    }


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
    strategy.max_update_norm = cfg.max_update_norm
    return strategy  # type: ignore[no-any-return]
