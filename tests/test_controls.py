"""EV assay controls: thresholds, background, detergent, dilution series, MIFlowCyt-EV items."""

from __future__ import annotations

import numpy as np
import pytest

from evflow.errors import ConfigError
from evflow.flow.calibration import fit_scatter_gain
from evflow.flow.controls import (
    ControlCheck,
    detergent_check,
    dilution_series_check,
    evaluate_controls,
    miflowcyt_ev_html,
    miflowcyt_ev_items,
    miflowcyt_ev_markdown,
    subtract_buffer_counts,
    threshold_from_control,
)
from evflow.synth.flow import synthetic_ev_sample


def test_threshold_from_isotype_separates_synthetic_positives():
    isotype, _ = synthetic_ev_sample(5000, fraction_positive=0.0, seed=11)
    stained, truth = synthetic_ev_sample(5000, fraction_positive=0.3, mesf_positive=3000, mesf_cv=0.2, seed=12)
    t = threshold_from_control(isotype["FL1-H"].to_numpy(), role="isotype", quantile=0.995)
    assert t.fraction_above == pytest.approx(0.005, abs=0.001)
    assert t.n_events == 5000 and t.calibrated_value is None
    pos = stained["FL1-H"].to_numpy() > t.channel_value
    assert np.mean(pos[truth["positive"]]) > 0.97
    assert np.mean(pos[~truth["positive"]]) < 0.01
    t2 = threshold_from_control(isotype["FL1-H"].to_numpy(), role="unstained", n_sd=3)
    v = isotype["FL1-H"].to_numpy()
    med = np.median(v)
    assert t2.channel_value == pytest.approx(med + 3 * 1.4826 * np.median(np.abs(v - med)))
    with pytest.raises(ConfigError):
        threshold_from_control(v, role="mystery")
    with pytest.raises(ConfigError):
        threshold_from_control(np.array([np.nan]), role="isotype")


def test_threshold_in_calibrated_units():
    class Cal:  # a fixed standard curve: mesf = 10 * x
        units = "MEFL"

        def to_mesf(self, x):
            return 10.0 * np.asarray(x)

    t = threshold_from_control(np.arange(1.0, 1001.0), role="isotype", quantile=0.99, calibration=Cal())
    assert t.channel_value == pytest.approx(np.quantile(np.arange(1.0, 1001.0), 0.99))
    assert t.calibrated_value == pytest.approx(10 * t.channel_value)
    assert t.units == "MEFL"


def test_lazy_threshold_input():
    import dask.array as da

    v = np.random.default_rng(0).lognormal(2, 0.5, 4000)
    a = threshold_from_control(v, role="isotype")
    b = threshold_from_control(da.from_array(v, chunks=700), role="isotype")
    assert a.channel_value == b.channel_value


def test_buffer_background_per_volume():
    chk = subtract_buffer_counts({"count": 10_000, "volume_ul": 10.0}, {"count": 200, "volume_ul": 5.0})
    # buffer: 40 / uL -> 400 in the sample's 10 uL
    assert chk.values["background_count"] == pytest.approx(400)
    assert chk.values["net_count"] == pytest.approx(9600)
    assert chk.status == "pass"
    high = subtract_buffer_counts({"count": 1000, "volume_ul": 10.0}, {"count": 300, "volume_ul": 10.0})
    assert high.status == "flag" and high.values["background_fraction"] == pytest.approx(0.3)
    none = subtract_buffer_counts({"count": 100}, {"count": 150})
    assert none.status == "flag" and none.values["net_count"] == -50
    with pytest.raises(ConfigError, match="volume_ul"):
        subtract_buffer_counts({"count": 100, "volume_ul": 1.0}, {"count": 1})
    with pytest.raises(ConfigError, match="count"):
        subtract_buffer_counts({"volume_ul": 1.0}, {"count": 1, "volume_ul": 1.0})


def test_detergent_fraction():
    chk = detergent_check({"count": 10_000, "volume_ul": 10.0}, {"count": 1_100, "volume_ul": 10.0},
                          background={"count": 100, "volume_ul": 10.0})
    # (1000 - 10 net/uL remaining after lysis: (110 - 10) / (1000 - 10)
    assert chk.values["lysed_fraction"] == pytest.approx(1 - 100 / 990)
    assert chk.status == "pass"
    resist = detergent_check({"count": 1000}, {"count": 800})
    assert resist.status == "flag" and resist.values["lysed_fraction"] == pytest.approx(0.2)


def _series(swarm: bool):
    """Serial dilution of a sample with 2e9 particles/mL: 1 uL analysed per dilution."""
    out = []
    rng = np.random.default_rng(3)
    for dil in (10.0, 100.0, 1000.0, 10_000.0):
        true_rate = 2e9 / dil * 1e-3  # per uL
        n = true_rate
        fl = rng.lognormal(np.log(50), 0.3, 2000)
        if swarm and dil <= 100:  # coincidence: fewer, brighter events
            n = true_rate * (0.3 if dil == 10 else 0.7)
            fl = fl * (3.0 if dil == 10 else 1.6)
        out.append({"dilution": dil, "count": n, "volume_ul": 1.0, "fluorescence": fl,
                    "median_scatter": 100.0 * (2.0 if swarm and dil == 10 else 1.0)})
    return out


def test_dilution_series_linear_passes():
    chk = dilution_series_check(_series(False))
    assert chk.status == "pass"
    assert chk.values["loglog_slope"] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(chk.values["concentration_undiluted"], 2e6)  # per uL = 2e9 per mL
    assert chk.values["swarm_suspected"] == []


def test_dilution_series_swarm_flagged():
    chk = dilution_series_check(_series(True))
    assert chk.status == "flag"
    assert chk.values["swarm_suspected"] == [10.0, 100.0]
    assert chk.values["concentration_deviation"][0] == pytest.approx(-0.7)
    assert chk.values["fluorescence_deviation"][0] > 1.5
    assert chk.values["scatter_deviation"][0] == pytest.approx(1.0)
    assert "1000" in chk.message
    short = dilution_series_check(_series(False)[:2])
    assert short.status == "missing"


def test_evaluate_controls_missing_and_roles():
    sample = {"count": 10_000, "volume_ul": 10.0}
    checks = evaluate_controls(sample, {"buffer": {"count": 100, "volume_ul": 10.0},
                                        "detergent": {"count": 500, "volume_ul": 10.0}})
    by = {c.name: c for c in checks}
    assert by["buffer only background"].status == "pass"
    assert by["detergent lysis"].status == "pass"
    assert by["detergent lysis"].values["background_rate"] == pytest.approx(10.0)
    assert by["buffer_reagents control"].status == "missing"
    assert by["dilution control"].status == "missing"
    with pytest.raises(ConfigError, match="buffer_reagents"):
        evaluate_controls(sample, {"buffer": {"count": 1, "volume_ul": 10.0}}, on_missing="raise")
    with pytest.raises(ConfigError, match="unknown control role"):
        evaluate_controls(sample, {"blank": {"count": 1}})
    assert all(isinstance(c, ControlCheck) for c in checks)
    assert checks[0].to_dict()["status"] in ("pass", "flag", "missing")


def test_miflowcyt_ev_report():
    from evflow.flow.mie import VESICLE

    cal = fit_scatter_gain([1000.0, 16000.0], [100.0, 200.0], particle=VESICLE, diameter_range_nm=(40, 600))
    iso, _ = synthetic_ev_sample(2000, fraction_positive=0.0, seed=1)
    th = {"CD63": threshold_from_control(iso["FL1-H"].to_numpy(), role="isotype")}
    checks = evaluate_controls({"count": 5000, "volume_ul": 5}, {"buffer": {"count": 50, "volume_ul": 5}},
                               rules=["buffer", "detergent"])
    items = miflowcyt_ev_items(scatter_calibration=cal, thresholds=th, checks=checks,
                               concentration={"particles_per_ml": 1.23e9, "volume_ul": 5.0, "method": "$VOL",
                                              "dilution_factor": 100},
                               size_gate_nm=(50, 200))
    assert items["Concentration"]["EV concentration"] == "1.23e+09 particles/mL"
    assert "PASS" in items["Assay controls"]["buffer only background"]
    assert "MISSING" in items["Assay controls"]["detergent control"]
    assert items["Fluorescence calibration"]["Fluorescence calibration"].startswith("none")
    assert "50-200 nm" in items["Scatter calibration"]["Size gate"]
    assert f"{cal.gain:.4g}" in items["Scatter calibration"]["Scatter calibration"]
    md = miflowcyt_ev_markdown(items)
    assert "| EV concentration | 1.23e+09 particles/mL |" in md
    frag = miflowcyt_ev_html(items)
    assert frag.startswith("<section") and "CD63 positivity threshold" in frag
