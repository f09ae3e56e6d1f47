"""Run config: TOML -> pydantic, Flower's flattened config, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedeye.config import (
    RunConfig,
    from_flower_config,
    load_run_config,
    to_flower_config,
)
from fedeye.errors import ConfigError
from fedeye.server.app import RESUME_KEY

ROOT = Path(__file__).resolve().parents[1]


def test_run_file_validates_and_resolves_relative_data_root(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text('name = "x"\n[data]\nroot = "sites"\n[training]\nrounds = 5\n')
    cfg = load_run_config(run_file)
    assert cfg.training.rounds == 5
    assert cfg.data.root == (tmp_path / "sites").resolve()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[training]\nrounds = 0\n", "training.rounds"),
        ('[model]\narch = "vit-huge"\n', "model.arch"),
        ("[strategy]\nfraction_train = 1.5\n", "strategy.fraction_train"),
        ("[training]\nlearning_rate = 0.1\n", "training.learning_rate"),
        ("[training]\nrounds = true\n", "training.rounds"),
        ("[training]\nrounds = 1e20\n", "training.rounds"),
        ("[training]\nrounds = 100000000\n", "training.rounds"),
        ("[training]\naugment = 1\n", "training.augment"),
        ("[training]\nlr = nan\n", "training.lr"),
        ("[privacy]\nepsilon = inf\n", "privacy.epsilon"),
        ("[strategy]\nround_timeout = inf\n", "strategy.round_timeout"),
        ('[strategy]\nname = "fedavgg"\n', "strategy.name"),
        ("[model]\nimg_size = 64.0\n", "model.img_size"),
        ('name = "a\\nb"\n', "name"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_run_config(run_file)
    assert field in str(err.value) and str(run_file) in str(err.value)


def test_unparsable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="no such run file"):
        load_run_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        ('name = "Caf\xe9"\n'.encode("latin-1"), "not UTF-8"),
        (b"[privacy]\npreset = [1]\n", "privacy.preset"),
        (b'[data]\nroot = ""\n', "data.root: Value error, an empty path"),
        (b'[output]\ndir = " "\n', "output.dir"),
    ],
)
def test_hostile_run_files_are_config_errors(tmp_path: Path, content: bytes, message: str) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config(run_file)
    assert str(run_file) in str(err.value)


def test_a_run_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_bytes(b"\xef\xbb\xbf[training]\nrounds = 2\n")
    assert load_run_config(run_file).training.rounds == 2


def test_a_folder_as_run_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_run_config(tmp_path)


def test_flower_config_roundtrip() -> None:
    cfg = RunConfig.model_validate({"data": {"root": "/x"}, "training": {"rounds": 7}})
    back = from_flower_config(to_flower_config(cfg))
    assert back == cfg


def test_pyproject_flower_config_covers_every_key_and_validates() -> None:
    """`flwr run .` only accepts overrides of keys the app declares."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    expected = set(to_flower_config(RunConfig()))
    assert set(declared) == expected | {RESUME_KEY}  # plus the ServerApp's own key for `fedeye run resume`
    cfg = from_flower_config({k: v for k, v in declared.items() if k != RESUME_KEY})
    assert cfg.strategy.name == "fedavg"


def test_shipped_example_run_file_validates() -> None:
    cfg = load_run_config(ROOT / "examples" / "fundus-fedavg.toml")
    assert cfg.data.root == (ROOT / "sites").resolve()
    assert cfg.training.rounds == 5


def test_relative_output_and_backbone_paths_resolve_against_the_file(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text('[output]\ndir = "out"\n[model]\nbackbone_weights = "w/vit.pth"\n')
    cfg = load_run_config(run_file)
    assert cfg.output.dir == (tmp_path / "out").resolve()
    assert cfg.model.backbone_weights == (tmp_path / "w" / "vit.pth").resolve()


@pytest.mark.parametrize(("value", "ok"), [("youden", True), (0.85, True), (1.0, False), (0.0, False), ("f1", False)])
def test_operating_point_is_youden_or_a_sensitivity_in_the_open_unit_interval(value: object, ok: bool) -> None:
    from fedeye.config import parse_run_config

    if ok:
        assert parse_run_config({"evaluation": {"operating_point": value}}).evaluation.operating_point == value
    else:
        with pytest.raises(ConfigError, match="evaluation.operating_point"):
            parse_run_config({"evaluation": {"operating_point": value}})


def test_dp_preset_fills_what_the_run_file_leaves_out_and_explicit_values_win() -> None:
    cfg = RunConfig.model_validate({"privacy": {"enabled": True, "preset": "pretrained-prompt", "lr": 0.003}})
    assert cfg.model.mode == "prompt" and cfg.privacy.batch_size == 32 and cfg.privacy.lr == 0.003
    assert cfg.model.pool == "avg"
    training = cfg.dp_training()
    assert (training.batch_size, training.local_epochs, training.lr) == (32, 2, 0.003)
    assert cfg.training.batch_size == 32  # training without DP keeps its own settings

    explicit = RunConfig.model_validate(
        {"model": {"mode": "full", "pool": "cls"}, "privacy": {"preset": "pretrained-prompt"}}
    )
    assert explicit.model.mode == "full" and explicit.model.pool == "cls" and explicit.privacy.max_physical_batch == 64


def test_head_preset_trains_a_linear_probe_without_augmentation_unless_the_run_file_says_otherwise() -> None:
    cfg = RunConfig.model_validate({"privacy": {"enabled": True, "preset": "pretrained-head"}})
    assert (cfg.model.mode, cfg.model.pool, cfg.model.num_prompt_tokens) == ("head", "avg", 0)
    assert (cfg.training.augment, cfg.training.lr_schedule, cfg.dp_training().lr) == ("none", "cosine", 0.1)

    explicit = RunConfig.model_validate(
        {"training": {"augment": "light", "rounds": 3}, "privacy": {"preset": "pretrained-head"}}
    )
    assert explicit.training.augment == "light" and explicit.training.rounds == 3


def test_head_mode_refuses_prompt_tokens_it_would_never_train() -> None:
    from fedeye.config import parse_run_config

    with pytest.raises(ConfigError, match="num_shared_prompts = 0"):
        parse_run_config({"model": {"mode": "head"}})
    with pytest.raises(ConfigError, match="prompt-experts needs mode 'prompt' or 'full'"):
        parse_run_config({"model": {"mode": "head", "num_domains": 3}, "strategy": {"name": "prompt-experts"}})
    with pytest.raises(ConfigError, match="use preset 'pretrained-prompt' with strategy prompt-experts"):
        parse_run_config(
            {
                "model": {"num_domains": 3},
                "strategy": {"name": "prompt-experts"},
                "privacy": {"preset": "pretrained-head"},
            }
        )


def test_a_preset_for_another_mode_fills_only_the_privacy_values() -> None:
    """The head preset's "no prompt tokens" and "no augmentation" were measured for head mode only."""
    from fedeye.config import parse_run_config

    cfg = parse_run_config({"model": {"mode": "prompt"}, "privacy": {"preset": "pretrained-head"}})
    assert cfg.model.num_shared_prompts == 4 and cfg.training.augment == "light" and cfg.privacy.batch_size == 32


def test_every_strategy_validates_with_dp_and_client_level_dp() -> None:
    from fedeye.strategies import list_strategies

    for name in list_strategies():
        cfg = RunConfig.model_validate(
            {
                "strategy": {"name": name},
                "model": {"num_domains": 3},
                "privacy": {"enabled": True, "client_level": "fixed"},
            }
        )
        assert cfg.strategy.name == name
