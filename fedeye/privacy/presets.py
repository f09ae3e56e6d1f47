"""Named DP-SGD settings that keep a model useful: ``[privacy] preset = "..."`` in a run file.

DP-SGD's utility depends less on epsilon than on how the noise meets the
signal (De et al. 2022; Ziegler et al. 2022): few trained parameters (a
frozen pretrained backbone, prompts and head), large logical batches (the
noise std on the mean gradient is ``sigma C / B``, and ``sigma`` grows only
slowly with ``B`` at a fixed epsilon), fewer steps and a larger learning
rate. A preset fills the settings a run file leaves out; every value it sets
can still be written explicitly, and the site's policy still caps epsilon,
delta, ``C`` and ``sigma`` (:func:`fedeye.privacy.policy.effective_dp`).
The values are the configuration ``benchmarks/dp_utility.py`` ran
(docs/dp-utility.md); on the shared 2-core machine no sweep over them was
possible, so they are a documented starting point, not a tuned optimum.

References
----------
De et al., "Unlocking High-Accuracy Differentially Private Image
Classification through Scale", arXiv:2204.13650, 2022.
Ziegler et al., "Defending against Reconstruction Attacks through
Differentially Private Federated Learning for Classification of
Heterogeneous Chest X-ray Data", Sensors 2022.
"""

from __future__ import annotations

from typing import Any, Literal

DPPreset = Literal["none", "pretrained-prompt", "pretrained-full"]

#: Per preset: values of ``[privacy]`` (and ``model.mode``) a run file may leave out.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # frozen pretrained backbone (fedeye pretrain or RETFound); prompts, router and head train
    "pretrained-prompt": {
        "mode": "prompt",
        "batch_size": 64,
        "local_epochs": 1,
        "lr": 1e-2,
        "max_grad_norm": 1.0,
        "max_physical_batch": 64,
    },
    # the whole pretrained network trains: smaller learning rate, same large batches
    "pretrained-full": {
        "mode": "full",
        "batch_size": 64,
        "local_epochs": 1,
        "lr": 1e-3,
        "max_grad_norm": 1.0,
        "max_physical_batch": 64,
    },
}


def preset_defaults(name: str) -> dict[str, Any]:
    """The ``[privacy]`` values of preset ``name`` (``mode`` excluded: it belongs to ``[model]``)."""
    return {k: v for k, v in PRESETS[name].items() if k != "mode"}


def preset_mode(name: str) -> str | None:
    """The ``model.mode`` preset ``name`` implies, if any."""
    mode = PRESETS[name].get("mode")
    return None if mode is None else str(mode)
