"""Opacus: exact per-sample gradients for every token module, no functorch fallback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch.nn.functional import cross_entropy

import fedeye.models.grad_samplers  # noqa: F401  (registers the token modules' grad samplers)
from fedeye.models import ModelConfig, PromptViT, build_model, set_trainable
from fedeye.models.tokens import DomainPrompts, LearnedTokens, PositionEmbedding

MODES = ["full", "prompt"]


def _per_sample_loop(
    model: PromptViT, images: torch.Tensor, labels: torch.Tensor, extra: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Reference: the gradient of each sample's loss, computed alone with autograd."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    for i in range(len(images)):
        kwargs = {k: v[i : i + 1] for k, v in extra.items()}
        loss = cross_entropy(model(images[i : i + 1], **kwargs), labels[i : i + 1], reduction="sum")
        rows.append(torch.autograd.grad(loss, list(params.values())))
    return {name: torch.stack([row[j] for row in rows]) for j, name in enumerate(params)}


def _opacus_grad_samples(
    model: PromptViT, images: torch.Tensor, labels: torch.Tensor, extra: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    wrapped = GradSampleModule(model, loss_reduction="sum")
    cross_entropy(wrapped(images, **extra), labels, reduction="sum").backward()
    samples = {n.removeprefix("_module."): p.grad_sample for n, p in wrapped.named_parameters() if p.requires_grad}
    wrapped.remove_hooks()
    return samples


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("routing", ["domain", "expert_weights"])
def test_per_sample_gradients_match_a_loop(make_vit: Callable[..., PromptViT], mode: str, routing: str) -> None:
    model = make_vit().double()
    set_trainable(model, mode)  # type: ignore[arg-type]
    images, labels = torch.randn(4, 3, 16, 16, dtype=torch.double), torch.tensor([0, 1, 2, 1])
    extra = (
        {"domain": torch.tensor([0, 2, 1, 2])}
        if routing == "domain"
        else {"expert_weights": torch.softmax(torch.randn(4, 3, dtype=torch.double), dim=1)}
    )

    expected = _per_sample_loop(model, images, labels, extra)
    actual = _opacus_grad_samples(model, images, labels, extra)

    assert actual.keys() == expected.keys()
    token_params = {"cls_token.tokens", "pos_embed.weight"} if mode == "full" else set()
    assert token_params | {"shared_prompts.tokens", "domain_prompts.tokens"} <= actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_opacus_uses_registered_samplers_not_functorch(make_vit: Callable[..., PromptViT], mode: str) -> None:
    model = make_vit()
    set_trainable(model, mode)  # type: ignore[arg-type]

    wrapped = GradSampleModule(model)

    hooked = {type(m) for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    assert {LearnedTokens, DomainPrompts} <= hooked
    assert (PositionEmbedding in hooked) == (mode == "full")
    assert hooked <= set(GradSampleModule.GRAD_SAMPLERS)
    # Opacus' prepare_layer() marks every module it hands to functorch with this attribute.
    assert not [m for m in wrapped.modules() if hasattr(m, "ft_compute_sample_grad")]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")
@pytest.mark.parametrize("mode", MODES)
def test_make_private_trains_a_step(mode: str) -> None:
    model = build_model(ModelConfig(mode=mode, num_domains=2))  # type: ignore[arg-type]
    trainable = [p for p in model.parameters() if p.requires_grad]
    data = torch.utils.data.TensorDataset(
        torch.randn(8, 3, 64, 64), torch.randint(0, 2, (8,)), torch.randint(0, 2, (8,))
    )
    before = [p.detach().clone() for p in trainable]
    engine = PrivacyEngine()
    private, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(trainable, lr=0.1),
        data_loader=torch.utils.data.DataLoader(data, batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )

    images, labels, _ = next(iter(loader))
    cross_entropy(private(images), labels).backward()  # uniform mix (no prototypes yet): every expert trains
    optimizer.step()

    assert all(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))
    assert engine.get_epsilon(delta=1e-5) > 0
