"""The coordinator's side of the reliability diagram: read each site's bins from its final test reply.

The final evaluation asks every site for :data:`fedeye.protocol.RELIABILITY`
(:data:`fedeye.protocol.SEND_RELIABILITY`); the recorder keeps each site's
bins and their sum with the run (:class:`~fedeye.fairness.reliability.RunReliability`).
A record whose vectors are not :data:`~fedeye.fairness.reliability.NUM_BINS`
long, or hold a negative count, is ignored (a site on another FedEye).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from flwr.app import Message, MetricRecord

from fedeye import protocol as p
from fedeye.fairness.reliability import NUM_BINS, ReliabilityBins, ReliabilityDiagram


def reliability_of(reply: Message) -> ReliabilityDiagram | None:
    """The diagram a reply carries (None: an error, no record, or a malformed one)."""
    if reply.has_error() or p.RELIABILITY not in reply.content.metric_records:
        return None
    return diagram_of(reply.content.metric_records[p.RELIABILITY])


def diagram_of(record: MetricRecord) -> ReliabilityDiagram | None:
    """The bins of a reliability record, before and (when sent) after calibration."""
    before = _bins(record, lambda key: key)
    return None if before is None else ReliabilityDiagram(before, _bins(record, p.calibrated_key))


def _bins(record: MetricRecord, key: Callable[[str], str]) -> ReliabilityBins | None:
    images, sums, positives = (record.get(key(k)) for k in (p.BIN_IMAGES, p.BIN_PROBABILITY_SUMS, p.BIN_POSITIVES))
    withheld = record.get(key(p.BIN_WITHHELD), 0)
    vectors = (images, sums, positives)
    if not all(isinstance(v, list) and len(v) == NUM_BINS for v in vectors) or not isinstance(withheld, int | float):
        return None
    values = [float(x) for v in vectors for x in v] + [float(withheld)]  # type: ignore[union-attr]
    if not all(math.isfinite(x) and x >= 0 for x in values):
        return None
    return ReliabilityBins(
        tuple(int(x) for x in images),  # type: ignore[union-attr]
        tuple(float(x) for x in sums),  # type: ignore[union-attr]
        tuple(int(x) for x in positives),  # type: ignore[union-attr]
        int(withheld),
    )
