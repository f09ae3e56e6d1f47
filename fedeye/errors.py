"""FedEye's domain exceptions.

Every error a user can fix (bad config, bad site data, missing model file, an
unreachable store) derives from :class:`FedEyeError`. The CLI turns these into
a clean message and exit code 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


class FedEyeError(Exception):
    """Base class of every error caused by input a user can correct."""


class ConfigError(FedEyeError):
    """A run or site configuration file is missing, unparsable or invalid."""


@dataclass(frozen=True)
class Problem:
    """One problem found in user data: where it is, what is wrong, what to do.

    ``row`` is the 1-based line number in the file (header is line 1) when the
    problem belongs to a row; ``file`` names the file that holds it. A
    ``"warning"`` does not make a site fail its check (e.g. identifying DICOM
    header fields that FedEye never reads into outgoing messages).
    """

    file: str
    message: str
    fix: str
    row: int | None = None
    field: str | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        if self.field:
            where += f" [{self.field}]"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{where}: {self.message} -> {self.fix}"


def errors_only(problems: Sequence[Problem]) -> list[Problem]:
    """Return the problems that are errors (warnings dropped)."""
    return [p for p in problems if p.severity == "error"]


class SiteDataError(FedEyeError):
    """A site folder fails validation; carries every problem found."""

    def __init__(self, site: str, problems: Sequence[Problem]) -> None:
        self.site = site
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"site {site!r} has {len(self.problems)} problem(s):\n{lines}")


class ModelError(FedEyeError):
    """A model file or checkpoint cannot be loaded or does not fit."""


class StoreError(FedEyeError):
    """The run store cannot be opened, or a requested run does not exist."""


class FederationError(FedEyeError):
    """A run cannot go on: e.g. no site could train in a round."""


class SiteExistsError(FedEyeError):
    """Writing a site (e.g. synthetic data) would overwrite a non-empty folder."""


class AuditError(FedEyeError):
    """A site's audit log of outgoing messages cannot be written or read."""


class ProvisioningError(FedEyeError):
    """A key or certificate cannot be made, read or written (bad key file, would overwrite)."""


class DeploymentError(FedEyeError):
    """A deployment step cannot go on: missing TLS files, a bad address, or a Flower command that failed."""


class SiteStateError(FedEyeError):
    """A site's state folder (approvals, ledger, cache) cannot be read or holds no such entry."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C, SIGTERM): the run is recorded ``interrupted``.

    Like :class:`KeyboardInterrupt` (and unlike :class:`FedEyeError`) it passes
    through ``except Exception``, so the frameworks a run goes through
    (Flower, Ray) let it reach the CLI, which exits 130 (SIGINT) or 143 (SIGTERM).
    """

    def __init__(self, signal_name: str, run_id: str | None = None) -> None:
        self.signal_name = signal_name
        self.run_id = run_id
        run = f"run {run_id}" if run_id else "the run"
        super().__init__(f"{run} was interrupted by {signal_name}")


class LedgerError(FedEyeError):
    """A site's privacy ledger cannot be opened, read or written."""


class ImageDataError(FedEyeError):
    """Pixels cannot be used as they are: too many, an unsupported type, or values outside the expected range."""
