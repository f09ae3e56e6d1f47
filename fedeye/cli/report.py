"""``fedeye report RUN_ID --out DIR``: write a run's fairness report (HTML + Markdown).

The lead CLI mounts it with ``app.command("report")(report_command)``. The
store is chosen like ``fedeye runs``: ``--db``, else ``$FEDEYE_DB``, else
``~/.fedeye/fedeye.db``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedeye.cli._common import console, exits_cleanly
from fedeye.cli.runs import DbOption, RunIdArgument, default_store_dir
from fedeye.server.report_data import load_report_data
from fedeye.server.store import RunStore, resolve_db_url

if TYPE_CHECKING:
    from fedeye.fairness.report import ReportPaths

OutOption = Annotated[
    Path,
    typer.Option("--out", "-o", help="Folder for report.html, report.md and the plots (created if missing)."),
]


@exits_cleanly
def report_command(run_id: RunIdArgument, out: OutOption = Path("fedeye-report"), db: DbOption = None) -> None:
    """Write a run's per-site and per-group fairness report (self-contained HTML and Markdown)."""
    paths = _write(run_id, out, db)
    console.print(f"wrote [bold]{paths.html}[/] (open it in a browser; works offline)")
    console.print(f"wrote [bold]{paths.markdown}[/] and {len(paths.images)} plot(s)")


def _write(run_id: str, out: Path, db: str | None) -> ReportPaths:
    from fedeye.fairness.report import write_report  # matplotlib loads only for reports

    with RunStore(resolve_db_url(db, default_dir=default_store_dir(), create=False)) as store:
        data = load_report_data(store, run_id)
    return write_report(data, out)
