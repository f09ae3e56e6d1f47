"""FedEye ClientApp: trains and evaluates at one hospital site (Message API).

The site folder comes from the node config key ``site-dir`` (deployment: each
SuperNode is started with ``--node-config "site-dir='/data/site'"``) or, in
simulation, from ``partition-id`` over the sorted sub-folders of
``data.root`` in the run config. Its state folder (data cache, privacy
ledger) is the node config's ``state-dir`` or, without one, a folder under
``$FEDEYE_HOME`` keyed by the site folder (:mod:`fedeye.client.state`). The
site's own config (privacy policy) comes
from ``site-config`` in the node config or ``fedeye-site.toml`` in the site
folder: the coordinator's run config cannot lift it.

Replies carry only model arrays, aggregate metrics, the site's display name
and status: never images, per-image predictions, labels or patient
identifiers. Each reply is appended to the site's audit log
(:mod:`fedeye.client.audit`) before it leaves. An exception in a handler
becomes a ``failed`` reply with a category and a site-local incident id; its
text stays in the site's incident log (:mod:`fedeye.client.incidents`). With DP on, a site whose next round would exceed its epsilon
budget does not train and replies ``left-budget`` (no arrays).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedeye import protocol as p
from fedeye.client.approval import admission, refusal
from fedeye.client.audit import audit_mod
from fedeye.client.incidents import SiteIdentity, contains_failures, failure_guard_mod
from fedeye.client.ledger import SiteLedger, data_fingerprint, ledger_path
from fedeye.client.operating_point import metrics_at_point, point_from_config, reliability_for, summary_for
from fedeye.client.site import SiteJob
from fedeye.client.training import (
    LocalObjective,
    evaluate_predictions,
    mean_expert_weights,
    predict,
    set_site_prototype,
    train_local,
)
from fedeye.config import RunConfig, TrainingConfig
from fedeye.fairness.metrics import site_fairness_metrics
from fedeye.models.config import FROZEN_BACKBONE_MODES
from fedeye.models.io import load_state, model_state
from fedeye.models.prompt_arrays import site_update
from fedeye.privacy.accounting import MechanismStep
from fedeye.privacy.ledger import LedgerDecision, LedgerEntry, plan_with_ledger
from fedeye.privacy.policy import DPSettings

if TYPE_CHECKING:
    from fedeye.sites.dataset import SiteDataset


def _identify(msg: Message, context: Context) -> SiteIdentity:
    """The failing site's name and folder, as far as they resolve (for its failed reply and incident log)."""
    try:
        job = _job(msg, context)
    except Exception:  # noqa: BLE001  (the failure itself is logged by the caller)
        return SiteIdentity()
    try:
        return SiteIdentity(name=job.site_name, folder=job.site_dir)
    except Exception:  # noqa: BLE001
        return SiteIdentity(folder=job.site_dir)


# every outgoing reply is logged at the site first; exceptions become failed replies (fedeye.client.incidents)
app = ClientApp(mods=[failure_guard_mod(_identify), audit_mod])
contained = contains_failures(_identify)
NORMS_STATE_KEY = "fedeye-local-norms"


def _job(msg: Message, context: Context) -> SiteJob:
    config = msg.content[p.CONFIG]
    cfg = RunConfig.model_validate(json.loads(str(config[p.RUN_CONFIG])))
    return SiteJob.resolve(cfg, dict(context.node_config))


def _reply(
    msg: Message,
    job: SiteJob,
    metrics: dict[str, float | int],
    *,
    arrays: ArrayRecord | None = None,
    status: dict[str, str] | None = None,
) -> Message:
    site = ConfigRecord({p.SITE_NAME: job.site_name, p.SITE_STATUS: p.SiteStatus.OK.value, **(status or {})})
    content = RecordDict({p.METRICS: MetricRecord(dict(metrics)), p.SITE: site})
    if arrays is not None:
        content[p.ARRAYS] = arrays
    return Message(content=content, reply_to=msg)


def _admitted(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Run ``handler`` only for a run this site's approval policy or admin admitted (see client/approval)."""

    @functools.wraps(handler)
    def gated(msg: Message, context: Context) -> Message:
        job = _job(msg, context)
        record = admission(
            job.site_config.approval,
            state_dir=job.state_dir,
            audit_log=job.audit_log(context.node_id),
            run_config_json=str(msg.content[p.CONFIG][p.RUN_CONFIG]),
            run_key=_run_key(msg),
        )
        refused = refusal(record)
        return handler(msg, context) if refused is None else _reply(msg, job, {p.NUM_EXAMPLES: 0}, status=refused)

    return gated


def _run_key(msg: Message) -> str:
    """The run this message belongs to: FedEye's run id, else Flower's."""
    given = msg.content[p.CONFIG].get(p.RUN_ID)
    return str(given) if given else f"flower-{msg.metadata.run_id}"


@app.train()
@contained
@_admitted
def train(msg: Message, context: Context) -> Message:
    """Load the global arrays, train on the local train split, return the update."""
    job = _job(msg, context)
    config = p.config_of(msg.content)
    model = _global_model(msg, context, job)
    server_round = p.server_round(config)
    dataset = job.dataset("train")
    settings = job.dp_settings(num_patients=len(set(dataset.patient_ids)))
    objective = LocalObjective.from_config(config)
    if settings is not None:
        return _train_private(msg, context, job, model, dataset, settings, server_round, objective)
    result = train_local(model, dataset, cfg=job.cfg.training, server_round=server_round, objective=objective)
    metrics: dict[str, float | int] = {
        p.LOSS: result.loss,
        p.NUM_EXAMPLES: result.num_examples,
        p.TRAIN_SECONDS: result.seconds,
    }
    if objective.expert_index is not None:
        set_site_prototype(model, dataset, objective.expert_index, batch_size=job.cfg.training.batch_size * 2)
    return _update_reply(msg, context, job, model, objective, metrics)


def _update_reply(
    msg: Message,
    context: Context,
    job: SiteJob,
    model: torch.nn.Module,
    objective: LocalObjective,
    metrics: dict[str, float | int],
    *,
    status: dict[str, str] | None = None,
) -> Message:
    """The trained arrays as the strategy expects them (fedbn: keep the norms; prompt-experts: own rows only)."""
    state = model_state(model)
    if msg.content[p.CONFIG].get(p.LOCAL_NORMS):
        context.state[NORMS_STATE_KEY] = ArrayRecord({k: v for k, v in state.items() if k in norm_keys(model)})
    if objective.expert_index is None:
        return _reply(msg, job, metrics, arrays=ArrayRecord(state), status=status)
    metrics[p.EXPERT_INDEX] = objective.expert_index
    update = site_update(state, objective.expert_index, prompt_only=job.cfg.model.mode in FROZEN_BACKBONE_MODES)
    return _reply(msg, job, metrics, arrays=ArrayRecord(_tensors(update)), status=status)


def _global_model(msg: Message, context: Context, job: SiteJob):  # type: ignore[no-untyped-def]
    """The model holding the message's global arrays (and, with fedbn, this site's own norms)."""
    config = p.config_of(msg.content)
    backbone = config.get(p.BACKBONE_SHA256)
    model = job.model(p.arrays_of(msg.content), backbone_sha256=None if backbone is None else str(backbone))
    if config.get(p.LOCAL_NORMS) and NORMS_STATE_KEY in context.state.array_records:
        load_state(model, context.state.array_records[NORMS_STATE_KEY].to_torch_state_dict(), strict=False)
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


def _train_private(  # type: ignore[no-untyped-def]
    msg,
    context,
    job,
    model,
    dataset,
    settings: DPSettings,
    server_round: int,
    objective: LocalObjective,
) -> Message:
    """DP-SGD per patient (with prompt-experts, also the private prototype), booked in the site's lifetime ledger.

    The round's releases are checked against the run's and the lifetime
    budget and booked in one ledger transaction, and confirmed on disk before
    the reply leaves; ``left-budget`` when the round would overspend.
    """
    from fedeye.client.dp_training import train_local_dp  # Opacus loads only where DP is used
    from fedeye.client.private_experts import PrivatePrototype

    ledger = SiteLedger(ledger_path(job.node_config, job.site_dir))
    run = p.ledger_run(msg.content[p.CONFIG], flower_run_id=msg.metadata.run_id)
    prototype = PrivatePrototype.for_round(context, model, objective, settings)
    training = job.cfg.dp_training()
    decider = _ledger_decider(
        job, dataset, settings, training, run=run, server_round=server_round, one_off=prototype.one_off
    )
    decision, booked = ledger.book(decider)
    plan = decision.plan
    if booked is None:
        metrics = {
            p.NUM_EXAMPLES: 0,
            **_dp_metrics(decision, spent=plan.epsilon_before, lifetime=decision.lifetime_before),
        }
        status = {
            p.SITE_STATUS: p.SiteStatus.LEFT_BUDGET.value,
            p.SITE_REASON: decision.refusal or "",
            p.DP_ACCOUNTANT: plan.accountant,
        }
        return _reply(msg, job, metrics, status=status)
    try:
        result = train_local_dp(
            model,
            dataset,
            cfg=training,
            plan=plan,
            max_grad_norm=settings.max_grad_norm,
            server_round=server_round,
            objective=objective,
            max_physical_batch=job.cfg.privacy.max_physical_batch,
        )
        prototype.apply(context, model, dataset)
    except BaseException:
        ledger.cancel(booked)  # nothing of this round left the site
        raise
    ledger.confirm(booked)  # spent, on disk, before the reply leaves the site
    metrics = {
        p.LOSS: result.loss,
        p.NUM_EXAMPLES: result.num_examples,
        p.TRAIN_SECONDS: result.seconds,
        **_dp_metrics(decision, spent=plan.epsilon_after, lifetime=decision.lifetime_after, trained=True),
    }
    return _update_reply(msg, context, job, model, objective, metrics, status={p.DP_ACCOUNTANT: plan.accountant})


def _dp_metrics(
    decision: LedgerDecision, *, spent: float, lifetime: float, trained: bool = False
) -> dict[str, float | int]:
    """Aggregate DP bookkeeping for the coordinator: this run's epsilon and the site's lifetime epsilon."""
    plan = decision.plan
    metrics: dict[str, float | int] = {
        p.DP_EPSILON: spent,
        p.DP_DELTA: plan.delta,
        p.DP_BUDGET: plan.epsilon_budget,
        p.DP_NOISE_MULTIPLIER: plan.noise_multiplier,
        p.DP_SAMPLE_RATE: plan.sample_rate,
        p.DP_STEPS: sum(h.steps for h in decision.history) + (sum(m.steps for m in plan.mechanisms) if trained else 0),
        p.DP_LIFETIME_EPSILON: lifetime,
    }
    if decision.lifetime_budget is not None:
        metrics[p.DP_LIFETIME_BUDGET] = decision.lifetime_budget
    return metrics


def _ledger_decider(
    job: SiteJob,
    dataset: SiteDataset,
    settings: DPSettings,
    training: TrainingConfig,
    *,
    run: str,
    server_round: int,
    one_off: Sequence[MechanismStep] = (),
) -> Callable[[list[LedgerEntry]], tuple[LedgerDecision, list[LedgerEntry] | None]]:
    """How the ledger decides the round: plan it over the ledger, and the entries to book (every release) if it fits."""
    fingerprint = data_fingerprint([(s.image, s.patient_id, s.label) for s in dataset.samples])

    def decide(entries: list[LedgerEntry]) -> tuple[LedgerDecision, list[LedgerEntry] | None]:
        decision = plan_with_ledger(
            settings,
            entries,
            run=run,
            lifetime_budget=job.site_config.privacy.lifetime_epsilon,
            num_patients=len(set(dataset.patient_ids)),
            batch_size=training.batch_size,
            local_epochs=training.local_epochs,
            total_rounds=training.rounds,
            one_off=one_off,
        )
        if not decision.fits:
            return decision, None
        plan, now = decision.plan, datetime.now(UTC)
        return decision, [
            LedgerEntry(
                run=run,
                server_round=server_round,
                noise_multiplier=m.noise_multiplier,
                sample_rate=m.sample_rate,
                steps=m.steps,
                delta=plan.delta,
                accountant=plan.accountant,
                data_fingerprint=fingerprint,
                recorded_at=now,
            )
            for m in plan.mechanisms
        ]

    return decide


@app.evaluate()
@contained
@_admitted
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
    expert_index = p.optional_int(p.config_of(msg.content), p.EXPERT_INDEX)
    if expert_index is not None:
        metrics[p.EXPERT_INDEX] = expert_index
    point = point_from_config(p.config_of(msg.content))
    if point is not None and probs.shape[1] == 2:  # the federation's operating point, with bootstrap CIs
        metrics.update(metrics_at_point(probs, labels, point))
    reply = _reply(msg, job, metrics)
    summary = summary_for(p.config_of(msg.content), probs, labels, min_group_size=min_group)
    if summary is not None:  # moments, or counts on the coordinator's grids; groups under min_group_size left out
        reply.content[p.SCORE_SUMMARY] = summary
    reliability = reliability_for(p.config_of(msg.content), probs, labels, point, min_group_size=min_group)
    if reliability is not None:  # final test: reliability-diagram bin sums; bins under min_group_size withheld
        reply.content[p.RELIABILITY] = reliability
    return reply
