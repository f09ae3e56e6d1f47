"""DP with every registered strategy: a site trains with DP-SGD, and client-level DP wraps the strategy.

For each strategy in the registry: the coordinator's training messages go
through the real ClientApp at sites whose policy requires DP-SGD, and the
strategy accepts and aggregates the private replies; then the same replies
pass through the client-level DP wrapper, whose result is clipped.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedeye.client.app import app
from fedeye.config import RunConfig, StrategyConfig
from fedeye.models import build_model
from fedeye.models.prompt_arrays import BANK_KEY
from fedeye.privacy.policy import PrivacyConfig
from fedeye.strategies import build_strategy, list_strategies
from fedeye.strategies.client_dp import wrap_client_dp
from tests.strategies.conftest import FakeGrid

pytestmark = pytest.mark.filterwarnings("ignore")
NODES = [1, 2]


def _cfg(tiny_sites: Path, name: str) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"root": str(tiny_sites)},
            "model": {"img_size": 32, "num_domains": 2, "mode": "prompt"},
            "strategy": {"name": name, "min_train_nodes": 2, "min_available_nodes": 2},
            "training": {"batch_size": 8, "rounds": 2},
            "privacy": {"enabled": True, "epsilon": 50.0, "noise_multiplier": 1.0},
        }
    )


def _site_replies(cfg: RunConfig, strategy: object, tiny_sites: Path, initial: ArrayRecord) -> list[Message]:
    config = ConfigRecord({"run-config": cfg.to_json(), "server-round": 1})
    replies = []
    for message in strategy.configure_train(1, initial, config, FakeGrid(NODES)):  # type: ignore[attr-defined]
        node = message.metadata.dst_node_id
        metadata = Metadata(
            run_id=1,
            message_id=f"m{node}",
            src_node_id=0,
            dst_node_id=node,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=600.0,
            message_type=MessageType.TRAIN,
        )
        context = Context(
            run_id=1,
            node_id=node,
            node_config={"site-dir": str(tiny_sites / f"site-{node}")},
            state=RecordDict(),
            run_config={},
        )
        reply = app(make_message(metadata, content=message.content), context)
        replies.append(
            make_message(
                Metadata(
                    run_id=1,
                    message_id="",
                    src_node_id=node,
                    dst_node_id=0,
                    reply_to_message_id=f"m{node}",
                    group_id="1",
                    created_at=time.time(),
                    ttl=600.0,
                    message_type=MessageType.TRAIN,
                ),
                content=reply.content,
            )
        )
    return replies


@pytest.mark.parametrize("name", list_strategies())
def test_every_strategy_aggregates_dp_sgd_replies_and_runs_under_client_level_dp(
    name: str,
    tiny_sites: Path,
    flower_task: None,
) -> None:
    cfg = _cfg(tiny_sites, name)
    torch.manual_seed(0)
    initial = ArrayRecord(build_model(cfg.model).state_dict())
    strategy = build_strategy(StrategyConfig.model_validate(cfg.strategy.model_dump()))
    replies = _site_replies(cfg, strategy, tiny_sites, initial)

    assert all(r.content["metrics"]["dp-epsilon"] > 0 for r in replies)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and all(np.all(np.isfinite(a.numpy())) for a in arrays.values())

    dp = PrivacyConfig(client_level="fixed", client_noise_multiplier=1e-6, client_clipping_norm=0.01)
    wrapped = wrap_client_dp(
        build_strategy(StrategyConfig.model_validate(cfg.strategy.model_dump())), dp, num_sampled_sites=2
    )
    list(
        wrapped.configure_train(
            1, initial, ConfigRecord({"run-config": cfg.to_json(), "server-round": 1}), FakeGrid(NODES)
        )
    )
    clipped, _ = wrapped.aggregate_train(1, replies)
    assert clipped is not None
    moved = {k: clipped[k].numpy().astype(np.float64) - initial[k].numpy() for k in clipped}
    if name == "prompt-experts":  # each row is one site's clipped change; the shared parts their mean
        rows = moved.pop(BANK_KEY)
        assert all(float(np.linalg.norm(r)) <= 0.01 + 1e-4 for r in rows)
        moved = {k: v for k, v in moved.items() if not k.startswith("router.")}
    if name not in ("fedadam", "fedyogi"):  # server optimisers rescale the clipped mean
        assert float(np.sqrt(sum(np.sum(v**2) for v in moved.values()))) <= 0.01 + 1e-4
