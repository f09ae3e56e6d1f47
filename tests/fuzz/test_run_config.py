"""Run files under generated values: a ConfigError naming the field, or exactly the value written."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from fedeye.client.site_config import load_site_config
from fedeye.config import load_run_config
from fedeye.errors import ConfigError

FIELDS = [
    ("training", "rounds"),
    ("training", "local_epochs"),
    ("training", "batch_size"),
    ("training", "lr"),
    ("training", "seed"),
    ("strategy", "round_timeout"),
    ("strategy", "name"),
    ("strategy", "min_train_nodes"),
    ("strategy", "fraction_train"),
    ("privacy", "epsilon"),
    ("privacy", "enabled"),
    ("simulation", "num_sites"),
    ("simulation", "client_cpus"),
    ("model", "img_size"),
    ("model", "num_classes"),
]
VALUES: st.SearchStrategy[Any] = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["fedavg", "fedprox", "FedAvg", "fedavg\n"]),
    st.lists(st.integers(), max_size=2),
)


def _load(text: str, loader: Any) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text(text)
        return loader(path)


@given(st.sampled_from(FIELDS), VALUES)
def test_generated_run_values_are_refused_or_kept_exactly(field: tuple[str, str], value: Any) -> None:
    section, key = field
    try:
        cfg = _load(tomli_w.dumps({section: {key: value}}), load_run_config)
    except ConfigError as err:
        assert f"{section}.{key}" in str(err)
        return
    loaded = getattr(getattr(cfg, section), key)
    assert type(loaded) is type(value) or (isinstance(value, int) and type(loaded) is float)
    assert loaded == value and not (isinstance(loaded, float) and not math.isfinite(loaded))


@given(st.binary(max_size=200))
def test_arbitrary_run_file_bytes_never_crash(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_bytes(data)
        try:
            load_run_config(path)
        except ConfigError:
            pass


@given(st.sampled_from(["epsilon", "delta", "max_grad_norm", "min_group_size", "require_dp"]), VALUES)
def test_generated_site_policy_values_are_refused_or_kept(key: str, value: Any) -> None:
    try:
        cfg = _load(tomli_w.dumps({"privacy": {key: value}}), load_site_config)
    except ConfigError as err:
        assert key in str(err)
        return
    loaded = getattr(cfg.privacy, key)
    assert loaded == value
    assert not isinstance(loaded, float) or math.isfinite(loaded)


@pytest.mark.parametrize(("value", "level"), [(True, "light"), (False, "none"), ("strong", "strong")])
def test_augment_levels_and_the_older_booleans(value: Any, level: str) -> None:
    cfg = _load(tomli_w.dumps({"training": {"augment": value}}), load_run_config)
    assert cfg.training.augment == level


@pytest.mark.parametrize("value", [1, "heavy", 0.5])
def test_augment_refuses_anything_else(value: Any) -> None:
    with pytest.raises(ConfigError, match="training.augment"):
        _load(tomli_w.dumps({"training": {"augment": value}}), load_run_config)
