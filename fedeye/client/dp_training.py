"""Patient-level DP-SGD at one site: the training loop, with Opacus.

The privacy unit is the *patient*. :class:`PatientSampledDataset` has one
item per patient (a randomly chosen image of that patient), Opacus' Poisson
loader samples patients with rate ``q``, every sampled patient contributes one
clipped gradient, and Gaussian noise of standard deviation ``sigma * C`` is
added to their sum (DP-SGD, Abadi et al. 2016). Adding or removing a patient
changes at most one clipped gradient per step, so the subsampled Gaussian
mechanism's accounting (Mironov et al. 2019 for RDP, Gopi et al. 2021 for PRV)
bounds the patient-level (epsilon, delta) of the whole run at the site.

:func:`~fedeye.privacy.planning.plan_round` (the privacy library) plans a
round; :func:`train_local_dp` here is the site's training loop that carries
it out. See ``docs/privacy.md``.

References
----------
Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
Gaussian Mechanism", 2019.
Gopi, Lee and Wutschitz, "Numerical Composition of Differential Privacy",
NeurIPS 2021.
Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in
PyTorch", 2021.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import wrap_data_loader
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fedeye.models.grad_samplers  # noqa: F401  (registers the token modules' grad samplers)
from fedeye.client.training import LocalObjective, TrainResult, _ExpertTraining, round_lr
from fedeye.config import TrainingConfig
from fedeye.models import select_device
from fedeye.privacy.planning import RoundPlan
from fedeye.sites.dataset import SiteDataset

#: Opacus attributes left on parameters after training, removed so the model is plain again.
_PARAM_LEFTOVERS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample", "_norm_sample")


class PatientSampledDataset(Dataset[tuple[torch.Tensor, int]]):
    """One item per patient: each draw is one randomly chosen image of that patient.

    Privacy unit = patient. With Poisson sampling over patients and one clipped
    gradient per sampled patient per step, removing a patient removes at most
    one clipped gradient per step, so the subsampled Gaussian accounting with
    ``q = expected_batch / num_patients`` gives patient-level (epsilon,
    delta)-DP (Abadi et al. 2016, "Deep Learning with Differential Privacy").

    Parameters
    ----------
    dataset : SiteDataset
        One split of a site; its ``patient_ids`` group the images.
    seed : int
        Seed of the choice of image within a patient: the same seed and the
        same sequence of draws give the same images.

    Examples
    --------
    >>> train = SiteDataset(open_site("site-1"), "train", image_size=64)  # doctest: +SKIP
    >>> patients = PatientSampledDataset(train, seed=0)  # doctest: +SKIP
    >>> len(patients) == patients.num_patients  # doctest: +SKIP
    True
    """

    def __init__(self, dataset: SiteDataset, *, seed: int) -> None:
        self.dataset = dataset
        self.patients, self.images_of = group_by_patient(dataset.patient_ids)
        self.num_patients = len(self.patients)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.num_patients

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images = self.images_of[index]
        return self.dataset[int(images[self._rng.integers(len(images))])]


def group_by_patient(patient_ids: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Patients in order of first appearance and the image indices of each."""
    order: dict[str, list[int]] = {}
    for index, patient in enumerate(patient_ids):
        order.setdefault(str(patient), []).append(index)
    return list(order), list(order.values())


@dataclass(frozen=True)
class DPTrainResult(TrainResult):
    """A :class:`~fedeye.client.training.TrainResult` plus what DP-SGD did.

    ``loss`` is the mean loss over the sampled patients (not itself private).
    """

    steps: int = 0
    mean_batch_size: float = 0.0


@dataclass
class PrivateTraining:
    """The Opacus pieces of one round: wrapped model, DP optimizer, Poisson loader.

    Call :meth:`close` when done: it removes Opacus' hooks and attributes so
    the original model is a plain module again (and can be wrapped next round).
    """

    module: GradSampleModule
    optimizer: DPOptimizer
    loader: DataLoader[Any]
    engine: PrivacyEngine

    def close(self) -> None:
        """Remove hooks and per-sample leftovers; parameters keep their trained values."""
        inner = self.module._module
        self.module._close()
        for param in inner.parameters():
            param.grad = None
            for attr in _PARAM_LEFTOVERS:
                if hasattr(param, attr):
                    delattr(param, attr)


def prepare_private(
    model: nn.Module,
    dataset: SiteDataset,
    *,
    cfg: TrainingConfig,
    plan: RoundPlan,
    max_grad_norm: float,
    server_round: int,
    rng_seed: int | None = None,
    max_physical_batch: int | None = None,
) -> PrivateTraining:
    """Wrap ``model`` with Opacus for one round of ``plan``.

    The Poisson loader samples patients with exactly ``plan.sample_rate`` (not
    Opacus' ``1 / len(loader)``), the optimizer averages over the expected
    batch ``q * num_patients`` and the engine's accountant records steps at
    ``plan.sample_rate``.

    Parameters
    ----------
    model : nn.Module
        Plain model (not wrapped); wrapped in place, its parameters are trained.
    dataset : SiteDataset
        The site's train split.
    cfg : TrainingConfig
        Learning rate, weight decay, seed and device as in ``train_local``.
    plan : RoundPlan
        From :func:`plan_round`.
    max_grad_norm : float
        Per-patient clipping norm ``C``.
    server_round : int
        Round number (seeds the choice of image within a patient).
    rng_seed : int, optional
        Seed of Poisson sampling and noise. None (default) seeds them from
        ``os.urandom``: DP needs both to be unpredictable. Set it only in tests.
    max_physical_batch : int, optional
        Largest batch put through the model at once. A larger logical
        (Poisson) batch is split with Opacus' ``BatchSplittingSampler`` (what
        ``BatchMemoryManager`` uses): per-sample gradients of the pieces are
        clipped and summed, and the noise and the optimizer step come once per
        logical batch, so the privacy accounting is unchanged. None: no split.

    Returns
    -------
    PrivateTraining
    """
    device = select_device(cfg.device)
    model.to(device).train()
    patients = PatientSampledDataset(dataset, seed=cfg.seed * 100_003 + server_round)
    generator = torch.Generator(device="cpu").manual_seed(_fresh_seed() if rng_seed is None else rng_seed)
    loader = DPDataLoader(patients, sample_rate=plan.sample_rate, generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]
    engine = PrivacyEngine(accountant=plan.accountant)
    module, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.AdamW(params, lr=round_lr(cfg, server_round), weight_decay=cfg.weight_decay),
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # the loader already samples patients at plan.sample_rate
        loss_reduction="mean",
        noise_generator=_noise_generator(device, rng_seed),
    )
    module.forbid_grad_accumulation()
    optimizer.expected_batch_size = plan.sample_rate * patients.num_patients
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    if max_physical_batch is not None:
        loader = wrap_data_loader(data_loader=loader, max_batch_size=max_physical_batch, optimizer=optimizer)
    return PrivateTraining(module=module, optimizer=optimizer, loader=loader, engine=engine)


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & (2**63 - 1)


def _noise_generator(device: torch.device, rng_seed: int | None) -> torch.Generator:
    seed = _fresh_seed() if rng_seed is None else rng_seed + 1
    return torch.Generator(device=device).manual_seed(seed)


def train_local_dp(
    model: nn.Module,
    dataset: SiteDataset,
    *,
    cfg: TrainingConfig,
    plan: RoundPlan,
    max_grad_norm: float,
    server_round: int,
    rng_seed: int | None = None,
    objective: LocalObjective | None = None,
    max_physical_batch: int | None = None,
) -> DPTrainResult:
    """Train ``model`` in place for exactly ``plan.steps`` DP-SGD steps.

    AdamW with ``train_local``'s learning rate and weight decay, on Poisson
    batches of patients (one image each), per-patient clipping at
    ``max_grad_norm`` and noise ``plan.noise_multiplier * max_grad_norm``
    (Abadi et al. 2016). Augmentation follows ``dataset``. The loss is
    unweighted cross-entropy averaged over the batch: ``train_local``'s
    balanced class weights come from the site's label counts, a statistic of
    every patient that DP-SGD's accounting does not cover (and a weighted
    mean would couple the per-sample gradients), so DP drops them.

    ``objective`` is the strategy's local objective, under the same clipping
    and noise (see :class:`DPObjective`): prompt-experts trains the site's own
    expert row, fedprox adds its proximal gradient after the noise.

    Afterwards Opacus' hooks are removed and ``model`` is a plain module
    holding the trained weights.

    Parameters
    ----------
    model, dataset, cfg, plan, max_grad_norm, server_round, rng_seed, max_physical_batch
        As in :func:`prepare_private`.
    objective : LocalObjective, optional
        The strategy's local objective (default: plain cross-entropy).

    Returns
    -------
    DPTrainResult
    """
    extra = DPObjective.start(model, objective or LocalObjective(), seed=cfg.seed * 100_003 + server_round)
    private = prepare_private(
        model,
        dataset,
        cfg=cfg,
        plan=plan,
        max_grad_norm=max_grad_norm,
        server_round=server_round,
        rng_seed=rng_seed,
        max_physical_batch=max_physical_batch,
    )
    extra.attach(private.optimizer)
    device = select_device(cfg.device)
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    try:
        for images, labels in _batches(private, plan.steps):
            total_loss += _dp_step(private, images.to(device), labels.to(device), extra) * len(labels)
            seen += len(labels)
    finally:
        private.close()
        extra.finish()
    return DPTrainResult(
        loss=total_loss / max(seen, 1),
        num_examples=len(dataset),
        seconds=time.perf_counter() - start,
        steps=plan.steps,
        mean_batch_size=seen / plan.steps,
    )


class DPObjective:
    """A strategy's local objective inside DP-SGD: what changes before clipping and after noise.

    prompt-experts (``objective.expert_index``)
        The site trains its own row ``k`` of the expert bank, the shared
        prompt, the head and, in full mode, the backbone. The bank's
        per-sample gradients are masked to row ``k`` *before* clipping: the
        clipping norm then measures exactly the vector the site releases, so
        every patient's contribution to everything trained is at most ``C``
        (masking after the noise would also leak nothing, since the other rows
        are restored, but with expert mixup their discarded gradient would
        count against ``C`` and shrink the useful one). After the noise the
        bank's gradient is masked again, so the other rows' noise never
        reaches the optimizer; they are restored afterwards anyway (AdamW's
        weight decay), as in non-private training.
    fedprox (``objective.proximal_mu``)
        ``mu/2 ||w - w_global||^2`` depends on parameters only, not on any
        patient: its gradient ``mu (w - w_global)`` is added after clipping
        and noise, to the noisy mean gradient (post-processing, no privacy
        cost). Inside the loss it would be clipped with each patient's
        gradient and eat the clipping budget.
    fedbn
        Nothing changes here: its LayerNorm weights train under DP like every
        other weight; the ClientApp keeps them at the site.
    """

    def __init__(self, model: nn.Module, objective: LocalObjective, expert: _ExpertTraining | None) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self.mu = objective.proximal_mu
        self.anchor = [(p, p.detach().clone()) for p in params] if self.mu > 0 else []
        self.expert = expert
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        if expert is not None:
            bank = model.get_parameter("domain_prompts.tokens")
            if bank.requires_grad:
                self.masks.append((bank, _row_mask(bank, expert.k)))
        self._accountant_hook: Any = None

    @classmethod
    def start(cls, model: nn.Module, objective: LocalObjective, *, seed: int) -> DPObjective:
        """Before wrapping: remember the global weights (fedprox) and the bank (prompt-experts)."""
        return cls(model, objective, _ExpertTraining.start(model, objective, seed=seed))

    def attach(self, optimizer: DPOptimizer) -> None:
        """Run :meth:`after_noise` after the optimizer's noise, before the AdamW step (after the accountant)."""
        self._accountant_hook = optimizer.step_hook

        def hook(opt: DPOptimizer) -> None:
            if self._accountant_hook is not None:
                self._accountant_hook(opt)
            self.after_noise()

        optimizer.step_hook = hook

    def expert_weights(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """Per-image expert weights of prompt-experts (None otherwise)."""
        return None if self.expert is None else self.expert.mix(batch, device)

    def mask_per_sample(self) -> None:
        """Zero every per-sample gradient of the bank outside the site's row (before clipping)."""
        for param, mask in self.masks:
            grad_sample = param.grad_sample  # type: ignore[attr-defined]
            if isinstance(grad_sample, list):
                param.grad_sample = [g * mask for g in grad_sample]  # type: ignore[attr-defined]
            elif grad_sample is not None:
                param.grad_sample = grad_sample * mask  # type: ignore[attr-defined]

    def after_noise(self) -> None:
        """Mask the noisy bank gradient; add the proximal gradient (both data-independent)."""
        with torch.no_grad():
            for param, mask in self.masks:
                if param.grad is not None:
                    param.grad.mul_(mask[0])
            for param, anchor in self.anchor:
                if param.grad is not None:
                    param.grad.add_(param.detach() - anchor, alpha=self.mu)

    def finish(self) -> None:
        """Put back the other sites' experts."""
        if self.expert is not None:
            self.expert.finish()


def _row_mask(bank: torch.Tensor, row: int) -> torch.Tensor:
    """``[1, K, 1, 1]``: 1 on the site's row, broadcast over a per-sample gradient ``[B, K, n, d]``."""
    mask = torch.zeros(1, bank.shape[0], *([1] * (bank.dim() - 1)), dtype=bank.dtype, device=bank.device)
    mask[0, row] = 1.0
    return mask


def _batches(private: PrivateTraining, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Physical batches until ``steps`` noisy steps are done, going over the loader as often as needed.

    A logical batch split into pieces ends with the piece after which the
    optimizer stepped (``_is_last_step_skipped`` is False).
    """
    done = 0
    while done < steps:
        for batch in private.loader:
            yield batch[0], batch[1]
            if not private.optimizer._is_last_step_skipped:
                done += 1
            if done == steps:
                return


def _dp_step(private: PrivateTraining, images: torch.Tensor, labels: torch.Tensor, extra: DPObjective) -> float:
    """One physical batch; an empty Poisson batch still adds noise (the mechanism's output)."""
    private.optimizer.zero_grad(set_to_none=True)  # keeps the clipped sum of a split logical batch
    weights = extra.expert_weights(len(labels), images.device)
    logits = private.module(images) if weights is None else private.module(images, expert_weights=weights)
    if len(labels) == 0:
        loss = logits.sum() * 0.0  # per-sample gradients of shape [0, ...]: the step is pure noise
    else:
        loss = nn.functional.cross_entropy(logits, labels, reduction="mean")
    loss.backward()
    extra.mask_per_sample()
    private.optimizer.step()
    return float(loss.item()) if math.isfinite(loss.item()) else 0.0


@torch.no_grad()
def patient_styles(model: nn.Module, dataset: SiteDataset, *, batch_size: int = 64) -> torch.Tensor:
    """The router's style of every image, averaged per patient: ``[num_patients, 2*dim]``."""
    device = select_device("auto")
    model.to(device).eval()
    styles = torch.cat(
        [
            model.styles(images.to(device)).cpu()  # type: ignore[operator]
            for images, _ in DataLoader(dataset, batch_size=batch_size)
        ]
    )
    _, images_of = group_by_patient(dataset.patient_ids)
    return torch.stack([styles[images].mean(dim=0) for images in images_of])


def set_private_prototype(model: nn.Module, expert_index: int, *, key: torch.Tensor, spread: float) -> None:
    """Write a released prototype into the router's row ``expert_index`` (see :mod:`fedeye.privacy.prototype`)."""
    from fedeye.models.router import ExpertRouter

    router = model.get_submodule("router")
    if not isinstance(router, ExpertRouter):
        raise TypeError(f"model.router is {type(router).__name__}, not an ExpertRouter")
    with torch.no_grad():
        router.keys[expert_index] = key.to(router.keys.dtype)
        router.spread[expert_index] = spread
        router.known[expert_index] = 1.0


def release_prototype(
    model: nn.Module,
    dataset: SiteDataset,
    *,
    noise_multiplier: float,
    batch_size: int = 64,
    rng_seed: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The site's style prototype through the Gaussian mechanism (once per run; the noise from ``os.urandom``)."""
    from fedeye.privacy.prototype import private_prototype

    generator = torch.Generator().manual_seed(_fresh_seed() if rng_seed is None else rng_seed)
    styles = patient_styles(model, dataset, batch_size=batch_size)
    return private_prototype(styles, noise_multiplier=noise_multiplier, generator=generator)
