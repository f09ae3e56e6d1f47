"""FedEye ClientApp: trains and evaluates at one hospital site (Message API).

The site folder comes from the node config key ``site-dir`` (deployment: each
SuperNode is started with ``--node-config "site-dir='/data/site'"``) or, in
simulation, from ``partition-id`` over the sorted sub-folders of
``data.root`` in the run config. The site's own config (privacy policy) comes
from ``site-config`` in the node config or ``fedeye-site.toml`` in the site
folder: the coordinator's run config cannot lift it.

Replies carry only model arrays, aggregate metrics, the site's display name
and status: never images, per-image predictions, labels or patient
identifiers. Each reply is appended to the site's audit log
(:mod:`fedeye.client.audit`) before it leaves. With DP on, a site whose next round would exceed its epsilon
budget does not train and replies ``left-budget`` (no arrays).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedeye import protocol as p
from fedeye.client.audit import audit_mod
from fedeye.client.site import SiteJob
from fedeye.client.training import (
    LocalObjective,
    evaluate_predictions,
    mean_expert_weights,
    predict,
    set_site_prototype,
    train_local,
)
from fedeye.config import RunConfig
from fedeye.fairness.metrics import site_fairness_metrics
from fedeye.models.io import load_state, model_state
from fedeye.models.prompt_arrays import site_update
from fedeye.privacy.accounting import MechanismStep
from fedeye.privacy.policy import DPSettings

if TYPE_CHECKING:
    from fedeye.privacy.planning import RoundPlan

app = ClientApp(mods=[audit_mod])  # every outgoing reply is logged at the site first
DP_STATE_KEY = "fedeye-dp-history"
NORMS_STATE_KEY = "fedeye-local-norms"


def _job(msg: Message, context: Context) -> SiteJob:
    config = msg.content[p.CONFIG]
    cfg = RunConfig.model_validate(json.loads(str(config[p.RUN_CONFIG])))
    return SiteJob.resolve(cfg, dict(context.node_config))


def _reply(msg: Message, job: SiteJob, metrics: dict[str, float | int], *, arrays: ArrayRecord | None = None,
           status: dict[str, str] | None = None) -> Message:
    site = ConfigRecord({p.SITE_NAME: job.site_name, p.SITE_STATUS: p.SiteStatus.OK.value, **(status or {})})
    content = RecordDict({p.METRICS: MetricRecord(metrics), p.SITE: site})
    if arrays is not None:
        content[p.ARRAYS] = arrays
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global arrays, train on the local train split, return the update."""
    job = _job(msg, context)
    config = msg.content[p.CONFIG]
    model = _global_model(msg, context, job)
    server_round = p.server_round(config)
    dataset = job.dataset("train")
    settings = job.dp_settings(num_patients=len(set(dataset.patient_ids)))
    objective = LocalObjective.from_config(config)
    if settings is not None:
        return _train_private(msg, context, job, model, dataset, settings, server_round, objective)
    result = train_local(model, dataset, cfg=job.cfg.training, server_round=server_round, objective=objective)
    metrics: dict[str, float | int] = {p.LOSS: result.loss, p.NUM_EXAMPLES: result.num_examples,
                                       p.TRAIN_SECONDS: result.seconds}
    if objective.expert_index is not None:
        set_site_prototype(model, dataset, objective.expert_index, batch_size=job.cfg.training.batch_size * 2)
    return _update_reply(msg, context, job, model, objective, metrics)


def _update_reply(msg: Message, context: Context, job: SiteJob, model: torch.nn.Module, objective: LocalObjective,
                  metrics: dict[str, float | int], *, status: dict[str, str] | None = None) -> Message:
    """The trained arrays as the strategy expects them (fedbn: keep the norms; prompt-experts: own rows only)."""
    state = model_state(model)
    if msg.content[p.CONFIG].get(p.LOCAL_NORMS):
        context.state[NORMS_STATE_KEY] = ArrayRecord({k: v for k, v in state.items() if k in norm_keys(model)})
    if objective.expert_index is None:
        return _reply(msg, job, metrics, arrays=ArrayRecord(state), status=status)
    metrics[p.EXPERT_INDEX] = objective.expert_index
    update = site_update(state, objective.expert_index, prompt_only=job.cfg.model.mode == "prompt")
    return _reply(msg, job, metrics, arrays=ArrayRecord(_tensors(update)), status=status)


def _global_model(msg: Message, context: Context, job: SiteJob):  # type: ignore[no-untyped-def]
    """The model holding the message's global arrays (and, with fedbn, this site's own norms)."""
    config = msg.content[p.CONFIG]
    backbone = config.get(p.BACKBONE_SHA256)
    model = job.model(msg.content[p.ARRAYS], backbone_sha256=None if backbone is None else str(backbone))
    if config.get(p.LOCAL_NORMS) and NORMS_STATE_KEY in context.state.array_records:
        load_state(model, context.state[NORMS_STATE_KEY].to_torch_state_dict(), strict=False)
    return model


def norm_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of every LayerNorm's weight and bias (what fedbn keeps at the site)."""
    return {
        f"{name}.{param}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        for param, _ in module.named_parameters(recurse=False)
    }


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, order="C")) for k, v in arrays.items()}  # 0-d arrays stay 0-d


def _train_private(msg, context, job, model, dataset, settings: DPSettings, server_round: int,  # type: ignore[no-untyped-def]
                   objective: LocalObjective) -> Message:
    """DP-SGD per patient, or a ``left-budget`` reply when the round would overspend."""
    from fedeye.client.dp_training import train_local_dp  # Opacus loads only where DP is used
    from fedeye.client.private_experts import PrivatePrototype
    from fedeye.privacy.planning import plan_round

    history = _dp_history(context)
    prototype = PrivatePrototype.for_round(context, model, objective, settings)
    training = job.cfg.dp_training()
    plan = plan_round(
        settings, num_patients=len(set(dataset.patient_ids)), batch_size=training.batch_size,
        local_epochs=training.local_epochs, history=history, total_rounds=training.rounds, one_off=prototype.one_off,
    )
    if not plan.fits:
        reason = f"next round would spend epsilon {plan.epsilon_after:.3f} > budget {plan.epsilon_budget:g}"
        metrics = {p.NUM_EXAMPLES: 0, **_dp_metrics(plan, history, spent=plan.epsilon_before)}
        return _reply(msg, job, metrics, status={p.SITE_STATUS: p.SiteStatus.LEFT_BUDGET.value, p.SITE_REASON: reason, p.DP_ACCOUNTANT: plan.accountant})
    result = train_local_dp(model, dataset, cfg=training, plan=plan, max_grad_norm=settings.max_grad_norm,
                            server_round=server_round, objective=objective,
                            max_physical_batch=job.cfg.privacy.max_physical_batch)
    history = [*history, *plan.mechanisms]
    _save_dp_history(context, history)
    prototype.apply(context, model, dataset)
    metrics = {p.LOSS: result.loss, p.NUM_EXAMPLES: result.num_examples, p.TRAIN_SECONDS: result.seconds,
               **_dp_metrics(plan, history, spent=plan.epsilon_after)}
    return _update_reply(msg, context, job, model, objective, metrics, status={p.DP_ACCOUNTANT: plan.accountant})


def _dp_metrics(plan: RoundPlan, history: list[MechanismStep], *, spent: float) -> dict[str, float | int]:
    return {
        p.DP_EPSILON: spent, p.DP_DELTA: plan.delta, p.DP_BUDGET: plan.epsilon_budget,
        p.DP_NOISE_MULTIPLIER: plan.noise_multiplier, p.DP_SAMPLE_RATE: plan.sample_rate,
        p.DP_STEPS: sum(h.steps for h in history),
    }


def _dp_history(context: Context) -> list[MechanismStep]:
    """This site's DP-SGD phases so far in this run (kept in the node's Flower context)."""
    if DP_STATE_KEY not in context.state.config_records:
        return []
    record = context.state[DP_STATE_KEY]
    return [MechanismStep(float(s), float(q), int(n)) for s, q, n in zip(record["sigma"], record["q"], record["steps"])]


def _save_dp_history(context: Context, history: list[MechanismStep]) -> None:
    context.state[DP_STATE_KEY] = ConfigRecord({
        "sigma": [h.noise_multiplier for h in history],
        "q": [h.sample_rate for h in history],
        "steps": [h.steps for h in history],
    })


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global arrays on the split named in the message (default val)."""
    job = _job(msg, context)
    model = _global_model(msg, context, job)
    split = str(msg.content[p.CONFIG].get(p.SPLIT, job.cfg.data.eval_split))
    dataset = job.dataset(split)
    probs, labels = predict(model, dataset, batch_size=job.cfg.training.batch_size * 2)
    result = evaluate_predictions(probs, labels)
    metrics = {p.LOSS: result.loss, p.NUM_EXAMPLES: result.num_examples, p.NUM_POSITIVE: result.num_positive}
    metrics.update(result.metrics)
    # per-group aggregates only; groups under the site's min_group_size are not sent
    min_group = job.site_config.privacy.min_group_size
    metrics.update(site_fairness_metrics(labels, probs, dataset.attrs, min_group_size=min_group))
    mix = mean_expert_weights(model, dataset, batch_size=job.cfg.training.batch_size * 2)
    if mix is not None:  # which experts the router sends this site's images to
        metrics.update({p.expert_weight_metric(k): float(w) for k, w in enumerate(mix)})
    expert_index = p.optional_int(msg.content[p.CONFIG], p.EXPERT_INDEX)
    if expert_index is not None:
        metrics[p.EXPERT_INDEX] = expert_index
    return _reply(msg, job, metrics)
