"""Self-supervised pretraining of FedEye's ViT backbone by masked autoencoding (MAE).

RETFound (Zhou et al. 2023) pretrains a ViT on unlabelled retinal images with
MAE (He et al. 2022): hide 75% of the patches, encode the visible 25% with
the ViT, and let a small decoder reconstruct the hidden patches' pixels
(normalised per patch). The encoder is what fine-tuning keeps. This module
does the same over :class:`~fedeye.models.vit.PromptViT`'s backbone (patch
embedding, position embedding, class token, blocks, final norm; prompts
and head are not used), so a consortium without RETFound weights, or without
internet, pretrains on public or unlabelled images and then fine-tunes
privately. The checkpoint is timm-format (``cls_token``, ``pos_embed``,
``patch_embed.*``, ``blocks.*``, ``norm.*``) inside ``{"model": ...}``, as
RETFound's, which :func:`fedeye.models.factory.load_backbone_weights` reads.

References
----------
He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
Zhou et al., "A foundation model for generalizable disease detection from
retinal images", Nature 2023.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from timm.models.vision_transformer import Block
from torch import nn

from fedeye._atomic import atomic_write_bytes
from fedeye.errors import ModelError
from fedeye.models.config import ArchName, DeviceChoice, ModelConfig
from fedeye.models.device import autocast_context, select_device
from fedeye.models.factory import FEATURE_STATS_KEY, build_model
from fedeye.models.vit import PromptViT

#: PromptViT key -> timm key, for the keys whose names differ.
_TIMM_KEYS = {"cls_token.tokens": "cls_token", "pos_embed.weight": "pos_embed"}
_BACKBONE_PREFIXES = ("cls_token.", "pos_embed.", "patch_embed.", "blocks.", "norm.")


class MaskedAutoencoder(nn.Module):
    """MAE around a :class:`PromptViT` encoder: random masking, a small decoder, pixel loss on hidden patches.

    Parameters
    ----------
    encoder : PromptViT
        Its backbone is trained; prompts and head are ignored.
    decoder_dim, decoder_depth, decoder_heads : int
        The lightweight decoder (MAE: 512 wide, 8 deep for ViT-B; smaller here by default).
    mask_ratio : float
        Share of patches hidden from the encoder (MAE: 0.75).

    Examples
    --------
    >>> from fedeye.models import ModelConfig, build_model
    >>> mae = MaskedAutoencoder(build_model(ModelConfig(img_size=32)), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    >>> loss = mae(torch.zeros(2, 3, 32, 32))
    >>> loss.shape
    torch.Size([])
    """

    def __init__(
        self,
        encoder: PromptViT,
        *,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.encoder, self.mask_ratio = encoder, mask_ratio
        proj = encoder.patch_embed.proj
        self.patch_size = int(proj.kernel_size[0])
        num_patches = int(encoder.patch_embed.num_patches)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_dim))
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)

    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the reconstructed hidden patches (per-patch normalised pixels)."""
        latent, keep, hidden = self.forward_encoder(images, generator=generator)
        pred = self.forward_decoder(latent, keep)
        return self.reconstruction_loss(images, pred, hidden)

    def forward_encoder(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a random ``1 - mask_ratio`` of the patches: latent ``[B, 1 + kept, D]``, kept and hidden indices."""
        enc = self.encoder
        patches = enc.patch_embed(images)
        tokens = enc.pos_embed(torch.cat([enc.cls_token(patches.detach()), patches], dim=1))
        keep, hidden = random_split(patches.shape[0], patches.shape[1], self.mask_ratio, patches.device, generator)
        visible = torch.gather(tokens[:, 1:], 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        latent = enc.blocks(torch.cat([tokens[:, :1], visible], dim=1))
        return cast(torch.Tensor, enc.norm(latent)), keep, hidden

    def forward_decoder(self, latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Pixels of every patch ``[B, N, p*p*3]`` from the visible latent and mask tokens."""
        x = self.decoder_embed(latent)
        batch, num_patches = x.shape[0], self.decoder_pos_embed.shape[1] - 1
        full = self.mask_token.expand(batch, num_patches, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        return cast(torch.Tensor, self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:])

    def reconstruction_loss(self, images: torch.Tensor, pred: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """MAE's loss: MSE on the hidden patches, each target patch normalised to mean 0, variance 1."""
        target = patchify(images, self.patch_size)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        index = hidden[..., None].expand(-1, -1, target.shape[-1])
        return ((torch.gather(pred.float(), 1, index) - torch.gather(target, 1, index)) ** 2).mean()


def random_split(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, indices of the kept and of the hidden patches (MAE's shuffle by random noise)."""
    kept = max(1, round(num_patches * (1 - mask_ratio)))
    noise = torch.rand(batch, num_patches, generator=generator).to(device)
    order = noise.argsort(dim=1)
    return order[:, :kept], order[:, kept:]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, (H/p)*(W/p), p*p*3]`` in row-major patch order (PatchEmbed's)."""
    b, c, h, w = images.shape
    x = images.float().reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def timm_state_dict(encoder: PromptViT) -> dict[str, torch.Tensor]:
    """The backbone's weights under timm ``VisionTransformer`` names (as RETFound checkpoints hold)."""
    state = encoder.state_dict()
    return {
        _TIMM_KEYS.get(k, k): v.detach().cpu().clone() for k, v in state.items() if k.startswith(_BACKBONE_PREFIXES)
    }


@dataclass(frozen=True)
class PretrainSettings:
    """What a pretraining run does (recorded in the checkpoint)."""

    arch: ArchName = "vit-tiny-cpu"
    img_size: int | None = None  # None: the arch's default
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1.5e-4  # MAE's base rate, scaled by batch_size / 256
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    seed: int = 0
    device: DeviceChoice = "auto"

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, img_size=self.img_size)


@dataclass
class PretrainResult:
    """The trained encoder and how training went."""

    encoder: PromptViT
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    feature_stats: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def pretrain_mae(
    images: torch.Tensor,
    settings: PretrainSettings,
    *,
    log: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Pretrain a backbone by MAE on ``images`` (uint8 ``[N, 3, S, S]``, S = the model's input size).

    AdamW (betas 0.9, 0.95 as MAE), learning rate ``lr * batch / 256`` with a
    linear warm-up and a cosine decay, random horizontal flips; mixed
    precision on CUDA (:func:`~fedeye.models.device.autocast_context`).
    """
    torch.manual_seed(settings.seed)
    device = select_device(settings.device)
    encoder = build_model(settings.model_config(), load_backbone=False)
    mae = MaskedAutoencoder(
        encoder,
        decoder_dim=settings.decoder_dim,
        decoder_depth=settings.decoder_depth,
        decoder_heads=settings.decoder_heads,
        mask_ratio=settings.mask_ratio,
    ).to(device)
    unused = ("encoder.shared_prompts", "encoder.domain_prompts", "encoder.head")
    trained = [p for n, p in mae.named_parameters() if not n.startswith(unused)]
    lr = settings.lr * settings.batch_size / 256
    optimizer = torch.optim.AdamW(trained, lr=lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(images) / settings.batch_size)
    schedule = _warmup_cosine(settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(settings.seed)
    result, start = PretrainResult(encoder=mae.encoder, device=str(device)), time.perf_counter()
    mae.train()
    for epoch in range(settings.epochs):
        total = 0.0
        for batch in torch.split(torch.randperm(len(images), generator=generator), settings.batch_size):
            x = _normalise(images[batch], generator).to(device, non_blocking=True)
            with autocast_context(device):
                loss = mae(x, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.item()) * len(batch)
        result.epoch_losses.append(total / len(images))
        if log is not None:
            log(f"epoch {epoch + 1}/{settings.epochs}: reconstruction loss {result.epoch_losses[-1]:.4f}")
    result.seconds = time.perf_counter() - start
    mae.encoder.freeze_style()  # the router's style embedding follows the pretrained patch embedding
    result.feature_stats = feature_stats(mae.encoder, images, batch_size=settings.batch_size)
    return result


@torch.no_grad()
def pooled_features(encoder: PromptViT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The normed ``cls`` and ``avg`` features of normalised ``images``, the encoder run without prompts."""
    patches = encoder.patch_embed(images)
    tokens = encoder.blocks(encoder.pos_embed(torch.cat([encoder.cls_token(patches), patches], dim=1)))
    return {"cls": encoder.norm(tokens[:, 0]), "avg": encoder.norm(tokens[:, 1:].mean(dim=1))}


@torch.no_grad()
def feature_stats(
    encoder: PromptViT, images: torch.Tensor, *, batch_size: int = 64
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-feature mean and SD of the normed features, for each pooling, over ``images`` (uint8).

    The encoder sees whole images without prompts, as a fine-tuned model
    does before its prompts have learned. Stored in the checkpoint, these
    set :class:`~fedeye.models.vit.FeatureStandardizer` at fine-tuning
    time: statistics of the public pretraining images, so they cost no
    privacy at the sites.
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    pooled: dict[str, list[torch.Tensor]] = {"cls": [], "avg": []}
    for batch in torch.split(images, batch_size):
        for name, feats in pooled_features(encoder, ((batch.float() / 255.0 - _MEAN) / _STD).to(device)).items():
            pooled[name].append(feats.float().cpu())
    encoder.train(was_training)
    out = {}
    for name, parts in pooled.items():
        feats = torch.cat(parts)
        out[name] = {"mean": feats.mean(dim=0), "std": feats.std(dim=0).clamp_min(1e-6)}
    return out


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

    return factor


_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
_STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def _normalise(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 -> ImageNet-normalised float (as :class:`~fedeye.sites.dataset.SiteDataset`), random flips."""
    x = batch.float() / 255.0
    flip = torch.rand(len(x), generator=generator) < 0.5
    x[flip] = x[flip].flip(-1)
    return (x - _MEAN) / _STD


def save_pretrained(path: Path, result: PretrainResult, settings: PretrainSettings, data: list[dict[str, Any]]) -> Path:
    """Write ``{"model": timm state dict, "fedeye_pretrain": provenance, "fedeye_feature_stats": ...}``.

    Tensors and plain values only. ``model`` is a plain timm state dict (timm
    and RETFound code read it); the feature statistics sit beside it.

    The provenance holds the settings, the data (folder, fingerprint, image
    count per folder), the loss per epoch, the device and the time taken, so
    a backbone can be traced to what made it.
    """
    record = {
        "method": "mae",
        "settings": asdict(settings),
        "data": data,
        "epoch_losses": result.epoch_losses,
        "seconds": round(result.seconds, 1),
        "device": result.device,
        "torch": str(torch.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    payload: dict[str, Any] = {"model": timm_state_dict(result.encoder), "fedeye_pretrain": record}
    if result.feature_stats:
        payload[FEATURE_STATS_KEY] = result.feature_stats
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())  # never a half-written checkpoint
    except OSError as err:
        raise ModelError(f"cannot write checkpoint {path}: {err.strerror or err}; choose another --out") from err
    return path
