"""The `fedeye` commands, driven for real (typer's CliRunner, or a subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.server.store import RunStore
from tests.conftest import tiny_run_toml

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def test_site_check_passes_a_good_site(tiny_sites: Path) -> None:
    result = runner.invoke(app, ["site", "check", str(tiny_sites / "site-1")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "passed every check" in result.output and "split test" in result.output


def test_site_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    site = tmp_path / "bad"
    (site / "images").mkdir(parents=True)
    (site / "manifest.csv").write_text("image,label,patient_id\nimages/missing.png,0,p1\nimages/b.png,7,p2\n")
    (site / "images" / "b.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["site", "check", str(site)], env=WIDE)
    assert result.exit_code == 1
    out = result.output
    # piped output: one tab-separated line per problem (severity, file, row, field, problem, what to do)
    assert re.search(r"^error\tmanifest\.csv\t2\timage\t.*missing\.png' not found", out, re.M)
    assert re.search(r"^error\tmanifest\.csv\t3\tlabel\tlabel 7 is outside", out, re.M)
    assert re.search(r"^error\tmanifest\.csv\t3\timage\tcannot read image", out, re.M)


def test_sites_synth_refuses_to_overwrite(tmp_path: Path) -> None:
    args = ["sites", "synth", str(tmp_path / "s"), "--sites", "2", "--images-per-site", "12", "--size", "32"]
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["site-1", "site-2"]
    again = runner.invoke(app, args, env=WIDE)
    assert again.exit_code == 1 and "overwrite" in again.output


def test_simulate_rejects_bad_config_naming_the_field(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text("[training]\nrounds = -1\n")
    result = runner.invoke(app, ["simulate", "--config", str(run_file)], env=WIDE)
    assert result.exit_code == 1
    assert "training.rounds" in result.output and str(run_file) in result.output


def test_simulate_rejects_missing_data_root_before_starting_flower(tmp_path: Path) -> None:
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=tmp_path / "nowhere", out=tmp_path / "out")
    result = runner.invoke(app, ["simulate", "--config", str(run_file)], env=WIDE)
    assert result.exit_code == 1 and "data.root" in result.output
    assert not (tmp_path / "out" / "fedeye.db").exists()


def test_evaluate_rejects_missing_model_file(tmp_path: Path, tiny_sites: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--model", str(tmp_path / "nope.pt"), "--data", str(tiny_sites / "site-1")], env=WIDE
    )
    assert result.exit_code == 1 and "nope.pt" in result.output


@pytest.mark.slow
def test_simulate_then_evaluate_and_list(tmp_path: Path, tiny_sites: Path) -> None:
    out = tmp_path / "out"
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=tiny_sites, out=out, rounds=2)

    result = runner.invoke(app, ["simulate", "--config", str(run_file)], env=WIDE)

    assert result.exit_code == 0, result.output
    assert "federated mean" in result.output
    runs = RunStore(f"sqlite:///{out / 'fedeye.db'}").list_runs()
    assert len(runs) == 1 and runs[0].status == "finished" and runs[0].rounds_done == 2
    detail = RunStore(f"sqlite:///{out / 'fedeye.db'}").get_run(runs[0].run_id)
    for phase, count in (("train", 6), ("evaluate", 6), ("test", 3)):
        assert sum(m.phase == phase and m.status == "ok" for m in detail.site_metrics) == count
    assert [a.kind for a in detail.artifacts].count("checkpoint") == 2
    model = detail.final_model()
    assert model is not None and Path(model.path).is_file()

    evaluated = runner.invoke(app, ["evaluate", "--model", model.path, "--data", str(tiny_sites / "site-1"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    site_test = next(m for m in detail.site_metrics if m.phase == "test" and m.site == report["site"])
    assert report["num_examples"] == site_test.num_examples
    assert report["metrics"]["auc"] == pytest.approx(site_test.metrics["auc"], abs=1e-6)

    listed = runner.invoke(app, ["runs", "list", "--db", str(out / "fedeye.db")], env=WIDE)
    assert runs[0].run_id in listed.output


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path: Path) -> None:
    """The README's main job, as a newcomer runs it (2 sites, 1 round to stay quick)."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedeye.cli", "demo", "--out", str(tmp_path / "demo"), "--sites", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "federated mean" in proc.stdout and "global model:" in proc.stdout
    assert "fedeye runs show" in proc.stdout
    assert (tmp_path / "demo" / "fedeye.db").is_file()
    assert list((tmp_path / "demo" / "runs").glob("*/global-model.pt"))


def _timm_tiny_checkpoint(path: Path) -> dict[str, object]:
    """A randomly initialised timm ViT with vit-tiny-cpu's dimensions, saved like timm does."""
    import timm
    import torch

    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=4, num_classes=2
    )
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_backbone_weights_start_the_global_model(tmp_path: Path, tiny_sites: Path) -> None:
    import torch

    from fedeye.cli.main import _with_backbone
    from fedeye.config import load_run_config
    from fedeye.server.federation import _initial_model

    saved = _timm_tiny_checkpoint(tmp_path / "timm.pth")
    cfg = load_run_config(tiny_run_toml(tmp_path / "run.toml", sites=tiny_sites, out=tmp_path / "out"))
    cfg = _with_backbone(cfg, tmp_path / "timm.pth")
    model = _initial_model(cfg)
    assert torch.equal(model.state_dict()["patch_embed.proj.weight"], saved["patch_embed.proj.weight"])
    assert torch.equal(model.state_dict()["blocks.3.mlp.fc2.weight"], saved["blocks.3.mlp.fc2.weight"])


def test_unusable_backbone_file_fails_before_flower_starts(tmp_path: Path, tiny_sites: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=tiny_sites, out=tmp_path / "out")
    result = runner.invoke(app, ["simulate", "--config", str(run_file), "--backbone-weights", str(junk)], env=WIDE)
    assert result.exit_code == 1 and "junk.pth" in result.output
    assert not (tmp_path / "out" / "fedeye.db").exists()


# ------------------------------------------------------------- hostile input (issue 14)


def test_site_check_reports_hostile_images_by_row_without_traceback(tmp_path: Path) -> None:
    from PIL import Image

    site = tmp_path / "hostile"
    (site / "images").mkdir(parents=True)
    Image.new("L", (30000, 30000)).save(site / "images" / "bomb.png")
    Image.new("RGB", (8, 8)).save(site / "images" / "ok.png")
    rows = ["images/bomb.png,0,p1", "../outside.png,0,p2", "images/ok.png,0,p3", "images/ok.png,1,p4"]
    (site / "manifest.csv").write_text("image,label,patient_id\n" + "\n".join(rows) + "\n")

    result = runner.invoke(app, ["site", "check", str(site)], env=WIDE)

    out = result.output
    assert result.exit_code == 1 and "Traceback" not in out and isinstance(result.exception, SystemExit)
    assert re.search(r"manifest\.csv[\s│]*2[\s│]*image[\s│].*limit", out)  # table or piped text
    assert re.search(r"manifest\.csv[\s│]*3[\s│]*image[\s│].*not inside the site", out)
    assert re.search(r"manifest\.csv[\s│]*5[\s│]*image[\s│].*already listed", out)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[training]\nrounds = true\n", "training.rounds"),
        ("[privacy]\nenabled = true\nepsilon = inf\n", "privacy.epsilon"),
        ('[strategy]\nname = "fedavgx"\n', "strategy.name"),
        ("[strategy]\nround_timeout = inf\n", "strategy.round_timeout"),
    ],
)
def test_simulate_refuses_hostile_run_values_and_writes_nothing(
    tmp_path: Path, tiny_sites: Path, body: str, field: str
) -> None:
    import tomllib

    import tomli_w

    run_file = tiny_run_toml(tmp_path / "run.toml", sites=tiny_sites, out=tmp_path / "out")
    run = tomllib.loads(run_file.read_text())
    for section, values in tomllib.loads(body).items():
        run.setdefault(section, {}).update(values)
    run_file.write_text(tomli_w.dumps(run))

    result = runner.invoke(app, ["simulate", "--config", str(run_file)], env=WIDE)

    assert result.exit_code == 1 and field in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_simulate_refuses_a_decompression_bomb_before_flower_starts(tmp_path: Path, tiny_sites: Path) -> None:
    import shutil

    from PIL import Image

    sites = tmp_path / "sites"
    shutil.copytree(tiny_sites, sites)
    first = min((sites / "site-1" / "images").iterdir())
    Image.new("L", (30000, 30000)).save(first, format="PNG")
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=sites, out=tmp_path / "out")

    result = runner.invoke(app, ["simulate", "--config", str(run_file)], env=WIDE)

    assert result.exit_code == 1 and first.name in result.output and "limit" in result.output
    assert not (tmp_path / "out" / "fedeye.db").exists()


@pytest.mark.parametrize("option", [["--size", "100000"], ["--seed", "-1"], ["--sites", "1000"]])
def test_sites_synth_bounds_its_arguments(tmp_path: Path, option: list[str]) -> None:
    result = runner.invoke(app, ["sites", "synth", str(tmp_path / "out"), *option], env=WIDE)

    assert result.exit_code == 2 and "Invalid value" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
