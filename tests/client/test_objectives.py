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
from fedeye.client.training import LocalObjective, train_local
from fedeye.config import RunConfig, TrainingConfig
from fedeye.errors import ModelError
from fedeye.models import ModelConfig, build_model
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset
from fedeye.strategies.prompt_experts import BACKBONE_KEY, BANK_KEY, EXPERT_KEY, backbone_fingerprint, is_prompt_key


def _cfg(tiny_sites: Path, **model: object) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"root": str(tiny_sites)}, "model": {"img_size": 32, "num_domains": 3, **model},
        "training": {"batch_size": 16, "seed": 3},
    })


def _request(cfg: RunConfig, arrays: dict[str, torch.Tensor], message_type: str = MessageType.TRAIN, **extra: object) -> Message:
    metadata = Metadata(
        run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type,
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
    reply = app(_request(cfg, initial, **{"expert-index": 1, "expert-mixup": 0.5, "router-loss": 1.0}),
                _context(tiny_sites / "site-1"))

    arrays = reply.content["arrays"]
    assert EXPERT_KEY in arrays and BANK_KEY not in arrays
    sent = arrays[EXPERT_KEY].numpy()
    assert sent.shape == tuple(initial[BANK_KEY].shape[1:])
    assert not np.allclose(sent, initial[BANK_KEY][1].numpy())  # its own expert trained
    assert reply.content["metrics"]["expert-index"] == 1
    assert not np.allclose(arrays["router.keys.weight"].numpy(), initial["router.keys.weight"].numpy())


def test_expert_training_leaves_other_sites_experts_untouched(tiny_sites: Path) -> None:
    cfg = ModelConfig(img_size=32, num_domains=3)
    model = build_model(cfg)
    before = model.domain_prompts.tokens.detach().clone()
    data = SiteDataset(open_site(tiny_sites / "site-3"), "train", image_size=32, augment=False)
    objective = LocalObjective(expert_index=2, expert_mixup=1.0, router_loss=1.0)

    train_local(model, data, cfg=TrainingConfig(local_epochs=1, batch_size=16, weight_decay=0.5), objective=objective)

    after = model.domain_prompts.tokens.detach()
    assert torch.equal(after[:2], before[:2])  # mixup touched them in the forward pass; they are restored
    assert not torch.equal(after[2], before[2])


def test_router_learns_the_own_domain(tiny_sites: Path) -> None:
    cfg = ModelConfig(img_size=32, num_domains=3)
    model = build_model(cfg)
    data = SiteDataset(open_site(tiny_sites / "site-3"), "train", image_size=32, augment=False)
    images = torch.stack([data[i][0] for i in range(len(data))])
    objective = LocalObjective(expert_index=2, expert_mixup=0.5, router_loss=1.0)
    train_local(model, data, cfg=TrainingConfig(local_epochs=8, batch_size=16, lr=3e-3), objective=objective)
    with torch.no_grad():
        weights = torch.softmax(model.routing_logits(images), dim=-1).mean(dim=0)
    assert weights[2] > 0.6


def test_prompt_mode_receives_only_prompt_parts_and_checks_the_backbone(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites, mode="prompt")
    initial = _initial(cfg)
    prompt_parts = {k: v for k, v in initial.items() if is_prompt_key(k)}
    fingerprint = backbone_fingerprint(initial)
    site = tiny_sites / "site-3"

    reply = app(_request(cfg, prompt_parts, **{"expert-index": 0, BACKBONE_KEY: fingerprint}), _context(site))
    assert not reply.has_error()
    assert all(is_prompt_key(k) or k == EXPERT_KEY for k in reply.content["arrays"])

    with pytest.raises(ModelError, match="frozen backbone .* differs from the coordinator's"):  # Flower sends it as an error reply
        app(_request(cfg, prompt_parts, **{"expert-index": 0, BACKBONE_KEY: "0" * 64}), _context(site))


def test_evaluation_reports_the_routers_mix_per_expert(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites)
    reply = app(_request(cfg, _initial(cfg), MessageType.EVALUATE, split="test"), _context(tiny_sites / "site-2"))
    metrics = reply.content["metrics"]
    mix = [metrics[f"expert.{k}.weight"] for k in range(3)]
    assert sum(mix) == pytest.approx(1.0, abs=1e-5) and all(0 < w < 1 for w in mix)


def test_fedbn_keeps_the_sites_own_norms_between_rounds(tiny_sites: Path) -> None:
    cfg = _cfg(tiny_sites, num_domains=0)
    initial = _initial(cfg)
    site = tiny_sites / "site-3"
    context = _context(site)  # the node's Flower context: its state persists between rounds
    first = app(_request(cfg, initial, **{"local-norms": True}), context)
    keys = norm_keys(build_model(cfg.model))
    own = {k: first.content["arrays"][k].numpy() for k in keys}

    # round 2: the coordinator sends averaged norms (here: the initial ones); the site trains from its own
    second = app(_request(cfg, initial, message_type=MessageType.EVALUATE, **{"local-norms": True, "split": "test"}),
                 context)
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
        train_local(model, data, cfg=TrainingConfig(local_epochs=2, batch_size=16, lr=3e-3),
                    objective=LocalObjective(proximal_mu=mu))
        distances.append(sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start)))
    assert distances[1] < 0.5 * distances[0]
