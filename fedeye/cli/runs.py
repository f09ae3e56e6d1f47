"""``fedeye runs``: list recorded runs and show one in detail.

The lead CLI mounts the sub-app with ``app.add_typer(runs_app, name="runs")``.
:func:`build_runs_app` makes one with another default store folder.

The store is chosen by ``--db`` (a SQLAlchemy URL or a SQLite file path), else
``$FEDEYE_DB``, else ``<default dir>/fedeye.db`` (``~/.fedeye`` by default).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fedeye.errors import FedEyeError
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
STATUS_STYLE = {"running": "yellow", "finished": "green", "failed": "red", "stopped": "magenta"}

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
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
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
    def show_command(
        run_id: RunIdArgument, db: DbOption = None, as_json: JsonOption = False
    ) -> None:
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
    return RunStore(resolve_db_url(db, default_dir=default_dir or default_store_dir()))


def _fail(exc: FedEyeError) -> NoReturn:
    Console(stderr=True, highlight=False).print(
        f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True
    )
    raise typer.Exit(code=1)


def _emit_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=_json_default))


def _print_runs(runs: list[RunSummary]) -> None:
    console = Console()
    if not runs:
        console.print("No runs recorded yet; start one with `fedeye run`.")
        return
    console.print(_runs_table(runs))


def _print_detail(detail: RunDetail) -> None:
    Console().print(_detail_view(detail))


# --------------------------------------------------------------------------- JSON


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


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


def _format_value(value: float | int | None) -> str:
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


def _runs_table(runs: list[RunSummary]) -> Table:
    table = Table(title="FedEye runs")
    for header in ("id", "name", "status", "strategy", "sites", "rounds", "started", "duration"):
        table.add_column(header, no_wrap=header in ("id", "started"))
    for run in runs:
        table.add_row(
            run.run_id, run.name, _status_text(run.status), run.strategy, str(run.num_sites),
            f"{run.rounds_done}/{run.num_rounds}", _format_time(run.started_at),
            format_duration(run.duration()),
        )
    return table


def _detail_view(detail: RunDetail) -> Group:
    parts: list[Any] = [_header_table(detail), _config_table(detail.config)]
    if detail.rounds:
        parts.append(_rounds_table(detail.rounds))
    last = detail.last_evaluated_round()
    if last is not None:
        evaluated = [m for m in detail.site_metrics if m.phase == "evaluate"]
        parts.append(_sites_table([m for m in evaluated if m.server_round == last], f"sites, evaluation of round {last}"))
    tested = [m for m in detail.site_metrics if m.phase == "test"]
    if tested:
        parts.append(_sites_table(tested, "sites, final model on each site's held-out test split"))
        at_point = [m for m in tested if m.metrics.get("threshold") is not None]
        if at_point:
            parts.append(_operating_point_table(at_point))
    events = [m for m in detail.site_metrics if m.status != "ok"]
    if events:
        parts.append(_events_table(events))
    if detail.privacy:
        parts.append(_privacy_table(detail.privacy))
    if detail.artifacts:
        parts.append(_artifacts_table(detail.artifacts))
    return Group(*parts)


def _events_table(events: list[SiteMetricRecord]) -> Table:
    table = Table(title="site events (failed, missing, left for budget, rejected updates)")
    for header in ("round", "phase", "site", "status", "reason"):
        table.add_column(header, no_wrap=header != "reason", overflow="fold")
    for m in events:
        table.add_row(str(m.server_round), m.phase, Text(m.site), _site_status(m.status), Text(m.reason or ""))
    return table


def _privacy_table(ledger: tuple[PrivacyRecord, ...]) -> Table:
    table = Table(title="privacy ledger (epsilon spent so far, per site per round)")
    for header in ("round", "scope", "site", "epsilon", "budget", "delta", "sigma", "q", "steps", "accountant", "status"):
        table.add_column(header, justify="left" if header in ("scope", "site", "accountant", "status") else "right", no_wrap=header == "site")
    for e in ledger:
        table.add_row(
            str(e.server_round), e.scope, Text(e.site), f"{e.epsilon:.3f}", "-" if e.budget is None else f"{e.budget:g}",
            f"{e.delta:.2e}", f"{e.noise_multiplier:.3f}", f"{e.sample_rate:.3f}", str(e.steps), e.accountant,
            _site_status(e.status),
        )
    return table


def _header_table(detail: RunDetail) -> Table:
    run = detail.run
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", f"{run.run_id}  ({escape(run.name)})")
    grid.add_row("status", _status_text(run.status))
    grid.add_row("strategy", run.strategy)
    grid.add_row("sites", str(run.num_sites))
    grid.add_row("rounds", f"{run.rounds_done}/{run.num_rounds}")
    grid.add_row("started", _format_time(run.started_at))
    grid.add_row("ended", _format_time(run.ended_at))
    grid.add_row("duration", format_duration(run.duration()))
    final = detail.final_model()
    if final is not None:
        grid.add_row("final model", Text(final.path))
    if run.error:
        grid.add_row("error", Text(run.error, style="red"))
    return grid


def _config_table(config: Mapping[str, Any]) -> Table:
    pairs = flatten_config(config)
    table = Table(title="configuration", show_header=False)
    table.add_column("key", style="cyan")
    table.add_column("value")
    for key, value in pairs[:MAX_CONFIG_LINES]:
        table.add_row(Text(key), Text(value))
    if len(pairs) > MAX_CONFIG_LINES:
        table.add_row("...", f"{len(pairs) - MAX_CONFIG_LINES} more; see --json")
    return table


def _rounds_table(rounds: tuple[RoundRecord, ...]) -> Table:
    train_names = metric_names(r.train_metrics for r in rounds)
    eval_names = metric_names(r.eval_metrics for r in rounds)
    table = Table(title="rounds (aggregated)")
    table.add_column("round", justify="right")
    table.add_column("trained", justify="right")
    table.add_column("evaluated", justify="right")
    for name in train_names:
        table.add_column(f"train {name}", justify="right")
    for name in eval_names:
        table.add_column(f"eval {name}", justify="right")
    for record in rounds:
        table.add_row(*_round_cells(record, train_names, eval_names))
    return table


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


def _sites_table(records: list[SiteMetricRecord], title: str) -> Table:
    names = metric_names(r.metrics for r in records)
    table = Table(title=title)
    table.add_column("site", no_wrap=True)
    table.add_column("status")
    table.add_column("n images", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for record in records:
        table.add_row(
            Text(record.site), _site_status(record.status), str(record.num_examples),
            *(_format_value(record.metrics.get(name)) for name in names),
        )
    return table


OPERATING_RATES = ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv")


def _operating_point_table(records: list[SiteMetricRecord]) -> Table:
    """Rates at the federation's operating point, with the sites' bootstrap 95% CIs, and calibration."""
    first = records[0].metrics
    title = (f"final model at the federation's operating point (p >= {_format_value(first.get('threshold'))} "
             f"after temperature {_format_value(first.get('temperature'))}); [95% CI]")
    table = Table(title=title)
    table.add_column("site", no_wrap=True)
    for name in (*OPERATING_RATES, "ECE before -> after"):
        table.add_column(name, justify="right")
    for r in records:
        m = r.metrics
        cells = [f"{_format_value(m.get(k))} [{_format_value(m.get(k + '-ci-low'))}, {_format_value(m.get(k + '-ci-high'))}]"
                 for k in OPERATING_RATES]
        table.add_row(Text(r.site), *cells, f"{_format_value(m.get('ece'))} -> {_format_value(m.get('ece-calibrated'))}")
    return table


def _site_status(status: str) -> Text:
    return Text(status, style="green" if status == "ok" else "red")


def _artifacts_table(artifacts: tuple[ArtifactRecord, ...]) -> Table:
    table = Table(title="artifacts")
    for header in ("kind", "round", "path", "size", "sha256"):
        table.add_column(header, overflow="fold")
    for artifact in artifacts:
        table.add_row(
            artifact.kind, _format_value(artifact.server_round), Text(artifact.path),
            _format_size(artifact.size_bytes), artifact.sha256[:12],
        )
    return table
