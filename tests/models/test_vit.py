"""PromptViT: shapes, token layout, domain-expert selection and mixing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from opacus.validators import ModuleValidator

from fedeye.errors import ModelError
from fedeye.models import ModelConfig, PromptViT, build_model


@pytest.mark.parametrize(
    ("mode", "shared", "domains"),
    # prompt mode without any prompt is rejected by ModelConfig
    [
        (mode, s, d)
        for mode in ("full", "prompt")
        for s, d in [(4, 0), (4, 3), (0, 3), (0, 0)]
        if mode == "full" or s + d
    ],
)
def test_shapes(mode: str, shared: int, domains: int) -> None:
    cfg = ModelConfig(mode=mode, num_shared_prompts=shared, num_domains=domains, num_classes=5)  # type: ignore[arg-type]
    model = build_model(cfg)
    images = torch.randn(2, 3, 64, 64)
    domain = torch.tensor([0, 2]) if domains else None

    feats = model.forward_features(images, domain=domain)
    logits = model(images, domain=domain)

    prefix = 1 + shared + (4 if domains else 0)
    assert model.num_prefix_tokens == prefix
    assert feats.shape == (2, prefix + 64, 96)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 96)
    assert logits.shape == (2, 5)


def test_no_bare_parameters_on_the_model(make_vit: Callable[..., PromptViT]) -> None:
    """Opacus falls back to functorch for a module holding a parameter directly."""
    model = make_vit()
    assert list(model.parameters(recurse=False)) == []


def test_prompts_follow_cls_and_skip_position_embedding(make_vit: Callable[..., PromptViT]) -> None:
    model = make_vit(num_domains=2)
    patches = model.patch_embed(torch.randn(1, 3, 16, 16))
    weights = torch.tensor([[0.0, 1.0]])

    tokens = model._pos_embed(patches, weights)

    pos = model.pos_embed.weight
    torch.testing.assert_close(tokens[:, 0], model.cls_token.tokens[:, 0] + pos[:, 0])
    torch.testing.assert_close(tokens[:, 1:3], model.shared_prompts.tokens)  # type: ignore[union-attr]
    torch.testing.assert_close(tokens[0, 3:5], model.domain_prompts.tokens[1])  # type: ignore[union-attr]
    torch.testing.assert_close(tokens[:, 5:], patches + pos[:, 1:])


def test_domain_index_equals_one_hot_expert_weights(make_vit: Callable[..., PromptViT]) -> None:
    model = make_vit().eval()
    images = torch.randn(3, 3, 16, 16)
    domain = torch.tensor([2, 0, 1])

    by_index = model(images, domain=domain)
    by_weights = model(images, expert_weights=torch.nn.functional.one_hot(domain, 3).float())

    torch.testing.assert_close(by_index, by_weights)


def test_experts_start_identical(make_vit: Callable[..., PromptViT]) -> None:
    bank = make_vit().domain_prompts.tokens
    assert all(torch.equal(bank[0], bank[k]) for k in range(1, 3)) and bank.abs().sum() > 0


def test_different_domains_give_different_outputs(make_vit: Callable[..., PromptViT]) -> None:
    model = make_vit().eval()
    with torch.no_grad():  # as after each site trained its own expert
        model.domain_prompts.tokens.add_(torch.randn_like(model.domain_prompts.tokens))
    image = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    logits = model(image, domain=torch.tensor([0, 1, 2]))
    assert not torch.allclose(logits[0], logits[1])


def test_no_domain_means_uniform_mix(make_vit: Callable[..., PromptViT]) -> None:
    model = make_vit().eval()
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(images), model(images, expert_weights=torch.full((2, 3), 1 / 3)))


def test_domain_is_ignored_without_domain_prompts(make_vit: Callable[..., PromptViT]) -> None:
    model = make_vit(num_domains=0).eval()
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(images), model(images, domain=torch.tensor([5, 7])))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": torch.tensor([0, 3])}, r"\[0, 2\]"),
        ({"domain": torch.tensor([0])}, "shape"),
        ({"domain": torch.tensor([0.0, 1.0])}, "integer"),
        ({"expert_weights": torch.ones(2, 2)}, r"expected \(2, 3\)"),
        ({"domain": torch.tensor([0, 1]), "expert_weights": torch.ones(2, 3)}, "not both"),
    ],
)
def test_bad_domain_inputs(make_vit: Callable[..., PromptViT], kwargs: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        make_vit()(torch.randn(2, 3, 16, 16), **kwargs)


def test_opacus_module_validator_accepts_the_model() -> None:
    model = build_model(ModelConfig(num_domains=2))
    assert ModuleValidator.validate(model, strict=False) == []


def test_avg_pooling_averages_the_patch_tokens_only() -> None:
    model = build_model(ModelConfig(pool="avg", num_domains=2))
    feats = torch.randn(2, model.num_prefix_tokens + 64, 96)
    feats[:, : model.num_prefix_tokens] = 1e6  # class token and prompts must not enter the mean
    torch.testing.assert_close(model.pool(feats), feats[:, model.num_prefix_tokens :].mean(dim=1))
    assert build_model(ModelConfig()).pool(feats).equal(feats[:, 0])  # cls: the default, as timm


def test_feature_standardiser_sits_between_the_norm_and_the_head() -> None:
    model = build_model(ModelConfig()).eval()
    feats = torch.randn(3, model.num_prefix_tokens + 64, 96)
    model.feature_norm.mean.fill_(0.5)
    model.feature_norm.std.fill_(2.0)
    expected = (model.norm(feats[:, 0]) - 0.5) / 2.0
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), expected)
    assert not any(p.requires_grad for p in model.feature_norm.parameters())  # buffers: never trained
