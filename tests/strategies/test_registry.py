"""Strategy registry: every registered strategy builds from config; no overwrites."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import Strategy
from pydantic import ValidationError

from fedeye.config import StrategyConfig
from fedeye.errors import ConfigError
from fedeye.strategies import build_strategy, list_strategies, register_strategy


@pytest.mark.parametrize("name", list_strategies())
def test_every_registered_strategy_builds_and_is_observable(name: str) -> None:
    strategy = build_strategy(StrategyConfig(name=name, min_train_nodes=3))
    assert isinstance(strategy, Strategy)
    assert hasattr(strategy, "observer")


def test_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("fedavg")(type("Other", (), {}))


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="fedavg"):
        build_strategy(StrategyConfig.model_construct(name="nope"))


def test_unknown_name_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(ValidationError, match="registered strategies: .*fedavg"):
        StrategyConfig(name="nope")
