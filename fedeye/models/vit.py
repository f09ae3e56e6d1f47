"""Vision transformer with shared and domain-expert prompt tokens.

Built from timm's building blocks (``PatchEmbed``, ``Block``); parameter names
follow timm's ``VisionTransformer`` where they can, so timm and RETFound
checkpoints map onto it (see :func:`fedeye.models.factory.load_backbone_weights`).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, cast

import torch
from timm.layers.patch_embed import PatchEmbed
from timm.layers.weight_init import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from fedeye.errors import ModelError
from fedeye.models.config import PoolName
from fedeye.models.router import ExpertRouter, StyleEmbed
from fedeye.models.tokens import DomainPrompts, LearnedTokens, PositionEmbedding, vpt_init_bound


class FeatureStandardizer(nn.Module):
    """Fixed per-feature standardisation ``(x - mean) / std`` in front of the head (identity until set).

    A pretrained backbone's features carry the label in small differences on
    a few coordinates; a linear head needs large weights to read them, which
    clipped and noised DP-SGD steps reach slowly or never. Standardising each
    feature with statistics measured on the public pretraining images (no
    private data, so no privacy cost) lets a small head read them, as
    Tramer & Boneh (ICLR 2021) do for DP linear models on fixed features.
    ``mean`` and ``std`` are buffers: saved with the model, never trained.

    >>> FeatureStandardizer(2)(torch.ones(1, 2))
    tensor([[1., 1.]])
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PromptViT(nn.Module):
    """ViT whose token sequence carries shared and domain-expert prompts.

    The sequence entering the blocks is ``[cls] + [shared prompts] +
    [domain prompts] + [patches]``. The position embedding is added to the
    class and patch tokens only and the prompts are inserted right after the
    class token, as in VPT-shallow (Jia et al., 2022) and EPVT (Yan et al.,
    2023). The domain prompts are those of one expert per image (``domain``)
    or a per-image mix of all experts (``expert_weights``); with neither, the
    expert router (:class:`~fedeye.models.router.ExpertRouter`) mixes them per
    image from the image's style, or, without a router, every image gets the
    uniform mix.

    Parameters
    ----------
    img_size : int
        Square input side in pixels.
    patch_size : int
        Square patch side in pixels.
    embed_dim : int
        Token width.
    depth : int
        Number of transformer blocks.
    num_heads : int
        Attention heads per block.
    num_classes : int
        Output logits.
    num_shared_prompts : int
        Prompt tokens shared by all images (0 = none).
    num_domains : int
        Domain experts (0 = no domain prompts).
    num_domain_prompts : int
        Prompt tokens per domain expert.
    router : bool
        Add the expert router (only with domain experts); without it, unrouted images get the uniform mix.
    mlp_ratio : float
        Block MLP width relative to ``embed_dim``.
    drop_rate, attn_drop_rate, drop_path_rate : float
        Token/head dropout, attention dropout, stochastic depth of the last block.
    pool : {"cls", "avg"}
        Feature for the head: the class token (timm's default) or the mean of
        the patch tokens (MAE and RETFound fine-tuning; better for a frozen
        MAE backbone, whose class token no loss trained).

    References
    ----------
    Jia et al., "Visual Prompt Tuning", ECCV 2022.
    Yan et al., "EPVT: Environment-aware Prompt Vision Transformer for Domain
    Generalization in Skin Lesion Recognition", MICCAI 2023.
    Yan et al., "Prompt-driven Latent Domain Generalization for Medical Image
    Classification" (PLDG), 2023.

    Examples
    --------
    >>> model = PromptViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
    ...                   num_classes=2, num_shared_prompts=2, num_domains=3, num_domain_prompts=1)
    >>> model(torch.zeros(4, 3, 32, 32), domain=torch.tensor([0, 1, 2, 0])).shape
    torch.Size([4, 2])
    """

    #: Submodules trained in prompt mode.
    PROMPT_MODULES: ClassVar[tuple[str, ...]] = ("shared_prompts", "domain_prompts", "router", "head")

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_classes: int,
        num_shared_prompts: int = 0,
        num_domains: int = 0,
        num_domain_prompts: int = 0,
        router: bool = False,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pool: PoolName = "cls",
    ) -> None:
        super().__init__()
        self.embed_dim, self.pool_name = embed_dim, pool
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        self.cls_token = LearnedTokens(1, embed_dim)
        self.pos_embed = PositionEmbedding(1 + self.patch_embed.num_patches, embed_dim)
        self.shared_prompts = LearnedTokens(num_shared_prompts, embed_dim) if num_shared_prompts > 0 else None
        self.domain_prompts = DomainPrompts(num_domains, num_domain_prompts, embed_dim) if num_domains > 0 else None
        self.router = ExpertRouter(embed_dim, num_domains) if num_domains > 0 and router else None
        self.style_embed = StyleEmbed(embed_dim, patch_size) if self.router is not None else None
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = self._make_blocks(depth, num_heads, mlp_ratio, attn_drop_rate, drop_path_rate)
        # nn.LayerNorm itself (not timm's subclass) so Opacus has a grad sampler for it.
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.feature_norm = FeatureStandardizer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights(patch_size)

    def _make_blocks(
        self, depth: int, num_heads: int, mlp_ratio: float, attn_drop: float, drop_path_rate: float
    ) -> nn.Sequential:
        norm_layer = cast(type[nn.Module], partial(nn.LayerNorm, eps=1e-6))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # timm's linear decay rule
        return nn.Sequential(
            *[
                Block(
                    self.embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    attn_drop=attn_drop,
                    drop_path=rate,
                    norm_layer=norm_layer,
                )
                for rate in rates
            ]
        )

    def _init_weights(self, patch_size: int) -> None:
        """timm's ``init_weights_vit_timm`` for the backbone, VPT's uniform init for prompts."""
        trunc_normal_(self.pos_embed.weight, std=0.02)
        nn.init.normal_(self.cls_token.tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        bound = vpt_init_bound(patch_size, self.embed_dim)
        for prompts in (self.shared_prompts, self.domain_prompts):
            if prompts is not None:
                nn.init.uniform_(prompts.tokens, -bound, bound)
        if self.domain_prompts is not None:
            # every expert starts from the same prompt and specialises from there: with independent
            # random experts the shared weights must first serve K unrelated token sets, and
            # federations that averaged them collapsed in some runs (see docs/dg-benchmark.md)
            with torch.no_grad():
                self.domain_prompts.tokens.copy_(self.domain_prompts.tokens[:1].expand_as(self.domain_prompts.tokens))
        self.freeze_style()

    def freeze_style(self) -> None:
        """Copy the patch embedding, as it is now, into the router's frozen :class:`StyleEmbed`.

        Called at initialisation and again after loading pretrained backbone weights.
        """
        if self.style_embed is not None:
            self.style_embed.copy_from(self.patch_embed.proj)

    @property
    def num_domains(self) -> int:
        """Domain experts (0 when the model has no domain prompts)."""
        return 0 if self.domain_prompts is None else self.domain_prompts.num_domains

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class token + shared + domain prompts."""
        shared = 0 if self.shared_prompts is None else self.shared_prompts.num_tokens
        experts = 0 if self.domain_prompts is None else self.domain_prompts.num_tokens
        return 1 + shared + experts

    def expert_weights_for(
        self,
        batch_size: int,
        *,
        domain: torch.Tensor | None = None,
        expert_weights: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Per-image mixing weights ``[B, num_domains]`` of the domain experts.

        Parameters
        ----------
        batch_size : int
            Images in the batch.
        images : torch.Tensor, optional
            The batch; with neither ``domain`` nor ``expert_weights``, the
            router mixes the experts from them (uniform mix without a router).
        domain : torch.Tensor, optional
            Integer domain index per image, shape ``[B]``; selects one expert.
        expert_weights : torch.Tensor, optional
            Mixing weights per image, shape ``[B, num_domains]``.

        Returns
        -------
        torch.Tensor or None
            None when the model has no domain prompts (inputs are then ignored).

        Raises
        ------
        ModelError
            Both inputs given, a wrong shape, or a domain index out of range.
        """
        if self.domain_prompts is None:
            return None
        k = self.num_domains
        if domain is not None and expert_weights is not None:
            raise ModelError("pass either domain or expert_weights to PromptViT, not both")
        if expert_weights is not None:
            if tuple(expert_weights.shape) != (batch_size, k):
                raise ModelError(
                    f"expert_weights has shape {tuple(expert_weights.shape)}, expected ({batch_size}, {k})"
                )
            return expert_weights
        if domain is None:
            if self.router is not None and self.style_embed is not None and images is not None:
                return torch.softmax(self.router(self.style_embed(images)), dim=-1)
            return self.domain_prompts.tokens.new_full((batch_size, k), 1.0 / k)
        return self._one_hot_domains(domain, batch_size)

    def _one_hot_domains(self, domain: torch.Tensor, batch_size: int) -> torch.Tensor:
        k = self.num_domains
        if tuple(domain.shape) != (batch_size,) or domain.is_floating_point():
            raise ModelError(
                f"domain must be an integer tensor of shape ({batch_size},), got "
                f"{domain.dtype} of shape {tuple(domain.shape)}"
            )
        if batch_size > 0 and (int(domain.min()) < 0 or int(domain.max()) >= k):
            raise ModelError(
                f"domain indices must lie in [0, {k - 1}] (num_domains={k}), got "
                f"{sorted(set(domain.tolist()))}; check the site's domain ids"
            )
        return nn.functional.one_hot(domain.long(), k).to(self.domain_prompts.tokens.dtype)  # type: ignore[union-attr]

    def _pos_embed(self, patches: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Add positions to class + patch tokens and insert the prompts after the class token.

        The one place where extra tokens join the sequence (like timm's ``_pos_embed``).
        """
        # Token modules read only the batch size of their input. Give them a detached view: a full
        # backward hook (Opacus) on a module whose grad-requiring input does not reach its output
        # never fires, which would silently drop the per-sample gradients of these tokens.
        batch = patches.detach()
        x = self.pos_embed(torch.cat([self.cls_token(batch), patches], dim=1))
        prompts = []
        if self.shared_prompts is not None:
            prompts.append(self.shared_prompts(batch))
        if self.domain_prompts is not None and weights is not None:
            prompts.append(self.domain_prompts(weights))
        return cast(torch.Tensor, self.pos_drop(torch.cat([x[:, :1], *prompts, x[:, 1:]], dim=1)))

    def forward_features(
        self, x: torch.Tensor, *, domain: torch.Tensor | None = None, expert_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> block outputs ``[B, num_prefix_tokens + num_patches, dim]``."""
        weights = self.expert_weights_for(x.shape[0], domain=domain, expert_weights=expert_weights, images=x)
        return cast(torch.Tensor, self.blocks(self._pos_embed(self.patch_embed(x), weights)))

    def _routed(self) -> tuple[ExpertRouter, StyleEmbed]:
        if self.router is None or self.style_embed is None:
            raise ModelError("this model has no expert router (num_domains = 0 or router = false)")
        return self.router, self.style_embed

    def routing_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The router's logits over the experts for images ``[B, 3, H, W]`` (ModelError without a router)."""
        router, embed = self._routed()
        return cast(torch.Tensor, router(embed(x)))

    @torch.no_grad()
    def styles(self, x: torch.Tensor) -> torch.Tensor:
        """The router's normalised style ``[B, 2*dim]`` of images (for a site's prototype; ModelError without a router)."""
        router, embed = self._routed()
        return router.style(embed(x))

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, N, dim]`` -> ``[B, dim]``: the class token (``cls``) or the mean of the patch tokens (``avg``)."""
        if self.pool_name == "avg":
            return feats[:, self.num_prefix_tokens :].mean(dim=1)
        return feats[:, 0]

    def forward_head(self, feats: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Block outputs -> pool -> norm -> feature standardisation -> head; ``pre_logits`` stops before the head."""
        x = self.head_drop(self.feature_norm(self.norm(self.pool(feats))))
        return x if pre_logits else cast(torch.Tensor, self.head(x))

    def forward(
        self, x: torch.Tensor, *, domain: torch.Tensor | None = None, expert_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x, domain=domain, expert_weights=expert_weights))
