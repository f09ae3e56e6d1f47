"""A federation chooses the operating point from the sites' summaries and the model file carries it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedeye.compose.dg_benchmark import _method_config, dg_run_config, federate
from fedeye.fairness.operating_point import ModelOperatingPoint
from fedeye.fairness.reliability import RunReliability
from fedeye.models import load_model
from fedeye.server.store import RunStore


@pytest.fixture(scope="module")
def small_group_sites(tiny_sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sites with min_group_size 2 (their val splits hold 2-6 images of a class)."""
    root = tmp_path_factory.mktemp("opsites")
    for site in sorted(tiny_sites.iterdir()):
        shutil.copytree(site, root / site.name)
        (root / site.name / "fedeye-site.toml").write_text("[privacy]\nmin_group_size = 2\n")
    return root


def test_federation_stores_the_point_in_the_model_file_and_the_run_store(
    small_group_sites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDEYE_HOME", str(tmp_path / "home"))
    base = dg_run_config(small_group_sites, tmp_path, rounds=1, local_epochs=1, img_size=32)
    cfg = _method_config(base, "fedavg", small_group_sites, 0, 3)
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")

    run_id, _, path = federate(cfg, store, 3)

    _, _, metadata = load_model(path)
    point = ModelOperatingPoint.from_metadata(metadata)
    assert point is not None and point.source == "federation" and point.target == "youden"
    assert point.fitted_on[0] > 0 and point.fitted_on[1] > 0
    artifact = next(a for a in store.get_run(run_id).artifacts if a.kind == "operating-point")
    assert json.loads(Path(artifact.path).read_text())["log_odds"] == point.log_odds
    tests = [m for m in store.get_run(run_id).site_metrics if m.phase == "test"]
    assert tests and all(m.metrics["threshold"] == pytest.approx(point.threshold) for m in tests)
    assert all(m.metrics["bias"] == pytest.approx(point.bias) for m in tests)  # the stored calibration reached them
    assert all("balanced-accuracy-ci-low" in m.metrics for m in tests)
    logs = list((tmp_path / "home").rglob("*.jsonl"))
    assert len(logs) == 3 and all('"positives-above"' in f.read_text() for f in logs)  # each summary was audited
    assert all('"nll-per-bias-temperature"' in f.read_text() for f in logs)
    assert all('"bin-images-calibrated"' in f.read_text() for f in logs)  # the reliability bins were audited too
    for log in logs:  # one round's validation (with the moments), the counts, the test: no separate moments request
        replies = [json.loads(line) for line in log.read_text().splitlines() if '"message_type"' in line]
        evaluations = [r for r in replies if r["message_type"] == "evaluate"]
        assert len(evaluations) == 3, [r.get("metrics") for r in evaluations]
    stored = store.get_run(run_id).reliability
    assert stored is not None
    reliability = RunReliability.from_json(stored)
    assert set(reliability.sites) == {m.site for m in tests}
    pooled = reliability.pooled
    assert pooled.after is not None and pooled.total + pooled.before.withheld == sum(m.num_examples for m in tests)


def test_a_target_sensitivity_is_carried_too(
    small_group_sites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDEYE_HOME", str(tmp_path / "home"))
    base = dg_run_config(small_group_sites, tmp_path, rounds=1, local_epochs=1, img_size=32)
    raw = _method_config(base, "fedavg", small_group_sites, 0, 3).model_dump(mode="json")
    raw["evaluation"] = {"operating_point": 0.9, "calibrate": False}
    from fedeye.config import RunConfig

    _, _, path = federate(RunConfig.model_validate(raw), RunStore(f"sqlite:///{tmp_path / 'runs.db'}"), 3)

    point = ModelOperatingPoint.from_metadata(load_model(path)[2])
    assert point is not None and point.target == "0.9" and point.sensitivity >= 0.9 and point.temperature == 1.0
    assert point.bias == 0.0
