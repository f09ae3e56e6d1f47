"""``fedeye runs``: list recorded runs and show one in detail.

The lead CLI mounts the sub-app with ``app.add_typer(runs_app, name="runs")``.
:func:`build_runs_app` makes one with another default store folder.

The store is chosen by ``--db`` (a SQLAlchemy URL or a SQLite file path), else
``$FEDEYE_DB``, else ``<default dir>/fedeye.db`` (``~/.fedeye`` by default).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from fedeye.cli._common import Cell, Column, JsonOption, print_json, print_table
from fedeye.errors import FedEyeError
from fedeye.fairness.reliability import ReliabilityBins
from fedeye.server.report_data import read_reliability
from fedeye.server.store import (
    DB_ENV_VAR,
    ArtifactRecord,
    PrivacyRecord,
    RoundRecord,
    RunDetail,
    RunStore,
    RunSummary,
    SiteMetricRecord,
    resolve_db_url,
)

PREFERRED_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "loss", "site.worst-auc", "site.gap")
NUM_EXAMPLES_KEY = "num-examples"
MAX_CONFIG_LINES = 30
STATUS_STYLE = {
    "running": "yellow",
    "finished": "green",
    "failed": "red",
    "stopped": "magenta",
    "interrupted": "magenta",
    "stale": "dim",
}
STALE_NOTE = "its process ({owner}) is gone or has sent no heartbeat since {since}; it will not finish by itself"
NO_RELIABILITY_NOTE = (
    "reliability diagram: none recorded for this run (a multiclass task, no final test yet, every bin smaller "
    "than the sites' minimum group size, or a run recorded before FedEye kept it)"
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=DB_ENV_VAR,
        help=(
            "Run store: a SQLAlchemy URL (sqlite:///..., postgresql+psycopg2://...) or a "
            "SQLite file path. Default: fedeye.db in ~/.fedeye."
        ),
        show_default=False,
    ),
]
RunIdArgument = Annotated[str, typer.Argument(help="Run id, or an unambiguous prefix of one.")]


def default_store_dir() -> Path:
    """Return the folder of the default SQLite store, ``~/.fedeye``."""
    return Path.home() / ".fedeye"


def build_runs_app(*, default_dir: Path | None = None) -> typer.Typer:
    """Return the ``runs`` sub-app; ``default_dir`` holds the default ``fedeye.db``.

    >>> import typer
    >>> app = typer.Typer()
    >>> app.add_typer(build_runs_app(), name="runs")
    """
    app = typer.Typer(help="List and inspect recorded runs.", no_args_is_help=True)

    @app.command("list")
    def list_command(db: DbOption = None, as_json: JsonOption = False) -> None:
        """List recorded runs, newest first."""
        try:
            runs = _open_store(db, default_dir).list_runs()
        except FedEyeError as exc:
            _fail(exc)
        if as_json:
            _emit_json([_summary_json(run) for run in runs])
        else:
            _print_runs(runs)

    @app.command("show")
    def show_command(run_id: RunIdArgument, db: DbOption = None, as_json: JsonOption = False) -> None:
        """Show a run: configuration, per-round metrics, per-site results, files."""
        try:
            detail = _open_store(db, default_dir).get_run(run_id)
        except FedEyeError as exc:
            _fail(exc)
        if as_json:
            _emit_json(_detail_json(detail))
        else:
            _print_detail(detail)

    return app


runs_app = build_runs_app()


# ---------------------------------------------------------------------- I/O edges


def _open_store(db: str | None, default_dir: Path | None) -> RunStore:
    return RunStore(resolve_db_url(db, default_dir=default_dir or default_store_dir(), create=False))


def _fail(exc: FedEyeError) -> NoReturn:
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=1)


def _emit_json(payload: Any) -> None:
    print_json(payload)


def _print_runs(runs: list[RunSummary]) -> None:
    if not runs:
        typer.echo("No runs recorded yet; start one with `fedeye run`.")
        return
    headers = ("id", "name", "status", "strategy", "sites", "rounds", "started", "duration")
    print_table(headers, _runs_rows(runs), title="FedEye runs")


def _print_detail(detail: RunDetail) -> None:
    print_table([Column("", style="bold"), Column("")], _header_rows(detail), show_header=False)
    for section in _detail_tables(detail):
        typer.echo()
        if isinstance(section, str):
            typer.echo(section)
            continue
        title, columns, rows = section
        print_table(columns, rows, title=title, show_header=title != "configuration")


# --------------------------------------------------------------------------- JSON


def _summary_json(run: RunSummary) -> dict[str, Any]:
    return {**dataclasses.asdict(run), "duration_s": run.duration().total_seconds()}


def _detail_json(detail: RunDetail) -> dict[str, Any]:
    payload = dataclasses.asdict(detail)
    payload["run"] = _summary_json(detail.run)
    return payload


# ------------------------------------------------------------------------ formats


def format_duration(span: timedelta) -> str:
    """Return ``span`` as ``1h02m03s``, ``2m05s`` or ``12s``."""
    seconds = max(int(span.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _format_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _format_value(value: float | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _format_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GiB":
            break
    return f"{scaled:.1f} {unit}"


def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def metric_names(metric_dicts: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """Return the metric names a table shows: the well-known ones when present, else all A-Z.

    ``num-examples`` is left out: tables show it in its own column. Every
    metric is in ``--json``.
    """
    present = {name for metrics in metric_dicts if metrics for name in metrics}
    present.discard(NUM_EXAMPLES_KEY)
    known = [name for name in PREFERRED_METRICS if name in present]
    return known or sorted(present)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Return ``(dotted.key, value)`` pairs of a nested config, for display."""
    pairs: list[tuple[str, str]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten_config(value, prefix=f"{name}."))
        else:
            pairs.append((name, json.dumps(value) if not isinstance(value, str) else value))
    return pairs


# ------------------------------------------------------------------------- tables
# Each table is (columns, rows); print_table shows it as a rich table on a terminal
# and as full-width tab-separated text when piped.

Rows = list[list[Cell]]
TableSpec = tuple[str, list[Column], Rows]  # title, columns, rows
Section = TableSpec | str  # a table, or a one-line note where there is nothing to tabulate
RIGHT: Literal["right"] = "right"


def _right(*headers: str) -> list[Column]:
    return [Column(h, justify=RIGHT) for h in headers]


def _runs_rows(runs: list[RunSummary]) -> Rows:
    return [
        [
            run.run_id,
            run.name,
            _status_text(run.status),
            run.strategy,
            str(run.num_sites),
            f"{run.rounds_done}/{run.num_rounds}",
            _format_time(run.started_at),
            format_duration(run.duration()),
        ]
        for run in runs
    ]


def _detail_tables(detail: RunDetail) -> list[Section]:
    tables: list[Section] = [
        ("configuration", [Column("key", style="cyan"), Column("value")], _config_rows(detail.config))
    ]
    if detail.rounds:
        tables.append(_rounds_table(detail.rounds))
    last = detail.last_evaluated_round()
    if last is not None:
        evaluated = [m for m in detail.site_metrics if m.phase == "evaluate" and m.server_round == last]
        tables.append(_sites_table(evaluated, f"sites, evaluation of round {last}"))
    tested = [m for m in detail.site_metrics if m.phase == "test"]
    if tested:
        tables.append(_sites_table(tested, "sites, final model on each site's held-out test split"))
        at_point = [m for m in tested if m.metrics.get("threshold") is not None]
        if at_point:
            tables.append(_operating_point_table(at_point))
    tables.append(_reliability_table(detail))
    tables.extend(_event_tables(detail))
    return tables


def _event_tables(detail: RunDetail) -> list[TableSpec]:
    tables: list[TableSpec] = []
    events = [m for m in detail.site_metrics if m.status != "ok"]
    if events:
        tables.append(
            (
                "site events (failed, missing, left for budget, rejected updates)",
                [Column(h) for h in ("round", "phase", "site", "status", "reason")],
                _events_rows(events),
            )
        )
    if detail.privacy:
        tables.append(_privacy_table(detail.privacy))
    if detail.artifacts:
        tables.append(
            (
                "artifacts",
                [Column(h) for h in ("kind", "round", "path", "size", "sha256")],
                _artifacts_rows(detail.artifacts),
            )
        )
    return tables


def _events_rows(events: list[SiteMetricRecord]) -> Rows:
    return [[str(m.server_round), m.phase, m.site, _site_status(m.status), m.reason or ""] for m in events]


def _privacy_table(ledger: tuple[PrivacyRecord, ...]) -> TableSpec:
    text = ("scope", "site", "accountant", "status")
    headers = ("round", "scope", "site", "epsilon", "budget", "delta", "sigma", "q", "steps", "accountant", "status")
    rows: Rows = [
        [
            str(e.server_round),
            e.scope,
            e.site,
            f"{e.epsilon:.3f}",
            "-" if e.budget is None else f"{e.budget:g}",
            f"{e.delta:.2e}",
            f"{e.noise_multiplier:.3f}",
            f"{e.sample_rate:.3f}",
            str(e.steps),
            e.accountant,
            _site_status(e.status),
        ]
        for e in ledger
    ]
    columns = [Column(h, justify="left" if h in text else RIGHT) for h in headers]
    return "privacy ledger (epsilon spent so far, per site per round)", columns, rows


def _header_rows(detail: RunDetail) -> Rows:
    run = detail.run
    rows: Rows = [
        ["run", f"{run.run_id}  ({run.name})"],
        ["status", _status_text(run.status)],
        ["strategy", run.strategy],
        ["sites", str(run.num_sites)],
        ["rounds", f"{run.rounds_done}/{run.num_rounds}"],
        ["started", _format_time(run.started_at)],
        ["ended", _format_time(run.ended_at)],
        ["duration", format_duration(run.duration())],
    ]
    final = detail.final_model()
    if final is not None:
        rows.append(["final model", final.path])
    if run.error:
        rows.append(["interrupted" if run.status == "interrupted" else "error", Text(run.error, style="red")])
    if run.status == "stale":
        since = _format_time(run.heartbeat_at or run.started_at)
        rows.append(["stale", Text(STALE_NOTE.format(owner=run.owner or "unknown", since=since), style="red")])
    return rows


def _config_rows(config: Mapping[str, Any]) -> Rows:
    pairs = flatten_config(config)
    rows: Rows = [[key, value] for key, value in pairs[:MAX_CONFIG_LINES]]
    if len(pairs) > MAX_CONFIG_LINES:
        rows.append(["...", f"{len(pairs) - MAX_CONFIG_LINES} more; see --json"])
    return rows


def _rounds_table(rounds: tuple[RoundRecord, ...]) -> TableSpec:
    train_names = metric_names(r.train_metrics for r in rounds)
    eval_names = metric_names(r.eval_metrics for r in rounds)
    headers = [
        "round",
        "trained",
        "evaluated",
        *(f"train {n}" for n in train_names),
        *(f"eval {n}" for n in eval_names),
    ]
    rows: Rows = [list(_round_cells(r, train_names, eval_names)) for r in rounds]
    return "rounds (aggregated)", _right(*headers), rows


def _round_cells(record: RoundRecord, train_names: list[str], eval_names: list[str]) -> list[str]:
    train = record.train_metrics or {}
    evaluation = record.eval_metrics or {}
    return [
        str(record.server_round),
        _format_value(record.num_sites_trained),
        _format_value(record.num_sites_evaluated),
        *(_format_value(train.get(name)) for name in train_names),
        *(_format_value(evaluation.get(name)) for name in eval_names),
    ]


def _sites_table(records: list[SiteMetricRecord], title: str) -> TableSpec:
    names = metric_names(r.metrics for r in records)
    columns = [Column("site"), Column("status"), *_right("n images", *names)]
    rows: Rows = [
        [
            r.site,
            _site_status(r.status, r.reason),
            str(r.num_examples),
            *(_format_value(r.metrics.get(n)) for n in names),
        ]
        for r in records
    ]
    return title, columns, rows


OPERATING_RATES = ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv")


def _operating_point_table(records: list[SiteMetricRecord]) -> TableSpec:
    """Rates at the federation's operating point, with the sites' bootstrap 95% CIs, and calibration."""
    first = records[0].metrics
    title = (
        f"final model at the federation's operating point (p >= {_format_value(first.get('threshold'))} "
        f"after bias {_format_value(first.get('bias', 0.0))}, temperature {_format_value(first.get('temperature'))}); "
        "[95% CI]"
    )
    columns = [Column("site"), *_right(*OPERATING_RATES, "ECE before -> after")]
    rows: Rows = []
    for r in records:
        m = r.metrics
        cells = [
            f"{_format_value(m.get(k))} [{_format_value(m.get(k + '-ci-low'))}, {_format_value(m.get(k + '-ci-high'))}]"
            for k in OPERATING_RATES
        ]
        rows.append([r.site, *cells, f"{_format_value(m.get('ece'))} -> {_format_value(m.get('ece-calibrated'))}"])
    return title, columns, rows


RELIABILITY_COLUMNS = ("bin", "images", "mean predicted", "observed rate")


def _reliability_table(detail: RunDetail) -> Section:
    """The final test's reliability diagram of all sites pooled, bin by bin: ``before -> after`` calibration.

    Each site's own bins are in ``--json`` (``reliability.sites``) and in ``fedeye report``.
    """
    reliability = read_reliability(detail.reliability)
    if reliability is None:
        return NO_RELIABILITY_NOTE
    pooled = reliability.pooled
    if pooled.after is None:
        stages, ece = [pooled.before], f"ECE {_format_rate(pooled.before.ece())}, no calibration recorded"
    else:
        stages = [pooled.before, pooled.after]
        before, after = _format_rate(pooled.before.ece()), _format_rate(pooled.after.ece())
        ece = f"before -> after calibration; ECE {before} -> {after}"
    withheld = pooled.before.withheld
    if withheld:
        ece += f"; {withheld} images withheld in bins smaller than their site's minimum group size"
    sites = len(reliability.sites)
    title = f"reliability of the final model, {sites} site{'' if sites == 1 else 's'} pooled ({ece})"
    cells = [_bin_cells(bins) for bins in stages]  # stage -> bin -> (images, mean predicted, observed rate)
    count = len(pooled.before.images)
    rows: Rows = [
        # one cell per quantity, its stages joined: "28 -> 15"
        [f"{b / count:.1f}-{(b + 1) / count:.1f}", *(" -> ".join(values) for values in zip(*(c[b] for c in cells)))]
        for b in range(count)
    ]
    return title, [Column(RELIABILITY_COLUMNS[0]), *_right(*RELIABILITY_COLUMNS[1:])], rows


def _bin_cells(bins: ReliabilityBins) -> list[tuple[str, str, str]]:
    """Per bin: images, mean predicted probability, observed positive rate ("-" where empty)."""
    means, rates = bins.mean_probability(), bins.observed_rate()
    return [(str(n), _format_rate(m), _format_rate(r)) for n, m, r in zip(bins.images, means, rates)]


def _format_rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _site_status(status: str, reason: str | None = None) -> Text:
    """A site's status; a failed one with its category and incident id: ``failed: data-error (incident ...)``."""
    label = f"{status}: {reason}" if status == "failed" and reason else status
    return Text(label, style="green" if status == "ok" else "red")


def _artifacts_rows(artifacts: tuple[ArtifactRecord, ...]) -> Rows:
    return [
        [a.kind, _format_value(a.server_round), a.path, _format_size(a.size_bytes), a.sha256[:12]] for a in artifacts
    ]
