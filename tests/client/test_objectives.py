"""Strategies that change local training: prompt experts, FedBN's local norms, FedProx."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedeye.client.app import app, norm_keys
from fedeye.client.training import LocalObjective, mean_expert_weights, set_site_prototype, train_local
from fedeye.config import RunConfig, TrainingConfig
from fedeye.models import ModelConfig, build_model
from fedeye.models.prompt_arrays import BANK_KEY, EXPERT_KEY, backbone_fingerprint, is_prompt_key
from fedeye.protocol import BACKBONE_SHA256 as BACKBONE_KEY
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset


def _cfg(tiny_sites: Path, **model: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"root": str(tiny_sites)},
            "model": {"img_size": 32, "num_domains": 3, **model},
            "training": {"batch_size": 16, "seed": 3},
        }
    )


def _request(
    cfg: RunConfig, arrays: dict[str, torch.Tensor], message_type: str = MessageType.TRAIN, **extra: object
) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    config = ConfigRecord({"run-config": cfg.to_json(), "server-round": 1, **extra})  # type: ignore[dict-item]
    return make_message(metadata, content=RecordDict({"arrays": ArrayRecord(arrays), "config": config}))


def _context(site: Path) -> Context:
    return Context(run_id=1, node_id=7, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={})


def _initial(cfg: RunConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.training.seed)  # as the coordinator builds it
    return build_model(cfg.model).state_dict()


def test_expert_round_sends_own_expert_and_trains_only_that_row(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites)
    initial = _initial(cfg)
    reply = app(_request(cfg, initial, **{"expert-index": 1, "expert-mixup": 0.5}), _context(tiny_sites / "site-1"))

    arrays = reply.content["arrays"]
    assert EXPERT_KEY in arrays and BANK_KEY not in arrays
    sent = arrays[EXPERT_KEY].numpy()
    assert sent.shape == tuple(initial[BANK_KEY].shape[1:])
    assert not np.allclose(sent, initial[BANK_KEY][1].numpy())  # its own expert trained
    assert reply.content["metrics"]["expert-index"] == 1
    # its style prototype goes with it: row 1 of the router's keys, now known
    assert arrays["expert/router.known"].numpy() == 1.0
    assert arrays["expert/router.keys"].numpy().shape == (2 * 96,) and np.any(arrays["expert/router.keys"].numpy() != 0)


def test_expert_training_leaves_other_sites_experts_untouched(tiny_sites: Path) -> None:
    cfg = ModelConfig(img_size=32, num_domains=3)
    model = build_model(cfg)
    before = model.domain_prompts.tokens.detach().clone()
    data = SiteDataset(open_site(tiny_sites / "site-3"), "train", image_size=32, augment=False)
    objective = LocalObjective(expert_index=2, expert_mixup=1.0)

    train_local(model, data, cfg=TrainingConfig(local_epochs=1, batch_size=16, weight_decay=0.5), objective=objective)

    after = model.domain_prompts.tokens.detach()
    assert torch.equal(after[:2], before[:2])  # mixup touched them in the forward pass; they are restored
    assert not torch.equal(after[2], before[2])


def test_router_sends_each_sites_images_to_its_own_prototype(tiny_sites: Path) -> None:
    cfg = ModelConfig(img_size=32, num_domains=3)
    model = build_model(cfg)
    data = {
        k: SiteDataset(open_site(tiny_sites / f"site-{k + 1}"), "train", image_size=32, augment=False) for k in range(3)
    }
    untrained = mean_expert_weights(model, data[0])
    assert untrained is not None and np.allclose(untrained, 1 / 3)  # no prototype yet: the uniform mix
    for k, dataset in data.items():
        set_site_prototype(model, dataset, k)
    for k, dataset in data.items():
        weights = mean_expert_weights(model, dataset)
        assert weights is not None and int(np.argmax(weights)) == k and weights[k] > 0.5


def test_unknown_experts_get_no_weight(tiny_sites: Path) -> None:
    model = build_model(ModelConfig(img_size=32, num_domains=3))
    set_site_prototype(model, SiteDataset(open_site(tiny_sites / "site-1"), "train", image_size=32), 1)
    weights = mean_expert_weights(model, SiteDataset(open_site(tiny_sites / "site-2"), "test", image_size=32))
    assert weights is not None and weights.tolist() == [0.0, 1.0, 0.0]


def test_prompt_mode_receives_only_prompt_parts_and_checks_the_backbone(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites, mode="prompt")
    initial = _initial(cfg)
    prompt_parts = {k: v for k, v in initial.items() if is_prompt_key(k)}
    fingerprint = backbone_fingerprint(initial)
    site = tiny_sites / "site-3"

    reply = app(_request(cfg, prompt_parts, **{"expert-index": 0, BACKBONE_KEY: fingerprint}), _context(site))
    assert not reply.has_error()
    assert all(is_prompt_key(k) or k.startswith("expert/") for k in reply.content["arrays"])

    failed = app(_request(cfg, prompt_parts, **{"expert-index": 0, BACKBONE_KEY: "0" * 64}), _context(site))
    assert failed.content["site"]["category"] == "model-error" and "arrays" not in failed.content


def test_evaluation_reports_the_routers_mix_per_expert(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites)
    reply = app(_request(cfg, _initial(cfg), MessageType.EVALUATE, split="test"), _context(tiny_sites / "site-2"))
    metrics = reply.content["metrics"]
    mix = [metrics[f"expert.{k}.weight"] for k in range(3)]
    assert mix == pytest.approx([1 / 3] * 3)  # no site has reported a prototype yet


def test_fedbn_keeps_the_sites_own_norms_between_rounds(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites, num_domains=0)
    initial = _initial(cfg)
    site = tiny_sites / "site-3"
    context = _context(site)  # the node's Flower context: its state persists between rounds
    first = app(_request(cfg, initial, **{"local-norms": True}), context)
    keys = norm_keys(build_model(cfg.model))
    own = {k: first.content["arrays"][k].numpy() for k in keys}

    # round 2: the coordinator sends averaged norms (here: the initial ones); the site trains from its own
    second = app(
        _request(cfg, initial, message_type=MessageType.EVALUATE, **{"local-norms": True, "split": "test"}), context
    )
    plain = app(_request(cfg, initial, message_type=MessageType.EVALUATE, split="test"), _context(site))
    assert keys and all(not np.allclose(own[k], initial[k].numpy()) for k in list(keys)[:3])
    assert second.content["metrics"]["loss"] != plain.content["metrics"]["loss"]


def test_fedprox_term_keeps_the_model_closer_to_the_global_one(tiny_sites: Path) -> None:
    data = SiteDataset(open_site(tiny_sites / "site-1"), "train", image_size=32, augment=False)
    distances = []
    for mu in (0.0, 50.0):
        torch.manual_seed(0)
        model = build_model(ModelConfig(img_size=32))
        start = [p.detach().clone() for p in model.parameters()]
        train_local(
            model,
            data,
            cfg=TrainingConfig(local_epochs=2, batch_size=16, lr=3e-3),
            objective=LocalObjective(proximal_mu=mu),
        )
        distances.append(sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start)))
    assert distances[1] < 0.5 * distances[0]


def test_scalar_rows_keep_their_shape_in_the_reply(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites)
    reply = app(_request(cfg, _initial(cfg), **{"expert-index": 0}), _context(tiny_sites / "site-2"))
    assert reply.content["arrays"]["expert/router.spread"].numpy().shape == ()  # row 0 of a [K] tensor


def test_router_view_stays_fixed_while_the_backbone_trains(tiny_sites: Path) -> None:
    model = build_model(ModelConfig(img_size=32, num_domains=3))
    style, patch = model.style_embed.weight.clone(), model.patch_embed.proj.weight.detach().clone()
    torch.testing.assert_close(style, patch)  # a copy of the patch embedding as built
    data = SiteDataset(open_site(tiny_sites / "site-1"), "train", image_size=32)
    train_local(
        model, data, cfg=TrainingConfig(local_epochs=1, batch_size=16), objective=LocalObjective(expert_index=0)
    )
    assert not torch.equal(model.patch_embed.proj.weight, patch)
    assert torch.equal(model.style_embed.weight, style)  # prototypes from earlier rounds stay comparable


def _dp_context(tiny_sites: Path, tmp_path: Path, epsilon: float = 8.0) -> Context:
    policy = tmp_path / "site.toml"
    policy.write_text(f"[privacy]\nrequire_dp = true\nepsilon = {epsilon}\n")
    return Context(
        run_id=1,
        node_id=7,
        node_config={"site-dir": str(tiny_sites / "site-1"), "site-config": str(policy)},
        state=RecordDict(),
        run_config={},
    )


@pytest.mark.filterwarnings("ignore")
def test_a_site_requiring_dp_trains_its_expert_and_releases_its_prototype_once(
    tiny_sites: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_sites)
    initial, context = _initial(cfg), _dp_context(tiny_sites, tmp_path)
    first = app(_request(cfg, initial, **{"expert-index": 1, "expert-mixup": 0.5}), context)
    second = app(_request(cfg, initial, **{"expert-index": 1}), context)

    arrays = first.content["arrays"]
    assert EXPERT_KEY in arrays and BANK_KEY not in arrays
    assert not np.allclose(arrays[EXPERT_KEY].numpy(), initial[BANK_KEY][1].numpy())
    key = arrays["expert/router.keys"].numpy()
    assert np.all(np.isfinite(key)) and arrays["expert/router.known"].numpy() == 1.0
    np.testing.assert_array_equal(second.content["arrays"]["expert/router.keys"].numpy(), key)  # released once, re-sent
    m1, m2 = first.content["metrics"], second.content["metrics"]
    assert m1["expert-index"] == 1 and 0 < m1["dp-epsilon"] < m2["dp-epsilon"] <= 8.0
    assert m1["dp-steps"] == (m2["dp-steps"] - m1["dp-steps"]) + 1  # round 1: DP-SGD steps + the prototype release


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("extra", [{"proximal-mu": 0.1}, {"local-norms": True}])
def test_fedprox_and_fedbn_train_a_dp_round(tiny_sites: Path, tmp_path: Path, extra: dict[str, object]) -> None:
    cfg = RunConfig.model_validate(
        {"data": {"root": str(tiny_sites)}, "model": {"img_size": 32}, "training": {"batch_size": 8, "seed": 3}}
    )
    torch.manual_seed(3)
    initial = build_model(cfg.model).state_dict()
    context = _dp_context(tiny_sites, tmp_path)
    reply = app(_request(cfg, initial, **extra), context)

    assert reply.content["site"]["status"] == "ok" and 0 < reply.content["metrics"]["dp-epsilon"] <= 8.0
    trained = reply.content["arrays"]
    assert not np.allclose(trained["head.weight"].numpy(), initial["head.weight"].numpy())
    if "local-norms" in extra:  # the LayerNorms trained under DP stay at the site for the next round
        kept = context.state["fedeye-local-norms"]
        assert set(kept) == norm_keys(build_model(cfg.model)) and np.allclose(
            kept["norm.weight"].numpy(), trained["norm.weight"].numpy()
        )


def test_client_level_dp_with_prompt_experts_is_accepted_in_the_config() -> None:
    cfg = RunConfig.model_validate(
        {"strategy": {"name": "prompt-experts"}, "privacy": {"client_level": "fixed", "enabled": True}}
    )
    assert cfg.privacy.client_level == "fixed"
