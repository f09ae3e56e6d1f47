"""Opacus per-sample gradients for the token modules of :mod:`fedeye.models.tokens`.

Importing this module registers one grad sampler per token module with
``opacus.grad_sample.register_grad_sampler``, so ``GradSampleModule`` never
falls back to functorch for them (see Opacus ``grad_sample_module.py``:
modules whose type is missing from ``GRAD_SAMPLERS`` are handled by functorch,
and a parameter sitting directly on the model would make that the whole model).

A token parameter is broadcast over the batch, so its per-sample gradient is
the gradient of the module output for that sample, summed over the dimensions
the parameter was broadcast along.

References
----------
Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in
PyTorch", 2021.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from fedeye.models.tokens import DomainPrompts, LearnedTokens, PositionEmbedding


@register_grad_sampler(LearnedTokens)  # type: ignore[untyped-decorator]
def compute_learned_tokens_grad_sample(
    layer: LearnedTokens, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient of ``tokens.expand(B, n, d)``: the backprops, ``[B, 1, n, d]``."""
    if not layer.tokens.requires_grad:
        return {}
    return {layer.tokens: backprops.unsqueeze(1)}


@register_grad_sampler(PositionEmbedding)  # type: ignore[untyped-decorator]
def compute_position_embedding_grad_sample(
    layer: PositionEmbedding, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient of ``x + weight``: the backprops, ``[B, 1, N, d]``."""
    if not layer.weight.requires_grad:
        return {}
    return {layer.weight: backprops.unsqueeze(1)}


@register_grad_sampler(DomainPrompts)  # type: ignore[untyped-decorator]
def compute_domain_prompts_grad_sample(
    layer: DomainPrompts, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient of ``einsum("bk,knd->bnd", w, tokens)``: ``w[b, k] * g[b]``."""
    if not layer.tokens.requires_grad:
        return {}
    weights = activations[0].to(backprops.dtype)
    return {layer.tokens: torch.einsum("bk,bnd->bknd", weights, backprops)}
