"""Client-level DP: Flower's server-side clipping wrappers around FedEye strategies."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore.task_identity import TaskIdentity

from fedeye.config import StrategyConfig
from fedeye.privacy.policy import PrivacyConfig
from fedeye.strategies import build_strategy
from fedeye.strategies.client_dp import client_level_epsilon, wrap_client_dp

GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
NODES = (11, 12, 13)


@dataclass
class Recorder:
    """A RoundObserver that keeps what it is shown."""

    starts: list[tuple[int, str, int]] = field(default_factory=list)
    replies: list[tuple[int, str, list[Message]]] = field(default_factory=list)

    def on_round_start(self, server_round: int, phase: str, num_sites: int) -> None:
        self.starts.append((server_round, phase, num_sites))

    def on_replies(
        self, server_round: int, phase: str, replies: list[Message], verdicts: Sequence[object] = ()
    ) -> None:
        self.replies.append((server_round, phase, replies))


class FakeGrid:
    """Just enough Grid for FedAvg.configure_train: three connected nodes."""

    def get_node_ids(self) -> list[int]:
        return list(NODES)


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in values.items()})


def _reply(node_id: int, scale: float, num_examples: int) -> Message:
    """A site's train reply whose update (reply - global) has L2 norm ``scale``."""
    rng = np.random.default_rng(node_id)
    update = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in GLOBAL.items()}
    norm = np.sqrt(sum(float(np.sum(u**2)) for u in update.values()))
    arrays = {k: GLOBAL[k] + u * (scale / norm) for k, u in update.items()}
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {
            "arrays": _arrays(arrays),
            "metrics": MetricRecord({"num-examples": num_examples, "loss": 0.1}),
            "site": ConfigRecord({"name": f"site-{node_id}"}),
        }
    )
    return make_message(metadata, content=content)


def _update_norm(record: ArrayRecord) -> float:
    return float(np.sqrt(sum(np.sum((a.numpy() - GLOBAL[k]) ** 2) for k, a in record.items())))


def _privacy(mode: str, **kw: float) -> PrivacyConfig:
    return PrivacyConfig.model_validate({"client_level": mode, **kw})


def test_off_returns_the_strategy_itself() -> None:
    inner = build_strategy(StrategyConfig())
    assert wrap_client_dp(inner, _privacy("off"), num_sampled_sites=3) is inner


@pytest.mark.parametrize(
    ("mode", "cls"),
    [
        ("fixed", DifferentialPrivacyServerSideFixedClipping),
        ("adaptive", DifferentialPrivacyServerSideAdaptiveClipping),
    ],
)
def test_modes_give_flowers_wrappers(mode: str, cls: type) -> None:
    inner = build_strategy(StrategyConfig())
    wrapped = wrap_client_dp(inner, _privacy(mode, client_clipping_norm=0.3), num_sampled_sites=3)
    assert isinstance(wrapped, cls)
    assert wrapped.strategy is inner and wrapped.clipping_norm == 0.3  # type: ignore[attr-defined]


def test_adaptive_works_with_few_hospitals_and_unit_noise() -> None:
    """Flower's default count noise (m/20) would refuse sigma=1 with 3 sites."""
    wrapped = wrap_client_dp(build_strategy(StrategyConfig()), _privacy("adaptive"), num_sampled_sites=3)
    assert 1.0 < wrapped.noise_multiplier < 1.2  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_aggregate_is_clipped_and_observer_sees_the_round(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):  # set by Flower in a real ServerApp; Message() needs them
        monkeypatch.setattr(TaskIdentity, name, 1)
    observer = Recorder()
    inner = build_strategy(StrategyConfig(min_train_nodes=3, min_available_nodes=3), observer=observer)
    wrapped = wrap_client_dp(
        inner, _privacy(mode, client_noise_multiplier=1e-6, client_clipping_norm=1.0), num_sampled_sites=3
    )
    messages = list(wrapped.configure_train(1, _arrays(GLOBAL), ConfigRecord(), FakeGrid()))  # type: ignore[arg-type]
    replies = [_reply(11, 10.0, 50), _reply(12, 0.5, 10), _reply(13, 7.0, 200)]

    arrays, metrics = wrapped.aggregate_train(1, replies)

    assert len(messages) == 3 and observer.starts == [(1, "train", 3)]
    assert arrays is not None and metrics is not None
    assert _update_norm(arrays) <= 1.0 + 1e-4
    ((server_round, phase, seen),) = observer.replies
    assert (server_round, phase, [m.metadata.src_node_id for m in seen]) == (1, "train", list(NODES))
    norms = [_update_norm(m.content["arrays"]) for m in seen]
    assert norms == pytest.approx([1.0, 0.5, 1.0], abs=1e-5)  # the observer sees the clipped replies


def test_epsilon_falls_with_noise_and_grows_with_rounds() -> None:
    def eps(sigma: float, rounds: int, q: float = 1.0) -> float:
        return client_level_epsilon(noise_multiplier=sigma, sample_rate=q, rounds=rounds, delta=1e-3)

    assert eps(2.0, 10) < eps(1.0, 10)
    assert eps(1.0, 20) > eps(1.0, 10) > eps(1.0, 1) > 0
    assert eps(1.0, 10, q=0.5) < eps(1.0, 10)
    assert client_level_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=0, delta=1e-3) == 0.0


def test_prompt_experts_noise_is_per_row_for_the_bank_and_over_m_for_shared_parts() -> None:
    from fedeye.models.prompt_arrays import BANK_KEY, EXPERT_KEY
    from fedeye.strategies.client_dp import noise_expert_aggregate

    aggregated = {"w": np.zeros((200, 100)), BANK_KEY: np.zeros((3, 100, 100)), "frozen": np.zeros(5)}
    noisy = noise_expert_aggregate(
        aggregated,
        {"w", EXPERT_KEY},
        rows=[0, 2],
        noise_multiplier=2.0,
        clipping_norm=0.5,
        num_sites=4,
        rng=np.random.default_rng(0),
    )

    assert np.std(noisy["w"]) == pytest.approx(2.0 * 0.5 / 4, rel=0.03)  # sigma C / m on the mean
    assert np.std(noisy[BANK_KEY][0]) == pytest.approx(2.0 * 0.5, rel=0.03)  # sigma C on a row one site writes
    assert np.std(noisy[BANK_KEY][2]) == pytest.approx(1.0, rel=0.03)
    assert not noisy[BANK_KEY][1].any() and not noisy["frozen"].any()  # unassigned rows and unsent arrays untouched


def test_prompt_experts_update_is_clipped_jointly_and_prototypes_are_dropped() -> None:
    from fedeye.models.prompt_arrays import BANK_KEY, EXPERT_KEY
    from fedeye.strategies.client_dp import clip_site_update

    reference = {"w": np.ones(3), BANK_KEY: np.zeros((2, 1, 3)), "router.keys": np.zeros((2, 4))}
    update = {"w": np.ones(3) + 3.0, EXPERT_KEY: np.full((1, 3), 4.0), "expert/router.keys": np.ones(4)}
    clipped, hit = clip_site_update(update, reference, row=1, clipping_norm=2.0)

    assert hit and set(clipped) == {"w", EXPERT_KEY}
    change = np.concatenate([clipped["w"] - 1.0, clipped[EXPERT_KEY].ravel()])
    assert np.linalg.norm(change) == pytest.approx(2.0)
    direction = np.r_[np.full(3, 3.0), np.full(3, 4.0)]
    np.testing.assert_allclose(
        change / np.linalg.norm(change), direction / np.linalg.norm(direction)
    )  # scaled, not cut


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_arrays_no_site_trains_are_released_as_sent_not_noised(
    mode: str, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen backbone (prompt/head mode) or a fixed buffer is outside the mechanism: no noise, sites ignored."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    inner = build_strategy(StrategyConfig(name=strategy, min_train_nodes=3, min_available_nodes=3))
    wrapped = wrap_client_dp(
        inner,
        _privacy(mode, client_noise_multiplier=1.0, client_clipping_norm=1.0),
        num_sampled_sites=3,
        frozen=frozenset({"w"}),
    )
    sent = {"w": np.full((4, 3), 0.5, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    list(wrapped.configure_train(1, _arrays(sent), ConfigRecord(), FakeGrid()))  # type: ignore[arg-type]
    replies = [_reply(node, 0.5, 10) for node in NODES]  # every reply also moved "w" (a site must not)

    arrays, _ = wrapped.aggregate_train(1, replies)

    assert arrays is not None and list(arrays) == ["w", "b"]
    np.testing.assert_array_equal(arrays["w"].numpy(), sent["w"])  # as sent: neither the sites' values nor noise
    assert np.std(arrays["b"].numpy()) > 0.05  # the trained array is noised (sigma C / m = 1/3)
    assert list(wrapped.current_arrays) == ["w", "b"]  # type: ignore[attr-defined]


def test_untrained_keys_of_a_prompt_model_are_the_backbone_and_the_feature_standardiser() -> None:
    from fedeye.models import build_model
    from fedeye.models.config import ModelConfig
    from fedeye.models.io import untrained_keys

    model = build_model(ModelConfig(arch="vit-tiny-cpu", img_size=32, mode="prompt"))
    frozen = untrained_keys(model)

    assert "blocks.0.attn.qkv.weight" in frozen and any(k.startswith("feature_norm.") for k in frozen)
    assert not any(k.startswith("head.") for k in frozen)
    full = untrained_keys(build_model(ModelConfig(arch="vit-tiny-cpu", img_size=32, mode="full")))
    assert full and all(not k.startswith("blocks.") for k in full)
