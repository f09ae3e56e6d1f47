"""Named DP-SGD settings that keep a model useful: ``[privacy] preset = "..."`` in a run file.

DP-SGD's utility depends less on epsilon than on how the noise meets the
signal (De et al. 2022; Ziegler et al. 2022): few trained parameters (a
frozen pretrained backbone, prompts and head), large logical batches (the
noise std on the mean gradient is ``sigma C / B``, and ``sigma`` grows only
slowly with ``B`` at a fixed epsilon), fewer steps and a larger learning
rate. A preset fills the settings a run file leaves out; every value it sets
can still be written explicitly, and the site's policy still caps epsilon,
delta, ``C`` and ``sigma`` (:func:`fedeye.privacy.policy.effective_dp`).
``pretrained-head`` (a linear probe: the head alone trains) holds the
setting of ``benchmarks/dp_utility.py``'s best private configuration
(docs/dp-utility.md, "The head alone"; 10 rounds in ``[training]``): pooled
test AUC 0.858 at epsilon 8 against 0.878 without DP, 5 seeds.
``pretrained-prompt`` holds the setting of the two 3-seed prompt-mode grids
(docs/dp-utility.md, "64 px, a pretrained backbone"): the preset for
prompt-experts, whose domain experts are prompts. Short sweeps on one
synthetic task, so documented starting points, not tuned optima.
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

DPPreset = Literal["none", "pretrained-head", "pretrained-prompt", "pretrained-full"]

#: Per preset: values of ``[privacy]`` (and, under "model" and "training", of ``[model]`` and ``[training]``)
#: a run file may leave out.
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
    # a linear probe: only the head trains, on the frozen backbone's standardised mean-pooled features
    # (the fewest noised parameters); no augmentation (it cost 10-15 points here) and a cosine decay
    # (the private AUC's SD over seeds fell from 0.035 to 0.011 at epsilon 8)
    "pretrained-head": {
        "model": {"mode": "head", "pool": "avg", "num_shared_prompts": 0},
        "training": {"augment": "none", "lr_schedule": "cosine"},
        "batch_size": 32,
        "local_epochs": 2,
        "lr": 0.1,
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


#: Run-file sections besides ``[privacy]`` a preset may fill.
PRESET_SECTIONS = ("model", "training")


def preset_defaults(name: str) -> dict[str, Any]:
    """The ``[privacy]`` values of preset ``name`` (the :data:`PRESET_SECTIONS` excluded)."""
    return {k: v for k, v in PRESETS[name].items() if k not in PRESET_SECTIONS}


def preset_sections(name: str) -> dict[str, dict[str, Any]]:
    """Per section (``model``: mode, pooling; ``training``: augmentation), the values preset ``name`` implies.

    An explicit value in the run file wins.
    """
    return {section: dict(PRESETS[name][section]) for section in PRESET_SECTIONS if section in PRESETS[name]}
