"""npz sites (MedMNIST, FairVision) under generated arrays: a report or a correct load, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedeye.errors import FedEyeError
from fedeye.sites.base import SPLITS, open_site
from fedeye.sites.pixels import to_uint8
from tests.sites.conftest import write_fairvision_subject

LABEL_DTYPES = st.sampled_from([np.int64, np.uint8, np.float64, np.float32, np.bool_, np.str_])
IMAGE_DTYPES = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int16])


@st.composite
def medmnist_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n = draw(st.integers(1, 4))
        arrays[f"{split}_images"] = draw(hnp.arrays(draw(IMAGE_DTYPES), (n, 6, 6)))
        labels_dtype = draw(LABEL_DTYPES)
        elements = st.sampled_from(["0", "1", "x"]) if labels_dtype is np.str_ else None
        arrays[f"{split}_labels"] = draw(hnp.arrays(labels_dtype, (n, 1), elements=elements))
    return arrays


@given(medmnist_arrays())
def test_medmnist_arrays_load_exactly_or_are_reported(arrays: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "octmnist.npz", **arrays)  # type: ignore[arg-type]
        site = open_site(tmp)
        try:
            samples = site.samples()
        except FedEyeError:
            return
        for sample in samples:
            stored_label = arrays[f"{sample.split}_labels"][sample.row, 0]
            assert sample.label == stored_label and float(sample.label) == float(stored_label)
            assert np.array_equal(site.read_image(sample), to_uint8(arrays[f"{sample.split}_images"])[sample.row])


FIELD_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(-3, 300),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=5),
    st.binary(max_size=3),
    st.lists(st.integers(0, 2), min_size=0, max_size=3).map(np.array),
)


@given(st.fixed_dictionaries({}, optional={k: FIELD_VALUES for k in ("glaucoma", "race", "male", "hispanic", "age")}))
def test_fairvision_subject_fields_give_problems_or_samples(fields: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(3):
            write_fairvision_subject(root / f"data_{i}.npz", label=i % 2)
        write_fairvision_subject(root / "data_x.npz", drop="glaucoma" if "glaucoma" not in fields else "", **fields)
        try:
            samples = open_site(root).samples()
        except FedEyeError:
            return
        assert all(s.label in (0, 1) for s in samples)
