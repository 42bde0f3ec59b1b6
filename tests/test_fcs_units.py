"""Units made explicit (one scale policy per sample), the metadata `evflow info` shows, channel names
typed as $PnN or $PnS, and the checks `evflow validate` makes on every flow file before anything runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path
from fcs_builder import build_fcs, build_multi

from evflow import ConfigError
from evflow.cli import main
from evflow.errors import EvflowWarning, FCSError, FCSWarning, GatingError
from evflow.flow.gates import Dimension, GatingStrategy, RectangleGate
from evflow.flow.phenotypes import count_phenotypes
from evflow.io.fcs import read_fcs
from evflow.io.fcs.acquisition import PLAUSIBLE_FLOW_UL_PER_MIN, flow_rate_problem, triggers
from evflow.io.fcs.scale import default_scale
from evflow.pipeline import load_experiment

# A CytoFLEX nano-like file: VSSC1-H stored with the detector gain 120 in $PnG, a marker on FITC-H,
# a time channel in 10 ms ticks, the trigger level per parameter (CH<n>TH).
STORED = np.array([[100, 50, 10, 0], [2400, 300, 20, 100], [12000, 900, 40, 200], [600, 5000, 80, 300]])
NAMES = ["VSSC1-H", "FITC-H", "FSC-H", "Time"]


def _cytoflex(tmp_path, name="nano.fcs", cyt="CytoFLEX nano", n=None, extra=None):
    kw = {"$CYT": cyt, "$P1G": "120", "$P2G": "2", "$P2S": "CD63", "$P3G": "1", "$TIMESTEP": "0.01",
          "$P1V": "50", "$P1L": "405", "$P1F": "450/45", "CH1TH": "1200",
          "$BTIM": "10:00:00", "$ETIM": "10:02:00", **(extra or {})}
    values = STORED if n is None else STORED[:n]
    p = tmp_path / name
    p.write_bytes(build_fcs(values, bits=[32] * 4, ranges=[2**20] * 4, names=NAMES, extra=kw))
    return p


# ----------------------------------------------------------------------------- scale policies


def test_scale_policies_on_a_cytoflex_file(tmp_path):
    p = _cytoflex(tmp_path)
    s = read_fcs(p)
    assert s.scale == "linear" and default_scale(s.meta)[0] == "linear"
    np.testing.assert_array_equal(s.to_numpy(), STORED)  # stored values, whatever the policy
    lin = np.asarray(s.linear_events().compute())
    np.testing.assert_array_equal(lin[:, :3], STORED[:, :3])  # no division by the detector gain
    np.testing.assert_allclose(lin[:, 3], STORED[:, 3] * 0.01)  # time in seconds
    lg = np.asarray(read_fcs(p, scale="linear-gain").to_numpy())
    np.testing.assert_allclose(lg[:, 0], STORED[:, 0] / 120.0)
    np.testing.assert_allclose(lg[:, 1], STORED[:, 1] / 2.0)
    raw = np.asarray(read_fcs(p, scale="raw").to_numpy())
    np.testing.assert_array_equal(raw, STORED)  # time in ticks too
    assert s.channel_limits("VSSC1-H") == (0.0, 2.0**20)
    assert read_fcs(p, scale="linear-gain").channel_limits("VSSC1-H") == (0.0, 2.0**20 / 120)
    assert s.with_scale("linear-gain").scale == "linear-gain"
    assert read_fcs(p, scale="raw").with_scale("linear").scale == "linear"
    np.testing.assert_array_equal(np.asarray(read_fcs(p, scale="raw").with_scale("linear").linear_events())[:, 0],
                                  STORED[:, 0])
    assert s.axis_label("VSSC1-H") == "VSSC1-H [linear, a.u.]"
    assert s.axis_label("CD63") == "FITC-H (CD63) [linear, a.u.]"
    assert read_fcs(p, scale="linear-gain").axis_label(0) == "VSSC1-H [linear-gain / 120, a.u.]"
    assert s.axis_label("Time") == "Time [linear, s]" and read_fcs(p, scale="raw").axis_label("Time") == "Time [raw, ticks]"
    assert "not divided out" in s.channel_scale("VSSC1-H")
    with pytest.raises(FCSError, match="scale 'log' is not a scale policy"):
        read_fcs(p, scale="log")


def test_threshold_read_off_the_instrument_counts_the_same_events(tmp_path):
    """A threshold set at 1200 on VSSC1-H, as CytExpert shows the values, keeps the events above 1200
    under the CytoFLEX default; under linear-gain the same number means 120 x 1200 stored."""
    p = _cytoflex(tmp_path)
    for scale, expected in (("auto", 2), ("linear-gain", 0), ("raw", 2)):
        s = read_fcs(p) if scale == "auto" else read_fcs(p, scale=scale)
        ds = count_phenotypes({"a": s}, markers={"ssc": ("VSSC1-H", 1200.0)}, backend="numpy")
        assert int(ds["n_positive"].values[0, 0]) == expected, scale
        assert ds.attrs["scale"] == f"a={s.scale}"


def test_defaults_by_instrument_on_real_files():
    # BD FACSCalibur stores amplifier gains (FSC-H 3.67, SSC-H 8): the Gating-ML 2.0 compliance
    # results are computed on values divided by them, which is the default for every non-CytoFLEX file
    from evflow.flow.gatingml import read_gatingml

    data1 = shared_path("gatingml", "data1.fcs")
    strategy = read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    truth = np.loadtxt(shared_path("gatingml", "truth", "Results_Rectangle1.txt")).astype(bool)
    matches = {}
    for scale in ("auto", "linear", "raw"):
        s = read_fcs(data1, scale=scale)
        m = np.asarray(strategy.apply(s, backend="numpy", gate_ids=["Rectangle1"]).membership("Rectangle1"))
        matches[s.scale if scale == "auto" else scale] = bool((m == truth).all())
    assert matches == {"linear-gain": True, "linear": False, "raw": False}
    for parts in (("fcs", "flowio", "B01 KC-A-W---91-US.fcs"), ("fcs", "fcsparser", "Cytek_xP5", "Cytek_xP5.fcs"),
                  ("fcs", "flowcal_test", "Data004.fcs")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FCSWarning)
            assert read_fcs(shared_path(*parts)).scale == "linear-gain"


def test_density_top_of_a_log_channel_is_decoded():
    from evflow.pipeline.flow import _channel_top

    # data1 FL1-H: $PnR 1024, $PnE 4,0 -> the top of its scale is 10**4, not 1024
    top, name = _channel_top(shared_path("gatingml", "data1.fcs"), "CD4 FITC")
    assert name == "FL1-H" and top == pytest.approx(1e4)


# ----------------------------------------------------------------------------- names users type


def test_gates_and_markers_take_pns_names_and_refuse_ambiguous_ones(tmp_path):
    p = _cytoflex(tmp_path)
    s = read_fcs(p)
    by_marker = GatingStrategy()
    by_marker.add_gate(RectangleGate("g", [Dimension("CD63")], [100.0], [None]))
    by_name = GatingStrategy()
    by_name.add_gate(RectangleGate("g", [Dimension("FITC-H")], [100.0], [None]))
    m1 = np.asarray(by_marker.apply(s, backend="numpy").membership("g"))
    m2 = np.asarray(by_name.apply(s, backend="numpy").membership("g"))
    np.testing.assert_array_equal(m1, [False, True, True, True])
    np.testing.assert_array_equal(m1, m2)
    ds = count_phenotypes({"a": s}, parent=by_marker.gates["g"], markers={"m": ("CD63", 600.0)}, backend="numpy")
    assert int(ds["n_parent"].values[0]) == 3 and int(ds["n_positive"].values[0, 0]) == 2
    # 'FSC-H' as $PnS of another channel: ambiguous, both candidates listed
    q = _cytoflex(tmp_path, "amb.fcs", extra={"$P1S": "FSC-H"})
    amb = read_fcs(q)
    with pytest.raises(FCSError, match=r"ambiguous: it names 'VSSC1-H' \(\$PnS 'FSC-H'\), 'FSC-H' \(\$PnN\)"):
        amb.channel_index("FSC-H")
    g = GatingStrategy()
    g.add_gate(RectangleGate("r", [Dimension("FSC-H")], [0.0], [None]))
    with pytest.raises(GatingError, match="ambiguous"):
        g.apply(amb, backend="numpy")
    with pytest.raises(FCSError, match=r"no channel 'VSSC1-width' \(did you mean 'VSSC1-H'\?\)"):
        s.channel_index("VSSC1-width")


# ----------------------------------------------------------------------------- metadata


def test_triggers_flow_rate_and_spillover_metadata(tmp_path):
    s = read_fcs(_cytoflex(tmp_path))
    assert s.triggers == [("VSSC1-H", "1200", "CH1TH")]
    info = s.channel_info("VSSC1-H")
    assert (info["gain"], info["voltage"], info["laser"], info["filter"]) == ("120", "50", "405", "450/45")
    real = {
        ("fcs", "fcsparser", "cytek-nl-2000", "sample_header.fcs"): [("FSC", "50000", "THRESHOLD")],
        ("fcs", "flowcal_test", "Data004.fcs"): [("FSC", "200", "THRESHOLD"), ("SSC", "200", "THRESHOLD"),
                                                 ("FSC PMT", "200", "THRESHOLD")],
        ("fcs", "flowio", "B01 KC-A-W---91-US.fcs"): [("FSC-H", "12000", "#SECONDARYTHRESHOLD")],
    }
    from evflow.io.fcs import read_fcs_metadata

    for parts, expected in real.items():
        assert triggers(read_fcs_metadata(shared_path(*parts)), []) == expected
    # Cytek Aurora writes $VOL 36.6 (microlitres) over 123 s: implausible as nanolitres
    aurora = read_fcs_metadata(shared_path("fcs", "fcsparser", "cytek-nl-2000", "sample_header.fcs"))
    assert "0.0179 uL/min" in flow_rate_problem(36.6, 122.9) and "x1000 would give 17.9 uL/min" in flow_rate_problem(
        float(aurora["$VOL"]), 122.9)
    lo, hi = PLAUSIBLE_FLOW_UL_PER_MIN
    assert flow_rate_problem(10957, 44) is None  # Miltenyi MACSQuant: 14.9 uL/min
    assert flow_rate_problem(lo * 1000 * 2, 120) is None and flow_rate_problem(hi * 1000 * 1.1, 60) is not None
    # identity spillover with labels given as parameter numbers
    q = _cytoflex(tmp_path, "sp.fcs", extra={"$SPILLOVER": "2,2,3,1,0,0,1"})
    sp = read_fcs(q).spillover
    assert list(sp["source"].values) == ["FITC-H", "FSC-H"] and sp.attrs["identity"]
    assert sp.attrs["labels"] == "parameter numbers"


def test_info_shows_scale_keywords_empty_sets_identity_and_long_markers(tmp_path, capsys):
    long_marker = "anti-CD63 AlexaFluor 488 (clone H5C6, lot 12345)"
    p = _cytoflex(tmp_path, extra={"$SPILLOVER": "2,2,3,1,0,0,1", "$P2S": long_marker, "$VOL": "240000"})
    empty = _cytoflex(tmp_path, "empty.fcs", n=0)
    assert main(["info", str(p), str(empty)]) == 0
    out = capsys.readouterr().out
    assert "scale       linear (the default: $CYT 'CytoFLEX nano'" in out
    assert "acq. time   3 s (from Time channel 'Time')" in out
    assert "$VOL        240000 nL; 4.8e+03 uL/min over the acquisition time (implausible" in out
    assert "trigger     VSSC1-H level 1200 (CH1TH)" in out
    assert "identity: no compensation stored" in out and "labels given as parameter numbers: FITC-H, FSC-H" in out
    assert "events      0  (0 events: an empty data set)" in out
    lines = out.splitlines()
    head = next(ln for ln in lines if "$PnN" in ln and "$PnG" in ln)
    row = next(ln for ln in lines if long_marker in ln)
    # the columns after a long marker stay aligned with their titles
    assert row.index("32") == head.index("$PnB") and "$PnV" in head and "$PnL" in head and "$PnF" in head
    vrow = next(ln for ln in lines if ln.split()[:2] == ["1", "VSSC1-H"])
    assert vrow[head.index("$PnG"):].split()[:3] == ["120", "50", "405"]


def test_info_prints_a_quirk_once(tmp_path, capsys):
    # two data sets with the same off-by-one $ENDDATA: the reader warns for each, info says it once
    spec = dict(values=np.array([[1, 2], [3, 4]]), enddata_off_by=1, header_data_offsets=False)
    p = tmp_path / "two.fcs"
    p.write_bytes(build_multi([spec, spec]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(2):
            read_fcs(p, data_set=k)
    assert len([w for w in caught if "off-by-one" in str(w.message)]) == 2
    assert main(["info", str(p)]) == 0
    warns = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("warning:")]
    assert len(warns) == 1 and "off-by-one" in warns[0]


# ----------------------------------------------------------------------------- checks before anything runs

EXP = """
[flow]
scatter_channel = "{scatter}"
markers = {{ "FITC-H" = "CD63" }}
{scale}

[thresholds]
rule = "fixed"
values = {{ CD63 = 1000 }}

[[samples]]
name = "a"
flow = "{a}"

[[samples]]
name = "b"
flow = "{b}"

[[samples]]
name = "c"
flow = "{c}"
"""


def _exp(tmp_path, scatter="VSSC1-H", scale="", files=None):
    a, b, c = files or (_cytoflex(tmp_path, "a.fcs", extra={"$VOL": "2000"}),
                        _cytoflex(tmp_path, "b.fcs", extra={"$VOL": "0"}),
                        _cytoflex(tmp_path, "c.fcs", n=0, extra={"$VOL": "37.76"}))
    p = tmp_path / "exp.toml"
    p.write_text(EXP.format(scatter=scatter, scale=scale, a=a, b=b, c=c))
    return p


def test_validate_catches_typos_empty_files_and_bad_volumes_up_front(tmp_path):
    with pytest.raises(ConfigError) as exc, pytest.warns(EvflowWarning) as caught:
        load_experiment(_exp(tmp_path, scatter="VSSC1-width", scale='scale = "gain"'))
    msg = str(exc.value)
    # an empty sample is a per-sample problem: a warning up front, the run fails only that sample
    empty = [str(w.message) for w in caught if "holds 0 events" in str(w.message)]
    assert len(empty) == 1 and "'samples[2]' (c): c.fcs holds 0 events (an empty data set)" in empty[0]
    assert "report 'c' as failed and complete the others" in empty[0]
    assert "holds 0 events" not in msg
    assert "'flow.scale' is 'gain', expected one of auto, raw, linear, linear-gain" in msg
    typo = [ln for ln in msg.splitlines() if "VSSC1-width" in ln]
    assert len(typo) == 1 and "did you mean 'VSSC1-H'?" in typo[0]
    assert "samples[0].flow a.fcs, samples[1].flow b.fcs, samples[2].flow c.fcs" in typo[0]
    assert msg.count("channels ($PnN): VSSC1-H, FITC-H, FSC-H, Time") == 1
    assert "'samples[1]' (b): $VOL is 0 in b.fcs" in msg and "no $VOL" not in msg
    # 37.76 nL over the 2 minutes of $BTIM/$ETIM: 0.0189 uL/min
    assert "'samples[2]' (c): c.fcs: $VOL 37.76 nL over 120 s of acquisition implies a flow rate of 0.0189" in msg
    # a's $VOL (1 uL/min) is plausible
    assert "'samples[0]' (a)" not in msg


def test_an_empty_control_stops_the_run_up_front(tmp_path):
    files = [_cytoflex(tmp_path, "a.fcs", extra={"$VOL": "2000"}), _cytoflex(tmp_path, "b.fcs", extra={"$VOL": "2000"}),
             _cytoflex(tmp_path, "c.fcs", n=0, extra={"$VOL": "2000"})]
    p = _exp(tmp_path, files=files)
    text = p.read_text()
    head, sep, last = text.rpartition('name = "c"')
    p.write_text(head + sep + '\nrole = "buffer"' + last)
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    assert "'samples[2]' (c): c.fcs holds 0 events (an empty data set): the buffer control is needed" in str(exc.value)


def test_validate_checks_calibration_files_too(tmp_path):
    empty = _cytoflex(tmp_path, "beads.fcs", n=0)
    p = _exp(tmp_path, files=[_cytoflex(tmp_path, "a.fcs", extra={"$VOL": "2000"})] * 3)
    p.write_text(p.read_text().replace("[thresholds]", f"""[flow.calibration.fluorescence]
file = "{empty}"
channel = "FITC-H"
values = [0, 100, 1000]
clustering_channels = ["FITC-H", "VSSC1-width"]

[thresholds]"""))
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    msg = str(exc.value)
    assert "'flow.calibration.fluorescence.channel' file beads.fcs holds 0 events" in msg
    assert ("'flow.calibration.fluorescence.clustering_channels' channel 'VSSC1-width' is not in beads.fcs "
            "(did you mean 'VSSC1-H'?)") in msg


def test_experiment_scale_reaches_every_reader(tmp_path):
    from evflow.pipeline.inputs import read_flow

    a = _cytoflex(tmp_path, "a.fcs", extra={"$VOL": "2000"})
    files = (a, a, a)
    exp = load_experiment(_exp(tmp_path, scale='scale = "linear-gain"', files=files))
    assert exp.flow["scale"] == "linear-gain" and read_flow(a, exp.flow).scale == "linear-gain"
    assert read_flow(a, load_experiment(_exp(tmp_path, files=files)).flow).scale == "linear"  # auto: CytoFLEX


def test_calibration_plot_axis_names_the_channel_and_its_scale():
    import matplotlib

    matplotlib.use("Agg")
    from evflow import calibrate_mesf

    mefl = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
    path = shared_path("beads", "flowcal", "sample001.fcs")
    cal = calibrate_mesf(path, "FL1", mefl, ["FL1", "FL3"])
    # FL1 of FlowCal's Cytek xP3 beads: log-amplified over 4 decades, no $PnG
    assert cal.qc["axis_label"] == "FL1 [linear-gain, a.u.]"
    fig = cal.plot()
    assert fig.axes[0].get_xlabel() == "FL1 [linear-gain, a.u.]"
    raw = calibrate_mesf(read_fcs(path, scale="raw"), "FL1", mefl, ["FL1", "FL3"])
    assert raw.qc["axis_label"] == "FL1 [raw, a.u.]"
    # the same peaks, on the stored scale: decoded medians are 10**(4 x / 1024) of the stored ones
    np.testing.assert_allclose(10 ** (4 * raw.peak_medians[1:4] / 1024), cal.peak_medians[1:4], rtol=0.02)
