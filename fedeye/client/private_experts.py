"""prompt-experts with DP at a site: the router prototype released once, privately.

A prompt-experts site sends its router prototype (row ``k`` of
``router.keys`` and ``router.spread``) with its update. Without DP it is the
plain mean style of its images, recomputed every round. With DP-SGD it is a
statistic of every patient that DP-SGD does not cover, so the site releases
it through the Gaussian mechanism (:mod:`fedeye.privacy.prototype`) in its
first DP round, composes that release into its privacy history
(:func:`fedeye.privacy.planning.prototype_release`, 10% of the budget) and
sends the same released value in later rounds: the router's style embedding
is frozen, so the prototype would not change anyway, and re-sending a
released value costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context
from torch import nn

from fedeye.client.training import LocalObjective
from fedeye.privacy.accounting import MechanismStep
from fedeye.privacy.planning import prototype_release
from fedeye.privacy.policy import DPSettings
from fedeye.sites.dataset import SiteDataset

PROTOTYPE_STATE_KEY = "fedeye-dp-prototype"  #: the released prototype, kept in the node's Flower context


@dataclass(frozen=True)
class PrivatePrototype:
    """What this round does about the site's prototype.

    Attributes
    ----------
    expert_index : int or None
        The site's row; None when the run has no routed experts.
    one_off : tuple of MechanismStep
        The release this round makes (empty once released): pass it to
        :func:`~fedeye.privacy.planning.plan_round`.
    """

    expert_index: int | None
    one_off: tuple[MechanismStep, ...] = ()

    @classmethod
    def for_round(
        cls, context: Context, model: nn.Module, objective: LocalObjective, settings: DPSettings
    ) -> PrivatePrototype:
        """Plan the release: once per run, for a routed prompt-experts model."""
        if objective.expert_index is None or getattr(model, "router", None) is None:
            return cls(None)
        if PROTOTYPE_STATE_KEY in context.state.array_records:
            return cls(objective.expert_index)
        return cls(objective.expert_index, (prototype_release(settings),))

    def apply(self, context: Context, model: nn.Module, dataset: SiteDataset, *, rng_seed: int | None = None) -> None:
        """Release the prototype if planned, then write the released value into the router's row."""
        from fedeye.client.dp_training import release_prototype, set_private_prototype

        if self.expert_index is None:
            return
        if self.one_off:
            key, spread = release_prototype(
                model, dataset, noise_multiplier=self.one_off[0].noise_multiplier, rng_seed=rng_seed
            )
            context.state[PROTOTYPE_STATE_KEY] = ArrayRecord({"key": key, "spread": torch.tensor(spread)})
        record = context.state.array_records[PROTOTYPE_STATE_KEY].to_torch_state_dict()
        set_private_prototype(model, self.expert_index, key=record["key"], spread=float(record["spread"]))
