"""Save and load FedEye models; move weights in and out of (Opacus-wrapped) models.

A model file is one ``torch.save`` archive holding the config (as JSON), the
state dict and free metadata (as JSON), so it loads with ``weights_only=True``
and never runs pickled code.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from fedeye._atomic import atomic_write_bytes
from fedeye.errors import ModelError
from fedeye.models.config import ModelConfig
from fedeye.models.factory import build_model
from fedeye.models.torch_file import load_tensors
from fedeye.models.vit import PromptViT

FILE_FORMAT = "fedeye-model"
FILE_VERSION = 1
_OPACUS_PREFIX = "_module."


def save_model(path: Path, model: nn.Module, cfg: ModelConfig, *, metadata: dict[str, Any] | None = None) -> None:
    """Write config, weights and metadata to one file, atomically.

    Parameters
    ----------
    path : Path
        Destination; its folder is created. A crash never leaves a half-written file.
    model : nn.Module
        The :class:`PromptViT` (possibly wrapped by Opacus) built from ``cfg``.
    cfg : ModelConfig
        Settings that rebuild the model.
    metadata : dict, optional
        JSON-serialisable extras (round, metrics, site, ...).

    Raises
    ------
    TypeError
        ``metadata`` is not JSON-serialisable.
    """
    payload = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "config": cfg.model_dump_json(),
        "metadata": _metadata_json(metadata),
        "state_dict": model_state(model),
    }
    _atomic_torch_save(payload, Path(path))


def _metadata_json(metadata: dict[str, Any] | None) -> str:
    try:
        return json.dumps(metadata or {})
    except TypeError as err:
        raise TypeError(f"save_model metadata must be JSON-serialisable: {err}") from err


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path: Path) -> tuple[PromptViT, ModelConfig, dict[str, Any]]:
    """Read a file written by :func:`save_model`.

    Parameters
    ----------
    path : Path
        Model file.

    Returns
    -------
    tuple of (PromptViT, ModelConfig, dict)
        The rebuilt model with its weights and training mode, its config and the metadata.

    Raises
    ------
    ModelError
        The file is missing, corrupt, not a FedEye model, or its weights do not fit its config.
    """
    path = Path(path)
    payload = _read_payload(path)
    cfg = _parse_config(path, payload["config"])
    metadata = _parse_metadata(path, payload["metadata"])
    # The saved weights replace the backbone checkpoint; do not require it on this machine.
    model = build_model(cfg.model_copy(update={"backbone_weights": None}))
    try:
        load_state(model, payload["state_dict"])
    except ModelError as err:
        raise ModelError(f"{path}: {err}") from err
    return model, cfg, metadata


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; check the path or train a model first")
    fix = "re-save it with fedeye.models.save_model or restore a backup"
    try:
        payload = load_tensors(path, what="model file", fix=fix)
    except pickle.UnpicklingError as err:
        raise ModelError(
            f"model file {path} is corrupt or not a PyTorch file ({err.__class__.__name__}); {fix}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise ModelError(
            f"{path} is not a FedEye model file (no format={FILE_FORMAT!r} marker); for a timm or "
            "RETFound checkpoint set model.backbone_weights instead"
        )
    if payload.get("version") != FILE_VERSION:
        raise ModelError(
            f"{path} has model file version {payload.get('version')!r}; this FedEye reads "
            f"version {FILE_VERSION}; upgrade FedEye or re-save the model"
        )
    _check_payload(path, payload)
    return payload


def _check_payload(path: Path, payload: dict[str, Any]) -> None:
    """Refuse a payload whose parts are missing, of the wrong type, or whose weights are not finite."""
    expected = {"config": str, "metadata": str, "state_dict": dict}
    wrong = [key for key, kind in expected.items() if not isinstance(payload.get(key), kind)]
    if wrong:
        raise ModelError(
            f"{path} is a damaged FedEye model file: {wrong} missing or of the wrong type "
            "(config and metadata are JSON text, state_dict maps names to tensors); restore a backup"
        )
    state = payload["state_dict"]
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ModelError(f"{path}: state_dict entry {bad!r} is not a named tensor; restore a backup")
    broken = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if broken is not None:
        raise ModelError(
            f"{path}: weights {broken!r} hold NaN or infinity (training diverged, or the file is damaged); "
            "use an earlier checkpoint, or train again with a lower learning rate"
        )


def _parse_metadata(path: Path, text: str) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"{path} holds metadata that is not valid JSON ({err}); restore a backup") from err
    if not isinstance(metadata, dict):
        raise ModelError(f"{path} holds metadata that is not a JSON object; restore a backup")
    return metadata


def _parse_config(path: Path, config_json: Any) -> ModelConfig:
    try:
        return ModelConfig.model_validate_json(config_json)
    except (ValidationError, TypeError, ValueError) as err:
        raise ModelError(f"{path} holds an invalid model config: {err}") from err


def model_state(model: nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Detached CPU copy of the weights, without Opacus' ``_module.`` prefix.

    Parameters
    ----------
    model : nn.Module
        A PromptViT, possibly wrapped by Opacus ``GradSampleModule``.
    trainable_only : bool
        Keep only parameters with ``requires_grad`` (prompts + head in prompt
        mode), e.g. to send less in a federated round.

    Returns
    -------
    dict of str to torch.Tensor
    """
    inner = _unwrap(model)
    keep = {n for n, p in inner.named_parameters() if p.requires_grad} if trainable_only else None
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items() if keep is None or k in keep}


def untrained_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys that are not trainable parameters: frozen parameters and buffers.

    In FedEye's ViT no buffer changes in training: the feature standardiser
    (``feature_norm``) is fixed when the model is built, and the router's
    prototypes are set apart from training (see :mod:`fedeye.strategies.client_dp`).
    A model with BatchNorm running statistics would not fit this description.

    >>> from torch import nn
    >>> layer = nn.Linear(2, 1)
    >>> _ = layer.bias.requires_grad_(False)
    >>> layer.register_buffer("scale", torch.ones(1))
    >>> sorted(untrained_keys(layer))
    ['bias', 'scale']
    """
    inner = _unwrap(model)
    trained = {n for n, p in inner.named_parameters() if p.requires_grad}
    return frozenset(k for k in inner.state_dict() if k not in trained)


#: Buffers newer than some saved models (FedEye 0.x before the feature standardiser); missing means "as built".
_ADDED_LATER = ("feature_norm.",)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """Copy ``state`` into ``model`` in place, tolerating the Opacus ``_module.`` prefix on either side.

    Parameters
    ----------
    model : nn.Module
        A PromptViT, possibly wrapped by Opacus ``GradSampleModule``.
    state : Mapping of str to torch.Tensor
        Weights, e.g. from :func:`model_state` or aggregated by the server.
    strict : bool
        When False, ``state`` may hold a subset (e.g. ``trainable_only``).

    Raises
    ------
    ModelError
        Keys or shapes do not fit the model.
    """
    inner = _unwrap(model)
    clean = {k.removeprefix(_OPACUS_PREFIX): torch.as_tensor(v) for k, v in state.items()}
    for key, value in inner.state_dict().items():
        if key.startswith(_ADDED_LATER):  # weights saved before these buffers existed: keep the model's own
            clean.setdefault(key, value)
    _check_state(inner, clean, strict=strict)
    inner.load_state_dict(clean, strict=strict)


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool) -> None:
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state)) if strict else []
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if unknown or missing or wrong:
        raise ModelError(
            f"weights do not fit the model: unknown keys {unknown[:5]}, missing keys {missing[:5]}, "
            f"wrong shapes {wrong[:5]}; the weights come from a model with another ModelConfig"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside an Opacus ``GradSampleModule`` (which keeps it as ``_module``)."""
    inner = getattr(model, "_module", model)
    return inner if isinstance(inner, nn.Module) else model
