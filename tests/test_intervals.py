"""Counting statistics: exact Poisson intervals on counts, Wilson intervals on fractions, in the datasets."""

from __future__ import annotations

import numpy as np
import pytest

import evflow
from evflow.flow.intervals import poisson_interval, wilson_interval


def test_poisson_interval_known_values():
    lo, hi = poisson_interval([0, 1, 10, 100])
    np.testing.assert_allclose(lo, [0.0, 0.025318, 4.795389, 81.36396], rtol=1e-5)
    np.testing.assert_allclose(hi, [3.688879, 5.571643, 18.39036, 121.6280], rtol=1e-5)
    lo, hi = poisson_interval(-1)
    assert np.isnan(lo) and np.isnan(hi)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval([0, 5, 10], [10, 10, 10])
    np.testing.assert_allclose(lo, [0.0, 0.236593, 0.722467], rtol=1e-5)
    np.testing.assert_allclose(hi, [0.277533, 0.763407, 1.0], rtol=1e-5)
    lo, hi = wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


def test_count_phenotypes_dataset_has_intervals(tmp_path):
    rng = np.random.default_rng(0)
    ev = np.c_[rng.uniform(0, 100, 500), np.r_[np.full(50, 10.0), np.full(450, 0.0)]].astype(np.float32)
    path = evflow.write_fcs(tmp_path / "s.fcs", ev, ["FSC-A", "FL1-A"])
    from evflow.flow.phenotypes import count_phenotypes

    ds = count_phenotypes(path, markers={"CD63": ("FL1-A", 5.0)})
    c = ds["count"].values[0]
    np.testing.assert_array_equal(c, [450, 50])
    lo, hi = poisson_interval(c)
    np.testing.assert_allclose(ds["count_lo"].values[0], lo)
    np.testing.assert_allclose(ds["count_hi"].values[0], hi)
    assert np.all(ds["count_lo"].values < c) and np.all(ds["count_hi"].values > c)
    f = ds["fraction_of_parent"].values[0]
    assert np.all(ds["fraction_of_parent_lo"].values[0] < f) and np.all(ds["fraction_of_parent_hi"].values[0] > f)
    assert ds["fraction_of_parent_lo"].values[0, 1] == pytest.approx(wilson_interval(50, 500)[0])
