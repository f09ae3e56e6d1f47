"""The leave-one-site-out benchmark harness and `fedeye benchmark dg` / `fedeye evaluate` on an unseen site."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.compose.dg_benchmark import BenchmarkSettings, dg_run_config, run_benchmark

runner = CliRunner()


@pytest.fixture(scope="module")
def benchmark_out(tiny_sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dg")
    base = dg_run_config(tiny_sites, out, rounds=2, local_epochs=1, img_size=32)
    settings = BenchmarkSettings(
        tiny_sites,
        out,
        base,
        methods=("fedavg", "prompt-experts", "local", "centralized", "oracle"),
        seeds=(0,),
        held_out=("site-2",),
    )
    run_benchmark(settings, log=lambda _: None)
    return out


@pytest.mark.slow
def test_every_method_is_scored_on_the_unseen_and_the_seen_sites(benchmark_out: Path) -> None:
    with (benchmark_out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    variants = [
        f"{m} + {v}"
        for m in ("fedavg", "prompt-experts")
        for v in ("calibrate(10)", "calibrate(20)", "calibrate(40)", "adapt")
    ]
    assert [r["method"] for r in rows] == [
        "fedavg",
        *variants[:4],
        "prompt-experts",
        *variants[4:],
        "local",
        "centralized",
        "oracle",
    ]
    assert all(r["held_out"] == "site-2" for r in rows)
    plain = [r for r in rows if r["method"] in ("fedavg", "prompt-experts", "local", "centralized")]
    for r in plain:
        assert 0.0 <= float(r["unseen_auc"]) <= 1.0 and 0.0 <= float(r["seen_auc"]) <= 1.0
    for r in rows:  # every federated model and the oracle are scored at the operating point they carry
        if r["method"] not in ("local", "centralized") and "calibrate" not in r["method"]:
            assert 0.0 <= float(r["sensitivity"]) <= 1.0 and 0.0 <= float(r["specificity"]) <= 1.0
            assert 0.0 < float(r["threshold"]) < 1.0 and 0.0 <= float(r["ece_calibrated"]) <= 1.0
    fedavg, experts = plain[0], plain[1]
    assert int(fedavg["bytes_down"]) > 1_000_000 and fedavg["bytes_down"] == fedavg["bytes_up"]
    mix = json.loads(experts["expert_mix"])
    assert len(mix) == 2 and sum(mix.values()) == pytest.approx(1.0, abs=1e-4)  # keyed by the two seen sites' names
    assert all(not k.startswith("expert ") for k in mix)
    assert (benchmark_out / "unseen-auc.png").stat().st_size > 5_000
    assert (benchmark_out / "operating-points.png").stat().st_size > 5_000


@pytest.mark.slow
def test_report_states_targets_and_frozen_backbone_traffic(benchmark_out: Path) -> None:
    report = (benchmark_out / "results.md").read_text()
    assert "| prompt-experts | 1 |" in report
    assert "prompt-experts − FedAvg" in report and "centralized − prompt-experts" in report
    assert "## At the operating point the model carries" in report and "| fedavg + adapt | 1 |" in report
    assert "no degenerate operating point, fedavg:" in report
    line = next(x for x in report.splitlines() if x.startswith("- frozen-backbone prompt-experts"))
    ratio = float(line.split("KiB: ")[1].split("%")[0])
    assert 0.0 < ratio < 1.0  # prompts, router and head only: under 1% of the full model's traffic


@pytest.mark.slow
def test_evaluate_prints_the_expert_mix_on_an_unseen_site(benchmark_out: Path, tiny_sites: Path) -> None:
    model = next(
        p for p in (benchmark_out / "runs").glob("*/global-model.pt") if '"num_domains": 2' in json.dumps(_config(p))
    )
    result = runner.invoke(
        app, ["evaluate", "--model", str(model), "--data", str(tiny_sites / "site-2"), "--split", "all"]
    )
    assert result.exit_code == 0, result.output
    assert "Which experts the router mixes" in result.output
    as_json = runner.invoke(
        app, ["evaluate", "--model", str(model), "--data", str(tiny_sites / "site-2"), "--split", "all", "--json"]
    )
    experts = json.loads(as_json.output)["experts"]
    assert len(experts) == 2 and sum(experts.values()) == pytest.approx(1.0, abs=1e-4)
    assert not any(name.startswith("expert ") for name in experts)  # the model file names each expert's site


def _config(path: Path) -> dict[str, object]:
    from fedeye.models import load_model

    _, cfg, _ = load_model(path)
    return cfg.model_dump(mode="json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "fedavg,magic"], "unknown ['magic']"),
        (["--held-out", "site-9"], "no site folder named ['site-9']"),
        (["--device", "tpu"], "--device"),
        (["--preprocess", "sharpen"], "--preprocess: 'sharpen' is not none, fov-crop or fov-crop+clahe"),
    ],
)
def test_bad_benchmark_options_are_named_and_exit_1(
    tiny_sites: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["benchmark", "dg", "--sites", str(tiny_sites), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1
    assert message in result.output


def test_merge_joins_runs_split_by_held_out_site(tmp_path: Path) -> None:
    from fedeye.compose.dg_benchmark import FoldResult, write_results

    for site in ("site-1", "site-2"):
        row = FoldResult(
            method="fedavg",
            held_out=site,
            seed=0,
            unseen_auc=0.8,
            seen_auc=0.9,
            balanced_accuracy=0.75,
            sensitivity=0.7,
            specificity=0.8,
            auc=0.8,
            ece=0.1,
            ece_calibrated=0.05,
            threshold=0.4,
        )
        (tmp_path / site).mkdir()
        write_results([row], tmp_path / site)

    result = runner.invoke(
        app,
        ["benchmark", "dg-merge", str(tmp_path / "site-1"), str(tmp_path / "site-2"), "--out", str(tmp_path / "all")],
    )

    assert result.exit_code == 0, result.output
    report = (tmp_path / "all" / "results.md").read_text()
    assert "| fedavg | 2 |" in report and "| site-1 | site-2 |" in report


def test_preprocess_reaches_every_method_through_the_model_config(tiny_sites: Path, tmp_path: Path) -> None:
    cfg = dg_run_config(tiny_sites, tmp_path, preprocess="fov-crop+clahe")
    assert cfg.model.preprocess == "fov-crop+clahe" and dg_run_config(tiny_sites, tmp_path).model.preprocess is None
