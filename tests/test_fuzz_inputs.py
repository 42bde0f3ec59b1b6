"""Mutation fuzzing of every input evflow reads: FCS (shared real files and builder-made layouts), Gating-ML,
TIFF and experiment files.  Each mutant must read cleanly or raise an evflow error; anything else (a raw
ValueError, RecursionError, MemoryError, a hang past the per-input timeout) fails.

The CI share is sized by EVFLOW_FUZZ_SCALE (default 1: about 3,000 FCS mutants, parse-only); a full campaign is
EVFLOW_FUZZ_SCALE=8 (about 20,000 FCS mutants plus the other formats)."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA
from fcs_builder import (
    build_data_set,
    build_fcs,
    build_mixed_32,
    build_multi,
    build_odd_bits,
    shift_offsets,
    with_analysis,
)

import evflow
from evflow.errors import EvflowError

SCALE = float(os.environ.get("EVFLOW_FUZZ_SCALE", "1"))
TIMEOUT_S = 20  # per input: a mutant that takes this long is unbounded work, not a slow machine

SMALL_FCS = ["fcs/flowio/data_start_offset_discrepancy_example.fcs", "fcs/flowio/variable_int_example.fcs",
             "fcs/flowio/data_stop_offset_discrepancy_example.fcs"]
LARGE_FCS = ["fcs/flowio/data1.fcs", "fcs/flowio/coulter.lmd", "fcs/flowio/G11.fcs"]
NASTY = [b"", b" ", b"-1", b"0", b"2.0", b"1e309", b"nan", b"abc", b"99999999999999999999", b"*", b",", b"/",
         b"        1280F", b"Time"]
#: FCS keyword values besides NASTY: odd $PnB, per-channel types
FCS_NASTY = NASTY + [b"10", b"12", b"14", b"65", b"I", b"F", b"D", b"A"]


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds, what):
    def on_alarm(*_):
        raise _Timeout(f"{what}: more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _only_evflow_errors(fn, what):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with _deadline(TIMEOUT_S, what):
                fn()
        except EvflowError:
            pass
        except _Timeout:
            raise
        except BaseException as exc:
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _built_fcs():
    v = np.arange(60).reshape(20, 3) % 17
    return [
        build_fcs(v),
        build_fcs(v, datatype="A", bits=[4, 4, 4]),
        build_fcs(v, datatype="F", order=">", extra={"$SPILLOVER": "2,CH1,CH2,1,0.1,0.2,1"}),
        build_fcs(v, datatype="D", version="FCS3.1", stext={"$CYT": "x", "$SMNO": "1"}),
        build_fcs(np.zeros((3, 3)), datatype="A", bits=[8, 8, 8], version="FCS2.0", data_bytes=b"1,2,3 4,5,6 7,8,9",
                  extra={"$P1B": "*", "$P2B": "*", "$P3B": "*"}),
        build_multi([{"values": v, "datatype": "I"}, {"values": v[:5], "datatype": "F"}]),
        *_disagreeing_offsets(),
        build_mixed_32(),  # FCS 3.2: $PnDATATYPE I, F, D in one event
        build_odd_bits(),  # $PnB 10, 12, 14 in 16-bit words
    ]


def _disagreeing_offsets():
    """Files whose HEADER and TEXT DATA offsets disagree in ways that need the events judged."""
    t = np.cumsum(np.arange(1, 41)) * 50
    v = np.column_stack([np.arange(40) * 37 % 1000, t & 0xFFFF, t >> 16]).astype(np.uint16)
    extra = {"$BEGINANALYSIS": "0" * 12, "$ENDANALYSIS": "0" * 12}
    blob, _ = build_data_set(v, bits=[16] * 3, ranges=[1000, 65536, 65536], names=["FL1", "Time LSW", "Time MSW"],
                             extra=extra)
    cyan = shift_offsets(with_analysis(blob, b"/$GATE/R1/" * 8), "TEXT", 14)  # two events and one word late
    only_time = shift_offsets(blob + bytes(14), "HEADER", 14)
    fcs2, _ = build_data_set(v, bits=[16] * 3, version="FCS2.0", extra={"$TOT": " "})
    return [cyan, only_time, fcs2]


def _mutate_fcs(rng, blob: bytes) -> bytes:
    b = bytearray(blob)
    text_end = min(len(b), max(256, blob.find(b"$", 58) + 3000))
    for _ in range(int(rng.integers(1, 4))):
        op = rng.integers(0, 7)
        text_end = min(text_end, len(b))
        if len(b) < 60:
            break
        if op == 0:  # flip bytes in HEADER/TEXT
            i = int(rng.integers(0, text_end))
            b[i] = int(rng.integers(0, 256))
        elif op == 1:  # a keyword value replaced by a nasty one
            keys = [k for k in (b"$PAR", b"$TOT", b"$P1B", b"$P2B", b"$P2R", b"$DATATYPE", b"$BEGINDATA", b"$ENDDATA",
                                b"$NEXTDATA", b"$SPILLOVER", b"$P1E", b"$BYTEORD", b"$MODE", b"$BEGINANALYSIS",
                                b"$ENDANALYSIS", b"$P3N", b"$P3TYPE", b"$P2DATATYPE", b"$P3DATATYPE", b"$P4TYPE",
                                b"$BEGINDATETIME") if k in b]
            if keys:
                k = keys[int(rng.integers(0, len(keys)))]
                i = b.find(k) + len(k) + 1
                j = i
                while j < len(b) and j - i < 40 and b[j:j + 1] not in (b"/", b"\\", b"|", b"\x0c", b"*"):
                    j += 1
                b[i:j] = FCS_NASTY[int(rng.integers(0, len(FCS_NASTY)))]
        elif op == 2:  # truncation
            b = b[: int(rng.integers(0, len(b) + 1))]
        elif op == 3:  # HEADER offsets
            i = int(rng.integers(10, 58))
            b[i:i + 1] = bytes([int(rng.choice(list(b" 0123456789-")))])
        elif op == 4:  # a byte in DATA
            i = int(rng.integers(min(text_end, len(b) - 1), len(b)))
            b[i] = int(rng.integers(0, 256))
        elif op == 6:  # HEADER DATA offsets moved (by a word, an event, 46 bytes) over appended bytes
            delta = int(rng.choice([-46, -2, 2, 4, 46]))
            for lo in (26, 34):
                s = bytes(b[lo:lo + 8]).strip()
                if s.isdigit():
                    b[lo:lo + 8] = f"{int(s) + delta:>8d}".encode()[-8:]
            b += bytes(rng.integers(0, 256, max(delta, 0)).astype(np.uint8))
        else:  # insert or delete in TEXT
            i = int(rng.integers(0, min(text_end, len(b)) + 1))
            if rng.random() < 0.5:
                del b[i:i + int(rng.integers(1, 8))]
            else:
                b[i:i] = bytes(rng.integers(32, 127, int(rng.integers(1, 8))).astype(np.uint8))
    return bytes(b)


def _parse_fcs(path, full):
    from evflow.io.fcs import count_data_sets

    for k in range(min(count_data_sets(path), 3)):
        s = evflow.read_fcs(path, data_set=k)
        _ = s.channels, s.markers, s.n_events
        try:
            _ = s.spillover
        except EvflowError:
            pass
        if full:
            s.to_numpy()


def _sources():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return ([(SHARED_DATA / s).read_bytes() for s in SMALL_FCS] + _built_fcs(),
            [(SHARED_DATA / s).read_bytes() for s in LARGE_FCS])


def test_fuzz_fcs(tmp_path):
    small, large = _sources()
    rng = np.random.default_rng(20240)
    n = int(2500 * SCALE)
    p = tmp_path / "m.fcs"
    for i in range(n):
        src = large[i % len(large)] if i % 100 == 99 else small[int(rng.integers(0, len(small)))]
        p.write_bytes(_mutate_fcs(rng, src))
        _only_evflow_errors(lambda: _parse_fcs(p, full=i % 8 == 0), f"FCS mutant {i}")


def test_fuzz_fcs_info_cli(tmp_path, capsys):
    from evflow.cli import main

    small, _ = _sources()
    rng = np.random.default_rng(7)
    for i in range(int(150 * SCALE)):
        p = tmp_path / f"m{i % 5}.fcs"
        p.write_bytes(_mutate_fcs(rng, small[int(rng.integers(0, len(small)))]))
        _only_evflow_errors(lambda: main(["info", str(p)]), f"info mutant {i}")
        err = capsys.readouterr().err
        assert "unexpected" not in err and "Traceback" not in err, (i, err)


def _gml_sources():
    d = SHARED_DATA / "gatingml" / "gml"
    if not d.is_dir():
        pytest.skip(f"shared Gating-ML files not found at {d}")
    return [p.read_bytes() for p in sorted(d.glob("*.xml"))]


def test_fuzz_gatingml():
    from evflow.flow.gatingml import parse_gatingml

    srcs = _gml_sources()
    rng = np.random.default_rng(11)
    vals = [b"nan", b"1e309", b"", b"-inf", b"x", b"&amp;", b"<", b"0", b"-1"]
    for i in range(int(400 * SCALE)):
        b = bytearray(srcs[int(rng.integers(0, len(srcs)))])
        for _ in range(int(rng.integers(1, 4))):
            op = rng.integers(0, 4)
            if op == 0:
                j = int(rng.integers(0, len(b)))
                b[j] = int(rng.integers(32, 127))
            elif op == 1:  # an attribute value replaced
                j = b.find(b'="', int(rng.integers(0, len(b))))
                if j > 0:
                    k = b.find(b'"', j + 2)
                    b[j + 2:k] = vals[int(rng.integers(0, len(vals)))]
            elif op == 2:  # an element cut out
                j = b.find(b"<", int(rng.integers(0, len(b))))
                k = b.find(b">", j)
                if j >= 0 and k > j:
                    del b[j:k + 1]
            else:  # a chunk duplicated (repeated ids, references)
                j = int(rng.integers(0, len(b)))
                b[j:j] = b[j:j + int(rng.integers(1, 400))]
        _only_evflow_errors(lambda: parse_gatingml(bytes(b)), f"Gating-ML mutant {i}")


def test_fuzz_tiff(tmp_path):
    import io

    import tifffile

    rng = np.random.default_rng(5)
    srcs = []
    for kw in ({}, {"compression": "zlib"}, {"photometric": "minisblack", "planarconfig": "separate"}):
        buf = io.BytesIO()
        tifffile.imwrite(buf, rng.integers(0, 4000, (2, 32, 32)).astype(np.uint16), **kw)
        srcs.append(buf.getvalue())
    p = tmp_path / "m.tif"
    for i in range(int(150 * SCALE)):
        b = bytearray(srcs[i % len(srcs)])
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(0, min(len(b), 600))) if rng.random() < 0.8 else int(rng.integers(0, len(b)))
            b[j] = int(rng.integers(0, 256))
        if rng.random() < 0.1:
            b = b[: int(rng.integers(8, len(b)))]
        p.write_bytes(bytes(b))
        _only_evflow_errors(lambda: evflow.read_images([str(p)]).values, f"TIFF mutant {i}")


EXP = """experiment: {name: fuzz}
flow:
  markers: {FL1-H: CD63}
  flow_rate_ul_per_min: 2.0
  gates: {size_nm: [80, 400]}
thresholds: {rule: fixed, values: {CD63: 100.0}}
qc: {min_dilution_r2: 0.9}
samples:
  - {name: a, flow: s.fcs, volume_ul: 2.0, dilution: 2}
  - {name: b, flow: s.fcs, role: isotype}
"""


def test_fuzz_experiment_files(tmp_path):
    evflow.write_fcs(tmp_path / "s.fcs", np.ones((5, 2), np.float32), ["SSC-H", "FL1-H"])
    rng = np.random.default_rng(3)
    junk = ["-1", ".nan", ".inf", "[]", "{}", "'../../etc/passwd'", "''", "null", "true", "1e309", "'x\\0y'",
            "&a [1]", "*a", "[[[[[[[[1]]]]]]]]", "'/'"]
    lines = EXP.splitlines()
    p = tmp_path / "exp.yaml"
    for i in range(int(300 * SCALE)):
        ls = list(lines)
        for _ in range(int(rng.integers(1, 3))):
            j = int(rng.integers(0, len(ls)))
            op = rng.integers(0, 3)
            if op == 0 and ":" in ls[j]:
                k = [m for m in range(len(ls[j])) if ls[j][m] == ":"]
                cut = k[int(rng.integers(0, len(k)))] + 1
                rest = ls[j][cut:]
                end = min([rest.find(c) for c in ",}" if c in rest] or [len(rest)])
                ls[j] = ls[j][:cut] + " " + junk[int(rng.integers(0, len(junk)))] + rest[end:]
            elif op == 1:
                del ls[j]
            else:
                ls.insert(j, ls[int(rng.integers(0, len(ls)))])
        p.write_text("\n".join(ls) + "\n")
        _only_evflow_errors(lambda: evflow.load_experiment(p), f"experiment mutant {i}: {ls}")
