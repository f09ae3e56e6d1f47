"""benchmarks/feature_probe.py: a linear probe of frozen features, with the checkpoint's statistics when it has them."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from fedeye.models import ModelConfig, build_model
from fedeye.models.pretrain import PretrainResult, PretrainSettings, feature_stats, save_pretrained
from fedeye.sites.synth import synthesize_sites
from tests.benchmarks.conftest import load_script


@pytest.fixture(scope="module")
def feature_probe() -> ModuleType:
    return load_script("feature_probe")


def test_probe_reports_every_pooling_and_scaling(
    feature_probe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthesize_sites(tmp_path / "sites", sites=2, images_per_site=60, size=32, seed=3)
    encoder = build_model(ModelConfig(img_size=32))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    result = PretrainResult(encoder=encoder, feature_stats=feature_stats(encoder, images))
    checkpoint = save_pretrained(tmp_path / "b.pt", result, PretrainSettings(img_size=32), data=[])

    assert (
        feature_probe.main(
            [
                "--sites-dir",
                str(tmp_path / "sites"),
                "--backbone",
                str(checkpoint),
                "--image-size",
                "32",
                "--cs",
                "0.1,1",
            ]
        )
        == 0
    )

    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [(p, s) for p in ("cls", "avg") for s in ("raw", "train", "feature")]
    aucs = np.array([[float(v) for v in r[2:]] for r in rows])
    assert aucs.shape == (6, 2) and ((aucs >= 0) & (aucs <= 1)).all()
