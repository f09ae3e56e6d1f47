"""One federated run on the coordinator: the ServerApp's body.

Named steps: open the store, build the initial global model, run the
strategy with a checkpoint every round, evaluate the final model on every
site's test split, save it, and close the run record.

A run whose coordinator died is resumed from a :class:`ResumePoint`: the
checkpoint of its last completed round. The strategy starts from those
arrays and rounds are numbered on from there, into the same run record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedeye.config import RunConfig
from fedeye.errors import FederationError, FedEyeError
from fedeye.fairness.operating_point import METADATA_KEY as OP_METADATA_KEY
from fedeye.fairness.operating_point import ModelOperatingPoint
from fedeye.models import build_model, save_model
from fedeye.models.io import load_model, load_state, untrained_keys
from fedeye.protocol import MOMENTS, RUN_CONFIG, RUN_ID, SEND_RELIABILITY, SERVER_ROUND, SPLIT, SUMMARIZE_SCORES
from fedeye.server.operating_point import federated_operating_point, point_config, write_point
from fedeye.server.recorder import ProgressSink, RunRecorder
from fedeye.server.store import RunStore, resolve_db_url
from fedeye.strategies import build_strategy
from fedeye.strategies.base import BudgetExhausted
from fedeye.strategies.client_dp import wrap_client_dp


def open_store(cfg: RunConfig) -> RunStore:
    """The run store named by the config (``output.db``, ``FEDEYE_DB`` or ``output.dir``)."""
    return RunStore(resolve_db_url(cfg.output.db, default_dir=cfg.output.dir))


def create_run(store: RunStore, cfg: RunConfig, *, num_sites: int) -> str:
    """Record a new run for ``cfg`` and return its id."""
    return store.create_run(
        name=cfg.name,
        strategy=cfg.strategy.name,
        config=cfg.model_dump(mode="json"),
        num_rounds=cfg.training.rounds,
        num_sites=num_sites,
    )


def run_dir(cfg: RunConfig, run_id: str) -> Path:
    """Folder of one run's checkpoints and final model."""
    return cfg.output.dir / "runs" / run_id


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: after ``completed_round``, from that round's checkpoint."""

    completed_round: int
    checkpoint: Path


def resume_point(store: RunStore, run_id: str) -> ResumePoint:
    """The last completed round of ``run_id`` and its checkpoint, checked against its recorded SHA-256.

    Raises
    ------
    FederationError
        No round completed (nothing to resume: launch the run again), or the
        checkpoint file is gone or changed since it was recorded.
    """
    checkpoint = store.latest_checkpoint(run_id)
    if checkpoint is None or checkpoint.server_round is None:
        raise FederationError(
            f"run {run_id} has no completed round to resume from (no checkpoint in {store.display_url}); "
            "start it again with `fedeye run launch`"
        )
    path = Path(checkpoint.path)
    if not path.is_file() or _sha256(path) != checkpoint.sha256:
        raise FederationError(
            f"checkpoint of round {checkpoint.server_round} of run {run_id} ({path}) is missing or changed since it "
            "was recorded; restore the file from a backup, or start the run again with `fedeye run launch`"
        )
    return ResumePoint(completed_round=checkpoint.server_round, checkpoint=path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    *,
    store: RunStore,
    run_id: str,
    progress: ProgressSink | None = None,
    resume: ResumePoint | None = None,
) -> Path:
    """Run every round of ``cfg`` on ``grid`` (after ``resume``'s round); returns the final model's path.

    The calling process is recorded as the run's owner, and the recorder
    renews its heartbeat every phase. The run row ends ``finished``;
    ``interrupted`` on Ctrl-C or a stop signal (:class:`KeyboardInterrupt`,
    :class:`~fedeye.errors.RunInterrupted`); else, if anything raises,
    ``failed`` with the reason (a :class:`FedEyeError`'s message as is, e.g.
    too few sites trained), and the exception propagates.
    """
    store.claim_run(run_id)
    try:
        path, note = _run(grid, cfg, store=store, run_id=run_id, progress=progress, resume=resume)
    except KeyboardInterrupt as err:
        store.finish_run(run_id, status="interrupted", error=str(err) or "interrupted")
        raise
    except BaseException as err:
        store.finish_run(
            run_id, status="failed", error=str(err) if isinstance(err, FedEyeError) else f"{type(err).__name__}: {err}"
        )
        raise
    store.finish_run(run_id, status="finished", error=note)
    return path


def _run(
    grid: Grid,
    cfg: RunConfig,
    *,
    store: RunStore,
    run_id: str,
    progress: ProgressSink | None,
    resume: ResumePoint | None,
) -> tuple[Path, str | None]:
    """Returns the final model's path and, if the run ended early, why."""
    recorder = RunRecorder(store, run_id, progress=progress)
    model = _initial_model(cfg, resume)
    strategy = _strategy(cfg, recorder, num_sites=len(list(grid.get_node_ids())), frozen=untrained_keys(model))
    done = resume.completed_round if resume else 0
    out = run_dir(cfg, run_id)
    initial = ArrayRecord(model.state_dict())
    note = None
    try:
        final = (
            _numbered_from(strategy, done)
            .start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=max(cfg.training.rounds - done, 0),
                timeout=cfg.strategy.round_timeout,
                train_config=_message_config(cfg, run_id=run_id),
                evaluate_config=_evaluate_config(cfg, run_id=run_id),
                evaluate_fn=_checkpointer(cfg, store=store, run_id=run_id, out=out, offset=done),
            )
            .arrays
        )
    except BudgetExhausted as stop:  # the last global model stands
        inner = getattr(strategy, "strategy", strategy)  # a client-DP wrapper holds the FedEye strategy
        final, note = getattr(inner, "global_arrays", None) or initial, f"ended early: {stop}"
    load_state(model, final.to_torch_state_dict())
    evaluated_round, replies = recorder.evaluated
    last = replies if note is None and evaluated_round == cfg.training.rounds else None  # evaluated the final arrays
    point = federated_operating_point(grid, strategy, final, cfg, run_id=run_id, moments=last)
    _final_evaluation(grid, strategy, final, cfg, recorder, run_id=run_id, point=point)
    experts = _expert_sites(strategy, recorder)
    return _save_final(model, cfg, store=store, run_id=run_id, out=out, experts=experts, point=point), note


def _expert_sites(strategy: Strategy, recorder: RunRecorder) -> list[str] | None:
    """With domain experts, the site behind each expert (row order), for ``fedeye evaluate``."""
    inner = getattr(strategy, "strategy", strategy)
    owners: dict[int, int] = getattr(inner, "experts", None) or {}
    if not owners:
        return None
    by_row = {row: recorder.site_name(node) for node, row in owners.items()}
    return [by_row.get(row, "") for row in range(max(by_row) + 1)]


def _strategy(cfg: RunConfig, recorder: RunRecorder, *, num_sites: int, frozen: frozenset[str]) -> Strategy:
    """The configured strategy, wrapped in client-level DP when the run asks for it (``frozen``: arrays it leaves)."""
    strategy = build_strategy(cfg.strategy, observer=recorder)
    sampled = max(int(num_sites * cfg.strategy.fraction_train), cfg.strategy.min_train_nodes)
    return wrap_client_dp(strategy, cfg.privacy, num_sampled_sites=sampled, num_sites=num_sites, frozen=frozen)


def _initial_model(cfg: RunConfig, resume: ResumePoint | None = None) -> torch.nn.Module:
    torch.manual_seed(cfg.training.seed)
    if resume is None:
        return build_model(cfg.model)
    model = build_model(cfg.model, load_backbone=False)  # the checkpoint holds every weight
    saved, _, _ = load_model(resume.checkpoint)
    load_state(model, saved.state_dict())
    return model


def _numbered_from(strategy: Strategy, done: int) -> Strategy:
    """``strategy`` as Flower's ``start`` drives it, with rounds numbered on after ``done``."""
    return strategy if done == 0 else RoundsAfter(strategy, done)


class RoundsAfter(Strategy):
    """A strategy whose rounds are numbered on after ``offset`` completed ones.

    Flower's ``Strategy.start`` always counts rounds from 1; a resumed run
    passes through this so the inner strategy, its observer (the store) and
    the sites' ``server-round`` see rounds ``offset + 1, offset + 2, ...``.

    >>> from flwr.serverapp.strategy import FedAvg
    >>> RoundsAfter(FedAvg(), 2).offset
    2
    """

    def __init__(self, inner: Strategy, offset: int) -> None:
        self.inner = inner
        self.offset = offset

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        self.inner.summary()


def _message_config(cfg: RunConfig, *, run_id: str, split: str | None = None) -> ConfigRecord:
    """What every message of the run carries: its config and its FedEye run id (sites key approvals and ledgers on it)."""
    record = ConfigRecord({RUN_CONFIG: cfg.to_json(), RUN_ID: run_id})
    if split is not None:
        record[SPLIT] = split
    return record


def _evaluate_config(cfg: RunConfig, *, run_id: str) -> ConfigRecord:
    """Every round's evaluation: the validation split, and the moments of its scores (for the operating point)."""
    record = _message_config(cfg, run_id=run_id, split=cfg.data.eval_split)
    record[SUMMARIZE_SCORES] = MOMENTS
    return record


def _checkpointer(cfg: RunConfig, *, store: RunStore, run_id: str, out: Path, offset: int = 0):  # type: ignore[no-untyped-def]
    """An ``evaluate_fn`` that saves the global model after every round (numbered on after ``offset``)."""

    def checkpoint(local_round: int, arrays: ArrayRecord) -> None:
        if local_round == 0:
            return None
        server_round = local_round + offset
        model = build_model(cfg.model, load_backbone=False)
        load_state(model, arrays.to_torch_state_dict())
        path = out / "checkpoints" / f"round-{server_round:03d}.pt"
        save_model(path, model, cfg.model, metadata={"run_id": run_id, "round": server_round})
        store.record_artifact(run_id, server_round=server_round, kind="checkpoint", path=path)
        return None

    return checkpoint


def _final_evaluation(
    grid: Grid,
    strategy: Strategy,
    arrays: ArrayRecord,
    cfg: RunConfig,
    recorder: RunRecorder,
    *,
    run_id: str,
    point: ModelOperatingPoint | None = None,
) -> None:
    """Evaluate the final global model on every site's ``data.final_split`` (at ``point`` when chosen)."""
    config = _message_config(cfg, run_id=run_id, split=cfg.data.final_split)
    config[SERVER_ROUND] = cfg.training.rounds
    config[SEND_RELIABILITY] = True  # reliability-diagram bins, kept with the run by the recorder
    config.update(point_config(point))
    messages = list(strategy.configure_evaluate(cfg.training.rounds, arrays, config, grid))
    replies = list(grid.send_and_receive(messages, timeout=cfg.strategy.round_timeout))
    recorder.on_replies(cfg.training.rounds, "test", replies)  # every non-error reply is ok


def _save_final(
    model: torch.nn.Module,
    cfg: RunConfig,
    *,
    store: RunStore,
    run_id: str,
    out: Path,
    experts: list[str] | None = None,
    point: ModelOperatingPoint | None = None,
) -> Path:
    path = out / "global-model.pt"
    metadata: dict[str, object] = {"run_id": run_id, "round": cfg.training.rounds, "run_name": cfg.name}
    if experts:
        metadata["experts"] = experts  # the site that trained each domain expert
    if point is not None:  # threshold and calibration chosen on the sites' pooled validation summaries
        metadata[OP_METADATA_KEY] = point.to_metadata()
        saved = write_point(point, out / "operating-point.json")
        store.record_artifact(run_id, server_round=cfg.training.rounds, kind="operating-point", path=saved)
    save_model(path, model, cfg.model, metadata=metadata)
    store.record_artifact(run_id, server_round=cfg.training.rounds, kind="final-model", path=path)
    return path
