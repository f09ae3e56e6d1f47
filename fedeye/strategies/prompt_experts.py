"""Prompt-based domain experts, aggregated centrally: FedEye's domain-generalising method.

The idea of EPVT and PLDG (Yan et al., 2023): a vision transformer carries a
*shared* prompt for what all domains have in common and one *domain prompt*
per domain, an expert for that domain's acquisition; at test time on an
unseen domain the experts are mixed. DiPrompT (Bai et al., CVPR 2024) and
FedAPT (Su et al., AAAI 2024) move this into federated learning, where every
site is a domain and no site may see another's images. FedEye does it so:

- **Site k** trains its own expert (row k of the bank), the shared prompt,
  the head and, in full mode, the backbone, and computes its style
  prototype for the router. It receives the *whole* bank each round. All
  experts start from one prompt and specialise from there.
- **Coordinator**: the shared parts are averaged (weighted by examples, as
  FedAvg); the bank keeps one expert per site, and expert k is replaced only
  by site k's update. Each site's expert index is fixed the first time it is
  sampled (sites in node-id order) and reported back as the metric
  ``expert-index``.
- **Router** (:class:`fedeye.models.router.ExpertRouter`): per image, a
  softmax over the experts from the image's distance to each site's *style
  prototype* (the mean style of that site's training images, which site k
  computes after training and sends as row k of the router's keys). An image
  from an unseen hospital goes to the experts of the hospitals whose
  acquisition it resembles. At inference every image, seen site or not, is
  classified with the router's mix; sites report the mean mix per expert
  (``expert.<j>.weight``).
- **Domain mixup** (EPVT mixes images of two domains and their prompts; a
  federated site holds one domain only): a share ``strategy.expert_mixup`` of
  each batch is classified with a random mix of experts, ``lam * e_k +
  (1 - lam) * d`` with ``lam ~ U(0, 1)`` and ``d ~ Dirichlet(1)``, the rest
  with the site's own expert, so that shared prompt and head learn to work
  under blends of experts, which is what an unseen site's router produces.
  Off by default (``expert_mixup = 0``): at 0.5, two of four benchmark
  federations failed to learn, against none without.
- **Prompt mode** (``model.mode = "prompt"``, a frozen pretrained backbone):
  only prompts, router and head travel. The coordinator sends them with a
  SHA-256 fingerprint of its backbone; each site builds the same backbone
  from its own copy of ``model.backbone_weights`` (or the run's seed) and
  refuses to train if the fingerprint differs. A site sends back its own
  rows of the per-site tensors (:data:`PER_SITE`, as ``expert/<name>``), not
  the bank.

Choices left open by the papers, and why (measured with ``fedeye benchmark dg``,
see docs/dg-benchmark.md):

- EPVT/PLDG's domain prompt *generator* (low-rank multiplicative interaction
  between experts and the shared prompt) is not implemented: it adds
  parameters that would travel every round, and the router's per-image mix
  already combines experts on unseen sites.
- Experts start identical: independently initialised ones made two of four
  benchmark federations collapse (the shared weights must first serve K
  unrelated token sets).
- The router reads style statistics of the patch embeddings rather than the
  class token of a first forward pass: one pass instead of two, and
  acquisition shift is a low-level property; its keys are prototypes, not
  trained weights (see :mod:`fedeye.models.router` for why).

References
----------
Yan et al., "EPVT: Environment-aware Prompt Vision Transformer for Domain
Generalization in Skin Lesion Recognition", MICCAI 2023.
Yan et al., "Prompt-driven Latent Domain Generalization for Medical Image
Classification" (PLDG), arXiv:2401.03002, 2024.
Bai et al., "DiPrompT: Disentangled Prompt Tuning for Multiple Latent Domain
Generalization in Federated Learning", CVPR 2024.
Su et al., "Federated Adaptive Prompt Tuning for Multi-Domain Collaborative
Learning", AAAI 2024.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedeye.errors import ConfigError
from fedeye.models.config import FROZEN_BACKBONE_MODES
from fedeye.models.prompt_arrays import (
    BANK_KEY,
    EXPERT_PREFIX,
    backbone_fingerprint,
    is_prompt_key,
    site_update,
)
from fedeye.protocol import ARRAYS, BACKBONE_SHA256, CONFIG, EXPERT_INDEX, EXPERT_MIXUP, RUN_CONFIG
from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig

EXPERT_INDEX_KEY = EXPERT_INDEX  #: config (to a site) and metric (from it): the site's expert
BACKBONE_KEY = BACKBONE_SHA256  #: config: fingerprint of the frozen backbone (prompt mode)
MIXUP_KEY = EXPERT_MIXUP


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    # np.array, not np.ascontiguousarray: that makes 0-d arrays 1-d
    return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in arrays.items()})


class _ExpertBankFedAvg(FlowerFedAvg):
    """Flower FedAvg for the shared parts; bank row k comes from site k only."""

    global_numpy: dict[str, np.ndarray]
    experts: dict[int, int]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics
        merged = {k: v.copy() for k, v in self.global_numpy.items()}
        merged.update({k: v.numpy() for k, v in averaged.items() if not k.startswith(EXPERT_PREFIX)})
        for msg in replies:
            row = self.experts[msg.metadata.src_node_id]
            for name, value in msg.content.array_records[ARRAYS].items():
                if name.startswith(EXPERT_PREFIX):
                    merged[name.removeprefix(EXPERT_PREFIX)][row] = value.numpy()
        return _record(merged), metrics


@register_strategy("prompt-experts")
class PromptExperts(ObservedStrategy, _ExpertBankFedAvg):
    """Domain-expert prompts, one per site, aggregated centrally (see the module docstring).

    >>> from fedeye.config import StrategyConfig
    >>> PromptExperts.from_config(StrategyConfig(expert_mixup=0.25)).expert_mixup
    0.25
    """

    expert_mixup: float = 0.0

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> PromptExperts:
        strategy = cls(**sampling_kwargs(cfg))
        strategy.expert_mixup = cfg.expert_mixup
        strategy.experts = {}
        return strategy

    # --- what goes out ------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._prepare(arrays, config, grid)
        config[MIXUP_KEY] = self.expert_mixup
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._prepare(arrays, config, grid)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def _prepare(self, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> None:
        """Remember the global model, fix the sites' experts and what is sent this round."""
        self.global_numpy = {k: v.numpy() for k, v in arrays.items()}
        if BANK_KEY not in self.global_numpy:
            raise ConfigError(
                "strategy.name = 'prompt-experts' needs one domain expert per site: set model.num_domains "
                "to at least the number of sites (the model has none)"
            )
        self.prompt_only = _mode(config) in FROZEN_BACKBONE_MODES
        sent = {k: v for k, v in self.global_numpy.items() if not self.prompt_only or is_prompt_key(k)}
        self._sent = _record(sent) if self.prompt_only else arrays
        if self.prompt_only and not getattr(self, "_fingerprint", None):
            self._fingerprint = backbone_fingerprint(self.global_numpy)
        for node in sorted(grid.get_node_ids()):
            self.expert_of(node)

    def expert_of(self, node_id: int) -> int:
        """The bank row of a node's site, assigned the first time it is seen."""
        if node_id not in self.experts:
            capacity = int(self.global_numpy[BANK_KEY].shape[0])
            if len(self.experts) >= capacity:
                raise ConfigError(
                    f"model.num_domains = {capacity} experts, but site #{len(self.experts) + 1} joined; "
                    "prompt-experts needs one expert per site: raise model.num_domains"
                )
            self.experts[node_id] = len(self.experts)
        return self.experts[node_id]

    def tailor(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        config = ConfigRecord(dict(msg.content.config_records[CONFIG]))
        config[EXPERT_INDEX_KEY] = self.expert_of(node)
        if self.prompt_only:
            config[BACKBONE_KEY] = self._fingerprint
        content = RecordDict({"arrays": self._sent, "config": config})
        return Message(
            content=content, dst_node_id=node, message_type=msg.metadata.message_type, group_id=msg.metadata.group_id
        )

    # --- what comes back ----------------------------------------------------------

    def expected_reply_arrays(self, msg: Message) -> ArrayRecord | None:
        node = msg.metadata.src_node_id
        if node not in self.experts:
            return ArrayRecord()  # a reply from a site never asked: nothing it sends fits
        return _record(site_update(self.global_numpy, self.experts[node], prompt_only=self.prompt_only))


def _mode(config: ConfigRecord) -> str:
    """The run's ``model.mode`` from the run config every FedEye message carries."""
    try:
        return str(json.loads(str(config[RUN_CONFIG]))["model"]["mode"])
    except (KeyError, ValueError, TypeError):
        return "full"
