"""Rainbow beads of instruments with other channel names (Apogee A60-Micro, Cytek Aurora): channel roles,
placement of fewer reference values than populations, QC warnings and errors that name the counts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rainbow_beads as rb

import evflow
from evflow.errors import CalibrationError
from evflow.flow.calibration import CalibrationWarning, MESFCalibration, calibrate_mesf, channel_roles, scatter_pair


@pytest.fixture(scope="module")
def apogee(tmp_path_factory):
    return rb.write_rainbow(tmp_path_factory.mktemp("beads") / "apogee.fcs", rb.APOGEE, seed=0)


@pytest.fixture(scope="module")
def aurora(tmp_path_factory):
    return rb.write_rainbow(tmp_path_factory.mktemp("beads") / "aurora.fcs", rb.AURORA, seed=1)


def _truth_error(cal, scale=1.0):
    x = rb.truth_channel(rb.TRUE_MESF[1:6])  # unit-brightness channel values of the 5 beads
    return cal.to_mesf(scale * x) / (np.exp(rb.B) * x**rb.M) - 1.0


def test_channel_roles_from_names():
    roles = channel_roles(rb.APOGEE)
    assert [c for c, r in roles.items() if r == "scatter"] == ["405SALS", "405LALS", "638LS"]
    assert roles["WIDTH"] == "width" and roles["Time"] == "time" and roles["638-Red"] == "fluorescence"
    assert scatter_pair(roles) == ["405SALS", "405LALS"]
    aur = channel_roles(rb.AURORA)
    assert aur["FSC-W"] == "width" and aur["SSC-B-H"] == "scatter" and aur["R1-A"] == "fluorescence"
    assert scatter_pair(aur) == ["FSC-H", "SSC-H"]
    flowcal = channel_roles(["TIME", "FSC", "SSC", "FL1", "FL2", "FL3", "FSCW", "FSCA"])
    assert flowcal == {"TIME": "time", "FSC": "scatter", "SSC": "scatter", "FL1": "fluorescence",
                       "FL2": "fluorescence", "FL3": "fluorescence", "FSCW": "width", "FSCA": "scatter"}
    assert channel_roles(["VSSC1-H", "BSSC-H", "Event"]) == {"VSSC1-H": "scatter", "BSSC-H": "scatter",
                                                           "Event": "other"}
    # the user's word wins
    assert channel_roles(["P1", "P2", "FL1"], scatter_channels=["P1", "P2"])["P1"] == "scatter"


def test_channel_roles_from_pntype(tmp_path):
    data = np.abs(np.random.default_rng(0).normal(100, 10, (50, 3))).astype(np.float32)
    path = evflow.write_fcs(tmp_path / "t.fcs", data, ["A", "B", "C"],
                            meta={"$P1TYPE": "Forward_Scatter", "$P2TYPE": "Side_Scatter",
                                  "$P3TYPE": "Raw_Fluorescence"})
    assert channel_roles(path) == {"A": "scatter", "B": "scatter", "C": "fluorescence"}


def test_published_values_default_is_a_clear_error_with_counts(apogee):
    with pytest.raises(CalibrationError, match="found 8 bead populations, 6 reference values given"):
        calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6)


def test_placement_best_places_blank_first_and_the_rest_on_unsaturated_run(apogee):
    cal = calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6, placement="best")
    assert cal.scatter_channels == ["405SALS", "405LALS"]
    assert not set(cal.clustering_channels) & {"405SALS", "405LALS", "638LS", "WIDTH", "Time"}
    assert cal.qc["placement"] == [0, 1, 2, 3, 4, 5] and cal.qc["n_populations"] == 8
    assert cal.qc["n_values"] == 6 and not cal.qc["ambiguous_placement"]
    assert np.all(np.diff(cal.peak_medians) > 0)
    np.testing.assert_allclose(_truth_error(cal), 0.0, atol=0.02)
    # the same with the NaN-padded list
    cal2 = calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6 + [np.nan, np.nan])
    np.testing.assert_allclose(_truth_error(cal2), 0.0, atol=0.02)
    assert cal2.peak_status[6:] == ["no MESF value"] * 2


def test_scatter_in_clustering_channels_is_dropped_and_order_follows_the_channel(apogee):
    """The issue's wrong-order case: all channels given for clustering put the blank on a bright population."""
    everything = [c for c in rb.APOGEE if c != "Time"]
    with pytest.warns(CalibrationWarning, match="not used for clustering"):
        cal = calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6 + [np.nan, np.nan], everything,
                             scatter_channels=["405SALS", "405LALS"])
    assert "405SALS" not in cal.clustering_channels and "WIDTH" not in cal.clustering_channels
    assert cal.peak_medians[0] == np.nanmin(cal.peak_medians) and cal.peak_medians[0] < 200
    assert not cal.qc["blank_brighter"] and not cal.qc["large_residuals"]
    np.testing.assert_allclose(_truth_error(cal), 0.0, atol=0.02)
    with pytest.raises(CalibrationError, match="scatter, width or time"):
        calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6, ["405SALS", "WIDTH"])


def test_ambiguous_placement_warns_and_flags(aurora):
    # on this instrument 7 populations are in range: the 5 bead values fit two runs almost equally
    with pytest.warns(CalibrationWarning, match="almost the same"):
        cal = calibrate_mesf(aurora, "R1-A", rb.PUBLISHED_6, placement="best")
    assert cal.qc["ambiguous_placement"] and cal.qc["placement_rms_second"] is not None
    assert cal.scatter_channels == ["FSC-H", "SSC-H"] and "FSC-W" not in cal.clustering_channels
    np.testing.assert_allclose(_truth_error(cal, 0.3), 0.0, atol=0.02)


def test_wrong_value_warns_large_residual(apogee):
    vals = rb.PUBLISHED_6 + [np.nan, np.nan]
    vals[3] *= 1.25
    with pytest.warns(CalibrationWarning, match="off the curve"):
        cal = calibrate_mesf(apogee, "638-Red", vals)
    assert cal.qc["large_residuals"] and cal.qc["max_residual"] > 0.05
    back = MESFCalibration.from_dict(cal.to_dict())
    assert back.qc == cal.qc


def test_correct_values_no_warning(apogee):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        cal = calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6 + [np.nan, np.nan])
    assert not any(cal.qc[k] for k in ("blank_brighter", "non_monotone", "large_residuals", "ambiguous_placement"))


def test_too_many_values_names_counts(apogee):
    vals = rb.TRUE_MESF.tolist() + [2e6, 6e6]
    with pytest.raises(CalibrationError, match=r"found \d+ bead populations, 10 reference values given"):
        calibrate_mesf(apogee, "638-Red", vals, placement="best")
    with pytest.raises(CalibrationError, match="10 reference values given"):
        calibrate_mesf(apogee, "638-Red", vals)
    with pytest.raises(CalibrationError, match="placement"):
        calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6, placement="guess")


def test_plot(apogee, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    cal = calibrate_mesf(apogee, "638-Red", rb.PUBLISHED_6, placement="best")
    fig = cal.plot()
    assert len(fig.axes) == 3
    assert len(fig.axes[0].lines) >= 8  # one histogram per population (+ median lines)
    assert cal.histogram["counts"].shape[0] == 8
    assert 0.9 * cal.n_gated < cal.histogram["counts"].sum() <= cal.n_gated
    fig.savefig(tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 1000
    # the histogram is stored with the calibration; one stored without it plots the curve and medians only
    back = MESFCalibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.histogram["counts"], cal.histogram["counts"])
    d = {k: v for k, v in cal.to_dict().items() if not k.startswith("histogram")}
    old = MESFCalibration.from_dict(d)
    assert old.histogram is None
    fig2 = old.plot()
    assert len(fig2.axes) == 3 and len(fig2.axes[0].lines) == 8  # median lines only
