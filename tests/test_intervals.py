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


def test_tidy_table_has_interval_columns():
    from evflow.pipeline.results import tidy_tables
    from evflow.schema import counts_dataset

    ds = counts_dataset(np.array([[90, 10]]), ["CD63"], ["s1"])
    ds = ds.assign_coords(role=("sample", ["sample"]), dilution=("sample", [1.0]))
    ds["concentration_per_ml"] = (("sample", "phenotype"), np.array([[9e6, 1e6]]))
    ds["concentration_per_ml_lo"] = (("sample", "phenotype"), 1e5 * poisson_interval([[90, 10]])[0])
    ds["concentration_per_ml_hi"] = (("sample", "phenotype"), 1e5 * poisson_interval([[90, 10]])[1])
    t = tidy_tables(ds)["counts"]
    row = t[t["count"] == 10].iloc[0]
    assert row["count_lo"] == pytest.approx(4.795389, rel=1e-5) and row["count_hi"] == pytest.approx(18.39036, rel=1e-5)
    lo, hi = wilson_interval(10, 100)
    assert row["fraction_of_parent_lo"] == pytest.approx(lo) and row["fraction_of_parent_hi"] == pytest.approx(hi)
    assert row["concentration_per_ml_lo"] < row["concentration_per_ml"] < row["concentration_per_ml_hi"]
