"""FCSSample's channel semantics ($PnR, $PnB, $PnE, $PnG, $TIMESTEP, $VOL) and as_sample()."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path
from fcs_builder import build_fcs

import evflow
from evflow.errors import CalibrationError, FCSError, FCSTextError, FCSWarning, GatingError
from evflow.io.fcs import NOMINAL_RANGE, FCSSample, as_sample, read_fcs


def _write(tmp_path, name, values, **kw):
    p = tmp_path / name
    p.write_bytes(build_fcs(np.asarray(values), **kw))
    return p


def _quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FCSWarning)
        return read_fcs(path, **kw)


# ----------------------------------------------------------------------------- real files


def test_real_file_log_and_gain_channels():
    # flowio/data1.fcs: 16-bit integers, $PnR 1024; FSC-H $PnG 3.67, SSC-H $PnG 8, FL1-H $PnE '4,0'
    s = _quiet(shared_path("fcs", "flowio", "data1.fcs"))
    assert s.channel_range("FSC-H") == 1024.0 and s.channel_range(0) == 1024.0
    assert s.channel_bits("FL1-H") == 16
    assert s.channel_log("FSC-H") == (0.0, 0.0)
    assert s.channel_log("FL1-H") == (4.0, 1.0)  # f2 = 0 on a log channel reads as 1
    assert s.channel_gain("FSC-H") == pytest.approx(3.67) and s.channel_gain("SSC-H") == 8.0
    assert s.channel_gain("FL1-H") == 1.0
    assert s.channel_limits("FSC-H") == (0.0, 1024.0 / 3.67)
    assert s.channel_limits("FSC-H", top="last") == (0.0, 1023.0 / 3.67)
    assert s.channel_limits("FSC-H", scaled=False) == (0.0, 1024.0)
    assert s.channel_limits("FL1-H") == (1.0, 1e4)
    assert s.channel_limits("FL1-H", top="last") == (1.0, 10.0 ** (4.0 * 1023.0 / 1024.0))
    assert s.channel_scale("FL1-H") == "log: 4 decades from 1"
    assert s.channel_scale("SSC-H") == "linear, / gain 8"
    assert s.channel_units("FL1-H") == "a.u." and s.channel_units("Time") == "ticks"
    # the limits are those of the reader's own linear scale: the largest stored value decodes to the top
    raw = s.to_numpy()
    lin = np.asarray(s.linear_events().compute())
    for c in ("FSC-H", "SSC-H", "FL1-H", "FL2-H"):
        i = s.channel_index(c)
        at_top = raw[:, i] == raw[:, i].max()
        lo, hi = s.channel_limits(c, top="last")
        if raw[:, i].max() == 1023:
            np.testing.assert_allclose(lin[at_top, i], hi, rtol=1e-12)
        assert lin[:, i].max() <= hi * (1 + 1e-12) and lin[:, i].min() >= lo * (1 - 1e-12)


def test_real_file_time_channel_uses_timestep_not_gain():
    # Data004: float data, Time has $PnG 0.01 and $TIMESTEP 0.01: the reader multiplies by $TIMESTEP only
    s = _quiet(shared_path("fcs", "flowcal_test", "Data004.fcs"))
    assert s.timestep == 0.01
    assert s.channel_gain("Time") == 0.01  # the keyword, as written
    assert s.channel_limits("Time") == (0.0, 262144.0 * 0.01)
    assert s.channel_units("Time") == "s"
    t = np.asarray(s.linear_events()[:, s.channel_index("Time")].compute())
    np.testing.assert_allclose(t, s.to_numpy()[:, s.channel_index("Time")].astype(float) * 0.01)


# ----------------------------------------------------------------------------- built files


def test_defaults_without_range_keyword(tmp_path):
    p = _write(tmp_path, "i.fcs", [[1, 2], [3, 4]], bits=[16, 8], extra={"$P1R": " ", "$P2R": "n/a"})
    s = _quiet(p)
    assert s.channel_range(0) == 2.0**16 and s.channel_range(1) == 2.0**8  # integer data: 2**$PnB
    assert s.channel_range(0, default=None) is None and s.channel_range(1, default=5.0) == 5.0
    assert s.channel_limits(0, default=None) is None
    pf = _write(tmp_path, "f.fcs", [[1.5, 2.5]], datatype="F", extra={"$P1R": ""})
    sf = _quiet(pf)
    assert sf.channel_range(0) == NOMINAL_RANGE == 262144.0
    assert sf.channel_range(1) == 1024.0


def test_pipeline_channel_top_uses_the_sample_range(tmp_path):
    from evflow.pipeline.flow import _channel_top

    p = _write(tmp_path, "i.fcs", [[1, 2]], bits=[16, 16], names=["SSC-H", "FL1-H"], extra={"$P2R": ""})
    assert _channel_top(p, "SSC-H") == (1024.0, "SSC-H")
    assert _channel_top(p, "FL1-H") == (65536.0, "FL1-H")  # was a fixed 1e5 without $PnR


def test_log_and_gain_keywords_strict_and_lenient(tmp_path):
    p = _write(tmp_path, "e.fcs", [[1, 2, 3]], extra={"$P1E": "four", "$P2G": "x", "$P3E": "3,0.5", "$P3G": "0"})
    s = _quiet(p)
    with pytest.raises(FCSTextError, match=r"\$P1E"):
        s.channel_log(0)
    assert s.channel_log(0, strict=False) == (0.0, 0.0)
    with pytest.warns(FCSWarning, match=r"\$P2G"):
        assert s.channel_gain(1) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s.channel_gain(1, strict=False) == 1.0
    assert s.channel_log(2) == (3.0, 0.5) and s.channel_gain(2) == 1.0  # a gain of 0 counts as 1
    assert s.channel_limits(2) == (0.5, 500.0)
    with pytest.raises(FCSError, match="top="):
        s.channel_limits(2, top="max")


def test_channel_by_index_and_name(tmp_path):
    s = _quiet(_write(tmp_path, "n.fcs", [[1, 2]], names=["FSC-H", "FL1-H"], ranges=[512, 2048]))
    assert s.channel_range("FL1-H") == s.channel_range(1) == s.channel_range(np.int64(1)) == 2048.0
    assert s.channel_keyword(0, "R") == "512" and s.channel_keyword(0, "G") is None
    with pytest.raises(FCSError, match="out of range"):
        s.channel_range(2)
    with pytest.raises(FCSError, match="no channel"):
        s.channel_range("SSC-H")


def test_volume_distinguishes_missing_from_zero(tmp_path):
    vals = [[1, 2]]
    assert _quiet(_write(tmp_path, "none.fcs", vals)).volume_nl() is None
    assert _quiet(_write(tmp_path, "ok.fcs", vals, extra={"$VOL": " 25000 "})).volume_nl() == 25000.0
    zero = _quiet(_write(tmp_path, "zero.fcs", vals, extra={"$VOL": "0"}))
    with pytest.raises(FCSTextError, match=r"\$VOL is '0'"):
        zero.volume_nl()
    with pytest.raises(FCSTextError, match="expected a number of nanolitres"):
        _quiet(_write(tmp_path, "bad.fcs", vals, extra={"$VOL": "lots"})).volume_nl()
    # calibration: a $VOL of 0 is named as such, not reported as a missing keyword
    from evflow.flow.calibration import analysed_volume_ul

    with pytest.raises(CalibrationError, match=r"\$VOL is '0'"):
        analysed_volume_ul(zero)
    assert analysed_volume_ul(_quiet(tmp_path / "ok.fcs"))["volume_ul"] == 25.0


def test_acquisition_seconds_from_time_channel_and_clock(tmp_path):
    vals = np.array([[10, 1], [30, 2], [70, 3]])
    s = _quiet(_write(tmp_path, "t.fcs", vals, names=["Time", "FL1-H"], extra={"$TIMESTEP": "0.5"}))
    assert s.timestep == 0.5
    assert s.acquisition_seconds() == (30.0, "Time channel 'Time'")  # (70 - 10) ticks x 0.5 s
    c = _quiet(_write(tmp_path, "c.fcs", vals, names=["FSC-H", "FL1-H"],
                      extra={"$BTIM": "23:59:30", "$ETIM": "00:00:45.50"}))
    assert c.acquisition_seconds() == (75.5, "$BTIM/$ETIM")  # across midnight
    bad = _quiet(_write(tmp_path, "b.fcs", vals, names=["FSC-H", "FL1-H"], extra={"$BTIM": "noon", "$ETIM": "1"}))
    assert bad.acquisition_seconds() is None


def test_metadata_path_reads_no_data(tmp_path, monkeypatch):
    from evflow.io.fcs import data

    p = _write(tmp_path, "m.fcs", [[1, 2]], extra={"$VOL": "10", "$P2E": "2,1"})

    def no_data(*a, **k):
        raise AssertionError("DATA was read")

    monkeypatch.setattr(data._DataSegment, "read_rows", no_data)
    s = read_fcs(p)
    assert s.channel_range(1) == 1024.0 and s.channel_limits(1) == (1.0, 100.0) and s.volume_nl() == 10.0
    with pytest.raises(AssertionError, match="DATA was read"):
        s.to_numpy()


# ----------------------------------------------------------------------------- as_sample


def test_as_sample_path_sample_and_arrays(tmp_path):
    p = _write(tmp_path, "a.fcs", [[1, 2], [3, 4]], extra={"$P2E": "2,1"})
    s = as_sample(p)
    assert isinstance(s, FCSSample) and s.scaled and s.events.dtype == np.float64
    assert as_sample(str(p), scale=False).scaled is False
    assert as_sample(s) is s
    ev = np.arange(6.0).reshape(3, 2)
    a = as_sample((ev, ["X", "Y"]), name="mine")
    assert a.path == "mine" and a.channels == ["X", "Y"] and a.scaled and a.meta == {}
    np.testing.assert_array_equal(a.to_numpy(), ev)
    assert a.channel_limits("X", default=None) is None  # no keywords: no range
    with pytest.raises(GatingError, match=r"sample 'events': events have shape \(3, 2\) but 3 channel names"):
        as_sample((ev, ["X", "Y", "Z"]), error=GatingError)
    with pytest.raises(CalibrationError, match="beads: expected an FCSSample, a path or"):
        as_sample(42, what="beads", error=CalibrationError)


def test_callers_accept_the_same_inputs(tmp_path):
    """Gating, phenotype counting and calibration take a path, a sample or (events, channels) alike."""
    from evflow.flow.calibration._table import _channel_names
    from evflow.flow.gates import Dimension, GatingStrategy, RectangleGate

    ev = np.array([[1.0, 5.0], [2.0, 50.0], [3.0, 500.0]])
    p = evflow.write_fcs(tmp_path / "w.fcs", ev, ["FSC-H", "FL1-H"])
    strategy = GatingStrategy()
    strategy.add_gate(RectangleGate("g", [Dimension("FL1-H")], [10.0], [1000.0]))
    for obj in (p, read_fcs(p), (ev, ["FSC-H", "FL1-H"])):
        assert strategy.apply(obj).counts()["g"] == 2
    assert _channel_names(p) == ["FSC-H", "FL1-H"]
    with pytest.raises(GatingError, match=r"apply\(\): expected an FCSSample"):
        strategy.apply(42)
