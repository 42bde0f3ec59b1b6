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


def test_rate_difference_interval_coverage_over_1000_repeats():
    """Buffer subtraction: the interval of k_s/v_s - k_b/v_b covers the true difference at about 95%."""
    from evflow.flow.intervals import rate_difference_interval

    rng = np.random.default_rng(7)
    v_s, v_b, rate_s, rate_b = 2.0, 3.0, 300.0, 40.0  # events per uL: sample 600 expected, buffer 120
    k_s = rng.poisson(rate_s * v_s, 1000)
    k_b = rng.poisson(rate_b * v_b, 1000)
    est, lo, hi = rate_difference_interval(k_s, v_s, k_b, v_b)
    cover = np.mean((lo <= rate_s - rate_b) & (rate_s - rate_b <= hi))
    assert abs(cover - 0.95) <= 0.02, cover
    np.testing.assert_allclose(est, k_s / v_s - k_b / v_b)
    # with a 5% volume uncertainty that the interval is told of, coverage stays nominal; untold, it drops
    vs_true = v_s * rng.normal(1.0, 0.05, 1000)
    k_s2 = rng.poisson(rate_s * vs_true)
    _, lo2, hi2 = rate_difference_interval(k_s2, v_s, k_b, v_b, v_s_rel_sd=0.05)
    cover2 = np.mean((lo2 <= rate_s - rate_b) & (rate_s - rate_b <= hi2))
    assert abs(cover2 - 0.95) <= 0.02, cover2
    _, lo3, hi3 = rate_difference_interval(k_s2, v_s, k_b, v_b)
    assert np.mean((lo3 <= rate_s - rate_b) & (rate_s - rate_b <= hi3)) < cover2 - 0.1


def test_buffer_subtracted_concentration_in_dataset():
    import xarray as xr

    from evflow.flow.intervals import add_buffer_subtracted

    ds = xr.Dataset(
        {"count": (("sample", "phenotype"), np.array([[900, 100], [50, 10], [30, 6]])),
         "volume_ul": ("sample", [3.0, 2.0, 1.0])},
        coords={"sample": ["S1", "buffer", "buffer2"], "phenotype": ["CD63-", "CD63+"],
                "role": ("sample", ["sample", "buffer", "buffer"]), "dilution": ("sample", [10.0, 1.0, 1.0])})
    add_buffer_subtracted(ds)
    v = ds["buffer_subtracted_concentration_per_ml"].values
    # pooled buffer: (50 + 30) events in 3 uL for CD63-; S1: 900 in 3 uL, diluted 10x
    assert v[0, 0] == pytest.approx((900 / 3 - 80 / 3) * 1e3 * 10)
    assert v[0, 1] == pytest.approx((100 / 3 - 16 / 3) * 1e3 * 10)
    assert np.isnan(v[1:]).all()  # buffers themselves get no subtracted value
    lo, hi = ds["buffer_subtracted_concentration_per_ml_lo"].values, ds["buffer_subtracted_concentration_per_ml_hi"].values
    half = 1.959964 * np.sqrt(900 / 9 + 80 / 9) * 1e4
    assert lo[0, 0] == pytest.approx(v[0, 0] - half, rel=1e-6) and hi[0, 0] == pytest.approx(v[0, 0] + half, rel=1e-6)
    # flagged: CD63+ of S1 has 100 and 16 buffer events (< 20); CD63- (900 and 80, interval clear of 0) is not
    assert ds["buffer_subtracted_doubtful"].values.tolist() == [[False, True], [False, False], [False, False]]
    # no buffer control: nothing is added
    ds2 = ds.assign_coords(role=("sample", ["sample", "sample", "sample"]))
    assert "buffer_subtracted_concentration_per_ml" not in add_buffer_subtracted(ds2.drop_vars(
        [k for k in ds2.data_vars if k.startswith("buffer_")]))


@pytest.mark.parametrize("lam", [3.0, 20.0, 50.0, 500.0, 5000.0])
def test_count_interval_coverage_is_nominal(lam):
    """Exact coverage of the Garwood interval (sum of the Poisson pmf over the counts whose interval holds
    the mean): never below 95%; within 2 points of it from about 20 events on, conservative below
    (98.8% at a mean of 3 events, the price of an exact interval)."""
    from scipy.stats import poisson

    ks = np.arange(0, int(lam * 3 + 30))
    lo, hi = poisson_interval(ks)
    cover = poisson.pmf(ks, lam)[(lo <= lam) & (lam <= hi)].sum()
    assert 0.95 <= cover <= (0.99 if lam < 10 else 0.97), cover


@pytest.mark.parametrize("n,p", [(200, 0.3), (1000, 0.1), (5000, 0.02), (100000, 0.005)])
def test_fraction_interval_coverage_is_nominal(n, p):
    """Exact coverage of the Wilson interval within 2 points of 95% at fractions of EV phenotypes."""
    from scipy.stats import binom

    ks = np.arange(0, n + 1)
    lo, hi = wilson_interval(ks, n)
    cover = binom.pmf(ks, n, p)[(lo <= p) & (p <= hi)].sum()
    assert abs(cover - 0.95) <= 0.02, cover
