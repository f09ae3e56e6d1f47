"""A site's router prototype released with the Gaussian mechanism: pure arithmetic over style vectors.

The prompt-experts router (:class:`fedeye.models.router.ExpertRouter`) keeps,
per site, the mean *style* of the site's training images (``key``) and their
mean squared distance to it (``spread``). Both are statistics of every
patient, outside what DP-SGD protects, so a site training with DP releases
them once per run through the Gaussian mechanism (Dwork and Roth 2014, 3.5.3):

- each patient contributes the mean style of their images. The router's
  style is a LayerNorm output without affine weights, so every style has
  L2 norm ``sqrt(d)`` (``d = 2 * embed_dim``) and so has the patient mean at
  most: the sensitivity of the sum to adding or removing one patient is
  ``C = sqrt(d)`` without any clipping (it is applied anyway, as a guard);
- ``key = (sum + N(0, (sigma C)^2 I)) / n``, with ``n`` the number of
  patients (public: it already sets delta and ``num-examples``);
- ``spread`` is what the router divides distances by: the expected squared
  distance of a style to the *released* key, ``E||s - mean||^2 + e`` with
  ``e = d (sigma C / n)^2`` the expected energy of the key's noise. For
  unit-LayerNorm styles ``E||s - mean||^2 = d - ||mean||^2`` and
  ``||mean||^2 ~ ||key||^2 - e``, so ``spread = d - ||key||^2 + 2 e``, floored
  at ``e``: post-processing of the key, no further privacy cost. A noisy key
  makes the router's mix softer instead of confidently wrong.

The release is one full-batch Gaussian step; its privacy cost enters the
site's history as ``MechanismStep(sigma, 1.0, 1)``
(:func:`fedeye.privacy.planning.prototype_release`). The style embedding is
frozen, so the prototype never changes during a run and later rounds reuse
the released value for free.

References
----------
Dwork and Roth, "The Algorithmic Foundations of Differential Privacy", 2014.
"""

from __future__ import annotations

import math

import torch


def private_prototype(
    patient_styles: torch.Tensor, *, noise_multiplier: float, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Noisy mean style ``[d]`` and its spread from per-patient styles ``[n, d]``.

    Parameters
    ----------
    patient_styles : torch.Tensor
        One row per patient: the mean style of that patient's images.
    noise_multiplier : float
        ``sigma`` of the Gaussian mechanism (noise std over sensitivity).
    generator : torch.Generator
        Source of the noise (seed it from ``os.urandom``; fixed only in tests).

    Returns
    -------
    key : torch.Tensor
        ``[d]`` float32.
    spread : float
        Mean squared distance of a style to the key, derived from the key.

    Examples
    --------
    >>> styles = torch.nn.functional.layer_norm(torch.randn(500, 8), (8,))
    >>> key, spread = private_prototype(styles, noise_multiplier=1.0, generator=torch.Generator().manual_seed(0))
    >>> key.shape, spread > 0
    (torch.Size([8]), True)
    """
    n, d = patient_styles.shape
    bound = math.sqrt(d)
    styles = patient_styles.float()
    scale = (bound / styles.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    total = (styles * scale[:, None]).sum(dim=0)
    noise_std = noise_multiplier * bound
    key = (total + noise_std * torch.randn(d, generator=generator)) / max(n, 1)
    noise_energy = d * (noise_std / max(n, 1)) ** 2
    spread = max(d - float(key.pow(2).sum()) + 2 * noise_energy, noise_energy, 1e-6)
    return key, spread
