"""Tables of the run store (SQLModel).

Tables: ``runs``, ``rounds``, ``site_metrics``, ``artifacts``, ``privacy_ledger``
and ``flower_runs`` (which Flower runs carried a FedEye run). They
are plain SQLAlchemy types that work on SQLite and PostgreSQL alike: JSON for
dicts, timezone-aware timestamps, and Flower node ids (64-bit *unsigned*, so
too big for a signed ``BIGINT``) kept as decimal strings.

Nothing outside :mod:`fedeye.server.store` should touch these classes; the
store hands out frozen dataclasses instead of live ORM rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

NODE_ID_DIGITS = 20  # len(str(2**64 - 1))


def _json_column(*, nullable: bool) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _time_column(*, nullable: bool) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class RunRow(SQLModel, table=True):
    """One federated training run."""

    __tablename__ = "runs"

    id: str = Field(primary_key=True, max_length=64)  # e.g. "r-20261122-091500-ab12"
    name: str = Field(max_length=200)
    status: str = Field(max_length=16, index=True)  # running/finished/failed/stopped/interrupted
    strategy: str = Field(max_length=64)
    config: dict[str, Any] = _json_column(nullable=False)  # the full run config
    num_rounds: int
    num_sites: int
    started_at: datetime = _time_column(nullable=False)
    ended_at: datetime | None = _time_column(nullable=True)
    error: str | None = Field(default=None)  # why a failed run failed
    # the process that runs it (nullable: added later, migrated into older stores by the store)
    owner_host: str | None = Field(default=None, max_length=255)
    owner_pid: int | None = Field(default=None)
    owner_started: float | None = Field(default=None)  # the process's start time (epoch seconds), if known
    heartbeat_at: datetime | None = _time_column(nullable=True)  # renewed every phase of every round
    # reliability-diagram bins of the final test, per site and pooled (fedeye.fairness.reliability.RunReliability)
    reliability: dict[str, Any] | None = _json_column(nullable=True)


class RoundRow(SQLModel, table=True):
    """Aggregated results of one server round; train and evaluate fill it in turn."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "server_round"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=64)
    server_round: int
    started_at: datetime = _time_column(nullable=False)
    ended_at: datetime | None = _time_column(nullable=True)
    train_metrics: dict[str, Any] | None = _json_column(nullable=True)
    eval_metrics: dict[str, Any] | None = _json_column(nullable=True)
    num_sites_trained: int | None = None
    num_sites_evaluated: int | None = None


class SiteMetricRow(SQLModel, table=True):
    """What one site reported in one phase of one round."""

    __tablename__ = "site_metrics"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=64)
    server_round: int
    phase: str = Field(max_length=16)  # "train" or "evaluate"
    site: str = Field(max_length=200)
    node_id: str = Field(max_length=NODE_ID_DIGITS)  # uint64 as decimal text
    num_examples: int
    metrics: dict[str, Any] = _json_column(nullable=False)
    status: str = Field(max_length=16)  # ok/failed/dropped/left-budget/rejected/missing
    reason: str | None = Field(default=None)  # why a site failed, left or was rejected


class ArtifactRow(SQLModel, table=True):
    """A file a run produced: a checkpoint or the final model."""

    __tablename__ = "artifacts"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=64)
    server_round: int | None = None  # None for files not tied to a round
    kind: str = Field(max_length=32)  # "checkpoint", "final-model", ...
    path: str
    sha256: str = Field(max_length=64)
    size_bytes: int
    created_at: datetime = _time_column(nullable=False)


class PrivacyLedgerRow(SQLModel, table=True):
    """Privacy spent by one site (or by the federation, client-level DP) after one round."""

    __tablename__ = "privacy_ledger"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=64)
    server_round: int
    scope: str = Field(max_length=16)  # "site" (DP-SGD, per patient) or "federation" (client-level)
    site: str = Field(max_length=200)
    epsilon: float  # spent so far in this run
    delta: float
    budget: float | None = None  # the site's epsilon budget
    noise_multiplier: float
    sample_rate: float
    steps: int  # cumulative DP-SGD steps (scope site) or rounds (scope federation)
    accountant: str = Field(max_length=8)
    status: str = Field(max_length=16)  # ok / left-budget


class FlowerRunRow(SQLModel, table=True):
    """One Flower run that carried (part of) a FedEye run: the first launch, then each resume."""

    __tablename__ = "flower_runs"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=64)
    flower_run_id: str = Field(index=True, max_length=NODE_ID_DIGITS)  # uint64 as decimal text
    first_round: int  # 1, or the round a resume started from
    started_at: datetime = _time_column(nullable=False)
    note: str | None = Field(default=None)  # e.g. what a resume found: "resumed after round 2; was failed: ..."
