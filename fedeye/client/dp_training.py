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

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import Dataset

import fedeye.models.grad_samplers  # noqa: F401  (registers the token modules' grad samplers)
from fedeye.client.training import TrainResult
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
    loader: DPDataLoader
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
        module=model, optimizer=torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        data_loader=loader, noise_multiplier=plan.noise_multiplier, max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # the loader already samples patients at plan.sample_rate
        loss_reduction="mean", noise_generator=_noise_generator(device, rng_seed),
    )
    module.forbid_grad_accumulation()
    optimizer.expected_batch_size = plan.sample_rate * patients.num_patients
    optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
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

    Afterwards Opacus' hooks are removed and ``model`` is a plain module
    holding the trained weights.

    Parameters
    ----------
    model, dataset, cfg, plan, max_grad_norm, server_round, rng_seed
        As in :func:`prepare_private`.

    Returns
    -------
    DPTrainResult
    """
    private = prepare_private(
        model, dataset, cfg=cfg, plan=plan, max_grad_norm=max_grad_norm, server_round=server_round, rng_seed=rng_seed
    )
    device = select_device(cfg.device)
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    try:
        for images, labels in _batches(private.loader, plan.steps):
            total_loss += _dp_step(private, images.to(device), labels.to(device)) * len(labels)
            seen += len(labels)
    finally:
        private.close()
    return DPTrainResult(
        loss=total_loss / max(seen, 1), num_examples=len(dataset), seconds=time.perf_counter() - start,
        steps=plan.steps, mean_batch_size=seen / plan.steps,
    )


def _batches(loader: DPDataLoader, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Exactly ``steps`` Poisson batches, going over the loader as often as needed."""
    done = 0
    while done < steps:
        for batch in loader:
            yield batch[0], batch[1]
            done += 1
            if done == steps:
                return


def _dp_step(private: PrivateTraining, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One noisy step; an empty Poisson batch still adds noise (the mechanism's output)."""
    private.optimizer.zero_grad(set_to_none=True)
    logits = private.module(images)
    if len(labels) == 0:
        loss = logits.sum() * 0.0  # per-sample gradients of shape [0, ...]: the step is pure noise
    else:
        loss = nn.functional.cross_entropy(logits, labels, reduction="mean")
    loss.backward()
    private.optimizer.step()
    return float(loss.item()) if math.isfinite(loss.item()) else 0.0
