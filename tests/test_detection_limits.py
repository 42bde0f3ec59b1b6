"""Detection limits: noise level of a particle-free control -> dimmest MESF and smallest diameter (real files, synthetic truth)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow.errors import EvflowError
from evflow.flow.detection_limits import fluorescence_limit, noise_level, scatter_limit
from evflow.synth.flow import synthetic_size_beads

MEFL_B = [0, 771, 2106, 6262, 15183, 45292, 136258, 291042]


def test_noise_level_is_the_stated_percentile_of_synthetic_noise():
    rng = np.random.default_rng(0)
    x = rng.lognormal(math.log(5.0), 0.4, 200_000)  # the synthetic generators' background
    truth = 5.0 * math.exp(0.4 * 2.5758293035489)  # 99.5th percentile of that lognormal
    assert noise_level(x) == pytest.approx(truth, rel=0.01)
    assert noise_level(np.r_[x, np.nan, np.inf]) == pytest.approx(truth, rel=0.01)  # non-finite dropped
    with pytest.raises(EvflowError, match="percentile"):
        noise_level(x, 100.0)
    with pytest.raises(EvflowError, match="20 control events"):
        noise_level(x[:5])


def test_fluorescence_limit_on_real_files_agrees_with_flowcal():
    # FlowCal's minimum control (E. coli without sfGFP: autofluorescence only) and the beads of that day
    FlowCal = pytest.importorskip("FlowCal")
    beads = shared_path("beads", "flowcal", "min", "sample001.fcs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = evflow.calibrate_mesf(beads, "FL1", MEFL_B, clustering_channels=["FL1", "FL3"], units="MEFL")
        cells = evflow.read_fcs(shared_path("beads", "flowcal", "min", "sample004.fcs"), scale=True)
        fl1 = np.asarray(cells.events[:, cells.channel_index("FL1")].compute(), float)
    level = noise_level(fl1)
    lim = fluorescence_limit(level, cal)
    assert lim == pytest.approx(float(cal.to_mesf(np.array([level]))[0]))
    assert lim == pytest.approx(fluorescence_limit(level, m=cal.params["m"], b=cal.params["b"]), rel=1e-12)
    # FlowCal's standard curve of the same beads converts the same level to within 2 %
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(0)
        b = FlowCal.transform.to_rfi(FlowCal.io.FCSData(str(beads)))
        b = FlowCal.gate.start_end(b, num_start=250, num_end=100)
        b = FlowCal.gate.high_low(b, channels=["FSC", "SSC"])
        b = FlowCal.gate.density2d(b, channels=["FSC", "SSC"], gate_fraction=0.3, sigma=5.0)
        to_mef = FlowCal.mef.get_transform_fxn(b, mef_values=np.array(MEFL_B), mef_channels="FL1",
                                               clustering_channels=["FL1", "FL3"])
        c = FlowCal.transform.to_rfi(FlowCal.io.FCSData(str(shared_path("beads", "flowcal", "min", "sample004.fcs"))))
        ref = float(np.percentile(np.asarray(to_mef(c, "FL1")[:, "FL1"], float), 99.5))
    assert lim == pytest.approx(ref, rel=0.02)
    assert 50 < lim < 5000  # MEFL of bacterial autofluorescence: well above 0, below the dimmest beads' 10x
    assert fluorescence_limit(level) != fluorescence_limit(level)  # no calibration: NaN


def test_scatter_limit_round_trips_through_the_size_calibration():
    diam = [100, 200, 300, 400, 500]
    df = synthetic_size_beads(diam, 3000, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = evflow.calibrate_scatter(df, "SSC-H", diam)
    lo, hi = cal.unique_scatter_range
    level = math.sqrt(lo * float(cal.scatter_of(150.0))) if lo > 0 else float(cal.scatter_of(80.0))
    r = scatter_limit(level, cal)
    assert r["bound"] == "exact"
    assert float(cal.scatter_of(r["diameter_nm"])) == pytest.approx(level, rel=1e-3)
    below = scatter_limit(lo * 0.5, cal)
    assert below["bound"] == "upper" and below["diameter_nm"] == pytest.approx(cal.unique_range_nm[0])
    assert scatter_limit(level, None)["bound"] == "no size calibration"
