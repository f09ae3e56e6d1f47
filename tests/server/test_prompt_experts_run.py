"""A prompt-experts federation in Flower's Simulation Engine, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedeye.compose.simulation import simulate
from fedeye.config import RunConfig
from fedeye.errors import ConfigError
from fedeye.server.dashboard.panels import experts
from fedeye.server.preflight import simulation_sites
from fedeye.server.store import RunStore


def _cfg(tiny_sites: Path, out: Path, **model: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"root": str(tiny_sites)},
            "model": {"img_size": 32, "num_domains": 3, **model},
            "strategy": {"name": "prompt-experts", "min_train_nodes": 3, "min_available_nodes": 3},
            "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16},
            "simulation": {"client_cpus": 2},
            "output": {"dir": str(out)},
        }
    )


def test_too_few_experts_for_the_sites_is_refused_before_flower_starts(tiny_sites: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.num_domains=2 .* set model.num_domains = 3"):
        simulation_sites(_cfg(tiny_sites, tmp_path, num_domains=2))


@pytest.mark.slow
def test_prompt_experts_federation_records_each_sites_expert_and_mix(tiny_sites: Path, tmp_path: Path) -> None:
    result = simulate(_cfg(tiny_sites, tmp_path))

    detail = RunStore(result.store_url).get_run(result.run_id)
    assert detail.run.status == "finished", detail.run.error
    train = [m for m in detail.site_metrics if m.phase == "train"]
    owners = {m.site: int(m.metrics["expert-index"]) for m in train}  # type: ignore[arg-type]
    assert sorted(owners.values()) == [0, 1, 2]  # one expert per site
    panel = experts(detail.site_metrics)
    assert panel["experts"] == ["0", "1", "2"] and len(panel["sites"]) == 3
    assert set(panel["owners"].values()) == set(owners)
    for mix in panel["sites"].values():
        assert sum(mix.values()) == pytest.approx(1.0, abs=1e-4)
    assert result.model_path.is_file()
