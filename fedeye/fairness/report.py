"""Fairness report of a recorded run: one self-contained HTML file and a Markdown summary.

A pure function of plain data: the caller fills a
:class:`~fedeye.fairness.report_data.ReportData` (for a stored run,
``build_report_data`` in the server package). :func:`build_sections`
turns it into :class:`Section` of tables, notes and figures (PNG bytes);
Jinja2 templates shipped in ``fedeye/fairness/templates`` render them as HTML
(autoescaped, inline CSS, base64 images) and Markdown (PNGs beside it).

:func:`write_report` is the only function that touches the disk. The files go
to a temporary folder next to ``out`` first, so an error leaves no
half-written report behind.

Missing data (no test phase, no per-group metrics, no privacy ledger, no
reliability bins, a run that failed before any round) gives a short "not
recorded" note, never an error.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from markupsafe import Markup, escape
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from fedeye.errors import FedEyeError
from fedeye.fairness.metrics import (
    AGE_BANDS,
    ATTRIBUTES,
    DEFAULT_MIN_GROUP_SIZE,
    cross_site_summary,
    group_label,
    parse_fair_metrics,
    parse_group_metrics,
    slug,
)
from fedeye.fairness.reliability import RunReliability
from fedeye.fairness.reliability_plot import reliability_figure
from fedeye.fairness.report_data import PrivacyEntry, ReportData, SiteResult

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
Value = float | int | str | None
NOT_RECORDED = "not recorded"
_T = TypeVar("_T")


class ReportError(FedEyeError):
    """The report cannot be written where asked (``out`` is a file, no permission, ...)."""


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put the report."""

    directory: Path
    html: Path
    markdown: Path
    images: tuple[Path, ...]


# ------------------------------------------------------------------ report model


@dataclass(frozen=True)
class Table:
    """A table; ``emphasis`` is the index of a row to highlight (e.g. the worst site)."""

    header: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]
    caption: str = ""
    emphasis: int | None = None

    @property
    def text_columns(self) -> frozenset[int]:
        """Indexes of the columns that hold text in the first row (aligned left)."""
        return frozenset(i for i, v in enumerate(self.rows[0]) if isinstance(v, str)) if self.rows else frozenset()


@dataclass(frozen=True)
class Note:
    """A short paragraph."""

    text: str


@dataclass(frozen=True)
class Figure:
    """A plot as PNG bytes, saved as ``name`` beside the Markdown file."""

    name: str
    png: bytes
    caption: str


Block = Table | Note | Figure


@dataclass(frozen=True)
class Section:
    """A titled part of the report; ``level`` 2 or 3."""

    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)
    level: int = 2


# --------------------------------------------------------------------- entry point


def write_report(data: ReportData, out: Path) -> ReportPaths:
    """Write the fairness report of a run into the folder ``out``.

    Parameters
    ----------
    data : ReportData
        The run's results as plain data (see
        ``build_report_data`` in the server package for a stored run).
    out : Path
        Folder to create (or update) with ``report.html`` (self-contained:
        inline CSS, base64 images, no network), ``report.md`` and its PNGs.

    Returns
    -------
    ReportPaths
        The folder and the files written.

    Raises
    ------
    ReportError
        If ``out`` is an existing file or the folder cannot be written.
    """
    _check_target(out)
    sections = build_sections(data)
    title = f"FedEye fairness report: {data.run.name} ({data.run.run_id})"
    figures = [b for s in sections for b in s.blocks if isinstance(b, Figure)]
    files = {
        HTML_NAME: render_html(title, sections).encode(),
        MARKDOWN_NAME: render_markdown(title, sections).encode(),
        **{f.name: f.png for f in figures},
    }
    _write_files_atomically(files, out)
    return ReportPaths(out, out / HTML_NAME, out / MARKDOWN_NAME, tuple(out / f.name for f in figures))


def build_sections(data: ReportData) -> list[Section]:
    """The report's content, in reading order (pure: no disk)."""
    final, source = final_records(data)
    return [
        _header_section(data, source),
        _sites_section(final, source),
        _cross_site_section(final),
        _groups_section(final),
        _privacy_section(data.privacy),
        _plots_section(data, final),
    ]


# ------------------------------------------------------------------- selections


def final_records(data: ReportData) -> tuple[list[SiteResult], str]:
    """Each site's result for the final model, and a phrase saying where it comes from.

    The test phase (the latest round of it per site) when recorded, else the
    last evaluated round.
    """
    tests = [m for m in data.site_results if m.phase == "test"]
    if tests:
        latest = {m.site: m for m in sorted(tests, key=lambda m: m.server_round)}
        return sorted(latest.values(), key=lambda m: m.site), "final model on each site's held-out test split"
    last = data.last_evaluated_round()
    if last is None:
        return [], NOT_RECORDED
    chosen = [m for m in data.site_results if m.phase == "evaluate" and m.server_round == last]
    return sorted(chosen, key=lambda m: m.site), f"evaluation of round {last} (no test phase recorded)"


def evaluate_series(data: ReportData, key: str) -> dict[str, list[tuple[int, float]]]:
    """``site -> [(round, value)]`` of one metric in the evaluate phase; missing values skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    for m in sorted(data.site_results, key=lambda m: m.server_round):
        value = m.metrics.get(key)
        if m.phase == "evaluate" and m.status == "ok" and _finite(value):
            series.setdefault(m.site, []).append((m.server_round, float(value)))  # type: ignore[arg-type]
    return series


def last_privacy(ledger: Iterable[PrivacyEntry]) -> list[PrivacyEntry]:
    """The latest ledger row of each (scope, site)."""
    latest: dict[tuple[str, str], PrivacyEntry] = {}
    for row in sorted(ledger, key=lambda r: r.server_round):
        latest[(row.scope, row.site)] = row
    return [latest[k] for k in sorted(latest)]


# ---------------------------------------------------------------------- sections


def _header_section(data: ReportData, source: str) -> Section:
    run = data.run
    sites = sorted({m.site for m in data.site_results})
    rows: list[tuple[Value, ...]] = [
        ("run", f"{run.run_id} ({run.name})"),
        ("status", run.status),
        ("strategy", run.strategy),
        ("sites", f"{run.num_sites}: {', '.join(sites)}" if sites else str(run.num_sites)),
        ("rounds", f"{run.rounds_done} of {run.num_rounds}"),
        ("started", _time(run.started_at)),
        ("ended", _time(run.ended_at)),
        ("results shown", source),
    ]
    if run.error:
        rows.append(("error", run.error))
    guide = Note(
        "AUC: 0.5 is chance, 1.0 perfect. Sensitivity: share of diseased eyes flagged; specificity: share of "
        "healthy eyes cleared. ECE: gap between predicted risk and observed rate (0 is perfectly calibrated). "
        "ES-AUC (equity-scaled AUC) = AUC / (1 + sum of |AUC - group AUC|): equal to AUC when every group is "
        "served equally, lower the more groups differ. DPD / EOD: largest difference between groups in the "
        "rate of positive calls / in sensitivity or false-positive rate (0 is parity)."
    )
    return Section("Run", (Table(("", ""), tuple(rows)), guide))


def _sites_section(final: list[SiteResult], source: str) -> Section:
    if not final:
        return Section("Per-site results", (Note(f"Site results {NOT_RECORDED}."),))
    aucs = [m.metrics.get("auc") for m in final]
    worst = _argmin(aucs)
    rows = tuple(
        (
            m.site,
            m.status,
            m.num_examples,
            *(m.metrics.get(k) for k in ("auc", "accuracy", "sensitivity", "specificity", "ece")),
        )
        for m in final
    )
    header = ("site", "status", "images", "AUC", "accuracy", "sensitivity", "specificity", "ECE")
    caption = f"{source[0].upper()}{source[1:]}." + (" Lowest AUC in bold." if worst is not None else "")
    blocks: list[Block] = [Table(header, rows, caption, emphasis=worst)]
    if any("ece" not in m.metrics for m in final if m.status == "ok"):
        blocks.append(Note(f"ECE {NOT_RECORDED} for some sites (they did not send fairness metrics)."))
    blocks += _operating_point_blocks(final)
    return Section("Per-site results", tuple(blocks))


OPERATING_RATES = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("balanced-accuracy", "balanced accuracy"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
)


def _operating_point_blocks(final: list[SiteResult]) -> list[Block]:
    """Rates at the federation's operating point with the sites' bootstrap 95% CIs, ECE before and after."""
    at_point = [m for m in final if m.metrics.get("threshold") is not None]
    if not at_point:
        return []
    rows = tuple(
        (
            m.site,
            *(_with_ci(m.metrics, key) for key, _ in OPERATING_RATES),
            m.metrics.get("ece"),
            m.metrics.get("ece-calibrated"),
        )
        for m in at_point
    )
    first = at_point[0].metrics
    caption = (
        f"At the operating point the federation chose (p ≥ {_fmt(first.get('threshold'))} after bias "
        f"{_fmt(first.get('bias', 0.0))}, temperature {_fmt(first.get('temperature'))}), with per-image bootstrap "
        "95% intervals computed at each site. ECE before and after that calibration."
    )
    header = ("site", *(name for _, name in OPERATING_RATES), "ECE", "ECE calibrated")
    return [Table(header, rows, caption)]


def _with_ci(metrics: Mapping[str, float | None], key: str) -> str:
    return f"{_fmt(metrics.get(key))} [{_fmt(metrics.get(key + '-ci-low'))}, {_fmt(metrics.get(key + '-ci-high'))}]"


def _cross_site_section(final: list[SiteResult]) -> Section:
    aucs = {m.site: m.metrics.get("auc") for m in final if _finite(m.metrics.get("auc"))}
    if not aucs:
        return Section("Across sites", (Note(f"Site AUCs {NOT_RECORDED}."),))
    plain = cross_site_summary(aucs)  # type: ignore[arg-type]
    weighted = cross_site_summary(aucs, {m.site: m.num_examples for m in final})  # type: ignore[arg-type]
    worst_site = min(aucs, key=lambda s: aucs[s])  # type: ignore[arg-type,return-value]
    rows: tuple[tuple[Value, ...], ...] = (
        ("sites with an AUC", int(plain["sites"])),
        ("mean AUC (each site counts once)", plain["mean-auc"]),
        ("mean AUC weighted by images", weighted["mean-auc"]),
        (f"worst site: {worst_site}", plain["worst-auc"]),
        ("gap (best - worst site)", plain["gap"]),
        ("ES-AUC, sites as groups (reference: the plain mean)", plain["es-auc"]),
    )
    return Section("Across sites", (Table(("measure", "value"), rows),))


def _groups_section(final: list[SiteResult]) -> Section:
    blocks: list[Block] = []
    for m in final:
        blocks.extend(_site_group_blocks(m))
    if not blocks:
        blocks.append(
            Note(
                f"Per-group metrics {NOT_RECORDED}: no site sent group.* keys (they need manifest columns "
                "sex, race, ethnicity or age, and a ClientApp that computes site_fairness_metrics)."
            )
        )
    intro = Note(
        "Each site computes these on its own images. A group with fewer images than the site's minimum group "
        f"size (default {DEFAULT_MIN_GROUP_SIZE}) is suppressed: it is not sent and does not enter ES-AUC, DPD, "
        "EOD, worst AUC or gap."
    )
    return Section("Groups within each site", (intro, *blocks))


def _site_group_blocks(record: SiteResult) -> list[Block]:
    groups, fair = parse_group_metrics(record.metrics), parse_fair_metrics(record.metrics)
    if not groups and not fair:
        return []
    rows = tuple(
        (
            _attribute_title(a),
            group_label(a, g),
            _int(v.get("n")),
            v.get("auc"),
            v.get("sensitivity"),
            v.get("specificity"),
        )
        for a in _ordered(groups)
        for g, v in _group_items(a, groups[a])
    )
    summary = tuple(
        (
            _attribute_title(a),
            *(fair[a].get(k) for k in ("es-auc", "worst-auc", "gap", "dpd", "eod")),
            _suppressed(fair[a].get("suppressed")),
        )
        for a in _ordered(fair)
    )
    return [
        Note(f"**{record.site}** ({record.num_examples} images)"),
        Table(("attribute", "group", "images", "AUC", "sensitivity", "specificity"), rows, f"{record.site}: groups"),
        Table(
            ("attribute", "ES-AUC", "worst AUC", "gap", "DPD", "EOD", "suppressed"),
            summary,
            f"{record.site}: disparities",
        ),
    ]


def _privacy_section(ledger: Sequence[PrivacyEntry]) -> Section:
    rows = tuple(
        (r.site, r.scope, r.server_round, r.epsilon, r.budget, _share(r.epsilon, r.budget), f"{r.delta:.1e}", r.status)
        for r in last_privacy(ledger)
    )
    if not rows:
        return Section(
            "Privacy spent", (Note(f"Privacy ledger {NOT_RECORDED} (the run did not use differential privacy)."),)
        )
    header = ("site", "scope", "last round", "epsilon spent", "epsilon budget", "share of budget", "delta", "status")
    return Section("Privacy spent", (Table(header, rows, "Latest ledger entry per site."),))


def _plots_section(data: ReportData, final: list[SiteResult]) -> Section:
    blocks: list[Block] = _reliability_blocks(data.reliability, final)
    auc = evaluate_series(data, "auc")
    blocks.append(
        _line_figure("auc-over-rounds.png", auc, "AUC", "Each site's AUC over rounds (evaluate phase).")
        if auc
        else Note(f"AUC over rounds {NOT_RECORDED}.")
    )
    blocks.extend(_group_bar_figures(final))
    es = es_auc_series(data)
    blocks.append(
        _line_figure(
            "es-auc-over-rounds.png",
            es,
            "ES-AUC",
            "ES-AUC over rounds: across sites (sites as groups) "
            "and, per attribute, the mean over sites of the within-site ES-AUC.",
        )
        if es
        else Note(f"ES-AUC over rounds {NOT_RECORDED}.")
    )
    return Section("Plots", tuple(blocks))


def _reliability_blocks(reliability: RunReliability | None, final: list[SiteResult]) -> list[Block]:
    """The final test's reliability diagram, pooled and (with two or more sites) per site."""
    if reliability is None:
        return [
            Note(f"Reliability diagram {NOT_RECORDED} (a multiclass task, or a run recorded before sites sent it).")
        ]
    pooled, sites = reliability.pooled, reliability.sites
    withheld = pooled.before.withheld
    caption = (
        "Reliability of the final model on the sites' test images: per probability bin (10, equal width), the "
        "observed positive rate against the mean predicted probability, before and after the federation's "
        f"calibration{_calibration_phrase(final)}; on the diagonal it is perfectly calibrated. Each site sends "
        "per bin only its images, summed probability and positives; the pooled diagram is their sum. ECE in the "
        "legend is over the binned images."
        + (
            f" {withheld} images were in bins with fewer images than their site's minimum group size and were withheld."
            if withheld
            else ""
        )
    )
    blocks: list[Block] = [
        Figure("reliability-pooled.png", _png(reliability_figure({f"all sites ({len(sites)})": pooled})), caption)
    ]
    if len(sites) >= 2:
        blocks.append(
            Figure(
                "reliability-sites.png",
                _png(reliability_figure(dict(sorted(sites.items())))),
                "Reliability of the final model at each site (its test images), before and after calibration.",
            )
        )
    return blocks


def _calibration_phrase(final: list[SiteResult]) -> str:
    """`` (bias b, temperature T)`` as the sites reported it, or nothing."""
    metrics = next((m.metrics for m in final if _finite(m.metrics.get("temperature"))), None)
    if metrics is None:
        return ""
    return f" (bias {_fmt(metrics.get('bias', 0.0))}, temperature {_fmt(metrics.get('temperature'))})"


def es_auc_series(data: ReportData) -> dict[str, list[tuple[int, float]]]:
    """``line -> [(round, ES-AUC)]``: across sites, and each attribute's mean over sites."""
    by_round: dict[int, list[SiteResult]] = {}
    for m in data.site_results:
        if m.phase == "evaluate" and m.status == "ok":
            by_round.setdefault(m.server_round, []).append(m)
    series: dict[str, list[tuple[int, float]]] = {}
    for rnd in sorted(by_round):
        cross = cross_site_summary({m.site: m.metrics.get("auc") for m in by_round[rnd]})  # type: ignore[misc]
        _append(series, "across sites", rnd, cross["es-auc"])
        for attribute in ATTRIBUTES:
            values = [m.metrics.get(f"fair.{attribute}.es-auc") for m in by_round[rnd]]
            finite = [float(v) for v in values if _finite(v)]  # type: ignore[arg-type]
            _append(series, f"{attribute} (mean over sites)", rnd, sum(finite) / len(finite) if finite else math.nan)
    return series


def _append(series: dict[str, list[tuple[int, float]]], name: str, rnd: int, value: float) -> None:
    if math.isfinite(value):
        series.setdefault(name, []).append((rnd, value))


# ------------------------------------------------------------------------ figures


def _line_figure(name: str, series: Mapping[str, list[tuple[int, float]]], ylabel: str, caption: str) -> Figure:
    fig = MplFigure(figsize=(7.5, 3.6), dpi=110)
    ax = fig.add_subplot()
    for label, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set(xlabel="round", ylabel=ylabel, ylim=(0.0, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return Figure(name, _png(fig), caption)


def _group_bar_figures(final: list[SiteResult]) -> list[Block]:
    per_site = {m.site: parse_group_metrics(m.metrics) for m in final}
    attributes = _ordered({a: None for groups in per_site.values() for a in groups})
    return [
        _group_bar_figure(
            a, {s: {g: v.get("auc") for g, v in groups.get(a, {}).items()} for s, groups in per_site.items()}
        )
        for a in attributes
    ]


def _group_bar_figure(attribute: str, aucs: Mapping[str, Mapping[str, float | None]]) -> Figure:
    """Grouped bars: one cluster per site, one bar per group (missing = no bar)."""
    groups = [g for g, _ in _group_items(attribute, {g: None for site in aucs.values() for g in site})]
    sites = list(aucs)
    width = 0.8 / max(len(groups), 1)
    fig = MplFigure(figsize=(max(6.0, 1.2 * len(sites) + 2.5), 3.6), dpi=110)
    ax = fig.add_subplot()
    for j, group in enumerate(groups):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(sites))]
        ys = [_nan(aucs[s].get(group)) for s in sites]
        ax.bar(xs, ys, width=width * 0.95, label=group_label(attribute, group))
    ax.set_xticks(range(len(sites)), [_wrap(s) for s in sites], fontsize=8)
    ax.set(ylabel="AUC", ylim=(_axis_floor(aucs), 1.02), title=f"Group AUC by {_attribute_title(attribute)}")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    caption = (
        f"AUC of each {_attribute_title(attribute)} group at each site (final model). A missing bar: "
        "group suppressed (too few images) or AUC undefined (one class only). Dashed line: chance (0.5); "
        "the axis starts at 0.4 or below."
    )
    return Figure(f"group-auc-{attribute}.png", _png(fig), caption)


def _axis_floor(aucs: Mapping[str, Mapping[str, float | None]]) -> float:
    """0.4 (just below chance), lower if a bar would not fit."""
    values = [float(v) for site in aucs.values() for v in site.values() if _finite(v)]  # type: ignore[arg-type]
    return min([0.4, *(math.floor(v * 10) / 10 for v in values)])


def _png(fig: MplFigure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


# ------------------------------------------------------------------------ render


def render_html(title: str, sections: Sequence[Section]) -> str:
    """The report as one HTML page: inline CSS, images as base64 data, no links out.

    Every text is escaped by the template engine (autoescape on).
    """
    return _template("report.html.j2", autoescape=True).render(title=title, sections=sections)


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The report as Markdown; figures are referenced as PNG files in the same folder."""
    return _template("report.md.j2", autoescape=False).render(title=title, sections=sections)


@functools.cache
def _environment(autoescape: bool) -> Environment:
    env = Environment(
        loader=PackageLoader("fedeye.fairness", "templates"),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=_fmt, bold=_bold_html, b64=_b64, md_cell=_md_cell, md_bold=_md_bold)
    env.tests.update(note=lambda b: isinstance(b, Note), figure=lambda b: isinstance(b, Figure))
    return env


def _template(name: str, *, autoescape: bool) -> Template:
    return _environment(autoescape).get_template(name)


# ----------------------------------------------------------------------- writing


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(
            f"{out} is an existing file; pass a folder for the report with --out (it is created if missing)"
        )


def _write_files_atomically(files: Mapping[str, bytes], out: Path) -> None:
    """Write every file into a temporary folder beside ``out``, then move them in."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise ReportError(
            f"cannot write a report under {out.parent}: {exc.strerror}; choose another --out folder"
        ) from exc
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        _move_into(staging, out, files)
    except OSError as exc:
        raise ReportError(
            f"cannot write the report to {out}: {exc.strerror or exc}; choose another --out folder"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, out: Path, files: Iterable[str]) -> None:
    if not out.exists():
        os.rename(staging, out)  # the whole folder appears at once
        return
    for name in files:  # existing folder: each file is replaced atomically
        os.replace(staging / name, out / name)


# ------------------------------------------------------------------- formatting


def _fmt(value: Value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool | int):
        return str(value)
    return f"{value:.3f}" if isinstance(value, float) else value


def _bold_html(text: str) -> Markup:
    """Escape, then turn ``**x**`` into ``<strong>x</strong>``."""
    pieces = str(escape(text)).split("**")
    return Markup("".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces)))


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_bold(text: str) -> str:
    return f"**{text}**" if text else text


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _nan(value: float | None) -> float:
    return float(value) if _finite(value) else math.nan  # type: ignore[arg-type]


def _int(value: float | None) -> int | None:
    return int(value) if _finite(value) else None  # type: ignore[arg-type]


def _argmin(values: Sequence[float | None]) -> int | None:
    finite = [(float(v), i) for i, v in enumerate(values) if _finite(v)]  # type: ignore[arg-type]
    return min(finite)[1] if len(finite) >= 2 else None


def _share(epsilon: float, budget: float | None) -> str | None:
    return None if not budget else f"{100 * epsilon / budget:.0f}%"


def _suppressed(count: float | None) -> str:
    if not _finite(count):
        return "-"
    k = int(count)  # type: ignore[arg-type]
    return "none" if k == 0 else f"{k} group{'s' if k > 1 else ''} under min size"


def _group_items(attribute: str, groups: Mapping[str, _T]) -> list[tuple[str, _T]]:
    """Groups in reading order: age bands youngest first, other values A-Z."""
    order = {slug(b): i for i, b in enumerate(AGE_BANDS)} if attribute == "age-band" else {}
    return sorted(groups.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def _ordered(by_attribute: Mapping[str, object]) -> list[str]:
    """Known attributes first, in :data:`ATTRIBUTES` order, then any other A-Z."""
    known = [a for a in ATTRIBUTES if a in by_attribute]
    return known + sorted(set(by_attribute) - set(known))


def _attribute_title(attribute: str) -> str:
    return attribute.replace("-", " ")


def _wrap(text: str, width: int = 16) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
