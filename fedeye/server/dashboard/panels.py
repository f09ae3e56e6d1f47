"""The dashboard's JSON: one pure function per panel, over store records.

Every function takes records from :mod:`fedeye.server.store` and returns plain
JSON-ready values; missing data gives empty lists or dicts (the page shows an
empty state), never an exception.

>>> from fedeye.server.store import RunStore
>>> store = RunStore("sqlite://")
>>> run_id = store.create_run(name="demo", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
>>> run_panels(store.get_run(run_id))["experts"]
{'round': None, 'experts': [], 'sites': {}, 'owners': {}}
>>> run_panels(store.get_run(run_id))["calibration"]
{'diagrams': [], 'bias': None, 'temperature': None}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from fedeye.fairness.metrics import (
    cross_site_summary,
    group_label,
    parse_fair_metrics,
    parse_group_metrics,
)
from fedeye.fairness.reliability import ReliabilityBins, ReliabilityDiagram
from fedeye.server.report_data import read_reliability
from fedeye.server.store import RunDetail, RunSummary, SiteMetricRecord

CURVE_METRICS = ("auc", "loss")
CROSS_SITE_KEYS = ("mean-auc", "worst-auc", "gap", "es-auc")
FAIR_KEYS = ("es-auc", "worst-auc", "gap", "dpd", "eod", "suppressed")
PARTICIPATION = ("trained", "evaluated", "failed", "dropped", "left-budget", "rejected", "awaiting-approval", "denied")
EXPERT_PREFIX = "expert."
EXPERT_SUFFIX = ".weight"

Json = dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def summary_json(run: RunSummary) -> Json:
    """One run as the runs list shows it."""
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status,
        "strategy": run.strategy,
        "num_sites": run.num_sites,
        "num_rounds": run.num_rounds,
        "rounds_done": run.rounds_done,
        "started_at": _iso(run.started_at),
        "ended_at": _iso(run.ended_at),
        "error": run.error,
        "owner": run.owner,
        "heartbeat_at": _iso(run.heartbeat_at),
    }


def run_panels(detail: RunDetail) -> Json:
    """Everything the run page draws, panel by panel."""
    return {
        "run": summary_json(detail.run),
        "curves": curves(detail),
        "participation": participation(detail.site_metrics),
        "fairness": fairness(detail),
        "privacy": privacy(detail),
        "experts": experts(detail.site_metrics),
        "calibration": calibration(detail),
    }


# ------------------------------------------------------------------------- curves


def curves(detail: RunDetail) -> Json:
    """Per-site evaluate-phase AUC and loss by round, with the federated value."""
    evaluated = [m for m in detail.site_metrics if m.phase == "evaluate" and m.status == "ok"]
    rounds = sorted({m.server_round for m in evaluated} | {r.server_round for r in detail.rounds if r.eval_metrics})
    out: Json = {"rounds": rounds, "sites": sorted({m.site for m in evaluated})}
    for metric in CURVE_METRICS:
        out[metric] = {
            "sites": _site_series(evaluated, metric),
            "federated": [
                [r.server_round, r.eval_metrics.get(metric)]
                for r in detail.rounds
                if r.eval_metrics and r.eval_metrics.get(metric) is not None
            ],
        }
    return out


def _site_series(records: Iterable[SiteMetricRecord], metric: str) -> dict[str, list[list[float]]]:
    series: dict[str, list[list[float]]] = {}
    for m in sorted(records, key=lambda rec: (rec.site, rec.server_round)):
        value = m.metrics.get(metric)
        if value is not None:
            series.setdefault(m.site, []).append([m.server_round, value])
    return series


# ------------------------------------------------------------------ participation


def participation(records: Iterable[SiteMetricRecord]) -> Json:
    """Each site's state per round (train/evaluate phases) and counts per round."""
    cells: dict[str, dict[int, Json]] = {}
    for m in records:
        if m.phase == "test":
            continue
        cell = cells.setdefault(m.site, {}).setdefault(m.server_round, {"states": [], "reasons": []})
        state = _state(m)
        if state not in cell["states"]:
            cell["states"].append(state)
        if m.reason:
            cell["reasons"].append(f"{m.phase}: {m.reason}")
        if m.status == "failed" and m.reason and "failure" not in cell:
            cell["failure"] = m.reason  # e.g. "data-error (incident 0a1b2c3d4e5f)": shown as "failed: ..."
    rounds = sorted({r for by_round in cells.values() for r in by_round})
    counts = [
        {"round": r, **{s: sum(s in c.get(r, {}).get("states", []) for c in cells.values()) for s in PARTICIPATION}}
        for r in rounds
    ]
    grid = {site: {str(r): cell for r, cell in sorted(by_round.items())} for site, by_round in sorted(cells.items())}
    return {"rounds": rounds, "sites": sorted(cells), "grid": grid, "counts": counts}


def _state(m: SiteMetricRecord) -> str:
    if m.status == "ok":
        return "trained" if m.phase == "train" else "evaluated"
    return m.status


# ----------------------------------------------------------------------- fairness


def fairness(detail: RunDetail) -> Json:
    """Per-site and per-group AUC and disparities from the latest test (else evaluate) round."""
    phase, server_round, records = _latest_results(detail.site_metrics)
    sites = [_site_fairness(m) for m in sorted(records, key=lambda rec: rec.site)]
    return {"phase": phase, "round": server_round, "cross_site": _cross_site(records), "sites": sites}


def _cross_site(records: list[SiteMetricRecord]) -> dict[str, float | None]:
    """Sites as the groups, over the same results the table shows (each hospital counts once)."""
    aucs = {m.site: auc for m in records if (auc := m.metrics.get("auc")) is not None}
    if not aucs:
        return {}
    summary = cross_site_summary(aucs)
    return {f"site.{k}": summary[k] if math.isfinite(summary[k]) else None for k in CROSS_SITE_KEYS}


def _latest_results(records: Iterable[SiteMetricRecord]) -> tuple[str | None, int | None, list[SiteMetricRecord]]:
    ok = [m for m in records if m.status == "ok"]
    for phase in ("test", "evaluate"):
        rows = [m for m in ok if m.phase == phase]
        if rows:
            last = max(m.server_round for m in rows)
            return phase, last, [m for m in rows if m.server_round == last]
    return None, None, []


def _site_fairness(m: SiteMetricRecord) -> Json:
    groups = parse_group_metrics(m.metrics)
    fair = parse_fair_metrics(m.metrics)
    attributes = [
        {
            "attribute": attribute,
            "groups": [
                {"group": group_label(attribute, g), "n": v.get("n"), "auc": v.get("auc")}
                for g, v in sorted(groups.get(attribute, {}).items())
            ],
            **{key: fair.get(attribute, {}).get(key) for key in FAIR_KEYS},
        }
        for attribute in sorted(set(groups) | set(fair))
    ]
    return {
        "site": m.site,
        "n": m.num_examples,
        "auc": m.metrics.get("auc"),
        "ece": m.metrics.get("ece"),
        "attributes": attributes,
    }


# ------------------------------------------------------------------------ privacy


def privacy(detail: RunDetail) -> Json:
    """Epsilon spent so far after each round, per site (and federation), with budgets."""
    series: dict[str, Json] = {}
    for entry in sorted(detail.privacy, key=lambda e: (e.scope, e.site, e.server_round)):
        name = entry.site if entry.scope == "site" else "federation"
        item = series.setdefault(
            name, {"scope": entry.scope, "points": [], "budget": None, "status": "ok", "delta": entry.delta}
        )
        item["points"].append([entry.server_round, entry.epsilon])
        item["budget"] = entry.budget if entry.budget is not None else item["budget"]
        item["status"] = entry.status
    rounds = sorted({e.server_round for e in detail.privacy})
    return {"rounds": rounds, "series": series}


# ------------------------------------------------------------------------ experts


def experts(records: Iterable[SiteMetricRecord]) -> Json:
    """Mixing weights ``expert.<k>.weight`` per site from the latest round that has them."""
    weighted = [m for m in records if m.status == "ok" and _expert_weights(m.metrics)]
    if not weighted:
        return {"round": None, "experts": [], "sites": {}, "owners": {}}
    last = max(m.server_round for m in weighted)
    latest = {
        m.site: _expert_weights(m.metrics)
        for m in sorted(weighted, key=lambda rec: rec.phase)
        if m.server_round == last
    }
    names = sorted({k for weights in latest.values() for k in weights}, key=lambda k: (len(k), k))
    return {"round": last, "experts": names, "sites": dict(sorted(latest.items())), "owners": expert_owners(records)}


def expert_owners(records: Iterable[SiteMetricRecord]) -> dict[str, str]:
    """Expert index -> the site that trains it (sites report ``expert-index`` when they train)."""
    owners = {}
    for m in records:
        index = m.metrics.get("expert-index")
        if m.phase == "train" and m.status == "ok" and index is not None:
            owners[str(int(index))] = m.site
    return dict(sorted(owners.items(), key=lambda kv: int(kv[0])))


def _expert_weights(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    return {
        key[len(EXPERT_PREFIX) : -len(EXPERT_SUFFIX)]: value
        for key, value in metrics.items()
        if key.startswith(EXPERT_PREFIX) and key.endswith(EXPERT_SUFFIX)
    }


# -------------------------------------------------------------------- calibration


def calibration(detail: RunDetail) -> Json:
    """The final test's reliability diagrams (all sites pooled, then each site) and the calibration applied.

    ``diagrams`` is empty for a run without them: a multiclass task, a final
    test not run yet, every bin smaller than the sites' minimum group size
    (withheld), or a run recorded before sites sent them.
    """
    reliability = read_reliability(detail.reliability)
    if reliability is None:
        return {"diagrams": [], "bias": None, "temperature": None}
    pooled = _diagram_json(f"All sites ({len(reliability.sites)})", "pooled", reliability.pooled)
    sites = [_diagram_json(site, "site", diagram) for site, diagram in sorted(reliability.sites.items())]
    return {"diagrams": [pooled, *sites], **_calibration_applied(detail.site_metrics)}


def _diagram_json(name: str, scope: str, diagram: ReliabilityDiagram) -> Json:
    return {
        "name": name,
        "scope": scope,
        "images": diagram.total,
        "withheld": diagram.before.withheld,
        "before": reliability_bins_json(diagram.before),
        "after": None if diagram.after is None else reliability_bins_json(diagram.after),
    }


def reliability_bins_json(bins: ReliabilityBins) -> Json:
    """The ECE and, per bin, its range, images, mean predicted probability and observed positive rate.

    An empty (or withheld) bin has ``None`` for both rates.

    >>> from fedeye.fairness.reliability import bin_sums
    >>> import numpy as np
    >>> out = reliability_bins_json(bin_sums(np.array([0.05, 0.15, 0.15]), np.array([0.0, 0.0, 1.0])))
    >>> out["bins"][1]
    {'low': 0.1, 'high': 0.2, 'images': 2, 'mean': 0.15, 'observed': 0.5}
    >>> out["bins"][2]["mean"] is None
    True
    """
    count = len(bins.images)
    mean, observed = bins.mean_probability(), bins.observed_rate()
    rows = [
        {
            "low": b / count,
            "high": (b + 1) / count,
            "images": bins.images[b],
            "mean": _finite(mean[b]),
            "observed": _finite(observed[b]),
        }
        for b in range(count)
    ]
    return {"ece": _finite(bins.ece()), "bins": rows}


def _calibration_applied(records: Iterable[SiteMetricRecord]) -> dict[str, float | None]:
    """Bias and temperature the sites reported with the final test (a run before the bias: bias 0)."""
    tested = (m.metrics for m in records if m.phase == "test" and m.status == "ok")
    metrics = next((m for m in tested if _finite(m.get("temperature")) is not None), None)
    if metrics is None:
        return {"bias": None, "temperature": None}
    return {"bias": _finite(metrics.get("bias", 0.0)), "temperature": _finite(metrics.get("temperature"))}


def _finite(value: float | None) -> float | None:
    """``value`` as a float, ``None`` when missing or not finite (JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None
