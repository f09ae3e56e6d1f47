"""A rich live display of a running federation: round bar plus per-site table."""

from __future__ import annotations

import math
import threading

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedeye.server.recorder import SiteReport

_PHASE_WORD = {"train": "training", "evaluate": "evaluating", "test": "testing"}


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


class RichProgress:
    """Implements :class:`~fedeye.server.recorder.ProgressSink` on a rich Live display."""

    def __init__(self, console: Console, *, rounds: int) -> None:
        self.rounds = rounds
        self._rows: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._bar.add_task("starting Flower simulation", total=rounds)
        self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> RichProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render())
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def round_started(self, server_round: int, phase: str, num_sites: int) -> None:
        self._bar.update(
            self._task,
            completed=server_round - 1,
            description=f"round {server_round}/{self.rounds} · {_PHASE_WORD.get(phase, phase)} {num_sites} sites",
        )

    def site_reported(self, report: SiteReport) -> None:
        with self._lock:
            row = self._rows.setdefault(report.site, {"round": "", "train": "-", "val": "-", "auc": "-", "state": ""})
            row["round"] = str(report.server_round)
            if report.status != "ok":
                row["state"] = f"[red]{report.status}: {report.reason[:60]}"
            elif report.phase == "train":
                row["train"], row["state"] = _fmt(report.metrics.get("loss")), "trained"
            else:
                row["val"], row["auc"] = _fmt(report.metrics.get("loss")), _fmt(report.metrics.get("auc"))
                row["state"] = "tested" if report.phase == "test" else "evaluated"
            done = report.server_round if report.phase != "train" else report.server_round - 1
            self._bar.update(
                self._task,
                completed=done,
                description=f"round {report.server_round}/{self.rounds} · {report.site}: {report.phase} done",
            )
            self._live.update(self._render())

    def _render(self) -> Group:
        table = Table(title=None, expand=False, header_style="bold")
        for name in ("site", "round", "train loss", "eval loss", "eval AUC", "state"):
            table.add_column(name, justify="left" if name in ("site", "state") else "right", overflow="fold")
        for site, row in sorted(self._rows.items()):
            table.add_row(site, row["round"], row["train"], row["val"], row["auc"], row["state"])
        return Group(self._bar, table)
