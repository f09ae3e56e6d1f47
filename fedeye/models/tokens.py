"""Learned tokens of the prompt vision transformer, each in its own module.

Every bare trainable tensor of :class:`~fedeye.models.vit.PromptViT` (class
token, position embedding, shared prompts, domain-expert prompts) lives in one
of these small modules instead of directly on the model. Opacus computes
per-sample gradients module by module; a bare ``nn.Parameter`` on the model
itself would make it fall back to functorch for the *whole* model, which is
several times slower. :mod:`fedeye.models.grad_samplers` registers a cheap
per-sample gradient for each class here.

References
----------
Jia et al., "Visual Prompt Tuning", ECCV 2022 (prompt initialisation).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def vpt_init_bound(patch_size: int, dim: int, in_chans: int = 3) -> float:
    """Half-width of VPT's uniform (Xavier) prompt initialisation.

    Parameters
    ----------
    patch_size : int
        Side of a square patch in pixels.
    dim : int
        Token width.
    in_chans : int
        Image channels.

    Returns
    -------
    float
        ``sqrt(6 / (in_chans * patch_size**2 + dim))`` as in Jia et al. (2022).
    """
    return math.sqrt(6.0 / float(in_chans * patch_size * patch_size + dim))


class LearnedTokens(nn.Module):
    """``num_tokens`` learned tokens repeated for every image of a batch.

    Used for the class token and for the shared prompt tokens.

    Parameters
    ----------
    num_tokens : int
        Tokens held.
    dim : int
        Token width.

    Examples
    --------
    >>> tokens = LearnedTokens(4, 8)
    >>> tokens(torch.zeros(2, 10, 8)).shape
    torch.Size([2, 4, 8])
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))

    @property
    def num_tokens(self) -> int:
        """Tokens held."""
        return int(self.tokens.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the tokens expanded to ``[B, num_tokens, dim]``, ``B = x.shape[0]``."""
        return self.tokens.expand(x.shape[0], -1, -1)


class PositionEmbedding(nn.Module):
    """Learned absolute position embedding added to a token sequence.

    Parameters
    ----------
    num_tokens : int
        Length of the sequence it is added to (class token + patches).
    dim : int
        Token width.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, num_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + weight`` for ``x`` of shape ``[B, num_tokens, dim]``."""
        return x + self.weight


class DomainPrompts(nn.Module):
    """Prompt tokens of several domain experts, mixed per image.

    Each of the ``num_domains`` experts owns ``num_tokens`` prompt tokens, as
    the domain prompts of EPVT/PLDG. Image ``b`` receives
    ``sum_k weights[b, k] * tokens[k]``: a one-hot row selects one expert, a
    soft row (for example from a router) mixes them.

    Parameters
    ----------
    num_domains : int
        Number of experts.
    num_tokens : int
        Prompt tokens per expert.
    dim : int
        Token width.

    References
    ----------
    Yan et al., "EPVT: Environment-aware Prompt Vision Transformer for Domain
    Generalization in Skin Lesion Recognition", MICCAI 2023.

    Examples
    --------
    >>> experts = DomainPrompts(3, 2, 8)
    >>> experts(torch.eye(3)).shape
    torch.Size([3, 2, 8])
    """

    def __init__(self, num_domains: int, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_domains, num_tokens, dim))

    @property
    def num_domains(self) -> int:
        """Number of experts."""
        return int(self.tokens.shape[0])

    @property
    def num_tokens(self) -> int:
        """Prompt tokens per expert."""
        return int(self.tokens.shape[1])

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """Mix the experts' tokens: ``[B, num_domains]`` -> ``[B, num_tokens, dim]``."""
        return torch.einsum("bk,knd->bnd", weights.to(self.tokens.dtype), self.tokens)
