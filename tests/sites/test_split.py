"""Patient-level split: deterministic, disjoint, never empty for >= 3 patients."""

from __future__ import annotations

import pytest

from fedeye.sites.split import split_counts, split_patients


def test_every_patient_gets_exactly_one_split() -> None:
    patients = [f"p{i}" for i in range(50)] * 2  # duplicates (two eyes) are fine

    split = split_patients(patients)

    assert set(split) == set(patients)
    assert set(split.values()) == {"train", "val", "test"}
    assert sorted(split.values()).count("train") == 30


def test_split_is_deterministic_and_order_independent() -> None:
    patients = [f"p{i}" for i in range(40)]

    first = split_patients(patients)
    second = split_patients(list(reversed(patients)))

    assert first == second


def test_salt_changes_the_split() -> None:
    patients = [f"p{i}" for i in range(40)]

    assert split_patients(patients, salt="a") != split_patients(patients, salt="b")


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_small_sites_get_non_empty_splits(n: int) -> None:
    split = split_patients([f"p{i}" for i in range(n)])

    assert set(split.values()) == {"train", "val", "test"}


def test_split_counts_follow_fractions() -> None:
    assert split_counts(10, (0.6, 0.2, 0.2)) == [6, 2, 2]
    assert split_counts(3, (0.6, 0.2, 0.2)) == [1, 1, 1]
    assert sum(split_counts(101, (0.6, 0.2, 0.2))) == 101


def test_bad_fractions_raise() -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_counts(10, (0.5, 0.5))
