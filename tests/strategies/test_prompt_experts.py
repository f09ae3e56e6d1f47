"""The prompt-experts strategy: one expert per site, shared parts averaged, prompt-only traffic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedeye.config import RunConfig, StrategyConfig
from fedeye.errors import ConfigError
from fedeye.models.prompt_arrays import BANK_KEY, EXPERT_KEY, backbone_fingerprint, site_update
from fedeye.protocol import BACKBONE_SHA256 as BACKBONE_KEY
from fedeye.protocol import EXPERT_INDEX as EXPERT_INDEX_KEY
from fedeye.strategies import build_strategy
from tests.strategies.conftest import FakeGrid, array_record, reply

GLOBAL = {
    "blocks.0.w": np.zeros((3, 3), np.float32),  # backbone
    "head.weight": np.zeros((2, 3), np.float32),
    BANK_KEY: np.zeros((3, 2, 3), np.float32),
}


def _config(mode: str = "full") -> ConfigRecord:
    return ConfigRecord({"run-config": RunConfig.model_validate({"model": {"mode": mode, "num_domains": 3}}).to_json()})


def _strategy(mode: str = "full"):  # type: ignore[no-untyped-def]
    strategy = build_strategy(StrategyConfig(name="prompt-experts", min_train_nodes=1, min_available_nodes=1))
    messages = list(strategy.configure_train(1, array_record(GLOBAL), _config(mode), FakeGrid([30, 10, 20])))
    return strategy, messages


def test_each_site_gets_its_own_expert_index_in_node_order(flower_task: None) -> None:
    _, messages = _strategy()
    assert {m.metadata.dst_node_id: m.content["config"][EXPERT_INDEX_KEY] for m in messages} == {10: 0, 20: 1, 30: 2}
    assert all(set(m.content["arrays"]) == set(GLOBAL) for m in messages)  # full mode: everything travels


def test_bank_row_k_comes_only_from_site_k_and_shared_parts_are_averaged(flower_task: None) -> None:
    strategy, _ = _strategy()
    state = {k: v.copy() for k, v in GLOBAL.items()}
    updates = []
    for node, value in ((10, 1.0), (30, 3.0)):
        trained = {k: np.full_like(v, value) for k, v in state.items()}
        updates.append(reply(node, arrays=site_update(trained, strategy.expert_of(node), prompt_only=False)))
    arrays, _ = strategy.aggregate_train(1, updates)

    assert arrays is not None
    bank = arrays[BANK_KEY].numpy()
    assert np.all(bank[0] == 1.0) and np.all(bank[2] == 3.0)
    assert np.all(bank[1] == 0.0)  # site 20 did not reply: its expert is unchanged
    np.testing.assert_allclose(arrays["head.weight"].numpy(), 2.0)  # equal num-examples: the plain mean


def test_prompt_mode_sends_only_prompt_parts_with_the_backbone_fingerprint(flower_task: None) -> None:
    strategy, messages = _strategy(mode="prompt")
    sent = messages[0].content
    assert set(sent["arrays"]) == {"head.weight", BANK_KEY}
    assert sent["config"][BACKBONE_KEY] == backbone_fingerprint(GLOBAL)
    expected = strategy.expected_reply_arrays(reply(10))
    assert set(expected) == {"head.weight", EXPERT_KEY} and expected[EXPERT_KEY].numpy().shape == (2, 3)


def test_a_reply_with_the_whole_bank_is_rejected(flower_task: None) -> None:
    strategy, _ = _strategy()
    strategy.on_too_few_sites = "continue"  # else the round with no accepted reply fails the run
    arrays, _ = strategy.aggregate_train(1, [reply(10, arrays=dict(GLOBAL))])
    assert arrays is None  # a site may only send its own expert


def test_more_sites_than_experts_is_a_config_error(flower_task: None) -> None:
    strategy = build_strategy(StrategyConfig(name="prompt-experts", min_train_nodes=1, min_available_nodes=1))
    with pytest.raises(ConfigError, match="raise model.num_domains"):
        list(strategy.configure_train(1, array_record(GLOBAL), _config(), FakeGrid([1, 2, 3, 4])))


def test_a_model_without_experts_is_a_config_error(flower_task: None) -> None:
    strategy = build_strategy(StrategyConfig(name="prompt-experts", min_train_nodes=1, min_available_nodes=1))
    no_bank = {"head.weight": np.zeros((2, 3), np.float32)}
    with pytest.raises(ConfigError, match="model.num_domains"):
        list(strategy.configure_train(1, array_record(no_bank), _config(), FakeGrid([1])))


def test_fingerprint_ignores_prompt_parts_but_not_the_backbone() -> None:
    changed = {**GLOBAL, "blocks.0.w": np.ones((3, 3), np.float32)}
    assert backbone_fingerprint(GLOBAL) != backbone_fingerprint(changed)
    assert json.dumps(backbone_fingerprint(GLOBAL))  # a plain string, fits a ConfigRecord
