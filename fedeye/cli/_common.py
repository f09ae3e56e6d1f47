"""What every FedEye command shares: the console and clean exits on user errors."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fedeye.errors import FedEyeError, RunInterrupted

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


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
