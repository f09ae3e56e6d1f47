"""Named DP-SGD settings that keep a model useful: ``[privacy] preset = "..."`` in a run file.

DP-SGD's utility depends less on epsilon than on how the noise meets the
signal (De et al. 2022; Ziegler et al. 2022): few trained parameters (a
frozen pretrained backbone, prompts and head), large logical batches (the
noise std on the mean gradient is ``sigma C / B``, and ``sigma`` grows only
slowly with ``B`` at a fixed epsilon), fewer steps and a larger learning
rate. A preset fills the settings a run file leaves out; every value it sets
can still be written explicitly, and the site's policy still caps epsilon,
delta, ``C`` and ``sigma`` (:func:`fedeye.privacy.policy.effective_dp`).
``pretrained-prompt`` holds the setting of the two 3-seed grids of
``benchmarks/dp_utility.py`` (docs/dp-utility.md, "64 px, a pretrained
backbone"; 10 rounds in ``[training]``): of the six settings tried there it
gave the smallest DP cost and the best private AUC. A short sweep on one
synthetic task, so a documented starting point, not a tuned optimum.
``pretrained-full``'s own values were not measured; full fine-tuning of
the same backbone at the prompt preset's batch and epochs (lr 1e-3)
reached AUC 0.741 at epsilon 8, below prompt mode.

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

#: Per preset: values of ``[privacy]`` (and, under "model", of ``[model]``) a run file may leave out.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # frozen pretrained backbone (fedeye pretrain or RETFound); prompts, router and head train on the
    # mean of the patch tokens (an MAE backbone's class token was never trained by a loss)
    "pretrained-prompt": {
        "model": {"mode": "prompt", "pool": "avg"},
        "batch_size": 32,
        "local_epochs": 2,
        "lr": 1e-2,
        "max_grad_norm": 1.0,
        "max_physical_batch": 64,
    },
    # the whole pretrained network trains: smaller learning rate, same large batches
    "pretrained-full": {
        "model": {"mode": "full", "pool": "avg"},
        "batch_size": 64,
        "local_epochs": 1,
        "lr": 1e-3,
        "max_grad_norm": 1.0,
        "max_physical_batch": 64,
    },
}


def preset_defaults(name: str) -> dict[str, Any]:
    """The ``[privacy]`` values of preset ``name`` (``model`` excluded: it belongs to ``[model]``)."""
    return {k: v for k, v in PRESETS[name].items() if k != "model"}


def preset_model(name: str) -> dict[str, Any]:
    """The ``[model]`` values (``mode``, ``pool``) preset ``name`` implies; an explicit value in the run file wins."""
    return dict(PRESETS[name].get("model", {}))
