"""The expert router: per-image mixing weights over the domain-expert prompts.

The router answers "which hospitals' acquisition does this image look like?"
from the image's *style*: the mean and standard deviation over patches of
patch embeddings, the statistics that instance normalisation and AdaIN treat
as an image's style (Huang & Belongie, 2017). The embeddings come from a
frozen copy of the backbone's patch embedding as built (pretrained or
initial weights; :class:`StyleEmbed`): in full fine-tuning the live patch
embedding moves every round, which would make every prototype stale
(measured: one expert took 0.6-0.96 of every site's images). In fundus and OCT imaging the
domains differ mostly in acquisition (camera colour response, gamma,
vignetting, blur, noise, compression), which these first- and second-order
statistics capture before any transformer block runs, so routing costs one
pass.

Each expert's key is its site's *style prototype*: the mean normalised
style of the site's training images, with the site's spread (mean squared
distance of its images to the prototype). An image's logit for expert k is
``-||style - key_k||^2 / spread``, its distance to that hospital's typical
image in units of the typical within-hospital spread: an image of a known
site lands on its own expert, an image of an unseen site on the experts of
the hospitals it resembles, in proportion. Only experts whose site has
reported a prototype take part.

Why prototypes and not a trained router: each site sees one domain only, so
a router trained by cross-entropy at the sites is federated learning with
one class per client, which averaging does not turn into a classifier
(measured: a trained linear router gave seen sites 0.05-0.53 weight on
their own expert, often not the largest). Prototypes are the sufficient
statistic the sites *can* compute alone (as the domain keys of FedAPT and
the prototypes of FedProto), cost ``2 * dim + 2`` numbers per site, and leave
nothing to train.

References
----------
Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive
Instance Normalization", ICCV 2017.
Su et al., "Federated Adaptive Prompt Tuning for Multi-Domain Collaborative
Learning" (FedAPT), AAAI 2024.
Tan et al., "FedProto: Federated Prototype Learning across Heterogeneous
Clients", AAAI 2022.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


class StyleEmbed(nn.Module):
    """A frozen copy of a patch embedding (buffers, no parameters): the router's view of an image.

    Parameters
    ----------
    embed_dim, patch_size : int
        Width and patch side of the patch embedding it copies.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.stride = patch_size
        self.register_buffer("weight", torch.zeros(embed_dim, 3, patch_size, patch_size))
        self.register_buffer("bias", torch.zeros(embed_dim))

    @torch.no_grad()
    def copy_from(self, conv: nn.Conv2d) -> None:
        """Take the weights of ``conv`` (the backbone's patch projection) as they are now."""
        self.weight.copy_(conv.weight.detach())
        if conv.bias is not None:
            self.bias.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> patch embeddings ``[B, N, dim]``."""
        out = nn.functional.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), stride=self.stride)
        return out.flatten(2).transpose(1, 2)


class ExpertRouter(nn.Module):
    """Style prototypes of the experts' sites -> per-image logits over the experts.

    The prototypes are buffers (in the state dict, never trained by SGD):
    ``keys [K, 2*dim]``, ``spread [K]`` and ``known [K]`` (1 once site k has
    reported). With no known expert every image gets the uniform mix.

    Parameters
    ----------
    embed_dim : int
        Width of the patch embeddings.
    num_domains : int
        Number of experts.

    Examples
    --------
    >>> router = ExpertRouter(8, 3)
    >>> router(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    keys: torch.Tensor
    spread: torch.Tensor
    known: torch.Tensor

    def __init__(self, embed_dim: int, num_domains: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * embed_dim, elementwise_affine=False)
        self.register_buffer("keys", torch.zeros(num_domains, 2 * embed_dim))
        self.register_buffer("spread", torch.ones(num_domains))
        self.register_buffer("known", torch.zeros(num_domains))

    @property
    def num_domains(self) -> int:
        """Experts routed over."""
        return int(self.keys.shape[0])

    def style(self, patches: torch.Tensor) -> torch.Tensor:
        """Normalised style ``[B, 2*dim]`` of patch embeddings ``[B, N, dim]``."""
        patches = patches.detach().float()
        return cast(torch.Tensor, self.norm(torch.cat([patches.mean(dim=1), patches.std(dim=1)], dim=-1)))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``[B, N, dim]`` -> routing logits ``[B, num_domains]``."""
        style = self.style(patches)
        known = self.known > 0.5
        if not bool(known.any()):
            return style.new_zeros(style.shape[0], self.num_domains)
        distance = torch.cdist(style, self.keys.float()).pow(2)
        scale = self.spread[known].float().mean().clamp_min(1e-6)
        return (-distance / scale).masked_fill(~known, float("-inf"))

    @torch.no_grad()
    def set_prototype(self, index: int, styles: torch.Tensor) -> None:
        """Make expert ``index``'s key the prototype of ``styles`` ``[n, 2*dim]`` (one site's images)."""
        key = styles.float().mean(dim=0)
        self.keys[index] = key.to(self.keys.dtype)
        self.spread[index] = (styles.float() - key).pow(2).sum(dim=1).mean().clamp_min(1e-6)
        self.known[index] = 1.0
