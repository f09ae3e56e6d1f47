"""ModelConfig: defaults, arch presets and validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedeye.models import ARCH_PRESETS, ModelConfig


def test_defaults_fill_img_size_from_arch() -> None:
    assert ModelConfig().img_size == 64
    assert ModelConfig(arch="vit-base").img_size == 224
    assert ModelConfig(arch="vit-small", img_size=112).img_size == 112


@pytest.mark.parametrize(
    ("arch", "dims"),
    [("vit-small", (384, 12, 6)), ("vit-base", (768, 12, 12)), ("vit-large", (1024, 24, 16))],
)
def test_standard_presets_match_timm(arch: str, dims: tuple[int, int, int]) -> None:
    preset = ARCH_PRESETS[arch]
    assert (preset.embed_dim, preset.depth, preset.num_heads, preset.patch_size) == (*dims, 16)


def test_every_field_is_described() -> None:
    assert all(f.description for f in ModelConfig.model_fields.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": 60}, "multiple of 8"),
        ({"arch": "vit-base", "img_size": 8}, "multiple of 16"),
        ({"num_domains": 2, "num_domain_prompts": 0}, "num_domain_prompts >= 1"),
        ({"mode": "prompt", "num_shared_prompts": 0}, "no prompt tokens"),
        ({"num_classes": 1}, "greater than or equal to 2"),
        ({"arch": "vit-huge"}, "vit-tiny-cpu"),
        ({"mode": "lora"}, "prompt"),
        ({"num_prompts": 3}, "Extra inputs"),
    ],
)
def test_invalid_settings_explain_the_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_prompt_mode_with_only_domain_prompts_is_valid() -> None:
    cfg = ModelConfig(mode="prompt", num_shared_prompts=0, num_domains=2)
    assert cfg.num_prompt_tokens == 4


def test_empty_backbone_path_from_flower_config_means_none() -> None:
    assert ModelConfig(backbone_weights="").backbone_weights is None  # type: ignore[arg-type]


def test_json_roundtrip() -> None:
    cfg = ModelConfig(arch="vit-small", num_domains=3, backbone_weights="w.pth")  # type: ignore[arg-type]
    assert ModelConfig.model_validate_json(cfg.model_dump_json()) == cfg
