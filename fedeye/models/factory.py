"""Build a :class:`PromptViT` from a :class:`ModelConfig`, choose what trains, load backbones.

:func:`load_backbone_weights` reads timm ``vit_*_patch16_224`` state dicts and
RETFound checkpoints (``{"model": state_dict}`` from the MAE fine-tuning code
of Zhou et al., "A foundation model for generalizable disease detection from
retinal images", Nature 2023) and maps timm's key names onto PromptViT's.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers.pos_embed import resample_abs_pos_embed
from torch import nn

from fedeye.errors import ModelError
from fedeye.models.config import ARCH_PRESETS, ModelConfig, TrainMode
from fedeye.models.torch_file import load_tensors
from fedeye.models.vit import PromptViT

logger = logging.getLogger(__name__)

#: timm / RETFound key -> PromptViT key, for keys whose name differs.
_RENAMED_KEYS = {"cls_token": "cls_token.tokens", "pos_embed": "pos_embed.weight"}
#: Top-level checkpoint entry of ``fedeye pretrain``: ``{pool: {"mean": T, "std": T}}`` of the pooled,
#: normed features on the pretraining images (see :class:`~fedeye.models.vit.FeatureStandardizer`).
FEATURE_STATS_KEY = "fedeye_feature_stats"
#: Checkpoint keys that only MAE pretraining uses.
_MAE_ONLY = re.compile(r"^(decoder_|mask_token)")
#: Below this share of backbone tensors loaded, the checkpoint is the wrong architecture.
_MIN_BACKBONE_SHARE = 0.5


def build_model(cfg: ModelConfig, *, load_backbone: bool = True) -> PromptViT:
    """Create the model ``cfg`` describes, load its backbone and set what trains.

    Parameters
    ----------
    cfg : ModelConfig
        Validated model settings.
    load_backbone : bool
        Load ``cfg.backbone_weights``. Sites and checkpoints pass False: they
        overwrite every weight with the global model's arrays, and a site does
        not hold the coordinator's checkpoint file.

    Returns
    -------
    PromptViT
        With ``cfg.backbone_weights`` loaded (if set) and ``cfg.mode`` applied.
    """
    preset = cfg.preset
    model = PromptViT(
        img_size=int(cfg.img_size or preset.default_img_size),
        patch_size=preset.patch_size,
        embed_dim=preset.embed_dim,
        depth=preset.depth,
        num_heads=preset.num_heads,
        mlp_ratio=preset.mlp_ratio,
        num_classes=cfg.num_classes,
        num_shared_prompts=cfg.num_shared_prompts,
        num_domains=cfg.num_domains,
        num_domain_prompts=cfg.num_domain_prompts,
        router=cfg.router,
        drop_rate=cfg.drop_rate,
        attn_drop_rate=cfg.attn_drop_rate,
        drop_path_rate=cfg.drop_path_rate,
        pool=cfg.pool,
    )
    if load_backbone and cfg.backbone_weights is not None:
        logger.info("%s", load_backbone_weights(model, cfg.backbone_weights))
    set_trainable(model, cfg.mode)
    return model


def set_trainable(model: PromptViT, mode: TrainMode) -> None:
    """Choose which parameters train.

    Parameters
    ----------
    model : PromptViT
        Model to change in place.
    mode : {"full", "prompt", "head"}
        ``full`` trains everything; ``prompt`` freezes the patch embedding,
        class token, position embedding, blocks and norm and trains only
        ``PromptViT.PROMPT_MODULES`` (prompts, router and head), as in VPT;
        ``head`` trains the head alone, a linear probe of the frozen features
        (the fewest parameters, so the least noise under DP-SGD).
    """
    model.requires_grad_(mode == "full")
    trained: dict[TrainMode, tuple[str, ...]] = {"full": (), "prompt": model.PROMPT_MODULES, "head": ("head",)}
    for name in trained[mode]:
        module = getattr(model, name, None)
        if module is not None:
            module.requires_grad_(True)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_backbone_weights` did with each tensor.

    Attributes
    ----------
    path : Path
        Checkpoint read.
    loaded : list of str
        PromptViT keys set from the checkpoint.
    missing : list of str
        PromptViT keys the checkpoint did not provide (prompts, often the head).
    skipped : dict of str to str
        Checkpoint keys not used, with the reason.
    resampled : list of str
        PromptViT keys whose position grid was interpolated.
    """

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    resampled: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.path.name}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
            f"{len(self.skipped)} skipped, resampled {self.resampled or 'none'}"
        )


def load_backbone_weights(model: PromptViT, path: Path) -> LoadReport:
    """Load a timm or RETFound ViT checkpoint into ``model``'s backbone.

    Parameters
    ----------
    model : PromptViT
        Model to fill in place.
    path : Path
        ``torch.save`` file of a timm ``VisionTransformer`` state dict, or a
        RETFound/MAE checkpoint ``{"model": state_dict}``.

    Returns
    -------
    LoadReport
        Keys loaded, missing and skipped (head of another size, MAE decoder, ...).

    Raises
    ------
    ModelError
        The file is missing, is not a checkpoint, or fits another architecture.
    """
    path = Path(path)
    raw = _read_checkpoint(path)
    source = _to_fedeye_keys(_unwrap(path, raw))
    target = model.state_dict()
    report = LoadReport(path=path, skipped=source.dropped)
    accepted = _match_tensors(source.tensors, target, model, report)
    _check_backbone_share(path, source.tensors, accepted, model)
    model.load_state_dict(accepted, strict=False)
    model.freeze_style()  # the router sees images through the loaded patch embedding
    _load_feature_stats(path, raw, model, report)
    derived = {"style_embed.weight", "style_embed.bias", "feature_norm.mean", "feature_norm.std"}
    report.missing.extend(k for k in target if k not in accepted and k not in derived)
    return report


def _load_feature_stats(path: Path, raw: Any, model: PromptViT, report: LoadReport) -> None:
    """Set ``model.feature_norm`` from a ``fedeye pretrain`` checkpoint's statistics for the model's pooling.

    Other checkpoints (timm, RETFound) carry none: the standardiser stays the identity.
    """
    stats = raw.get(FEATURE_STATS_KEY) if isinstance(raw, Mapping) else None
    if not isinstance(stats, Mapping):
        return
    pooled = stats.get(model.pool_name)
    norm = model.feature_norm
    if not isinstance(pooled, Mapping) or not all(
        isinstance(pooled.get(k), torch.Tensor) and pooled[k].shape == getattr(norm, k).shape for k in ("mean", "std")
    ):
        report.skipped[f"{FEATURE_STATS_KEY}.{model.pool_name}"] = "no feature statistics of this size and pooling"
        return
    with torch.no_grad():
        norm.mean.copy_(pooled["mean"])
        norm.std.copy_(pooled["std"].clamp_min(1e-6))
    report.loaded.extend(("feature_norm.mean", "feature_norm.std"))


def _read_checkpoint(path: Path) -> Any:
    """Safely read a checkpoint (tensors and plain values only)."""
    if not path.exists():
        raise ModelError(
            f"backbone checkpoint {path} does not exist; check model.backbone_weights "
            "or remove it to start from random weights"
        )
    fix = "pass a file written by torch.save(model.state_dict())"
    try:
        raw = load_tensors(path, what="backbone checkpoint", fix=fix)
    except pickle.UnpicklingError as err:
        if "safe_globals" not in str(err):  # torch names the refused class this way; else: not a checkpoint
            raise ModelError(
                f"{path} is not a readable PyTorch checkpoint; pass a file written by torch.save(model.state_dict())"
            ) from err
        raise ModelError(
            f"{path} holds Python objects besides tensors (e.g. training args) and FedEye only reads "
            "tensors (torch.load(weights_only=True)). If you trust the file, keep its weights only: "
            "ckpt = torch.load(path, weights_only=False); torch.save({'model': ckpt['model']}, 'clean.pth')"
        ) from err
    return raw


def _unwrap(path: Path, raw: Any) -> dict[str, torch.Tensor]:
    for wrapper in ("model", "state_dict"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(
            f"{path} holds no state dict of tensors; expected torch.save(model.state_dict()) "
            "or a RETFound checkpoint {'model': state_dict}"
        )
    return {_strip_wrapper_prefix(str(k)): v for k, v in raw.items()}


def _strip_wrapper_prefix(key: str) -> str:
    for prefix in ("module.", "_module."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


@dataclass
class _Renamed:
    tensors: dict[str, torch.Tensor]
    dropped: dict[str, str]


def _to_fedeye_keys(state: dict[str, torch.Tensor]) -> _Renamed:
    """Rename timm keys to PromptViT's; drop MAE-only tensors; use ``fc_norm`` as ``norm`` if needed."""
    has_norm = any(k.startswith("norm.") for k in state)
    out = _Renamed(tensors={}, dropped={})
    for key, value in state.items():
        if _MAE_ONLY.match(key):
            out.dropped[key] = "MAE decoder / mask token (pretraining only)"
        elif key.startswith("fc_norm.") and has_norm:
            out.dropped[key] = "fc_norm after global pooling; the checkpoint's norm is used instead"
        elif key.startswith("fc_norm."):
            out.tensors["norm." + key.removeprefix("fc_norm.")] = value
        else:
            out.tensors[_RENAMED_KEYS.get(key, key)] = value
    return out


def _match_tensors(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], model: PromptViT, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Keep the tensors whose name and shape fit ``target``; resample the position grid."""
    accepted: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in target:
            report.skipped[key] = "no such tensor in PromptViT"
        elif key == "pos_embed.weight" and value.shape != target[key].shape:
            resampled = _resample_pos_embed(value, target[key], model)
            if resampled is None:
                report.skipped[key] = (
                    f"position grid {tuple(value.shape)} cannot be resampled to {tuple(target[key].shape)}"
                )
            else:
                accepted[key] = resampled
                report.resampled.append(key)
        elif value.shape != target[key].shape:
            report.skipped[key] = f"shape {tuple(value.shape)} differs from PromptViT's {tuple(target[key].shape)}"
        else:
            accepted[key] = value
        if key in accepted:
            report.loaded.append(key)
    return accepted


def _resample_pos_embed(pos: torch.Tensor, target: torch.Tensor, model: PromptViT) -> torch.Tensor | None:
    """Interpolate a ``[1, 1 + g*g, d]`` position embedding to the model's patch grid."""
    old_grid = round((pos.shape[1] - 1) ** 0.5)
    if pos.ndim != 3 or pos.shape[2] != target.shape[2] or old_grid * old_grid != pos.shape[1] - 1:
        return None
    new_grid = list(model.patch_embed.grid_size)
    resampled: torch.Tensor = resample_abs_pos_embed(
        pos, new_size=new_grid, old_size=[old_grid, old_grid], num_prefix_tokens=1
    )
    return resampled


def _backbone_keys(model: PromptViT) -> list[str]:
    prompt_prefixes = tuple(f"{name}." for name in model.PROMPT_MODULES)
    return [k for k in model.state_dict() if not k.startswith(prompt_prefixes)]


def _check_backbone_share(
    path: Path, source: dict[str, torch.Tensor], accepted: Mapping[str, torch.Tensor], model: PromptViT
) -> None:
    backbone = _backbone_keys(model)
    share = sum(k in accepted for k in backbone) / len(backbone)
    if share >= _MIN_BACKBONE_SHARE:
        return
    raise ModelError(
        f"{path} does not fit this model: only {share:.0%} of the backbone tensors match. The checkpoint looks "
        f"like {_describe_checkpoint(source)}, the model is {_describe_model(model)}; set model.arch to match "
        "the checkpoint or choose a checkpoint of the configured arch"
    )


def _describe_checkpoint(state: Mapping[str, torch.Tensor]) -> str:
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        return "no ViT (it has no patch_embed.proj.weight)"
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return _name_arch(int(proj.shape[0]), depth, int(proj.shape[-1]))


def _describe_model(model: PromptViT) -> str:
    proj = model.patch_embed.proj
    assert isinstance(proj, nn.Conv2d)
    return _name_arch(model.embed_dim, len(model.blocks), int(proj.kernel_size[0]))


def _name_arch(embed_dim: int, depth: int, patch: int) -> str:
    for name, p in ARCH_PRESETS.items():
        if (p.embed_dim, p.depth, p.patch_size) == (embed_dim, depth, patch):
            return f"{name!r} (embed_dim={embed_dim}, depth={depth}, patch={patch})"
    return f"an unknown ViT (embed_dim={embed_dim}, depth={depth}, patch={patch})"
