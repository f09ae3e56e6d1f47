"""Run configuration: one TOML file validated into pydantic models.

A run file has one table per domain::

    name = "my-study"
    [data]
    root = "sites"            # a folder holding one folder per site
    [model]
    arch = "vit-tiny-cpu"
    [strategy]
    name = "fedavg"
    [training]
    rounds = 5

The same nested keys, flattened with dots, are Flower's run config: the
``[tool.flwr.app.config]`` table of ``pyproject.toml`` and
``flwr run . --run-config RUN.toml`` both map onto :class:`RunConfig`
through :func:`from_flower_config`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from fedeye._toml import load_toml
from fedeye.errors import ConfigError
from fedeye.models.config import ModelConfig
from fedeye.privacy.policy import PrivacyConfig
from fedeye.privacy.presets import PRESETS, preset_sections


class _Section(BaseModel):
    # floats must be finite; ints and bools are typed as StrictInt / StrictBool (no true -> 1, no 1e20 -> int)
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


MAX_SITES = 10_000  # upper bound of every site count


def _non_empty_path(value: object) -> object:
    """Refuse ``""`` for a path (it would silently mean the run file's own folder)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("an empty path; name the folder, or leave the key out")
    return value


class DataConfig(_Section):
    """Where the sites' data lives (simulation) and how it is split."""

    root: Path | None = Field(
        default=None,
        description="Folder whose sub-folders are the sites (simulation). In a "
        "deployment each SuperNode names its own folder in its node config.",
    )
    eval_split: Literal["val", "test"] = Field(default="val", description="Split evaluated every round.")

    @field_validator("root", mode="before")
    @classmethod
    def _root_named(cls, value: object) -> object:
        return _non_empty_path(value)

    final_split: Literal["val", "test"] = Field(
        default="test", description="Split evaluated once after the last round."
    )


class StrategyConfig(_Section):
    """Which aggregation algorithm runs on the coordinator."""

    name: str = Field(default="fedavg", description="A registered strategy name.")
    fraction_train: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Share of sites sampled to train each round."
    )
    fraction_evaluate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of sites sampled to evaluate each round."
    )
    min_train_nodes: StrictInt = Field(default=2, ge=1, le=MAX_SITES, description="Fewest sites that train in a round.")
    min_evaluate_nodes: StrictInt = Field(
        default=2, ge=0, le=MAX_SITES, description="Fewest sites that evaluate in a round."
    )
    min_available_nodes: StrictInt = Field(
        default=2, ge=1, le=MAX_SITES, description="Sites that must be connected before a round starts."
    )
    round_timeout: float = Field(
        default=3600.0, gt=0, le=7 * 24 * 3600, description="Seconds to wait for site replies in a round."
    )
    on_too_few_sites: Literal["fail", "continue"] = Field(
        default="fail",
        description="A round in which fewer sites than min_train_nodes trained: fail the run, or continue "
        "(Flower's own behaviour: aggregate whatever arrived, keep the model if nothing did).",
    )
    fairness_q: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="fairfedavg only: q of q-FFL; site weights grow with loss**q (0 = FedAvg).",
    )
    max_update_norm: float | None = Field(
        default=None, gt=0, description="Reject a site update whose L2 distance to the global model exceeds this."
    )
    proximal_mu: float = Field(
        default=0.01, ge=0, description="fedprox only: weight of the proximal term (mu/2)||w - w_global||^2."
    )
    server_lr: float = Field(
        default=0.01, gt=0, description="fedadam/fedyogi only: the server optimiser's step size (eta)."
    )
    expert_mixup: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="prompt-experts only: share of images trained with a random mix of experts (domain mixup).",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from fedeye.strategies import (
            list_strategies,  # late: the strategies import Flower
        )

        if name not in list_strategies():
            raise ValueError(f"unknown strategy {name!r}; registered strategies: {', '.join(list_strategies())}")
        return name


class TrainingConfig(_Section):
    """Local training at each site."""

    rounds: StrictInt = Field(default=3, ge=1, le=100_000, description="Federated rounds.")
    local_epochs: StrictInt = Field(
        default=1, ge=1, le=10_000, description="Epochs over the local train split per round."
    )
    batch_size: StrictInt = Field(default=32, ge=1, le=65_536, description="Local mini-batch size.")
    lr: float = Field(default=1e-3, gt=0, le=10, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.05, ge=0, description="AdamW weight decay.")
    augment: Literal["none", "light", "strong"] = Field(
        default="light",
        description='Training augmentation (fedeye/sites/augment.py): "none"; "light" = flips and small shifts '
        '(true in older run files); "strong" = light + colour, gamma, blur, JPEG, noise and occlusion bands.',
    )
    class_weighting: Literal["none", "balanced"] = Field(
        default="balanced",
        description="balanced: weight the loss by inverse local class frequency (prevalence differs by site).",
    )
    max_grad_norm: float | None = Field(
        default=None,
        gt=0,
        description="Clip the gradient's L2 norm to this before each step (non-DP training; None = no clipping).",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="cosine: the learning rate of round r is lr * (1 + cos(pi * (r - 1) / rounds)) / 2, floored at lr / 20.",
    )
    seed: StrictInt = Field(
        default=0, ge=0, le=2**32 - 1, description="Seed of model initialisation and local shuffling."
    )

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_from_bool(cls, value: object) -> object:
        """Run files from before the levels said ``augment = true/false``."""
        return {True: "light", False: "none"}.get(value, value) if isinstance(value, bool) else value

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where sites train.")


class EvaluationConfig(_Section):
    """How the final model is used at a site: its operating point (see :mod:`fedeye.fairness.operating_point`)."""

    operating_point: Literal["youden"] | Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        default="youden",
        description='Threshold the federation chooses on the sites\' pooled validation scores: "youden" '
        "(max sensitivity + specificity) or a target sensitivity in (0, 1), e.g. 0.85 for screening.",
    )
    calibrate: bool = Field(default=True, description="Fit a bias and temperature across sites (affine/Platt scaling).")


class SimulationConfig(_Section):
    """Flower Simulation Engine resources."""

    num_sites: StrictInt | None = Field(
        default=None, ge=1, le=MAX_SITES, description="Simulated SuperNodes; default: number of site folders."
    )
    client_cpus: float = Field(
        default=1.0, gt=0, le=1024, description="CPUs per simulated site (also its torch threads)."
    )
    client_gpus: float = Field(default=0.0, ge=0, le=64, description="GPUs per simulated site.")


class OutputConfig(_Section):
    """Where the run store and model files go."""

    dir: Path = Field(
        default=Path.home() / ".fedeye", description="Folder for run outputs and the default SQLite store."
    )
    db: str | None = Field(
        default=None, description="SQLAlchemy URL of the run store; default: FEDEYE_DB or <dir>/fedeye.db."
    )

    @field_validator("dir", mode="before")
    @classmethod
    def _dir_named(cls, value: object) -> object:
        return _non_empty_path(value)


class RunConfig(_Section):
    """Everything that describes one federated run."""

    name: str = Field(
        default="fedeye-run", min_length=1, max_length=200, description="Human-readable run name (one line)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _one_line(cls, name: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError("the run name must be one line without control characters (newline, tab, ...)")
        return name

    @model_validator(mode="before")
    @classmethod
    def _preset_sections(cls, data: Any) -> Any:
        """A DP preset names the model (mode, pooling) and augmentation it was chosen for; explicit values win.

        A run file that sets another ``model.mode`` than the preset's keeps
        only the preset's ``[privacy]`` values: the rest was measured for that
        mode (the head preset's "no prompt tokens" would break prompt mode).
        """
        privacy = data.get("privacy") if isinstance(data, dict) else None
        preset = privacy.get("preset") if isinstance(privacy, dict) else None
        if not isinstance(preset, str) or preset not in PRESETS:
            return data
        sections = preset_sections(preset)
        implied_mode = sections.get("model", {}).get("mode")
        strategy = data.get("strategy") if isinstance(data.get("strategy"), dict) else {}
        if implied_mode == "head" and strategy.get("name") == "prompt-experts":
            raise ValueError(
                f"privacy.preset {preset!r} trains the head alone, but prompt-experts' domain experts are "
                "prompt tokens: use preset 'pretrained-prompt' with strategy prompt-experts"
            )
        model = data.get("model")
        if isinstance(model, dict) and model.get("mode", implied_mode) != implied_mode:
            return data
        filled = dict(data)
        for section, implied in sections.items():
            explicit = data.get(section) or {}
            if isinstance(explicit, dict):
                filled[section] = {**implied, **explicit}
        return filled

    def dp_training(self) -> TrainingConfig:
        """The training settings of a DP-SGD round: ``[training]`` with ``[privacy]``'s batch, epochs and lr."""
        overrides = {
            "batch_size": self.privacy.batch_size,
            "local_epochs": self.privacy.local_epochs,
            "lr": self.privacy.lr,
        }
        return self.training.model_copy(update={k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> str:
        """Serialise for a Flower ConfigRecord or the run store."""
        return self.model_dump_json()


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid run configuration"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {field}: {item['msg']}{shown}")
    lines.append("Fix these fields; `fedeye simulate --help` lists the sections.")
    return "\n".join(lines)


def parse_run_config(raw: dict[str, Any], *, source: str = "run config") -> RunConfig:
    """Validate a nested mapping into a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        Naming ``source`` and every invalid field.
    """
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_run_config(path: Path) -> RunConfig:
    """Read and validate a run TOML file; relative data paths resolve against it."""
    if not path.exists():
        raise ConfigError(f"{path}: no such run file. Write one (see README, 'Run files').")
    raw = load_toml(path)
    cfg = parse_run_config(raw, source=str(path))
    return _resolve_paths(cfg, base=path.parent)


def _resolve_paths(cfg: RunConfig, *, base: Path) -> RunConfig:
    """Make the file's relative paths (data root, output dir, backbone) absolute."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else (base / path).resolve()

    updates = {
        "data": ("root", cfg.data),
        "output": ("dir", cfg.output),
        "model": ("backbone_weights", cfg.model),
    }
    changed = {}
    for section, (field, model) in updates.items():
        fixed = absolute(getattr(model, field))
        if fixed is not None:
            changed[section] = model.model_copy(update={field: fixed})
    return cfg.model_copy(update=changed)


def from_flower_config(flat: dict[str, Any]) -> RunConfig:
    """Map Flower's flattened run config (``"training.rounds": 3``) onto a RunConfig.

    Flower config values cannot be null, so an empty string means "unset".
    Keys use either hyphens or underscores. File paths must be absolute (``~``
    is expanded): under ``flwr run`` the ServerApp runs in the SuperLink's
    process, whose working folder is not the one ``flwr run`` was typed in.

    Raises
    ------
    ConfigError
        Naming every invalid field, or the first relative path.
    """
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value == "":
            continue
        parts = key.replace("-", "_").split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _absolute_paths(parse_run_config(nested, source="Flower run config"))


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    db = cfg.output.db
    if db is not None and "://" not in db:
        db = str(_absolute("output.db", Path(db)))
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"root": _absolute("data.root", cfg.data.root)}),
            "model": cfg.model.model_copy(
                update={"backbone_weights": _absolute("model.backbone_weights", cfg.model.backbone_weights)}
            ),
            "output": cfg.output.model_copy(update={"dir": _absolute("output.dir", cfg.output.dir), "db": db}),
        }
    )


def _absolute(key: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    if path.expanduser().is_absolute():
        return path.expanduser()
    raise ConfigError(
        f"{key}={str(path)!r} is a relative path, but the ServerApp started by `flwr run` "
        "does not run in your folder. Pass an absolute path, e.g. "
        f"--run-config \"{key}='$PWD/{path}'\""
    )


def to_flower_config(cfg: RunConfig) -> dict[str, str | int | float | bool]:
    """Flatten a RunConfig into Flower run-config scalars (None -> "")."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = "" if value is None else value

    walk("", json.loads(cfg.model_dump_json()))
    return flat
