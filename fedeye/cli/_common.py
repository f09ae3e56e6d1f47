"""What every FedEye command shares: the console, clean exits on user errors, tables and JSON.

:func:`print_table` is the one place that decides how a table looks: a rich
table on a terminal wide enough for it; one ``header  value`` block per row in
a narrower one; tab-separated plain text, nothing cut, when stdout is a pipe
or a file (like GitHub's ``gh`` CLI); JSON with ``--json``.

>>> print_table(["id", "name"], [["r-1", "demo"]], title="runs")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from fedeye.errors import ConfigError, FedEyeError, RunInterrupted

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")
Cell = str | Text  # a Text keeps its colour on a terminal and prints as its plain text elsewhere
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: its header and, on a terminal, its alignment and style."""

    header: str
    justify: Literal["left", "right"] = "left"
    style: str = ""


def finite(low: float, high: float | None = None, *, above: bool = False) -> Callable[[float | None], float | None]:
    """A typer callback for a float option: a finite number >= ``low`` (> with ``above``) and <= ``high``.

    Click's ``min``/``max`` let ``nan`` through (every comparison with it is
    false) and ``inf`` past a bare ``min``; an option such as a learning rate
    then fails deep inside PyTorch, or writes a checkpoint of NaNs.

    >>> finite(0.0)(2.5)
    2.5
    """

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        ok = math.isfinite(value) and (value > low if above else value >= low) and (high is None or value <= high)
        if not ok:
            bound = f"{'>' if above else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
            raise typer.BadParameter(f"{value} is not a finite number {bound}")
        return value

    return check


def check_output_file(path: Path, *, option: str, example: str, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output file option before any work: a folder, under a file, or an existing input.

    ``inputs`` are files and folders the command reads: ``path`` may not be
    one of those files, nor an existing file in one of those folders (a site's
    manifest or images).

    The write itself can still fail (a full disk, no permission); each writer
    turns that :class:`OSError` into its own error. This check only spares a
    long computation that could never be saved.

    >>> check_output_file(Path("new-model.pt"), option="--out", example="adapted.pt")
    """
    if path.is_dir():  # also "" (an empty option is the current folder)
        raise ConfigError(f"{option}: {path} is a folder; name a file in it, e.g. {path / example}")
    if path.exists() and any(_within(path, source) for source in inputs):
        raise ConfigError(f"{option}: {path} is one of the inputs, or a file in an input folder; name a new file")
    ancestor = next((p for p in path.absolute().parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ConfigError(f"{option}: {ancestor} is a file, so {path} cannot be created under it; name another path")


def _within(path: Path, source: Path) -> bool:
    """Whether existing ``path`` is the file ``source`` or lies in the folder ``source``."""
    if not source.exists():
        return False
    if source.is_dir():
        return path.resolve().is_relative_to(source.resolve())
    return path.samefile(source)


def exits_cleanly(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`FedEyeError` into its message on stderr and exit code 1.

    A run stopped by a signal (:class:`RunInterrupted`) exits 128 + the
    signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell does.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except FedEyeError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}")
            raise typer.Exit(1) from None
        except RunInterrupted as err:
            err_console.print(f"[bold yellow]interrupted:[/] {escape(str(err))}; it is recorded as interrupted")
            raise typer.Exit(128 + int(getattr(signal, err.signal_name, signal.SIGINT))) from None

    return wrapper


def print_table(
    columns: Sequence[str | Column],
    rows: Iterable[Sequence[Cell]],
    *,
    title: str | None = None,
    show_header: bool = True,
    as_json: bool = False,
    json_rows: Any = None,
    target: Console | None = None,
) -> None:
    """Print a table the way the output can show it.

    Parameters
    ----------
    columns : sequence of str or Column
        Headers (and alignment on a terminal).
    rows : iterable of sequences of str or rich Text
        Cells, already formatted; plain strings are printed as they are (no rich markup).
    title : str, optional
        Shown above the table (a ``# title`` line in plain text).
    show_header : bool
        False for key/value tables.
    as_json : bool
        Print ``json_rows`` (default: one object per row, keyed by header) as JSON instead.
    target : Console, optional
        Where to print; the shared stdout console by default.
    """
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    out, materialised = target or console, [list(row) for row in rows]
    if as_json:
        print_json(json_rows if json_rows is not None else _rows_as_dicts(cols, materialised))
    elif not out.is_terminal:
        _print_plain(out, plain_lines(cols, materialised, title=title, show_header=show_header))
    else:
        table = _rich_table(cols, materialised, title=title, show_header=show_header)
        fits = out.measure(table, options=out.options.update_width(10_000)).maximum <= out.width
        out.print(table if fits or not show_header else _records(cols, materialised, title=title))


def print_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON (dataclasses, datetimes and paths included)."""
    typer.echo(json.dumps(payload, indent=2, default=json_default))


def json_default(value: object) -> Any:
    """Encode what :mod:`json` cannot: datetimes (ISO 8601), paths, dataclasses."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def plain_lines(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, title: str | None = None, show_header: bool = True
) -> list[str]:
    """The table as tab-separated lines: every cell whole, tabs and newlines in cells made spaces."""
    lines = [f"# {title}"] if title else []
    if show_header:
        lines.append("\t".join(_plain(c.header) for c in columns))
    lines.extend("\t".join(_plain(cell) for cell in row) for row in rows)
    return lines


def _rich_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, title: str | None, show_header: bool
) -> Table:
    """A rich table that folds long cells in a narrow terminal instead of cutting them."""
    table = Table(title=title, show_header=show_header, header_style="bold")
    for column in columns:
        table.add_column(column.header, justify=column.justify, style=column.style, overflow="fold")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    return table


def _records(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, title: str | None) -> Group:
    """A table too wide for the terminal, one ``header  value`` block per row (like psql's ``\\x``)."""
    width = max((len(c.header) for c in columns), default=0)
    parts: list[Text | Rule] = [Rule(title, align="left")] if title else []
    for i, row in enumerate(rows):
        if i:
            parts.append(Rule(style="dim"))
        parts.extend(Text.assemble((f"{c.header:<{width}}  ", "bold"), cell) for c, cell in zip(columns, row))
    return Group(*parts)


def _print_plain(out: Console, lines: list[str]) -> None:
    out.file.write("".join(f"{line}\n" for line in lines))
    out.file.flush()


def _rows_as_dicts(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> list[dict[str, str]]:
    return [
        {c.header: (cell.plain if isinstance(cell, Text) else cell) for c, cell in zip(columns, row)} for row in rows
    ]


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else cell
    return text.replace("\t", " ").replace("\r\n", " ").replace("\n", " ")
