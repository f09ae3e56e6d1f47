"""Configuration of FedEye's prompt vision transformer.

:class:`ModelConfig` describes one model: which backbone size (``arch``), the
input resolution, the classifier, the prompt tokens and which parameters train.
The backbone sizes live in :data:`ARCH_PRESETS`; the three standard sizes use
the dimensions of timm's ``vit_*_patch16_224`` so that timm and RETFound
checkpoints fit them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from fedeye.sites.preprocess import PreprocessMode

ArchName = Literal["vit-tiny-cpu", "vit-small", "vit-base", "vit-large"]
#: Where a model runs (``fedeye.models.device.select_device``).
DeviceChoice = Literal["auto", "cpu", "cuda"]
#: Which parameters train (``fedeye.models.factory.set_trainable``).
TrainMode = Literal["full", "prompt", "head"]
#: Modes whose backbone is frozen: the site loads it from ``backbone_weights``, and prompt-experts
#: exchanges only the parts ``is_prompt_key`` names (head mode trains a subset of them, the head).
FROZEN_BACKBONE_MODES: frozenset[TrainMode] = frozenset({"prompt", "head"})
#: How the block outputs become one feature vector for the head.
PoolName = Literal["cls", "avg"]


@dataclass(frozen=True)
class ArchPreset:
    """Backbone dimensions of one ``arch`` (timm ``VisionTransformer`` names).

    Attributes
    ----------
    patch_size : int
        Side of a square patch in pixels.
    embed_dim : int
        Token width.
    depth : int
        Number of transformer blocks.
    num_heads : int
        Attention heads per block.
    default_img_size : int
        Image side used when ``ModelConfig.img_size`` is None.
    mlp_ratio : float
        Hidden width of the block MLP relative to ``embed_dim``.
    timm_name : str | None
        The timm model whose checkpoints fit this preset, if any.
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    default_img_size: int
    mlp_ratio: float = 4.0
    timm_name: str | None = None


ARCH_PRESETS: dict[str, ArchPreset] = {
    # Small enough for CPU federated rounds: a forward+backward+SGD step on 32
    # images at 64 px took ~0.09 s on two CPU cores (torch 2.14, 4+4 prompts);
    # width 128 took ~0.15 s and 192 ~0.29 s.
    "vit-tiny-cpu": ArchPreset(patch_size=8, embed_dim=96, depth=4, num_heads=4, default_img_size=64),
    "vit-small": ArchPreset(16, 384, 12, 6, 224, timm_name="vit_small_patch16_224"),
    "vit-base": ArchPreset(16, 768, 12, 12, 224, timm_name="vit_base_patch16_224"),
    "vit-large": ArchPreset(16, 1024, 24, 16, 224, timm_name="vit_large_patch16_224"),
}


class ModelConfig(BaseModel):
    """Settings of one :class:`~fedeye.models.vit.PromptViT`.

    After validation ``img_size`` is always an int (the arch default fills a
    missing value).

    Examples
    --------
    >>> cfg = ModelConfig(arch="vit-tiny-cpu", num_domains=3, mode="prompt")
    >>> cfg.img_size, cfg.preset.embed_dim
    (64, 96)
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats; ints and bools strict

    arch: ArchName = Field(
        default="vit-tiny-cpu",
        description="Backbone size; vit-tiny-cpu trains on a CPU, the others match timm vit_*_patch16_224.",
    )
    img_size: StrictInt | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Square input side in pixels; None uses the arch default (tiny: 64, others: 224).",
    )
    num_classes: StrictInt = Field(default=2, ge=2, le=10_000, description="Number of output classes (2 for binary).")
    num_shared_prompts: StrictInt = Field(
        default=4, ge=0, le=1024, description="Prompt tokens shared by every site and domain (0 = none)."
    )
    num_domains: StrictInt = Field(
        default=0, ge=0, le=10_000, description="Number of domain experts, each with its own prompt tokens (0 = none)."
    )
    num_domain_prompts: StrictInt = Field(
        default=4, ge=0, le=1024, description="Prompt tokens per domain expert; unused when num_domains is 0."
    )
    router: StrictBool = Field(
        default=True,
        description="With domain experts: a router mixes them per image from the image's style (false = uniform mix).",
    )
    preprocess: PreprocessMode | None = Field(
        default=None,
        description=(
            "Fundus preprocessing every site applies to this model's images (fedeye.sites.preprocess: "
            "'none', 'fov-crop' or 'fov-crop+clahe'); unset: each site's own `preprocess` in site.toml. "
            "Saved in the model file, so `fedeye evaluate`, `adapt` and `calibrate` prepare a new hospital's "
            "images the way the model was trained."
        ),
    )
    pool: PoolName = Field(
        default="cls",
        description="Feature for the head: cls = class token; avg = mean of the patch tokens (MAE/RETFound).",
    )
    mode: TrainMode = Field(
        default="full",
        description=(
            "full: train every parameter; prompt: freeze the backbone, train prompts and head; "
            "head: freeze the backbone, train only the head (a linear probe, fewest parameters under DP)."
        ),
    )
    backbone_weights: Path | None = Field(
        default=None, description="timm or RETFound checkpoint loaded into the backbone at build time."
    )
    drop_rate: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout after the position embedding and before the head."
    )
    attn_drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on attention weights.")
    drop_path_rate: float = Field(default=0.0, ge=0.0, lt=1.0, description="Stochastic depth rate of the last block.")

    @property
    def preset(self) -> ArchPreset:
        """Backbone dimensions of ``arch``."""
        return ARCH_PRESETS[self.arch]

    @property
    def num_prompt_tokens(self) -> int:
        """Prompt tokens inserted after the class token (shared + domain)."""
        domain_tokens = self.num_domain_prompts if self.num_domains > 0 else 0
        return self.num_shared_prompts + domain_tokens

    @field_validator("backbone_weights", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        """Flower run configs cannot hold None; ``""`` there means "no checkpoint"."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        self._fill_and_check_img_size()
        if self.num_domains > 0 and self.num_domain_prompts == 0:
            raise ValueError(
                f"num_domains={self.num_domains} but num_domain_prompts=0: each domain expert "
                "needs at least one prompt token; set num_domain_prompts >= 1 or num_domains = 0"
            )
        if self.mode == "prompt" and self.num_prompt_tokens == 0:
            raise ValueError(
                "mode='prompt' freezes the backbone but the model has no prompt tokens "
                "(num_shared_prompts=0 and no domain prompts); set num_shared_prompts >= 1 "
                "or num_domains >= 1, or use mode='full'"
            )
        if self.mode == "head" and self.num_prompt_tokens > 0:
            raise ValueError(
                f"mode='head' trains only the head, so the model's {self.num_prompt_tokens} prompt tokens "
                "would stay at their random start and shift the features the head reads; set "
                "num_shared_prompts = 0 and num_domains = 0 (strategy prompt-experts needs mode 'prompt' or 'full')"
            )
        return self

    def _fill_and_check_img_size(self) -> None:
        patch = self.preset.patch_size
        if self.img_size is None:
            self.img_size = self.preset.default_img_size
        if self.img_size < patch or self.img_size % patch != 0:
            raise ValueError(
                f"img_size={self.img_size} does not fit arch {self.arch!r} with {patch}-pixel patches; "
                f"use a multiple of {patch} (default {self.preset.default_img_size})"
            )
