"""Shared factories: a run store filled with fake rows, and site fairness metrics on random data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedeye.fairness.metrics import site_fairness_metrics
from fedeye.server.store import PrivacyRecord, RunStore

SITE_NAMES = ("Moorfields <Eye> & Co", "Aravind Eye Hospital", "Site Three")


def random_site(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Labels, two-class probabilities and attributes of one fake site."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    score = np.clip(0.5 + (labels - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0, 1)
    attrs = [
        {
            "sex": str(rng.choice(["F", "M"])),
            "race": str(rng.choice(["Asian", "Black", "White"], p=[0.45, 0.5, 0.05])),
            "ethnicity": str(rng.choice(["Hispanic", "Non-Hispanic"])),
            "age": str(int(rng.integers(30, 95))),
        }
        for _ in range(n)
    ]
    return labels, np.column_stack([1 - score, score]), attrs


def fill_store(
    store: RunStore, *, rounds: int = 3, with_groups: bool = True, with_test: bool = True, with_privacy: bool = True
) -> str:
    """A finished run with evaluate (and test) rows for every site."""
    run_id = store.create_run(
        name="fair-demo", strategy="fairfedavg", config={}, num_rounds=rounds, num_sites=len(SITE_NAMES)
    )
    phases = [("evaluate", r) for r in range(1, rounds + 1)] + ([("test", rounds)] if with_test else [])
    for k, site in enumerate(SITE_NAMES):
        for phase, rnd in phases:
            labels, probs, attrs = random_site(100 * k + rnd)
            metrics = {
                "auc": 0.6 + 0.05 * rnd + 0.03 * k,
                "accuracy": 0.7,
                "sensitivity": 0.6,
                "specificity": 0.8,
                "loss": 0.5,
            }
            if with_groups:
                metrics.update(site_fairness_metrics(labels, probs, attrs, min_group_size=15))
            store.record_site_metrics(
                run_id,
                server_round=rnd,
                phase=phase,
                site=site,
                node_id=k + 1,  # type: ignore[arg-type]
                num_examples=len(labels),
                metrics=metrics,
            )
            if with_privacy and phase == "evaluate":
                store.record_privacy(
                    run_id, PrivacyRecord(rnd, "site", site, 0.9 * rnd, 1e-5, 8.0, 1.1, 0.1, 30 * rnd, "rdp", "ok")
                )
    store.finish_run(run_id, status="finished")
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as opened:
        yield opened  # type: ignore[misc]
