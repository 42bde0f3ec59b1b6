"""MESF/MEFL bead calibration: agreement with FlowCal on the real bead files, synthetic truth, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow.errors import CalibrationError
from evflow.flow.calibration import calibrate_mesf, density_gate, fit_mesf_curve
from evflow.synth.flow import synthetic_mesf_beads

MEFL_A = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
MEFL_B = [0, 771, 2106, 6262, 15183, 45292, 136258, 291042]
FILES = [("sample001.fcs", MEFL_A), ("max/sample002.fcs", MEFL_A), ("min/sample001.fcs", MEFL_B)]


def _flowcal(path, mefl, trim):
    FlowCal = pytest.importorskip("FlowCal")
    np.random.seed(0)  # FlowCal draws labels from the mixture responsibilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = FlowCal.transform.to_rfi(FlowCal.io.FCSData(str(path)))
        if trim:
            s = FlowCal.gate.start_end(s, num_start=250, num_end=100)
        s = FlowCal.gate.high_low(s, channels=["FSC", "SSC"])
        s = FlowCal.gate.density2d(s, channels=["FSC", "SSC"], gate_fraction=0.3, sigma=5.0)
        return FlowCal.mef.get_transform_fxn(
            s, mef_values=np.array(mefl), mef_channels="FL1", clustering_channels=["FL1", "FL3"], full_output=True
        )


@pytest.mark.parametrize("name,mefl", FILES)
@pytest.mark.parametrize("trim", [True, False])
def test_flowcal_agreement(name, mefl, trim):
    path = shared_path("beads", "flowcal", *name.split("/"))
    ref = _flowcal(path, mefl, trim)
    cal = evflow.calibrate_mesf(
        path, "FL1", mefl, clustering_channels=["FL1", "FL3"], scatter_channels=["FSC", "SSC"],
        trim_events=(250, 100) if trim else (0, 0), units="MEFL",
    )
    ref_all = ref.statistic["values"][0]
    np.testing.assert_allclose(cal.peak_medians, ref_all, rtol=0.02)
    # same peaks used: FlowCal's selection equals ours (NaN where it dropped one)
    used = np.isfinite(cal.peaks)
    np.testing.assert_allclose(cal.peaks[used], ref.selection["rfi"][0], rtol=0.02)
    assert used.sum() == len(ref.selection["rfi"][0])
    # conversion over the whole 4-decade range of the channel
    x = np.geomspace(1.0, 9900.0, 50)
    np.testing.assert_allclose(cal.to_mesf(x), ref.fitting["std_crv"][0](x), rtol=0.02)
    np.testing.assert_allclose(
        [cal.params["m"], cal.params["b"]], ref.fitting["beads_params"][0][:2], rtol=0.02
    )
    assert cal.r2 > 0.999
    assert np.nanmax(np.abs(cal.relative_error)) < 0.15


def test_flowcal_files_expected_peaks():
    """Hard numbers: the brightest peak of sample001 is saturated and left out, all 8 of max/sample002 are used."""
    cal = calibrate_mesf(shared_path("beads", "flowcal", "sample001.fcs"), "FL1", MEFL_A, ["FL1", "FL3"])
    assert cal.peak_status == ["used"] * 7 + ["saturated"]
    assert np.isnan(cal.peaks[7]) and np.isfinite(cal.peak_medians[7])
    np.testing.assert_allclose(cal.peaks[:3], [156.79, 198.10, 278.81], rtol=1e-3)
    assert cal.n_gated == pytest.approx(0.3 * (33024 - 350), rel=0.02)
    cal2 = calibrate_mesf(shared_path("beads", "flowcal", "max", "sample002.fcs"), "FL1", MEFL_A, ["FL1", "FL3"])
    assert cal2.peak_status == ["used"] * 8


def test_default_clustering_falls_back_to_all_fluorescence_channels():
    path = shared_path("beads", "flowcal", "sample001.fcs")
    ref = calibrate_mesf(path, "FL1", MEFL_A, ["FL1", "FL3"])
    cal = calibrate_mesf(path, "FL1", MEFL_A)  # FL1 alone merges the blank and the 792 MEFL peak
    assert cal.clustering_channels[0] == "FL1" and len(cal.clustering_channels) > 1
    np.testing.assert_allclose(cal.peak_medians, ref.peak_medians, rtol=0.02)
    with pytest.raises(CalibrationError, match="cannot be resolved"):
        calibrate_mesf(path, "FL1", MEFL_A, clustering_channels=["FL1"])


def test_synthetic_beads_recover_standard_curve():
    frame = synthetic_mesf_beads(MEFL_A, m=1.05, b=2.5, autofluorescence_mesf=1500, seed=3)
    cal = calibrate_mesf(frame, "FL1", MEFL_A, ["FL1", "FL3"], ["FSC", "SSC"], trim_events=(0, 0))
    assert cal.params["m"] == pytest.approx(1.05, rel=0.02)
    assert cal.params["b"] == pytest.approx(2.5, abs=0.1)
    assert cal.params["mesf_auto"] == pytest.approx(1500, rel=0.15)
    # the doublets are gated out: peak medians equal the singlet truth
    truth = ((np.array(MEFL_A) + 1500) / np.exp(2.5)) ** (1 / 1.05)
    used = np.isfinite(cal.peaks)
    np.testing.assert_allclose(cal.peaks[used], truth[used], rtol=0.03)
    x = np.array([50.0, 500.0, 5000.0])
    np.testing.assert_allclose(cal.to_mesf(x), np.exp(2.5) * x**1.05, rtol=0.05)
    np.testing.assert_allclose(cal.to_channel(cal.to_mesf(x)), x, rtol=1e-12)


def test_to_mesf_backends_and_chunkings():
    import dask.array as da
    import xarray as xr

    cal = calibrate_mesf(synthetic_mesf_beads(seed=1), "FL1", MEFL_A, ["FL1", "FL3"], trim_events=(0, 0))
    x = np.random.default_rng(0).lognormal(5, 2, 10_001) * np.where(np.arange(10_001) % 7 == 0, -1, 1)
    ref = np.sign(x) * np.exp(cal.params["b"]) * np.abs(x) ** cal.params["m"]
    np.testing.assert_array_equal(cal.to_mesf(x), ref)
    np.testing.assert_array_equal(cal.to_mesf(list(x[:5])), ref[:5])
    for chunks in (1000, 3333, 10_001):
        lazy = cal.to_mesf(da.from_array(x, chunks=chunks))
        assert isinstance(lazy, da.Array)
        np.testing.assert_array_equal(lazy.compute(), ref)
    arr = xr.DataArray(da.from_array(x, chunks=2500), dims="event")
    out = cal.to_mesf(arr)
    assert isinstance(out, xr.DataArray) and isinstance(out.data, da.Array)
    np.testing.assert_array_equal(out.values, ref)
    # 2-D events table, conversion of one column
    table = da.from_array(np.stack([x, x], 1), chunks=(4000, 2))
    np.testing.assert_array_equal(cal.to_mesf(table[:, 1]).compute(), ref)


@pytest.mark.gpu
def test_to_mesf_cupy():
    import cupy
    import dask.array as da

    cal = calibrate_mesf(synthetic_mesf_beads(seed=1), "FL1", MEFL_A, ["FL1", "FL3"], trim_events=(0, 0))
    x = np.random.default_rng(0).lognormal(5, 2, 10_001)
    ref = cal.to_mesf(x)
    g = cal.to_mesf(cupy.asarray(x))
    assert isinstance(g, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(g), ref, rtol=1e-12)
    lazy = cal.to_mesf(da.from_array(x, chunks=3000).map_blocks(cupy.asarray))
    out = lazy.compute()
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out), ref, rtol=1e-12)


def test_reads_fcs_sample_and_rereads_unscaled(tmp_path):
    path = shared_path("beads", "flowcal", "max", "sample002.fcs")
    raw = evflow.read_fcs(path)  # unscaled: re-read on the linear scale
    scaled = evflow.read_fcs(path, scale=True)
    a = calibrate_mesf(raw, "FL1", MEFL_A, ["FL1", "FL3"])
    b = calibrate_mesf(scaled, "FL1", MEFL_A, ["FL1", "FL3"])
    np.testing.assert_array_equal(a.peak_medians, b.peak_medians)
    assert b.source.endswith("sample002.fcs")


# ----------------------------------------------------------------------------- bad input


def test_more_mesf_values_than_peaks_is_an_error():
    with pytest.raises(CalibrationError):
        calibrate_mesf(shared_path("beads", "flowcal", "sample001.fcs"), "FL1", MEFL_A + [600000], ["FL1", "FL3"])


def test_fewer_mesf_values_than_peaks_is_an_error():
    with pytest.raises(CalibrationError, match="more than one peak"):
        calibrate_mesf(shared_path("beads", "flowcal", "sample001.fcs"), "FL1", MEFL_A[:6], ["FL1", "FL3"])


def test_unresolvable_synthetic_peaks():
    # two peaks 5 % apart with 8 % CV: one bump, not two
    vals = [0, 2000, 8000, 8400, 40000, 100000]
    frame = synthetic_mesf_beads(vals, cv=0.08, seed=2)
    with pytest.raises(CalibrationError, match="cannot be resolved"):
        calibrate_mesf(frame, "FL1", vals, ["FL1"], trim_events=(0, 0))
    cal = calibrate_mesf(frame, "FL1", vals, ["FL1"], trim_events=(0, 0), on_unresolved="drop")
    assert cal.peak_status[2:4] == ["unresolved", "unresolved"]
    assert np.isnan(cal.peaks[2:4]).all() and np.isfinite(cal.peaks[[0, 1, 4]]).all()


def test_bad_mesf_values():
    frame = synthetic_mesf_beads(seed=0)
    with pytest.raises(CalibrationError, match="increase"):
        calibrate_mesf(frame, "FL1", [0, 792, 6588, 2079, 16471, 47497, 137049, 271647], ["FL1", "FL3"])
    with pytest.raises(CalibrationError, match=">= 0"):
        calibrate_mesf(frame, "FL1", [-5, 792, 2079, 6588, 16471, 47497, 137049, 271647], ["FL1", "FL3"])
    with pytest.raises(CalibrationError, match="no column"):
        calibrate_mesf(frame, "FL9", MEFL_A)
    # wrong values in a plausible order: the fit is rejected, not returned
    with pytest.raises(CalibrationError, match="fits poorly"):
        calibrate_mesf(frame, "FL1", [0, 1, 2, 3, 4, 5, 6, 7], ["FL1", "FL3"], trim_events=(0, 0))


def test_nan_mesf_value_leaves_peak_out():
    frame = synthetic_mesf_beads(seed=4)
    vals = list(map(float, MEFL_A))
    vals[3] = np.nan
    cal = calibrate_mesf(frame, "FL1", vals, ["FL1", "FL3"], trim_events=(0, 0))
    assert cal.peak_status[3] == "no MESF value" and np.isnan(cal.peaks[3])
    assert np.isfinite(cal.peak_medians[3])


def test_fit_mesf_curve_exact_and_errors():
    x = np.array([100.0, 300.0, 1000.0, 5000.0])
    y = np.exp(2.0) * x**1.1 - 300.0  # autofluorescence 300
    fit = fit_mesf_curve(x, y)
    assert fit["m"] == pytest.approx(1.1, rel=1e-4)
    assert fit["b"] == pytest.approx(2.0, abs=1e-3)
    assert fit["mesf_auto"] == pytest.approx(300.0, rel=1e-3)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(CalibrationError, match="at least 3"):
        fit_mesf_curve(x[:2], y[:2])
    with pytest.raises(CalibrationError, match="> 0"):
        fit_mesf_curve([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])


def test_density_gate_keeps_densest_fraction():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(400, 8, 3000), rng.uniform(50, 1000, 3000)])
    y = np.concatenate([rng.normal(300, 8, 3000), rng.uniform(50, 1000, 3000)])
    m = density_gate(x, y, 0.4, x_max=1023, y_max=1023)
    assert 0.4 <= m.mean() < 0.45
    assert m[:3000].mean() > 0.75 and m[3000:].mean() < 0.1
    with pytest.raises(CalibrationError):
        density_gate(x, y, 1.5)
