"""Synthetic EV samples: the interpolated Mie scatter matches exact Mie; several markers with known truth."""

from __future__ import annotations

import numpy as np

from evflow.flow.mie import VESICLE, Detector, collected_cross_section
from evflow.synth.flow import default_scatter_gain, scatter_cross_section, synthetic_ev_sample


def test_scatter_curve_matches_exact_mie():
    rng = np.random.default_rng(0)
    d = rng.uniform(50.0, 400.0, 5000)
    fast = scatter_cross_section(d, VESICLE, diameter_range_nm=(50.0, 400.0))
    pick = rng.choice(d.size, 12, replace=False)
    exact = collected_cross_section(VESICLE, d[pick], 488.0, 1.333, Detector.side_scatter())
    np.testing.assert_allclose(fast[pick], exact, rtol=1e-4)
    # few distinct sizes (beads) are computed exactly
    few = scatter_cross_section([100.0, 200.0, 100.0], VESICLE)
    np.testing.assert_allclose(few, collected_cross_section(VESICLE, [100.0, 200.0, 100.0], 488.0, 1.333,
                                                             Detector.side_scatter()), rtol=1e-12)


def test_ev_sample_two_markers_truth():
    n = 200_000
    df, truth = synthetic_ev_sample(n, cv=0.0, mesf_cv=0.0, background=1e-9,
                                    markers=[("FL1-H", "CD63", 0.6, 3000.0), ("FL2-H", "EpCAM", 0.1, 4000.0)], seed=3)
    assert list(df.columns) == ["SSC-H", "FL1-H", "FL2-H", "Time"]
    d = truth["diameter_nm"]
    assert d.size == n and d.min() >= 50 and d.max() <= 400
    assert abs(np.median(d) - 110.0) < 3.0
    # noiseless scatter is the gain times the cross-section of the true diameter
    np.testing.assert_allclose(df["SSC-H"], default_scatter_gain() * scatter_cross_section(d, VESICLE, diameter_range_nm=(50.0, 400.0)),
                               rtol=1e-12)
    assert abs(truth["CD63"].mean() - 0.6) < 0.005 and abs(truth["EpCAM"].mean() - 0.1) < 0.005
    # independent markers; positives at (mesf / e**b) ** (1/m) channel units, negatives at the background
    assert abs((truth["CD63"] & truth["EpCAM"]).mean() - 0.06) < 0.005
    np.testing.assert_allclose(df["FL2-H"][truth["EpCAM"]], (4000.0 / np.exp(2.5)) ** (1 / 1.05), rtol=1e-6)
    assert df["FL1-H"][~truth["CD63"]].max() < 1e-6
    assert (np.diff(df["Time"]) >= 0).all() and df["Time"].max() <= 60.0
