"""Time-channel QC (clogs, bubbles, bursts, drift) and swarm/coincidence checks: synthetic truth, real files, pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow.errors import EvflowError
from evflow.flow.swarm import rate_check, width_check
from evflow.flow.time_qc import time_qc
from evflow.synth.flow import synthetic_ev_sample, write_synthetic_fcs


def _times(seed=0, n=20_000, acq=60.0):
    df, _ = synthetic_ev_sample(n, acquisition_s=acq, seed=seed)
    return df["Time"].to_numpy()


@pytest.mark.parametrize("seed", range(6))
def test_clean_synthetic_sample_not_flagged(seed):
    q = time_qc(_times(seed))
    assert q.flags == [] and q.intervals == [] and q.excluded_event_fraction == 0.0
    assert abs(q.drift["relative_change"]) < 0.2


@pytest.mark.parametrize("seed", range(4))
def test_injected_clog_flagged_and_interval_found(seed):
    t = _times(seed)
    t = t[~((t >= 30.0) & (t < 36.0))]  # the rate drops to 0 for 10% of the acquisition
    q = time_qc(t)
    assert "clog" in q.flags
    (a, b, kind), = [iv for iv in q.intervals if iv[2] == "clog"]
    width = q.edges[1] - q.edges[0]
    assert abs(a - 30.0) <= width and abs(b - 36.0) <= width
    assert q.excluded_time_fraction == pytest.approx(0.1, abs=2 * width / 60)
    assert q.excluded_event_fraction < 0.01  # hardly any events in a clog
    assert not q.good_events[(t > a + width) & (t < b - width)].any()


def test_burst_bubble_and_drift():
    rng = np.random.default_rng(3)
    t = _times(1)
    burst = np.sort(np.concatenate([t, rng.uniform(10.0, 11.2, 1500)]))
    q = time_qc(burst)
    assert q.flags == ["burst"]
    assert any(k == "burst" and a <= 10.6 <= b for a, b, k in q.intervals)
    bubble = t[~((t >= 40.0) & (t < 40.6))]  # one bin without events
    q = time_qc(bubble)
    assert q.flags == ["bubble"]
    drift = t[(t < 30.0) | (rng.random(t.size) < 0.6)]  # rate falls by 40% at 30 s
    q = time_qc(drift)
    assert q.flags == ["drift"]
    assert q.drift["time"] == pytest.approx(30.0, abs=1.5) and q.drift["relative_change"] < -0.3


def test_bad_time_channels_give_clear_errors():
    with pytest.raises(EvflowError, match="at least 100 events"):
        time_qc(np.arange(50.0))
    with pytest.raises(EvflowError, match="constant"):
        time_qc(np.zeros(500))
    with pytest.raises(EvflowError, match="5 distinct values"):
        time_qc(np.repeat(np.arange(5.0), 100))


def _real_times(*parts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = evflow.read_fcs(shared_path(*parts), scale=True)
        return np.asarray(s.events[:, s.channel_index(s.time_channel)].compute(), float)


@pytest.mark.parametrize("parts", [
    ("beads", "flowcal", "sample001.fcs"), ("beads", "flowcal", "sample006.fcs"), ("beads", "flowcal", "sample015.fcs"),
    ("beads", "flowcal", "min", "sample001.fcs"), ("beads", "flowcal", "min", "sample004.fcs"),
    ("beads", "flowcal", "max", "sample002.fcs"), ("beads", "flowcal", "max", "sample008.fcs"),
    ("fcs", "flowcal_test", "Data001.fcs"), ("fcs", "flowcal_test", "Data004.fcs"),
    ("fcs", "fcsparser", "Fortessa", "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"),
    ("fcs", "flowio", "G11.fcs"),
])
def test_real_files_without_spurious_flags(parts):
    # ticked time channels (0.1 s on the FlowCal files) once gave periodic false dips and a partial last tick
    q = time_qc(_real_times(*parts))
    assert q.flags == [], q.intervals


def test_real_files_with_justified_flags():
    # FlowCal's Data003: no events for the first ~12 s (sample not yet arriving), then a surge
    q = time_qc(_real_times("fcs", "flowcal_test", "Data003.fcs"))
    assert "clog" in q.flags
    (a, b, _k), = [iv for iv in q.intervals if iv[2] == "clog"]
    assert a < 1.0 and 10.0 < b < 13.0 and q.median_rate > 150
    # an LSR-II plate well whose rate rises by a third after ~2 s
    q = time_qc(_real_times("fcs", "fcsparser", "HTS_BD_LSR-II", "HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs"))
    assert q.flags == ["drift"] and q.drift["relative_change"] > 0.3


def test_rate_and_width_checks():
    r = rate_check(60_000, 60.0, 5000.0, peak_rate=1400.0)
    assert r["mean_rate_per_s"] == 1000.0 and r["rate_fraction_of_max"] == pytest.approx(0.28) and not r["flag"]
    r = rate_check(60_000, 60.0, 1200.0, peak_rate=1400.0)
    assert r["flag"] and r["rate_fraction_of_max"] == pytest.approx(1400 / 1200)
    assert not rate_check(60_000, 60.0, None)["judged"]
    rng = np.random.default_rng(0)
    single = rng.normal(100.0, 5.0, 9000)
    w = width_check(np.concatenate([single, rng.normal(230.0, 10.0, 1000)]))  # 10% doublets
    assert w["flag"] and w["wide_fraction"] == pytest.approx(0.1, abs=0.01)
    assert not width_check(single)["flag"]
    with pytest.raises(EvflowError, match="factor"):
        width_check(single, factor=0.5)


def _experiment(tmp_path, exclude, max_rate=None):
    rng = np.random.default_rng(5)
    paths = {}
    for name, seed, clog in (("clean", 1, False), ("clogged", 2, True), ("buffer", 3, False)):
        df, _ = synthetic_ev_sample(20_000, acquisition_s=60.0, seed=seed)
        df["SSC-W"] = rng.normal(100.0, 5.0, len(df))
        if clog:
            keep = ~((df["Time"] >= 30.0) & (df["Time"] < 36.0)).to_numpy()
            df = df[keep].reset_index(drop=True)
            df.loc[df.index[:2000], "SSC-W"] = 250.0  # coincident events: 11% wide pulses
        paths[name] = write_synthetic_fcs(tmp_path / f"{name}.fcs", df)
    inst = f"[instrument]\nmax_event_rate = {max_rate}\n" if max_rate else ""
    text = f"""
[flow]
scatter_channel = "SSC-H"
markers = {{ "FL1-H" = "CD63" }}
flow_rate_ul_per_min = 2.0
exclude_bad_time = {str(exclude).lower()}
{inst}
[thresholds]
rule = "fixed"
values = {{ CD63 = 50.0 }}
""" + "".join(f'[[samples]]\nname = "{n}"\nrole = "{"buffer" if n == "buffer" else "sample"}"\nflow = "{p}"\n'
              for n, p in paths.items())
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("exclude", [False, True])
def test_pipeline_flags_and_excludes_the_clog(tmp_path, exclude):
    ds = evflow.run(_experiment(tmp_path, exclude, max_rate=300.0), quiet=True, report=True)
    i = list(ds["sample"].values).index("clogged")
    j = list(ds["sample"].values).index("clean")
    assert ds["time_qc_flags"].values[i] == "clog" and ds["time_qc_flags"].values[j] == ""
    assert "statistic" in ds["time_qc_flags"].attrs
    assert ds["time_excluded_time_fraction"].values[i] == pytest.approx(0.1, abs=0.03)
    assert ds["time_excluded_time_fraction"].attrs["units"] == "1"
    assert bool(ds["time_intervals_excluded"].values[i]) is exclude
    assert "time QC: clog" in ds["qc_flags"].values[i]
    # event rate ~333/s over a stated maximum of 300/s; width: 11% wide pulses in the clogged sample
    assert ds["event_rate_per_s"].attrs["units"] == "events/s"
    assert ds["event_rate_fraction_of_max"].values[j] > 1.0 and "swarm" in ds["qc_flags"].values[j]
    assert ds["wide_event_fraction"].values[i] > 0.05 and "coincidence" in ds["qc_flags"].values[i]
    assert ds["wide_event_fraction"].values[j] < 0.01
    vol_i, vol_j = ds["volume_ul"].values[i], ds["volume_ul"].values[j]
    if exclude:  # the analysed volume is that of the time kept
        assert vol_i == pytest.approx(vol_j * 0.9, rel=0.03)
        assert "excluded" in ds["qc_flags"].values[i]
    else:
        assert vol_i == pytest.approx(vol_j, rel=0.01)
    # detection limit: the buffer's 99.5th percentile (no fluorescence calibration: no MESF)
    buf = evflow.read_fcs(tmp_path / "buffer.fcs", scale=True)
    fl1 = np.asarray(buf.events[:, buf.channel_index("FL1-H")].compute(), float)
    assert float(ds["detection_limit"].values[0]) == pytest.approx(np.percentile(fl1, 99.5), rel=1e-9)
    assert np.isnan(ds["detection_limit_calibrated"].values[0])
    html = (tmp_path / "exp_results" / "report.html").read_text()
    assert "Time QC, event rate and coincidence" in html and "clog" in html


def test_experiment_qc_settings_validated(tmp_path):
    from evflow import ConfigError
    from evflow.pipeline import load_experiment

    base = {"flow": {"markers": {"FL1-H": "CD63"}, "flow_rate_ul_per_min": 1.0},
            "thresholds": {"rule": "fixed", "values": {"CD63": 1.0}},
            "samples": [{"name": "S", "flow": "s.fcs"}]}
    exp = load_experiment({**base, "instrument": {"max_event_rate": 5000}}, check_files=False)
    assert exp.settings["instrument"]["max_event_rate"] == 5000
    with pytest.raises(ConfigError) as exc:
        load_experiment({**base, "instrument": {"max_event_rate": -1, "colour": "x"},
                         "flow": {**base["flow"], "exclude_bad_time": "yes"}}, check_files=False)
    msg = str(exc.value)
    assert "instrument.max_event_rate" in msg and "instrument.colour" in msg and "flow.exclude_bad_time" in msg
