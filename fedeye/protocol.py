"""FedEye's wire protocol: every record, key, status and metric name in its messages.

Both sides import this module and nothing of each other: a hospital's code
(``fedeye.client``) never imports the coordinator's (``fedeye.server``,
``fedeye.strategies``), and the coordinator reads replies through the typed
getters here. Keys follow Flower's hyphen style (``"num-examples"``).

A message from the coordinator carries the records :data:`ARRAYS` (the
global model, or the part a site is asked to train) and :data:`CONFIG`
(:data:`RUN_CONFIG` plus per-round keys). A site's reply carries
:data:`METRICS` (aggregates only), :data:`SITE` (the site's display name and
:class:`SiteStatus`) and, when it trained, :data:`ARRAYS`.

>>> from flwr.app import ConfigRecord
>>> server_round(ConfigRecord({SERVER_ROUND: 3}))
3
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

# --- records of a message --------------------------------------------------------
ARRAYS: Final = "arrays"  #: ArrayRecord: model arrays (to a site: global; from a site: its update)
CONFIG: Final = "config"  #: ConfigRecord: what the coordinator asks for
METRICS: Final = "metrics"  #: MetricRecord: a site's aggregate metrics
SITE: Final = "site"  #: ConfigRecord: the replying site's name, status and (not ok) reason and category
SCORE_SUMMARY: Final = "score-summary"  #: MetricRecord: a site's validation-score counts (keys below)
RELIABILITY: Final = "reliability"  #: MetricRecord: a site's reliability-diagram bin sums (BIN_* keys below)

# --- keys of the coordinator's config record -----------------------------------------
RUN_CONFIG: Final = "run-config"  #: the validated run config as JSON (fedeye.config.RunConfig)
RUN_ID: Final = "fedeye-run-id"  #: the FedEye run id (kept when a run resumes): keys approvals and the privacy ledger
FEDEYE_RUN_ID: Final = RUN_ID
SERVER_ROUND: Final = "server-round"  #: the round number (Flower's key)
SPLIT: Final = "split"  #: evaluate: the split to evaluate (default: the run's data.eval_split)
PROXIMAL_MU: Final = "proximal-mu"  #: FedProx: the proximal term's weight (Flower's key)
LOCAL_NORMS: Final = "local-norms"  #: FedBN: the site keeps its LayerNorm weights
EXPERT_INDEX: Final = "expert-index"  #: prompt-experts: the site's row of the expert bank (also a metric)
EXPERT_MIXUP: Final = "expert-mixup"  #: prompt-experts: share of images trained with a random expert mix
BACKBONE_SHA256: Final = "backbone-sha256"  #: prompt mode: fingerprint of the coordinator's frozen backbone
SUMMARIZE_SCORES: Final = "summarize-scores"  #: evaluate: also reply a :data:`SCORE_SUMMARY` record (moments | counts)
SCORE_CENTER: Final = (
    "score-center"  #: summarize counts: where the grids sit (fedeye.fairness.operating_point.ScoreScale)
)
SCORE_SCALE: Final = "score-scale"
OPERATING_LOG_ODDS: Final = "operating-log-odds"  #: evaluate: the chosen threshold on the positive-class log-odds
TEMPERATURE: Final = "temperature"  #: evaluate: the fitted temperature (also a metric)
CALIBRATION_BIAS: Final = "calibration-bias"  #: evaluate: the fitted bias (affine calibration; metric "bias")
SEND_RELIABILITY: Final = "send-reliability"  #: evaluate (final test): also reply a :data:`RELIABILITY` record

# --- keys of the site record ---------------------------------------------------------
SITE_NAME: Final = "name"
SITE_STATUS: Final = "status"
SITE_REASON: Final = "reason"  #: a short, site-safe reason (never a path or an exception text)
SITE_CATEGORY: Final = "category"  #: a failure's :class:`FailureCategory`
SITE_INCIDENT: Final = "incident"  #: a failure's site-local incident id (details in the site's log)
DP_ACCOUNTANT: Final = "dp-accountant"


class SiteStatus(StrEnum):
    """What a site says it did with a message."""

    OK = "ok"
    LEFT_BUDGET = "left-budget"  #: declined to train: the next round would exceed its privacy budget
    FAILED = "failed"  #: the site could not do the work; see the category and incident id
    AWAITING_APPROVAL = "awaiting-approval"  #: the site's admin has not yet approved this run
    DENIED = "denied"  #: the site's admin (or its approval policy) refused this run; see the category


class DenialCategory(StrEnum):
    """Why a site refused a run, in words that are safe to leave the site."""

    POLICY = "policy"  #: the run is outside what the site's approval policy accepts
    GOVERNANCE = "governance"  #: the site's data governance did not approve it
    PRIVACY = "privacy"  #: its privacy settings are not acceptable to the site
    OTHER = "other"


class FailureCategory(StrEnum):
    """Why a site failed, in words that are safe to leave the site."""

    DATA_ERROR = "data-error"
    CONFIG_ERROR = "config-error"
    MODEL_ERROR = "model-error"
    OUT_OF_MEMORY = "out-of-memory"
    BUDGET = "budget"
    WORKER_UNAVAILABLE = "worker-unavailable"
    INTERNAL = "internal"


# --- metric names ------------------------------------------------------------------
NUM_EXAMPLES: Final = "num-examples"  #: aggregation weight (Flower's key)
LOSS: Final = "loss"
TRAIN_SECONDS: Final = "train-seconds"
NUM_POSITIVE: Final = "num-positive"
DP_EPSILON: Final = "dp-epsilon"  #: epsilon spent so far by the site
DP_DELTA: Final = "dp-delta"
DP_BUDGET: Final = "dp-budget"
DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"
DP_SAMPLE_RATE: Final = "dp-sample-rate"
DP_STEPS: Final = "dp-steps"
DP_LIFETIME_EPSILON: Final = "dp-lifetime-epsilon"  #: epsilon spent on this data over every run
DP_LIFETIME_BUDGET: Final = "dp-lifetime-budget"


# --- keys of the score-summary record (aggregate counts on fixed grids; nothing per image) ------------
SUMMARY_POSITIVES: Final = "positives"  #: positives summarised (absent: fewer than min_group_size)
SUMMARY_NEGATIVES: Final = "negatives"
SUMMARY_POSITIVES_ABOVE: Final = "positives-above"  #: per grid threshold, positives scoring at or above it
SUMMARY_NEGATIVES_ABOVE: Final = "negatives-above"
SUMMARY_NLL: Final = "nll-per-temperature"  #: per grid temperature, the summed log-loss (bias 0)
#: per grid (bias, temperature), the summed log-loss, row-major (biases x temperatures)
SUMMARY_NLL_GRID: Final = "nll-per-bias-temperature"
SUMMARY_IMAGES: Final = "images"  #: moments: images summarised (absent: fewer than min_group_size)
SUMMARY_SUM: Final = "log-odds-sum"  #: moments: sum of the positive-class log-odds
SUMMARY_SQUARES: Final = "log-odds-squares"  #: moments: sum of their squares
MOMENTS: Final = "moments"  #: value of SUMMARIZE_SCORES: send SUMMARY_IMAGES/SUM/SQUARES
COUNTS: Final = "counts"  #: value of SUMMARIZE_SCORES: send the counts and log-losses on the grids

# --- keys of the reliability record (per equal-width probability bin; fedeye.fairness.reliability) ----------
BIN_IMAGES: Final = "bin-images"  #: per bin, images (0 where withheld: fewer than min_group_size)
BIN_PROBABILITY_SUMS: Final = "bin-probability-sums"  #: per bin, the sum of predicted positive-class probabilities
BIN_POSITIVES: Final = "bin-positives"  #: per bin, positives
BIN_WITHHELD: Final = "bin-withheld"  #: images in withheld bins
BIN_KEYS: Final = (BIN_IMAGES, BIN_PROBABILITY_SUMS, BIN_POSITIVES, BIN_WITHHELD)


def calibrated_key(key: str) -> str:
    """The key of a reliability record's bins after the federation's calibration (``bin-images-calibrated``)."""
    return f"{key}-calibrated"


def expert_weight_metric(index: int) -> str:
    """The metric holding the router's mean weight of expert ``index`` at a site."""
    return f"expert.{index}.weight"


# --- node config keys (set when a SuperNode starts) -------------------------------------
NODE_SITE_DIR: Final = "site-dir"  #: deployment: the site's data folder
NODE_SITE_CONFIG: Final = "site-config"  #: deployment: the site's policy file (site.toml)
NODE_AUDIT_LOG: Final = "audit-log"  #: an explicit audit log path
NODE_STATE_DIR: Final = "state-dir"  #: the site's state folder (cache, ledger, logs, worker socket)
NODE_PARTITION_ID: Final = "partition-id"  #: simulation: which site folder this node serves
NODE_WORKER: Final = "worker"  #: deployment: true when a site worker serves the ClientApp (fedeye.client.worker)
NODE_SITE_NAME: Final = "site-name"  #: deployment: the site's display name, for replies made without its data


# --- typed getters -----------------------------------------------------------------
def server_round(config: ConfigRecord) -> int:
    """The round a config record belongs to."""
    return int(config[SERVER_ROUND])  # type: ignore[arg-type]


def optional_int(config: ConfigRecord, key: str) -> int | None:
    """An integer config value, or None when absent."""
    value = config.get(key)
    return None if value is None else int(value)  # type: ignore[arg-type]


def ledger_run(config: ConfigRecord, *, flower_run_id: int) -> str:
    """The run a site's privacy ledger books a round under: the FedEye run id, else ``flower-<Flower run id>``.

    >>> ledger_run(ConfigRecord({FEDEYE_RUN_ID: "r-20250101-000000-ab12"}), flower_run_id=7)
    'r-20250101-000000-ab12'
    >>> ledger_run(ConfigRecord({}), flower_run_id=7)
    'flower-7'
    """
    value = str(config.get(FEDEYE_RUN_ID, "") or "")
    return value or f"flower-{flower_run_id}"


def site_status(content: RecordDict) -> SiteStatus:
    """The status a reply declares (a reply without a site record is ``ok``)."""
    if SITE not in content.config_records:
        return SiteStatus.OK
    raw = str(content.config_records[SITE].get(SITE_STATUS, SiteStatus.OK))
    try:
        return SiteStatus(raw)
    except ValueError:
        return SiteStatus.FAILED


def site_field(content: RecordDict, key: str, default: str = "") -> str:
    """One field of a reply's site record, as text."""
    if SITE not in content.config_records:
        return default
    return str(content.config_records[SITE].get(key, default))


def config_of(content: RecordDict) -> ConfigRecord:
    """The coordinator's config record of a message."""
    return content.config_records[CONFIG]


def arrays_of(content: RecordDict) -> ArrayRecord:
    """The model arrays of a message."""
    return content.array_records[ARRAYS]


def metrics_of(content: RecordDict) -> MetricRecord:
    """The aggregate metrics of a reply."""
    return content.metric_records[METRICS]


_INCIDENT_ID = re.compile(r"[0-9a-f]{6,32}")


def site_failure(content: RecordDict) -> tuple[FailureCategory, str | None]:
    """A failed reply's category and incident id, and nothing else of what the site wrote.

    A category FedEye does not know reads as ``internal``; an incident id that
    is not 6-32 lowercase hex characters reads as None, so no free text from a
    site passes through here.

    >>> from flwr.app import ConfigRecord
    >>> site_failure(RecordDict({SITE: ConfigRecord({SITE_CATEGORY: "data-error", SITE_INCIDENT: "0a1b2c3d4e5f"})}))
    (<FailureCategory.DATA_ERROR: 'data-error'>, '0a1b2c3d4e5f')
    """
    try:
        category = FailureCategory(site_field(content, SITE_CATEGORY))
    except ValueError:
        category = FailureCategory.INTERNAL
    incident = site_field(content, SITE_INCIDENT)
    return category, incident if _INCIDENT_ID.fullmatch(incident) else None
