"""The expert router: per-image mixing weights over the domain-expert prompts.

The router answers "which hospitals' acquisition does this image look like?"
from the image's *style*: the mean and standard deviation over patches of the
patch embeddings, the statistics that instance normalisation and AdaIN treat
as an image's style (Huang & Belongie, 2017). In fundus and OCT imaging the
domains differ mostly in acquisition (camera colour response, gamma,
vignetting, blur, noise, compression), which these first- and second-order
statistics capture before any transformer block runs. So routing costs one
pass, not the two of a router that reads the class token of a first forward.

The query is compared with one learned key per expert (scaled dot product,
as the attention over expert keys of DiPrompT and FedAPT); a softmax gives
the weights. The router reads a detached copy of the patch embeddings: it
learns to recognise domains without pulling the backbone towards encoding
them.

References
----------
Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive
Instance Normalization", ICCV 2017.
Bai et al., "DiPrompT: Disentangled Prompt Tuning for Multiple Latent Domain
Generalization in Federated Learning", CVPR 2024.
Su et al., "Federated Adaptive Prompt Tuning for Multi-Domain Collaborative
Learning" (FedAPT), AAAI 2024.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ExpertRouter(nn.Module):
    """Style statistics of the patch embeddings -> logits over the experts.

    Parameters
    ----------
    embed_dim : int
        Width of the patch embeddings.
    num_domains : int
        Number of experts.
    key_dim : int
        Width of the query and of each expert's key (small: the router travels
        every round).

    Examples
    --------
    >>> router = ExpertRouter(8, 3, key_dim=4)
    >>> router(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, embed_dim: int, num_domains: int, key_dim: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * embed_dim, elementwise_affine=False)  # no parameters: less to send
        self.query = nn.Linear(2 * embed_dim, key_dim, bias=False)
        # one key per expert; a bias-free Linear so Opacus has a grad sampler for it
        self.keys = nn.Linear(key_dim, num_domains, bias=False)
        self._scale = 1.0 / math.sqrt(key_dim)

    @property
    def num_domains(self) -> int:
        """Experts routed over."""
        return int(self.keys.out_features)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``[B, N, dim]`` -> routing logits ``[B, num_domains]``."""
        patches = patches.detach()
        style = torch.cat([patches.mean(dim=1), patches.std(dim=1)], dim=-1)
        return self.keys(self.query(self.norm(style))) * self._scale
