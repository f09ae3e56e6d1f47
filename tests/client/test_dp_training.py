"""Patient-level DP-SGD at a site: patient sampling and training with Opacus."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule
from torch.nn.functional import cross_entropy

from fedeye.client import dp_training
from fedeye.client.dp_training import (
    PatientSampledDataset,
    PrivateTraining,
    prepare_private,
    train_local_dp,
)
from fedeye.config import TrainingConfig
from fedeye.models import ModelConfig, PromptViT, build_model, model_state
from fedeye.privacy.planning import RoundPlan
from fedeye.sites.dataset import SiteDataset

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing", "ignore:Secure RNG turned off", "ignore:Optimal order"
)
MODES = ["full", "prompt", "head"]
CFG = TrainingConfig(batch_size=6, lr=1e-2, device="cpu", seed=1)


def _plan(num_patients: int, *, steps: int = 3, sigma: float = 1.0) -> RoundPlan:
    """A fixed plan (no calibration) with about 6 patients per batch."""
    return RoundPlan(
        sample_rate=min(1.0, CFG.batch_size / num_patients),
        steps=steps,
        noise_multiplier=sigma,
        delta=1e-3,
        epsilon_before=0.0,
        epsilon_after=1.0,
        accountant="rdp",
        epsilon_budget=8.0,
    )


def _model(mode: str) -> PromptViT:
    torch.manual_seed(0)
    prompts = {"num_shared_prompts": 0} if mode == "head" else {}  # a linear probe has no prompt tokens
    return build_model(ModelConfig(img_size=32, mode=mode, **prompts))  # type: ignore[arg-type]


# ------------------------------------------------------------------ PatientSampledDataset


def test_one_item_per_patient(train_split: SiteDataset) -> None:
    patients = PatientSampledDataset(train_split, seed=0)

    assert len(patients) == patients.num_patients == len(set(train_split.patient_ids))
    assert sum(len(images) for images in patients.images_of) == len(train_split)


def test_items_come_from_the_right_patient(train_split: SiteDataset) -> None:
    patients = PatientSampledDataset(train_split, seed=0)

    for index in range(len(patients)):
        for _ in range(3):
            image, label = patients[index]
            owners = [i for i in range(len(train_split)) if torch.equal(train_split[i][0], image)]
            assert owners and all(train_split.patient_ids[i] == patients.patients[index] for i in owners)
            assert label in {int(train_split.labels[i]) for i in owners}


def test_draws_are_deterministic_with_the_seed(train_split: SiteDataset) -> None:
    def draws(seed: int) -> list[torch.Tensor]:
        patients = PatientSampledDataset(train_split, seed=seed)
        return [patients[i % len(patients)][0] for i in range(60)]

    same, other = draws(3), draws(4)

    assert all(torch.equal(a, b) for a, b in zip(draws(3), same, strict=True))
    assert any(len(images) > 1 for images in PatientSampledDataset(train_split, seed=0).images_of)
    assert not all(torch.equal(a, b) for a, b in zip(same, other, strict=True))


# ------------------------------------------------------------------ train_local_dp


def _per_sample_loop(model: PromptViT, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference: each sample's own loss gradient, computed alone."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = [
        torch.autograd.grad(cross_entropy(model(images[i : i + 1]), labels[i : i + 1]), list(params.values()))
        for i in range(len(images))
    ]
    return {name: torch.stack([row[j] for row in rows]) for j, name in enumerate(params)}


@pytest.mark.parametrize("mode", MODES)
def test_per_sample_gradients_under_the_dp_loader_match_a_loop(train_split: SiteDataset, mode: str) -> None:
    model = _model(mode).double()
    private = prepare_private(
        model, train_split, cfg=CFG, plan=_plan(13), max_grad_norm=1.0, server_round=1, rng_seed=0
    )
    images, labels = next(iter(private.loader))
    images = images.double()
    assert len(labels) > 1

    cross_entropy(private.module(images), labels).backward()  # mean reduction, as in training
    actual = {
        n.removeprefix("_module."): p.grad_sample for n, p in private.module.named_parameters() if p.requires_grad
    }
    private.optimizer.zero_grad()
    private.close()
    expected = _per_sample_loop(model, images, labels)

    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_no_functorch_fallback(train_split: SiteDataset, mode: str) -> None:
    private = prepare_private(_model(mode), train_split, cfg=CFG, plan=_plan(13), max_grad_norm=1.0, server_round=1)

    hooked = {type(m) for m in private.module.modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    fallback = [m for m in private.module.modules() if hasattr(m, "ft_compute_sample_grad")]
    private.close()

    assert hooked <= set(GradSampleModule.GRAD_SAMPLERS)
    assert not fallback


@pytest.mark.parametrize("mode", MODES)
def test_train_local_dp_runs_the_planned_steps_and_trains_the_model(
    train_split: SiteDataset, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, plan = _model(mode), _plan(13, steps=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: list[PrivateTraining] = []
    real = dp_training.prepare_private
    monkeypatch.setattr(dp_training, "prepare_private", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])

    result = train_local_dp(model, train_split, cfg=CFG, plan=plan, max_grad_norm=1.0, server_round=1, rng_seed=2)

    # the engine's own accountant saw exactly plan.steps steps at the planned rate and noise
    assert seen[0].engine.accountant.history == [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    assert result.steps == plan.steps and result.mean_batch_size > 0
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != param.requires_grad, name


def test_model_trains_twice_and_stays_a_plain_module(train_split: SiteDataset) -> None:
    model, plan = _model("prompt"), _plan(13)
    keys = set(model.state_dict())

    for server_round in (1, 2):
        train_local_dp(model, train_split, cfg=CFG, plan=plan, max_grad_norm=1.0, server_round=server_round)

    assert set(model_state(model)) == keys
    assert not any(k.startswith("_module.") for k in model_state(model))
    assert not hasattr(model, "autograd_grad_sample_hooks")
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(
        hasattr(p, "grad_sample") or hasattr(p, "summed_grad") or p.grad is not None for p in model.parameters()
    )


def test_learning_rate_follows_the_runs_schedule_as_without_dp(
    train_split: SiteDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    adamw = torch.optim.AdamW

    def recording(params: object, **kwargs: float) -> torch.optim.AdamW:
        seen.append(kwargs["lr"])
        return adamw(params, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    cfg = CFG.model_copy(update={"rounds": 4, "lr_schedule": "cosine"})
    for server_round in (1, 3):
        train_local_dp(
            _model("prompt"), train_split, cfg=cfg, plan=_plan(13), max_grad_norm=1.0, server_round=server_round
        )

    assert seen == pytest.approx([1e-2, 1e-2 * (1 + math.cos(math.pi * 2 / 4)) / 2])


def test_empty_poisson_batches_still_step(train_split: SiteDataset) -> None:
    model = _model("prompt")
    plan = RoundPlan(
        sample_rate=0.001,
        steps=3,
        noise_multiplier=1.0,
        delta=1e-3,
        epsilon_before=0.0,
        epsilon_after=0.1,
        accountant="rdp",
        epsilon_budget=1.0,
    )
    head = model.head.weight.detach().clone()

    result = train_local_dp(model, train_split, cfg=CFG, plan=plan, max_grad_norm=1.0, server_round=1, rng_seed=0)

    assert result.steps == 3 and result.mean_batch_size == 0.0
    assert not torch.equal(model.head.weight, head)  # noise only, but the step happened


# ------------------------------------------------------------------ local objectives under DP


def _expert_model() -> PromptViT:
    torch.manual_seed(0)
    return build_model(ModelConfig(img_size=32, num_domains=3, mode="prompt"))


def test_dp_with_prompt_experts_changes_only_the_sites_row_and_clips_what_is_released(
    train_split: SiteDataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opacus.optimizers import DPOptimizer

    from fedeye.client.training import LocalObjective

    model = _expert_model()
    before = model.domain_prompts.tokens.detach().clone()  # type: ignore[union-attr]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (bank per-sample grads, per-sample norms) at clipping
    original = DPOptimizer.clip_and_accumulate

    def spy(self: DPOptimizer) -> None:
        norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in self.grad_samples], dim=1).norm(dim=1)
        bank = next(p for p in self.params if p.shape == before.shape)
        seen.append((bank.grad_sample.detach().clone(), norms))
        original(self)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    objective = LocalObjective(expert_index=1, expert_mixup=1.0)  # mixup: every image also uses the other experts
    train_local_dp(
        model,
        train_split,
        cfg=CFG,
        plan=_plan(len(set(train_split.patient_ids)), sigma=0.5),
        max_grad_norm=0.1,
        server_round=1,
        rng_seed=0,
        objective=objective,
    )

    after = model.domain_prompts.tokens.detach()  # type: ignore[union-attr]
    assert torch.equal(after[[0, 2]], before[[0, 2]]) and not torch.equal(after[1], before[1])
    assert seen and all(float(g[:, [0, 2]].abs().max()) == 0.0 for g, _ in seen if len(g))  # masked before clipping
    assert any(float(g[:, 1].abs().max()) > 0 for g, _ in seen if len(g))
    # the clip factor min(1, C / norm) bounds every patient's whole trained vector (bank row included) by C
    assert all(float((n * (0.1 / (n + 1e-6)).clamp(max=1.0)).max()) <= 0.1 + 1e-6 for _, n in seen if len(n))


def test_fedprox_gradient_is_added_after_the_noise(train_split: SiteDataset) -> None:
    from fedeye.client.training import LocalObjective

    plan = _plan(len(set(train_split.patient_ids)), steps=2)
    results = []
    for mu in (0.0, 5.0):
        model = _model("prompt")
        start = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        train_local_dp(
            model,
            train_split,
            cfg=CFG,
            plan=plan,
            max_grad_norm=1.0,
            server_round=1,
            rng_seed=0,
            objective=LocalObjective(proximal_mu=mu),
        )
        results.append(
            sum(
                float((p.detach() - s).norm())
                for p, s in zip([p for p in model.parameters() if p.requires_grad], start, strict=True)
            )
        )
    assert results[0] != results[1]  # same batches and noise: only the proximal gradient differs


def test_large_logical_batches_are_split_but_step_once(train_split: SiteDataset) -> None:
    model = _model("prompt")
    n = len(set(train_split.patient_ids))
    plan = RoundPlan(
        sample_rate=1.0,
        steps=3,
        noise_multiplier=1.0,
        delta=1e-3,
        epsilon_before=0.0,
        epsilon_after=1.0,
        accountant="rdp",
        epsilon_budget=8.0,
    )
    result = train_local_dp(
        model, train_split, cfg=CFG, plan=plan, max_grad_norm=1.0, server_round=1, rng_seed=0, max_physical_batch=4
    )
    assert result.steps == 3 and result.mean_batch_size == pytest.approx(n)  # 3 logical batches of every patient
