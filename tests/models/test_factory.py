"""build_model, set_trainable and loading timm / RETFound backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedeye.errors import ModelError
from fedeye.models import ModelConfig, build_model, load_backbone_weights, set_trainable


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def _count(model: torch.nn.Module, *, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def test_prompt_mode_trains_only_prompts_and_head() -> None:
    model = build_model(ModelConfig(mode="prompt", num_domains=3))
    assert _trainable(model) == {"shared_prompts", "domain_prompts", "head"}  # the router has no parameters
    assert _count(model, trainable=True) < 0.01 * _count(model, trainable=False)


def test_head_mode_trains_only_the_head_and_keeps_the_standardiser_fixed() -> None:
    model = build_model(ModelConfig(mode="head", num_shared_prompts=0, pool="avg"))
    assert _trainable(model) == {"head"}
    assert not any(p.requires_grad for p in model.feature_norm.parameters())


def test_full_mode_trains_everything() -> None:
    model = build_model(ModelConfig(mode="full", num_domains=3))
    assert _count(model, trainable=True) == _count(model, trainable=False)


def test_set_trainable_switches_back_and_forth() -> None:
    model = build_model(ModelConfig(num_domains=2))
    set_trainable(model, "prompt")
    assert "blocks" not in _trainable(model)
    set_trainable(model, "full")
    assert {"blocks", "patch_embed", "cls_token", "pos_embed", "norm"} <= _trainable(model)


def test_vit_base_prompt_mode_is_a_tiny_fraction() -> None:
    """Counted on the meta device: no memory, no compute."""
    with torch.device("meta"):
        model = build_model(ModelConfig(arch="vit-base", mode="prompt", num_domains=3))
    assert _count(model, trainable=False) > 85_000_000
    assert _count(model, trainable=True) == 4 * 768 + 3 * 4 * 768 + 768 * 2 + 2  # the router has buffers, no parameters


# --- timm checkpoints --------------------------------------------------------------------------


def test_timm_checkpoint_gives_identical_outputs(timm_small: torch.nn.Module, timm_checkpoint: Path) -> None:
    cfg = ModelConfig(arch="vit-small", num_classes=1000, num_shared_prompts=0, backbone_weights=timm_checkpoint)
    model = build_model(cfg).eval()
    images = torch.randn(2, 3, 224, 224)

    with torch.no_grad():
        torch.testing.assert_close(model(images), timm_small(images), atol=1e-4, rtol=1e-4)


def test_timm_checkpoint_with_prompts_loads_every_backbone_tensor(
    timm_small: torch.nn.Module, timm_checkpoint: Path
) -> None:
    model = build_model(ModelConfig(arch="vit-small", num_domains=2)).eval()
    tokens = torch.randn(2, 50, 384)

    report = load_backbone_weights(model, timm_checkpoint)

    assert set(report.missing) == {
        "shared_prompts.tokens",
        "domain_prompts.tokens",
        "router.keys",
        "router.spread",
        "router.known",
        "head.weight",
        "head.bias",
    }
    assert set(report.skipped) == {"head.weight", "head.bias"}
    assert "(1000, 384)" in report.skipped["head.weight"]
    torch.testing.assert_close(model.patch_embed.proj.weight, timm_small.patch_embed.proj.weight)
    torch.testing.assert_close(model.cls_token.tokens, timm_small.cls_token)
    torch.testing.assert_close(model.pos_embed.weight, timm_small.pos_embed)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks(tokens), timm_small.blocks(tokens))


def test_position_grid_is_resampled_for_another_img_size(timm_checkpoint: Path) -> None:
    model = build_model(ModelConfig(arch="vit-small", img_size=112))
    report = load_backbone_weights(model, timm_checkpoint)
    assert report.resampled == ["pos_embed.weight"]
    assert model.pos_embed.weight.shape == (1, 1 + 7 * 7, 384)
    assert "pos_embed.weight" in report.loaded


# --- RETFound checkpoints ----------------------------------------------------------------------


def test_retfound_checkpoint_maps_fc_norm_and_drops_decoder(
    retfound_model: torch.nn.Module, retfound_checkpoint: Path
) -> None:
    model = build_model(ModelConfig(arch="vit-small", num_classes=2))

    report = load_backbone_weights(model, retfound_checkpoint)

    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed"} <= set(report.skipped)
    assert "shape" in report.skipped["head.weight"]
    assert {"norm.weight", "norm.bias"} <= set(report.loaded)
    torch.testing.assert_close(model.norm.weight, retfound_model.fc_norm.weight)
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, retfound_model.blocks[3].mlp.fc1.weight)


def test_retfound_head_of_same_size_is_loaded(retfound_model: torch.nn.Module, retfound_checkpoint: Path) -> None:
    model = build_model(ModelConfig(arch="vit-small", num_classes=5, backbone_weights=retfound_checkpoint))
    torch.testing.assert_close(model.head.weight, retfound_model.head.weight)


# --- errors ------------------------------------------------------------------------------------


def test_wrong_architecture_names_the_checkpoint_arch(timm_checkpoint: Path) -> None:
    model = build_model(ModelConfig(arch="vit-tiny-cpu"))
    with pytest.raises(ModelError, match=r"looks like 'vit-small'.*model is 'vit-tiny-cpu'.*set model.arch"):
        load_backbone_weights(model, timm_checkpoint)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist.*backbone_weights"):
        build_model(ModelConfig(backbone_weights=tmp_path / "nope.pth"))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="notes.pth is not a readable PyTorch checkpoint"):
        load_backbone_weights(build_model(ModelConfig()), path)


def test_checkpoint_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(ModelError, match="no state dict"):
        load_backbone_weights(build_model(ModelConfig()), path)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mae_full.pth"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "args": Path("x")}, path)
    with pytest.raises(ModelError, match="Python objects besides tensors.*clean.pth"):
        load_backbone_weights(build_model(ModelConfig()), path)


def test_a_truncated_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(build_model(ModelConfig()).state_dict(), path)
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ModelError, match="cut.pth is corrupt or truncated"):
        load_backbone_weights(build_model(ModelConfig()), path)


def test_a_folder_as_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a folder"):
        build_model(ModelConfig(backbone_weights=tmp_path))
