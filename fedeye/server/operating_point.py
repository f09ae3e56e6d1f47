"""The coordinator's side of the operating point: ask the sites for score summaries, sum them, choose.

Every round's evaluation asks (:data:`fedeye.protocol.SUMMARIZE_SCORES`)
for the moments of the sites' validation log-odds (count, sum, sum of
squares); the last round's, taken on the final global model, place the
grids (:class:`~fedeye.fairness.operating_point.ScoreScale`). The final model
then goes to every site once more, for its counts and log-losses on those
grids (see :mod:`fedeye.client.operating_point`); a run that ended early or
whose last evaluation is missing asks for the moments first.
The counts are summed and the run's ``[evaluation] operating_point`` and
calibration (bias and temperature) are chosen on the sums (:mod:`fedeye.fairness.operating_point`). The result goes into the final
model file and, through the final evaluation's config, to every site.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedeye import protocol as p
from fedeye.config import RunConfig
from fedeye.fairness.operating_point import (
    LOG_ODDS_GRID,
    NLL_GRID_SHAPE,
    TEMPERATURE_GRID,
    Calibration,
    ModelOperatingPoint,
    ScoreScale,
    fit_calibration,
    fit_operating_point,
    fit_temperature,
)


@dataclass
class SummedScores:
    """Score summaries summed over the sites that sent them."""

    positives: int = 0
    negatives: int = 0
    positives_above: np.ndarray = field(default_factory=lambda: np.zeros(len(LOG_ODDS_GRID), dtype=np.int64))
    negatives_above: np.ndarray = field(default_factory=lambda: np.zeros(len(LOG_ODDS_GRID), dtype=np.int64))
    nll: np.ndarray = field(default_factory=lambda: np.zeros(len(TEMPERATURE_GRID)))
    sites_with_nll: int = 0
    nll_grid: np.ndarray = field(default_factory=lambda: np.zeros(NLL_GRID_SHAPE))
    sites_with_nll_grid: int = 0

    def add(self, record: MetricRecord) -> None:
        """Add one site's record; vectors of the wrong length are ignored (a site on another FedEye)."""
        if _fits(record, p.SUMMARY_POSITIVES_ABOVE, LOG_ODDS_GRID):
            self.positives += int(record[p.SUMMARY_POSITIVES])  # type: ignore[arg-type]
            self.positives_above += np.asarray(record[p.SUMMARY_POSITIVES_ABOVE], dtype=np.int64)
        if _fits(record, p.SUMMARY_NEGATIVES_ABOVE, LOG_ODDS_GRID):
            self.negatives += int(record[p.SUMMARY_NEGATIVES])  # type: ignore[arg-type]
            self.negatives_above += np.asarray(record[p.SUMMARY_NEGATIVES_ABOVE], dtype=np.int64)
        if _fits(record, p.SUMMARY_NLL, TEMPERATURE_GRID):
            self.nll += np.asarray(record[p.SUMMARY_NLL], dtype=np.float64)
            self.sites_with_nll += 1
        if _fits(record, p.SUMMARY_NLL_GRID, np.empty(NLL_GRID_SHAPE).ravel()):
            self.nll_grid += np.asarray(record[p.SUMMARY_NLL_GRID], dtype=np.float64).reshape(NLL_GRID_SHAPE)
            self.sites_with_nll_grid += 1

    def calibration(self, scale: ScoreScale) -> Calibration | None:
        """Bias and temperature of least pooled log-loss (None: no log-loss was sent).

        Affine when every site that sent a log-loss sent the (bias, temperature)
        grid; else (a site on an older FedEye) the temperature alone, on the sums
        every site sent.
        """
        if not self.sites_with_nll:
            return None
        if self.sites_with_nll_grid == self.sites_with_nll:
            return fit_calibration(self.nll_grid, scale)
        return Calibration(temperature=fit_temperature(self.nll, scale.temperatures))


def _fits(record: MetricRecord, key: str, grid: np.ndarray) -> bool:
    value = record.get(key)
    return isinstance(value, list) and len(value) == len(grid)


def sum_summaries(replies: Iterable[Message]) -> SummedScores:
    """Sum the score summaries of the replies that carry one."""
    total = SummedScores()
    for reply in replies:
        if _has_summary(reply):
            total.add(reply.content.metric_records[p.SCORE_SUMMARY])
    return total


def _has_summary(reply: Message) -> bool:
    return not reply.has_error() and p.SCORE_SUMMARY in reply.content.metric_records


def pooled_scale(replies: Iterable[Message]) -> ScoreScale:
    """Where the grids go: centre and spread of the log-odds pooled from the sites' moments."""
    count = total = squares = 0.0
    for reply in replies:
        if _has_summary(reply):
            record = reply.content.metric_records[p.SCORE_SUMMARY]
            if all(
                isinstance(record.get(k), int | float) for k in (p.SUMMARY_IMAGES, p.SUMMARY_SUM, p.SUMMARY_SQUARES)
            ):
                count += float(record[p.SUMMARY_IMAGES])  # type: ignore[arg-type]
                total += float(record[p.SUMMARY_SUM])  # type: ignore[arg-type]
                squares += float(record[p.SUMMARY_SQUARES])  # type: ignore[arg-type]
    return ScoreScale.from_moments(count, total, squares)


def choose_from_summaries(
    total: SummedScores, cfg: RunConfig, scale: ScoreScale | None = None
) -> ModelOperatingPoint | None:
    """The run's operating point on the summed summaries (None: no positives or no negatives were sent)."""
    if total.positives == 0 or total.negatives == 0:
        log(
            WARNING,
            "operating point: the sites sent %d positives and %d negatives (classes under their "
            "min_group_size are withheld); the final model keeps the 0.5 threshold",
            total.positives,
            total.negatives,
        )
        return None
    scale = scale or ScoreScale()
    return fit_operating_point(
        positives_above=total.positives_above,
        negatives_above=total.negatives_above,
        num_positive=total.positives,
        num_negative=total.negatives,
        calibration=total.calibration(scale) if cfg.evaluation.calibrate else None,
        target=cfg.evaluation.operating_point,
        source="federation",
        scale=scale,
    )


def federated_operating_point(
    grid: Grid,
    strategy: Strategy,
    arrays: ArrayRecord,
    cfg: RunConfig,
    *,
    run_id: str,
    moments: list[Message] | None = None,
) -> ModelOperatingPoint | None:
    """Ask every site for its validation-score summaries of ``arrays`` and choose the operating point.

    ``moments``: the replies of the last round's evaluation when it evaluated
    ``arrays`` (they carry the moments); without them, or when none of them
    carries any, the sites are asked.
    """
    kept = moments or []
    if not any(_has_summary(reply) for reply in kept):  # none kept, or no site could send them then
        kept = _ask(grid, strategy, arrays, cfg, {p.RUN_ID: run_id, p.SUMMARIZE_SCORES: p.MOMENTS})
    scale = pooled_scale(kept)
    counts = _ask(
        grid,
        strategy,
        arrays,
        cfg,
        {p.RUN_ID: run_id, p.SUMMARIZE_SCORES: p.COUNTS, p.SCORE_CENTER: scale.center, p.SCORE_SCALE: scale.scale},
    )
    point = choose_from_summaries(sum_summaries(counts), cfg, scale)
    if point is not None:
        log(
            INFO,
            "operating point (%s): p >= %.3f after calibration (%s) (pooled val sensitivity %.3f, specificity %.3f)",
            point.target,
            point.threshold,
            point.calibration.describe(),
            point.sensitivity,
            point.specificity,
        )
    return point


def _ask(
    grid: Grid, strategy: Strategy, arrays: ArrayRecord, cfg: RunConfig, keys: dict[str, str | float]
) -> list[Message]:
    """One summary request to every site (the strategy samples them as for evaluation), and the replies."""
    config = ConfigRecord(
        {p.RUN_CONFIG: cfg.to_json(), p.SPLIT: cfg.data.eval_split, p.SERVER_ROUND: cfg.training.rounds, **keys}
    )
    messages = list(strategy.configure_evaluate(cfg.training.rounds, arrays, config, grid))
    return list(grid.send_and_receive(messages, timeout=cfg.strategy.round_timeout))


def point_config(point: ModelOperatingPoint | None) -> dict[str, float]:
    """The evaluate-config keys that make sites report metrics at ``point``."""
    if point is None:
        return {}
    return {p.OPERATING_LOG_ODDS: point.log_odds, p.TEMPERATURE: point.temperature, p.CALIBRATION_BIAS: point.bias}


def write_point(point: ModelOperatingPoint, path: Path) -> Path:
    """The point as JSON beside the final model (recorded in the run store as an artifact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(point.to_metadata(), indent=1))
    return path
