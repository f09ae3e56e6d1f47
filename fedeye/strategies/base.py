"""Strategy registry and the behaviour every FedEye strategy shares.

FedEye strategies are Flower ``flwr.serverapp.strategy`` classes with an
:class:`ObservedStrategy` mixin in front. Before the parent aggregates, the
mixin judges every site reply:

- an error reply, or a reply whose site status is ``failed``, is ``failed``;
  the verdict's reason is the failure's category and the site's incident id
  (``data-error (incident 0a1b2c3d4e5f)``), or Flower's error code: never any
  text from the site;
- a site that declined to train because its privacy budget is spent is
  ``left-budget`` and is not sampled for training again;
- arrays with other names or shapes than the global model, non-finite values,
  or (with ``max_update_norm``) an oversized update are ``rejected``.

Only ``ok`` replies are aggregated, with their metrics cut to the names all of
them share (Flower averages identical key sets only). Every reply, with its
verdict, goes to the ``observer`` (the run recorder).

Flower's ``min_train_nodes`` only sets how many nodes are *sampled*: its
``aggregate_train`` averages whatever valid replies arrive, one or none
(then the model silently stays as it was). FedEye checks explicitly: a round
in which fewer sites trained than ``min_train_nodes`` (less those that left
for budget in that round) raises :class:`TooFewSites`, which fails the run,
unless ``on_too_few_sites = "continue"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import WARNING
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedeye.errors import ConfigError, FederationError, FedEyeError
from fedeye.protocol import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    SITE_CATEGORY,
    SITE_NAME,
    SITE_REASON,
    SiteStatus,
    site_failure,
    site_field,
    site_status,
)
from fedeye.strategies._utils import common_metric_keys, update_problem

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig

LEFT_BUDGET = SiteStatus.LEFT_BUDGET.value
#: Verdicts after which a site is never sampled to train again in this run.
DEPARTED = frozenset({LEFT_BUDGET, SiteStatus.DENIED.value})


@dataclass(frozen=True)
class Verdict:
    """How the coordinator treats one reply: ok, failed, left-budget or rejected."""

    status: str
    reason: str = ""


class BudgetExhausted(FedEyeError):
    """Every site has left the federation because its privacy budget is spent."""


class TooFewSites(FederationError):
    """Fewer sites trained in a round than ``min_train_nodes`` (and the run file says to fail)."""


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


_ERROR_NAMES = {v: k.lower().replace("_", "-") for k, v in vars(ErrorCode).items() if isinstance(v, int)}


def flower_error_reason(msg: Message) -> str:
    """What the coordinator records of an error reply: Flower's error code only (its text may hold site paths)."""
    code = int(msg.error.code)
    return f"Flower error {code} ({_ERROR_NAMES.get(code, 'unknown')}); details stay at the site"


def judge_status(msg: Message) -> Verdict:
    """The verdict a reply earns by what it declares: failed (error or site status), left-budget, else ok."""
    if msg.has_error():
        return Verdict("failed", flower_error_reason(msg))
    content = msg.content
    status = site_status(content)
    if status is SiteStatus.FAILED:
        category, incident = site_failure(content)
        return Verdict("failed", category.value + (f" (incident {incident})" if incident else ""))
    if status is SiteStatus.LEFT_BUDGET:
        return Verdict(LEFT_BUDGET, site_field(content, SITE_REASON, "privacy budget spent"))
    return admission_verdict(content) or Verdict("ok")


def judge_reply(msg: Message, global_arrays: ArrayRecord | None, *, max_update_norm: float | None) -> Verdict:
    """The verdict on one training reply (see the module docstring).

    ``global_arrays`` is what the reply must match: the global model, or the
    part of it this site was asked to send back.
    """
    declared = judge_status(msg)
    if declared.status != "ok":
        return declared
    content = msg.content
    if ARRAYS not in content.array_records:
        return Verdict("rejected", "the reply carries no model arrays")
    if global_arrays is None:
        return Verdict("ok")
    problem = update_problem(
        _numpy(global_arrays), _numpy(content.array_records[ARRAYS]), max_update_norm=max_update_norm
    )
    return Verdict("rejected", problem) if problem else Verdict("ok")


def admission_verdict(content: RecordDict) -> Verdict | None:
    """``awaiting-approval`` or ``denied`` (with the site's denial category) when the site did not admit the run."""
    status = site_status(content)
    if status is SiteStatus.AWAITING_APPROVAL:
        return Verdict(status.value, "the site's admin has not approved this run yet")
    if status is SiteStatus.DENIED:
        return Verdict(status.value, f"denied by the site: {site_field(content, SITE_CATEGORY, 'other')}")
    return None


def too_few_sites_reason(
    server_round: int, replies: list[Message], verdicts: list[Verdict], *, sampled: int, min_train_nodes: int
) -> str:
    """``round 2: 1 of 3 sites trained, min_train_nodes = 2; failed: site-a data-error (incident ...)``."""
    trained = sum(v.status == "ok" for v in verdicts)
    others = [
        f"{v.status}: {_reply_site(m)} {v.reason}".rstrip() for m, v in zip(replies, verdicts) if v.status != "ok"
    ]
    silent = sampled - len(replies)
    if silent > 0:
        others.append(f"{silent} sent no reply")
    detail = "; ".join(others)
    return f"round {server_round}: {trained} of {sampled} sites trained, min_train_nodes = {min_train_nodes}" + (
        f"; {detail}" if detail else ""
    )


def _reply_site(msg: Message) -> str:
    node = f"node-{msg.metadata.src_node_id}"
    return node if msg.has_error() else site_field(msg.content, SITE_NAME, node)


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def _for_aggregation(replies: list[Message], *, with_arrays: bool, equal_weights: bool = False) -> list[Message]:
    """Copies holding only the arrays and the metric names every reply shares.

    ``equal_weights`` sets every site's ``num-examples`` weight to 1 (client-level
    DP is calibrated to an unweighted mean).
    """
    keys = common_metric_keys([set(m.content.metric_records[METRICS].keys()) for m in replies])
    copies = []
    for msg in replies:
        metrics = {k: msg.content.metric_records[METRICS][k] for k in sorted(keys)}
        if equal_weights and NUM_EXAMPLES in metrics:
            metrics[NUM_EXAMPLES] = 1
        record = RecordDict({METRICS: MetricRecord(metrics)})
        if with_arrays:
            record[ARRAYS] = msg.content.array_records[ARRAYS]
        copies.append(make_message(msg.metadata, content=record))
    return copies


class ObservedStrategy:
    """Mixin placed before a Flower strategy class (see the module docstring)."""

    observer: RoundObserver | None = None
    max_update_norm: float | None = None
    on_too_few_sites: str = "fail"  # or "continue" (StrategyConfig.on_too_few_sites)
    equal_weights: bool = False  # set by client-level DP
    num_nodes: int = 0  # connected nodes at the last configure_train
    num_sampled: int = 0  # nodes sampled to train at the last configure_train
    sampled_nodes: frozenset[int] = frozenset()  # their node ids
    evaluated_nodes: frozenset[int] = frozenset()  # nodes asked to evaluate at the last configure_evaluate
    global_arrays: ArrayRecord | None = None  # the model sent in the current round

    @property
    def departed(self) -> set[int]:
        """Nodes that left (budget spent, or the site denied the run); never sampled to train again."""
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
        verdicts = [
            judge_reply(m, self.expected_reply_arrays(m), max_update_norm=self.max_update_norm) for m in replies
        ]
        self.departed.update(m.metadata.src_node_id for m, v in zip(replies, verdicts) if v.status in DEPARTED)
        if self.observer:
            self.observer.on_replies(server_round, "train", replies, verdicts)
        self._check_enough_trained(server_round, replies, verdicts)
        return [m for m, v in zip(replies, verdicts) if v.status == "ok"]

    def _check_enough_trained(self, server_round: int, replies: list[Message], verdicts: list[Verdict]) -> None:
        """Raise :class:`TooFewSites` when fewer sites trained than ``min_train_nodes`` (see the module docstring)."""
        left = sum(v.status == LEFT_BUDGET for v in verdicts)
        minimum = int(getattr(self, "min_train_nodes", 0))
        if sum(v.status == "ok" for v in verdicts) >= minimum - left:
            return
        reason = too_few_sites_reason(
            server_round, replies, verdicts, sampled=max(self.num_sampled, len(replies)), min_train_nodes=minimum
        )
        if self.on_too_few_sites == "fail":
            raise TooFewSites(reason)
        log(WARNING, "%s; continuing (strategy.on_too_few_sites = 'continue')", reason)

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
        verdicts = [judge_status(m) for m in replies]
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
        raise ConfigError(f"strategy.name: unknown strategy {cfg.name!r}; choose one of {', '.join(list_strategies())}")
    strategy = _REGISTRY[cfg.name].from_config(cfg)
    strategy.observer = observer
    strategy.max_update_norm = cfg.max_update_norm
    strategy.on_too_few_sites = cfg.on_too_few_sites
    return strategy  # type: ignore[no-any-return]
