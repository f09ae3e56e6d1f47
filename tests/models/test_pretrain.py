"""MAE pretraining: masking, loss, a checkpoint build_model loads, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.models import ModelConfig, build_model
from fedeye.models.pretrain import (
    _MEAN,
    _STD,
    MaskedAutoencoder,
    feature_stats,
    patchify,
    random_split,
    timm_state_dict,
)
from fedeye.sites.synth import synthesize_sites


def test_masking_splits_every_image_into_kept_and_hidden_patches() -> None:
    keep, hidden = random_split(3, 16, 0.75, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert keep.shape == (3, 4) and hidden.shape == (3, 12)
    assert all(sorted(torch.cat([k, h]).tolist()) == list(range(16)) for k, h in zip(keep, hidden, strict=True))


def test_patchify_follows_the_patch_embedding_order() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    assert torch.equal(patches[0, 1].reshape(4, 4, 3)[..., 0], images[0, 0, :4, 4:])  # second patch: top right


def test_timm_keys_load_back_into_a_fresh_model() -> None:
    encoder = build_model(ModelConfig(img_size=32))
    state = timm_state_dict(encoder)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"} <= set(state)
    assert not [k for k in state if k.startswith(("head", "shared_prompts", "domain_prompts"))]
    mae = MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert mae(torch.randn(2, 3, 32, 32)).item() > 0


@pytest.mark.slow
def test_pretrain_command_writes_a_backbone_build_model_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "public"
    folder.mkdir()
    yy, xx = np.mgrid[:48, :48]
    for i in range(24):  # discs at random places: structure MAE can learn to fill in
        cy, cx = rng.integers(12, 36, size=2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(30, 90)).astype(np.uint8) * 200
        Image.fromarray(np.stack([disc, disc // 2, 40 + 0 * disc], axis=-1).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "backbone.pt"

    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--data",
            str(folder),
            "--out",
            str(out),
            "--img-size",
            "32",
            "--epochs",
            "6",
            "--batch-size",
            "8",
            "--lr",
            "2e-3",
            "--device",
            "cpu",
        ],
    )

    assert result.exit_code == 0, result.output
    record = torch.load(out, weights_only=True)["fedeye_pretrain"]
    assert record["data"][0]["images"] == 24 and len(record["data"][0]["sha256"]) == 64
    assert record["settings"]["mask_ratio"] == 0.75
    losses = record["epoch_losses"]
    assert losses[-1] < losses[0]  # it learned to reconstruct hidden patches
    model = build_model(ModelConfig(img_size=32, backbone_weights=out))
    saved = torch.load(out, weights_only=True)["model"]
    assert torch.equal(model.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    stats = torch.load(out, weights_only=True)["fedeye_feature_stats"]
    for pool in ("cls", "avg"):  # each pooling gets the statistics of its own features
        pooled = build_model(ModelConfig(img_size=32, pool=pool, backbone_weights=out))
        assert torch.equal(pooled.feature_norm.mean, stats[pool]["mean"])
        assert torch.equal(pooled.feature_norm.std, stats[pool]["std"])
    assert not torch.equal(stats["cls"]["mean"], stats["avg"]["mean"])


def test_feature_stats_standardise_the_pretraining_features() -> None:
    torch.manual_seed(0)
    encoder = build_model(ModelConfig(img_size=32, num_shared_prompts=0, mode="full", pool="avg"))
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    stats = feature_stats(encoder, images, batch_size=16)
    encoder.feature_norm.mean.copy_(stats["avg"]["mean"])
    encoder.feature_norm.std.copy_(stats["avg"]["std"])
    x = ((images.float() / 255.0 - _MEAN) / _STD).float()
    with torch.no_grad():
        standardised = encoder.forward_head(encoder.forward_features(x), pre_logits=True)
    # the head now sees each feature at mean 0 and SD 1 on these images
    assert torch.allclose(standardised.mean(dim=0), torch.zeros(encoder.embed_dim), atol=1e-4)
    assert torch.allclose(standardised.std(dim=0), torch.ones(encoder.embed_dim), atol=1e-3)


def test_pretrain_command_explains_an_empty_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "b.pt")])
    assert result.exit_code == 1 and "holds no image" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("option", "value"), [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--mask-ratio", "nan")]
)
def test_pretrain_refuses_a_number_it_cannot_train_with(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "b.pt"
    result = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path), "--out", str(out), option, value])
    assert result.exit_code == 2 and "is not a finite number" in " ".join(result.output.split())
    assert option in result.output and not out.exists()


@pytest.mark.parametrize(("target", "message"), [("manifest.csv", "one of the inputs"), (".", "is a folder")])
def test_pretrain_refuses_an_out_that_would_overwrite_its_data(tmp_path: Path, target: str, message: str) -> None:
    site = synthesize_sites(tmp_path, sites=1, images_per_site=10, size=32, seed=0)[0]
    before = (site / "manifest.csv").read_bytes()
    result = CliRunner().invoke(app, ["pretrain", "--data", str(site), "--out", str(site / target), "--epochs", "1"])
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert (site / "manifest.csv").read_bytes() == before
