"""Deterministic patient-level train/val/test split (pure functions, no I/O)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedeye.sites.base import SPLITS, SplitName


def stable_unit_hash(key: str, *, salt: str) -> float:
    """Map ``key`` to a float in ``[0, 1)`` that is stable across runs and machines.

    Uses SHA-256, never Python's salted ``hash()``.
    """
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Share ``n`` items between splits by largest remainder.

    Every split with a positive fraction gets at least one item when there are
    enough items for all of them.

    >>> split_counts(10, (0.6, 0.2, 0.2))
    [6, 2, 2]
    >>> split_counts(3, (0.6, 0.2, 0.2))
    [1, 1, 1]
    """
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be 3 non-negative numbers with a positive sum, got {fractions}")
    total = float(sum(fractions))
    exact = [n * f / total for f in fractions]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return _ensure_non_empty(counts, [f > 0 for f in fractions])


def _ensure_non_empty(counts: list[int], wanted: list[bool]) -> list[int]:
    counts = list(counts)
    for i, want in enumerate(wanted):
        donor = max(range(len(counts)), key=lambda j: counts[j])
        if want and counts[i] == 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_patients(
    patient_ids: Sequence[str],
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    salt: str = "fedeye",
) -> dict[str, SplitName]:
    """Assign every patient to exactly one of train/val/test.

    Patients are ordered by a stable SHA-256 hash of ``salt:patient_id`` and
    cut into consecutive blocks sized by ``fractions``, so the split is
    deterministic, independent of input order, and with three or more patients
    every split is non-empty.

    Parameters
    ----------
    patient_ids
        Patient identifiers; duplicates are allowed and ignored.
    fractions
        Train, val and test shares (normalised to sum to one).
    salt
        Changes the shuffle while keeping it deterministic.

    Returns
    -------
    dict[str, str]
        ``patient_id -> "train" | "val" | "test"``.

    >>> split = split_patients([f"p{i}" for i in range(10)])
    >>> sorted(split.values()).count("train")
    6
    """
    unique = sorted(set(patient_ids), key=lambda p: (stable_unit_hash(p, salt=salt), p))
    counts = split_counts(len(unique), fractions)
    assignment: dict[str, SplitName] = {}
    start = 0
    for split, count in zip(SPLITS, counts, strict=True):
        for patient in unique[start : start + count]:
            assignment[patient] = split
        start += count
    return assignment
