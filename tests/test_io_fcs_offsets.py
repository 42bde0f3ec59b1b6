"""HEADER and TEXT DATA offsets that disagree: the reading is decided from the events, never guessed.

Each file is built (by tests/fcs_builder.py or by evflow's own writer) with known events, then its
offsets are edited byte by byte, so the right answer is known.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from conftest import shared_path
from fcs_builder import (
    build_data_set,
    header_field,
    set_header_field,
    set_text_value,
    shift_offsets,
    text_value,
    with_analysis,
)

import evflow
from evflow.errors import FCSDataError, FCSWarning
from evflow.io.fcs.offsets import JUDGE_ROWS

CYAN_NAMES = ["FS Lin", "SS Log", "FL1 Log", "FL2 Log", "FL3 Log", "FL4 Log", "FL5 Log", "FL6 Log",
              "Time LSW", "Time MSW", "FL7 Log"]


def _cyan_events(n=5000, seed=1, reset_at=None):
    """11 16-bit channels as a Beckman CyAn stores them: time split into a low and a high word."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 65536, size=(n, 11)).astype(np.uint16)
    t = np.cumsum(rng.integers(500, 1500, size=n)).astype(np.int64)
    if reset_at is not None:
        t[reset_at:] -= t[reset_at] - 5  # the clock restarts: the high word drops
    v[:, 8] = t & 0xFFFF
    v[:, 9] = t >> 16
    return v


def _build(values, names, ranges, extra=None, version="FCS3.0"):
    values = np.asarray(values)
    extra = {"$BEGINANALYSIS": "0" * 12, "$ENDANALYSIS": "0" * 12, **(extra or {})}
    blob, _ = build_data_set(values, bits=[16] * values.shape[1], ranges=ranges, names=names, extra=extra,
                             version=version, data_bytes=values.astype("<u2").tobytes())
    return blob


def _analysis(nbytes=120):
    body = b"/$GATE1/R1 FS Lin 100 4000/$GATE2/R2 FL1 Log 10 65000/$STATS/median 1234.5/"
    return (body * (1 + nbytes // len(body)))[:nbytes]


def _read(path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = evflow.read_fcs(path)
        a = s.to_numpy()
    return s, a, [str(w.message) for w in rec if issubclass(w.category, FCSWarning)]


def _offset_warnings(msgs):
    return [m for m in msgs if "DATA" in m or "$TOT" in m or "$BEGINDATA" in m or "$ENDDATA" in m]


def test_cyan_text_offset_shifted_by_46_bytes(tmp_path):
    """The real case: TEXT's DATA offsets 46 bytes (2 events + one 16-bit word) after the HEADER's,
    both $TOT x $PAR x 2 long; the TEXT reading's 'Time MSW' is not monotone and its last events are
    ANALYSIS bytes.  The HEADER is right."""
    v = _cyan_events()
    good = with_analysis(_build(v, CYAN_NAMES, [65536] * 11, {"$CYT": "CyAn"}), _analysis())
    blob = shift_offsets(good, "TEXT", 46)
    hb = header_field(blob, "DATA begin")
    assert int(text_value(blob, "$BEGINDATA")) == hb + 46
    p = tmp_path / "cyan.fcs"
    p.write_bytes(blob)
    s, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert str(p) in msg and f"HEADER (bytes {hb}-" in msg and f"$BEGINDATA/$ENDDATA (bytes {hb + 46}-" in msg
    assert "ANALYSIS" in msg and "time channel 'Time MSW' decreases" in msg
    assert msg.endswith(f"using HEADER (DATA at byte {hb})")
    # the same file with correct TEXT offsets reads the same events, with no warning
    p.write_bytes(good)
    _, a2, msgs2 = _read(p)
    np.testing.assert_array_equal(a2, v)
    assert _offset_warnings(msgs2) == []


@pytest.mark.parametrize("name,ptype", [("Time MSW", None), ("HW-Time", None), ("TIME", None), ("T-hi", "Time")])
def test_only_the_time_channel_tells_them_apart(tmp_path, name, ptype):
    # no ANALYSIS segment, $PnR 65536 on 16 bits (every value in range): only the time channel can tell
    v = _cyan_events(seed=2)
    names = CYAN_NAMES[:9] + [name] + CYAN_NAMES[10:]
    extra = {"$P10TYPE": ptype} if ptype else {}
    blob = shift_offsets(_build(v, names, [65536] * 11, extra) + bytes(46), "TEXT", 46)
    p = tmp_path / "t.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert f"time channel {name!r} decreases" in msg and "ANALYSIS" not in msg and "above $P" not in msg
    assert "using HEADER" in msg


def test_without_a_time_channel_the_same_file_is_ambiguous(tmp_path):
    v = _cyan_events(seed=2)
    names = CYAN_NAMES[:9] + ["FL8 Log"] + CYAN_NAMES[10:]
    blob = shift_offsets(_build(v, names, [65536] * 11) + bytes(46), "TEXT", 46)
    p = tmp_path / "amb.fcs"
    p.write_bytes(blob)
    hb = header_field(blob, "DATA begin")
    with pytest.raises(FCSDataError, match="both readings pass") as err:
        _read(p)
    msg = str(err.value)
    assert str(p) in msg and f"HEADER (bytes {hb}-" in msg and f"$BEGINDATA/$ENDDATA (bytes {hb + 46}-" in msg


def test_pnr_tells_them_apart(tmp_path):
    # FL (P1R=1000, 10-bit mask) and a wide channel whose low 10 bits are 1010: read one word late, FL holds
    # 1010 > $P1R.  Here the HEADER is the wrong one.
    rng = np.random.default_rng(3)
    n = 3000
    v = np.stack([rng.integers(0, 1000, n), 1010 + 1024 * rng.integers(0, 63, n)], axis=1).astype(np.uint16)
    blob = shift_offsets(_build(v, ["FL1", "Wide"], [1000, 65536]) + bytes(46), "HEADER", 46)
    p = tmp_path / "r.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert "channel 'FL1' holds 1010" in msg and "above $P1R=1000" in msg
    assert "the HEADER reading fails" in msg and "using $BEGINDATA/$ENDDATA" in msg


def test_both_readings_pass_is_an_error(tmp_path):
    # offsets a whole number of events apart, no time channel, all values in range: nothing decides
    rng = np.random.default_rng(4)
    v = rng.integers(0, 65536, size=(400, 2)).astype(np.uint16)
    blob = shift_offsets(_build(v, ["A", "B"], [65536, 65536]) + rng.bytes(44), "HEADER", 44)
    p = tmp_path / "both.fcs"
    p.write_bytes(blob)
    tb = int(text_value(blob, "$BEGINDATA"))
    with pytest.raises(FCSDataError, match="cannot tell which") as err:
        _read(p)
    msg = str(err.value)
    assert str(p) in msg and f"HEADER (bytes {tb + 44}-" in msg and f"(bytes {tb}-" in msg


def test_neither_reading_passes_is_an_error(tmp_path):
    # the clock restarts inside the first events: the right reading fails too
    v = _cyan_events(reset_at=100)
    blob = shift_offsets(with_analysis(_build(v, CYAN_NAMES, [65536] * 11), _analysis()), "TEXT", 46)
    p = tmp_path / "neither.fcs"
    p.write_bytes(blob)
    hb = header_field(blob, "DATA begin")
    with pytest.raises(FCSDataError, match="neither reading passes") as err:
        _read(p)
    msg = str(err.value)
    assert str(p) in msg and f"HEADER (bytes {hb}-" in msg and f"(bytes {hb + 46}-" in msg
    assert "HEADER: time channel 'Time MSW' decreases" in msg and "event 99" in msg


def test_writer_file_with_a_shifted_header(tmp_path):
    # evflow's own float32 writer; the HEADER moved one event and one float on, over appended bytes
    rng = np.random.default_rng(5)
    n = 6000
    ev = np.column_stack([rng.gamma(2, 300, n), rng.gamma(2, 200, n), rng.gamma(1, 50, n),
                          np.arange(n) * 0.25]).astype(np.float32)
    p = tmp_path / "w.fcs"
    evflow.write_fcs(p, ev, ["FSC-A", "SSC-A", "FL1-A", "Time"])
    blob = shift_offsets(p.read_bytes() + np.ones(5, "<f4").tobytes(), "HEADER", 20)
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, ev)
    (msg,) = _offset_warnings(msgs)
    assert "time channel 'Time' decreases" in msg and "using $BEGINDATA/$ENDDATA" in msg
    # judged on a bounded sample: the first failure is reported within the first JUDGE_ROWS events
    first = int(re.search(r"\(event (\d+)\)", msg).group(1))
    assert first < JUDGE_ROWS


def test_the_tail_of_the_data_is_judged_too(tmp_path):
    # the readings differ by one whole event: their first events look alike and only the TEXT reading's
    # last event (undeclared trailing zeros) breaks the time channel, far beyond the first JUDGE_ROWS
    n = 3 * JUDGE_ROWS
    v = np.zeros((n, 2), np.uint16)
    v[:, 1] = np.arange(n) // 8 + 1
    blob = shift_offsets(_build(v, ["FL1", "Time"], [65536, 65536]) + bytes(4), "TEXT", 4)
    p = tmp_path / "tail.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert f"(event {n - 2}) to 0 (event {n - 1})" in msg and "using HEADER" in msg


def test_a_reading_that_does_not_fit_needs_no_judging(shared_data):
    # the real FlowIO file: its HEADER DATA begin points into the TEXT
    p = shared_path("fcs", "flowio", "data_start_offset_discrepancy_example.fcs")
    _, a, msgs = _read(p)
    (msg,) = _offset_warnings(msgs)
    assert "HEADER (5555)" in msg and "$BEGINDATA (6081)" in msg and "only one that fits" in msg
    assert a.shape == (2, 26)


# --------------------------------------------------------------------------- lenient where the standard was lax

def _small(version="FCS3.0", n=20):
    v = (np.arange(n * 3).reshape(n, 3) * 7 % 1000).astype(np.uint16)
    return v, _build(v, ["A", "B", "C"], [1024] * 3, version=version)


def test_fcs2_needs_no_begindata(tmp_path):
    v, blob = _small("FCS2.0")
    blob = set_text_value(set_text_value(blob, "$BEGINDATA", " "), "$ENDDATA", " ")
    p = tmp_path / "f2.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    assert _offset_warnings(msgs) == []


def test_fcs3_without_begindata_uses_the_header_and_says_so(tmp_path):
    v, blob = _small("FCS3.1")
    blob = set_text_value(blob, "$BEGINDATA", " ")
    p = tmp_path / "f3.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert "FCS3.1 requires $BEGINDATA/$ENDDATA but TEXT lacks $BEGINDATA" in msg and "HEADER" in msg


@pytest.mark.parametrize("keys", [["$BEGINDATA"], ["$BEGINDATA", "$ENDDATA"], ["$ENDDATA"]])
def test_malformed_text_offsets_use_the_header_warning_once(tmp_path, keys):
    v, blob = _small()
    for k in keys:
        blob = set_text_value(blob, k, "1280F")
    p = tmp_path / "m.fcs"
    p.write_bytes(blob)
    s, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)  # one warning for the data set, however many keywords are bad
    for k in keys:
        assert f"{k} is '       1280F', expected an integer" in msg
    assert "using the HEADER's DATA offsets" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.events[5:15].compute()  # reading events (chunk by chunk) warns no more


def test_malformed_text_offsets_without_header_offsets_raise(tmp_path):
    _, blob = _small()
    blob = set_text_value(blob, "$BEGINDATA", "1280F")
    blob = set_header_field(set_header_field(blob, "DATA begin", "0"), "DATA end", "0")
    p = tmp_path / "m.fcs"
    p.write_bytes(blob)
    with pytest.raises(FCSDataError, match=r"\$BEGINDATA is '       1280F', expected an integer") as err:
        _read(p)
    assert str(p) in str(err.value) and "HEADER gives 0-0" in str(err.value)


def test_fcs2_without_tot_infers_the_event_count(tmp_path):
    v, blob = _small("FCS2.0", n=37)
    blob = set_text_value(blob, "$TOT", " ")
    p = tmp_path / "nt.fcs"
    p.write_bytes(blob)
    s, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert "$TOT is absent; inferring 37 events" in msg and "6 bytes per event" in msg


def test_fcs2_without_tot_and_partial_event_raises(tmp_path):
    _, blob = _small("FCS2.0", n=37)
    blob = set_text_value(blob, "$TOT", " ")
    end = header_field(blob, "DATA end") - 3
    blob = set_text_value(set_header_field(blob, "DATA end", end), "$ENDDATA", end)
    p = tmp_path / "nt.fcs"
    p.write_bytes(blob)
    with pytest.raises(FCSDataError, match="not a whole number of 6-byte events") as err:
        _read(p)
    assert str(p) in str(err.value) and "$TOT is absent" in str(err.value)


def test_fcs2_without_tot_ends_disagree(tmp_path):
    # the HEADER end runs into an ANALYSIS segment: the TEXT end is the one clear of other segments
    v, blob = _small("FCS2.0", n=30)
    blob = set_text_value(blob, "$TOT", " ")
    blob = with_analysis(blob, _analysis(60))
    blob = set_header_field(blob, "DATA end", header_field(blob, "DATA end") + 12)
    p = tmp_path / "e.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    assert any("using $BEGINDATA/$ENDDATA" in m for m in msgs)


def test_negative_or_impossible_text_offsets(tmp_path):
    v, blob = _small()
    p = tmp_path / "x.fcs"
    p.write_bytes(set_text_value(blob, "$BEGINDATA", "-12"))
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    assert "$BEGINDATA is -12, expected a non-negative byte offset" in _offset_warnings(msgs)[0]
    p.write_bytes(shift_offsets(blob, "TEXT", 10**9))  # beyond the end of the file
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    assert "using HEADER" in _offset_warnings(msgs)[0] and "only one that fits" in _offset_warnings(msgs)[0]


def test_fixed_width_ascii_is_judged_too(tmp_path):
    # $DATATYPE A, 4 characters a value: read two characters late, '..99' + '10..' = 9910 > $PnR=5000
    n = 50
    v = np.column_stack([1099 + 100 * (np.arange(n) % 30), 1000 + np.arange(n)]).astype(np.int64)
    blob, _ = build_data_set(v, datatype="A", bits=[4, 4], ranges=[5000, 5000], names=["FL1", "FL2"])
    blob = shift_offsets(blob + b"1000", "TEXT", 2)
    p = tmp_path / "a.fcs"
    p.write_bytes(blob)
    _, a, msgs = _read(p)
    np.testing.assert_array_equal(a, v)
    (msg,) = _offset_warnings(msgs)
    assert "above $P1R=5000" in msg and "using HEADER" in msg


# --------------------------------------------------------------------------- the user decides: data_offsets=

def _ambiguous(tmp_path):
    """The file of test_without_a_time_channel_the_same_file_is_ambiguous: TEXT 46 bytes late, HEADER right."""
    v = _cyan_events(seed=2)
    names = CYAN_NAMES[:9] + ["FL8 Log"] + CYAN_NAMES[10:]
    blob = shift_offsets(_build(v, names, [65536] * 11) + bytes(46), "TEXT", 46)
    p = tmp_path / "amb.fcs"
    p.write_bytes(blob)
    return p, blob, v


def _read_choice(path, choice):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        a = evflow.read_fcs(path, data_offsets=choice).to_numpy()
    return a, [str(w.message) for w in rec if issubclass(w.category, FCSWarning)]


def test_the_ambiguity_error_says_how_to_choose_and_both_choices_read(tmp_path):
    p, blob, v = _ambiguous(tmp_path)
    hb, he = header_field(blob, "DATA begin"), header_field(blob, "DATA end")
    tb, te = int(text_value(blob, "$BEGINDATA")), int(text_value(blob, "$ENDDATA"))
    with pytest.raises(FCSDataError, match="both readings pass") as err:
        evflow.read_fcs(p)
    msg = str(err.value)
    assert f"data_offsets='header') reads bytes {hb}-{he}" in msg and f"data_offsets='text' reads bytes {tb}-{te}" in msg
    a, msgs = _read_choice(p, "header")
    np.testing.assert_array_equal(a, v)
    assert _offset_warnings(msgs) == []
    a, msgs = _read_choice(p, "text")  # what the TEXT offsets hold: the events one word and two events late
    truth = np.frombuffer(blob[tb:tb + v.size * 2], "<u2").reshape(v.shape)
    np.testing.assert_array_equal(a, truth)
    assert not np.array_equal(a, v) and _offset_warnings(msgs) == []
    # the dask events follow the same choice
    np.testing.assert_array_equal(evflow.read_fcs(p, data_offsets="text", chunk_events=1000).events.compute(), truth)


def test_choosing_reads_a_file_whose_readings_both_fail_or_both_pass(tmp_path):
    # neither passes (the clock restarts): the HEADER holds the events as written
    v = _cyan_events(reset_at=100)
    blob = shift_offsets(with_analysis(_build(v, CYAN_NAMES, [65536] * 11), _analysis()), "TEXT", 46)
    p = tmp_path / "neither.fcs"
    p.write_bytes(blob)
    with pytest.raises(FCSDataError, match="neither reading passes.*data_offsets='header'"):
        evflow.read_fcs(p)
    np.testing.assert_array_equal(_read_choice(p, "header")[0], v)
    # both pass (offsets a whole number of events apart): the TEXT holds the events as written
    rng = np.random.default_rng(4)
    v = rng.integers(0, 65536, size=(400, 2)).astype(np.uint16)
    p.write_bytes(shift_offsets(_build(v, ["A", "B"], [65536, 65536]) + rng.bytes(44), "HEADER", 44))
    with pytest.raises(FCSDataError, match="cannot tell which.*data_offsets='text'"):
        evflow.read_fcs(p)
    np.testing.assert_array_equal(_read_choice(p, "text")[0], v)


def test_choosing_overrides_the_automatic_decision(tmp_path):
    # the CyAn file: auto takes the HEADER (with a warning); asking for the TEXT reads the shifted events
    v = _cyan_events()
    blob = shift_offsets(with_analysis(_build(v, CYAN_NAMES, [65536] * 11), _analysis()), "TEXT", 46)
    p = tmp_path / "cyan.fcs"
    p.write_bytes(blob)
    tb = int(text_value(blob, "$BEGINDATA"))
    np.testing.assert_array_equal(_read_choice(p, "auto")[0], v)
    a, msgs = _read_choice(p, "text")
    np.testing.assert_array_equal(a, np.frombuffer(blob[tb:tb + v.size * 2], "<u2").reshape(v.shape))
    assert _offset_warnings(msgs) == []
    # a file whose offsets agree reads the same whatever is chosen
    v2, good = _small()
    p.write_bytes(good)
    for choice in ("auto", "header", "text"):
        a, msgs = _read_choice(p, choice)
        np.testing.assert_array_equal(a, v2)
        assert _offset_warnings(msgs) == []


def test_a_choice_the_file_cannot_serve_is_an_error(tmp_path):
    v, blob = _small()
    p = tmp_path / "c.fcs"
    p.write_bytes(set_text_value(blob, "$BEGINDATA", "1280F"))
    with pytest.raises(FCSDataError, match=r"data_offsets='text' asked for, but \$BEGINDATA is '       1280F', "
                                           r"expected an integer.*'header'") as err:
        evflow.read_fcs(p, data_offsets="text")
    assert str(p) in str(err.value)
    np.testing.assert_array_equal(_read_choice(p, "header")[0], v)
    p.write_bytes(set_header_field(set_header_field(blob, "DATA begin", 0), "DATA end", 0))
    with pytest.raises(FCSDataError, match="data_offsets='header' asked for, but the HEADER gives DATA offsets 0-0"):
        evflow.read_fcs(p, data_offsets="header")
    np.testing.assert_array_equal(_read_choice(p, "text")[0], v)
    # a chosen reading is still checked against the file and $TOT
    p.write_bytes(set_header_field(blob, "DATA begin", len(blob) - 10))
    with pytest.raises(FCSDataError, match=r"\$TOT=20 events of 6 bytes need 120 bytes"):
        evflow.read_fcs(p, data_offsets="header")
    for bad in ("HEADER", "both", None, 1):
        with pytest.raises(evflow.FCSError, match="data_offsets=.*expected one of 'auto', 'header', 'text'"):
            evflow.read_fcs(p, data_offsets=bad)


def test_clock_channels_are_the_time_channel_and_clock_named_ones():
    from evflow.io.fcs.text import is_clock_channel, is_time_channel

    meta = {"$P1N": "Time", "$P2N": "HW-Time", "$P3N": "Time MSW", "$P4N": "Time LSW", "$P5N": "FL1",
            "$P6N": "T-hi", "$P6TYPE": "Time", "$P7N": "HDR-T", "$P7TYPE": "Raw_Fluorescence", "$P8N": "time msw"}
    clock = [is_clock_channel(meta, i) for i in range(8)]
    time = [is_time_channel(meta, i) for i in range(8)]
    assert clock == [True, True, True, False, False, True, True, True]
    assert time == [True, False, False, False, False, True, False, False]
    assert all(c for c, t in zip(clock, time) if t)  # a superset of the time channel
    assert is_clock_channel(meta, 4, "HW-Time") and not is_clock_channel(meta, 0, "FL2")  # by the name given
