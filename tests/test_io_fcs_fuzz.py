"""Fuzz the FCS reader with mutated real files: only FCSError (or a clean read) may come out."""

from __future__ import annotations

import os
import warnings

import pytest

hypothesis = pytest.importorskip("hypothesis")
from conftest import SHARED_DATA  # noqa: E402
from fcs_builder import build_mixed_32, build_odd_bits  # noqa: E402
from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,  # noqa: E402
)

import evflow  # noqa: E402
from evflow.errors import FCSError  # noqa: E402

SOURCES = [
    "fcs/flowio/data1.fcs",  # FCS 2.0, big-endian 16-bit, backslash delimiter
    "fcs/fcsparser/cyflow_cube_8/cyflow_cube_8.fcs",  # mixed 8/16/32-bit columns
    "fcs/flowio/coulter.lmd",  # two data sets
    "fcs/flowio/G11.fcs",  # FCS 3.1 float
    "beads/flowcal/sample001.fcs",  # 24-bit
]
EXAMPLES = int(os.environ.get("EVFLOW_FUZZ_EXAMPLES", "120"))


def _sources():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    # and two layouts no shared file has: FCS 3.2 mixed $PnDATATYPE, and $PnB 10/12/14 in 16-bit words
    return [(SHARED_DATA / s).read_bytes() for s in SOURCES] + [build_mixed_32(), build_odd_bits()]


@st.composite
def mutations(draw, n_sources):
    src = draw(st.integers(0, n_sources - 1))
    # most edits land in HEADER and TEXT, where the parser makes its decisions
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, 4000), st.sampled_from([0, 1, 2]), st.binary(min_size=1, max_size=8)),
            min_size=1,
            max_size=6,
        )
    )
    cut = draw(st.one_of(st.none(), st.integers(0, 400_000)))
    return src, edits, cut


def _apply(data: bytes, edits, cut) -> bytes:
    b = bytearray(data)
    for pos, kind, payload in edits:
        pos = min(pos, len(b))
        if kind == 0:  # overwrite
            b[pos : pos + len(payload)] = payload
        elif kind == 1:  # insert
            b[pos:pos] = payload
        else:  # delete
            del b[pos : pos + len(payload)]
    if cut is not None:
        del b[cut:]
    return bytes(b)


@pytest.fixture(scope="module")
def sources():
    return _sources()


def test_fuzz_mutated_real_files(sources, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "mutant.fcs"

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutations(len(sources)))
    def check(m):
        src, edits, cut = m
        data = _apply(sources[src], edits, cut)
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                s = evflow.read_fcs(path)
                a = s.to_numpy()
                # whatever was read is consistent with the file size
                assert a.nbytes <= max(len(data), 1) * 8
                assert a.shape == (s.n_events, s.n_channels)
                evflow.read_fcs(path, scale=True, chunk_events=1000).events.sum(axis=0).compute()
            except FCSError as exc:
                assert str(path) in str(exc)

    check()


KEYWORD_VALUES = [b"0", b"-1", b"1", b"3", b"7", b"24", b"99999999999999", b"", b" ", b"nan", b"inf", b"1e300",
                  b"4.0,1.0", b"0,0", b"1,2,3", b"x", b"12", b"2,1", b"D", b"F", b"A", b"I", b"*",
                  b"        1280F", b"Time", b"HW-Time", b"Time MSW", b"10", b"14", b"65", b"Q",
                  b"2026-13-01T00:00:00"]


def test_fuzz_keyword_values(sources, tmp_path_factory):
    """Replace the values of real keywords ($TOT, $PAR, $PnB, $BEGINDATA, ...) with hostile ones."""
    import re

    tmp = tmp_path_factory.mktemp("fuzzkw")
    path = tmp / "mutant.fcs"
    found = [list(re.finditer(rb"(\$[A-Z0-9]+)([/\\|])([^/\\|]*)", s[:6000])) for s in sources]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(sources) - 1), st.data())
    def check(src, data):
        matches = found[src]
        picks = data.draw(st.lists(st.integers(0, len(matches) - 1), min_size=1, max_size=4, unique=True))
        b = bytearray(sources[src])
        for i in sorted(picks, key=lambda i: -matches[i].start()):
            m = matches[i]
            b[m.start(3) : m.end(3)] = data.draw(st.sampled_from(KEYWORD_VALUES))
        path.write_bytes(bytes(b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                s = evflow.read_fcs(path)
                s.to_numpy()
                s.spillover
                evflow.read_fcs(path, scale=True, chunk_events=999).events.sum(axis=0).compute()
                _ = s.time_channel, [s.channel_type(i) for i in range(s.n_channels)], s.acquisition_seconds()
                _ = s.begin_datetime
            except FCSError as exc:
                assert str(path) in str(exc)

    check()


def _shift_number(b: bytearray, m, delta: int) -> None:
    v = int(m.group(3)) + delta
    b[m.start(3) : m.end(3)] = str(max(v, 0)).encode()


def test_fuzz_disagreeing_offsets(sources, tmp_path_factory):
    """HEADER and TEXT DATA offsets moved apart (by a 16-bit word, an event, the CyAn case's 46 bytes ...)
    over appended bytes: the reader judges the readings or raises FCSError, nothing else."""
    import re

    tmp = tmp_path_factory.mktemp("fuzzoff")
    path = tmp / "mutant.fcs"

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(sources) - 1), st.sampled_from(["HEADER", "TEXT", "both"]),
           st.sampled_from([-46, -4, -2, -1, 1, 2, 4, 22, 44, 46, 4096]), st.binary(max_size=64),
           st.booleans())
    def check(src, where, delta, tail, ends_too):
        b = bytearray(sources[src] + tail)
        if where in ("HEADER", "both"):
            for lo in (26, 34) if ends_too else (26,):
                s = b[lo : lo + 8].strip()
                if s.isdigit():
                    b[lo : lo + 8] = f"{int(s) + delta:>8d}".encode()[-8:]
        if where in ("TEXT", "both"):
            keys = rb"BEGINDATA|ENDDATA" if ends_too else rb"BEGINDATA"
            for m in sorted(re.finditer(rb"(\$(?:" + keys + rb"))([/\\|])\s*(\d+)", bytes(b[:8000])),
                            key=lambda m: -m.start()):
                _shift_number(b, m, -delta if where == "both" else delta)
        path.write_bytes(bytes(b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                s = evflow.read_fcs(path)
                a = s.to_numpy()
                assert a.shape == (s.n_events, s.n_channels)
            except FCSError as exc:
                assert str(path) in str(exc)

    check()
