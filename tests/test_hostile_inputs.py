"""Malformed and hostile inputs end in evflow errors (naming file and keyword) or in a warned, correct read;
never in a raw Python exception, a silent loss or unbounded work."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fcs_builder import build_fcs, build_multi

import evflow
from evflow.cli import main
from evflow.errors import FCSDataError, FCSError, FCSTextError, FCSWarning


def _write(tmp_path, blob, name="f.fcs"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def test_fixed_ascii_blank_or_text_field_is_fcs_error(tmp_path):
    vals = np.array([[1, 2], [3, 4]])
    for bad in (b"   1   2    \x00   4", b"   1   2 abc   4"):
        p = _write(tmp_path, build_fcs(vals, datatype="A", bits=[4, 4], data_bytes=bad))
        with pytest.raises(FCSDataError, match=r"parameter 1 \(\$P1B=4\).*expected a number") as exc:
            evflow.read_fcs(p).to_numpy()
        assert str(p) in str(exc.value)


def test_spillover_overflow_is_fcs_error():
    from evflow.io.fcs import parse_spillover

    with pytest.raises(FCSTextError, match=r"\$SPILLOVER"):
        parse_spillover("1e309,a,b,1,0,0,1")
    with pytest.raises(FCSTextError, match="non-finite"):
        parse_spillover("2,a,b,1,1e309,0,1")


def test_info_par_not_integer_one_line(tmp_path, capsys):
    blob = build_fcs(np.array([[1, 2], [3, 4]]), extra={"$PAR": "2.0"})
    p = _write(tmp_path, blob[:-3])  # and the DATA is truncated: info shows what the TEXT says
    assert main(["info", str(p)]) == 1
    cap = capsys.readouterr()
    assert "not readable" in cap.out and "channels    2" in cap.out and "Traceback" not in cap.err
    p = _write(tmp_path, build_fcs(np.array([[1, 2]]), extra={"$PAR": "x2"}), "g.fcs")
    assert main(["info", str(p)]) == 1
    assert "keyword $PAR is 'x2', expected an integer" in capsys.readouterr().err
    with pytest.raises(FCSError, match=r"\$PAR"):
        evflow.read_fcs(p)


def test_delimited_ascii_without_tot_reads_every_event(tmp_path):
    blob = build_fcs(np.zeros((3, 3)), datatype="A", bits=[8, 8, 8], version="FCS2.0",
                     data_bytes=b"1,2,3 4,5,6\n7,8,9",
                     extra={"$P1B": "*", "$P2B": "*", "$P3B": "*"})
    assert b"/$TOT/3/" in blob
    blob = blob.replace(b"/$TOT/3/", b"/$XOT/3/")  # no $TOT (optional in FCS 2.0)
    p = _write(tmp_path, blob)
    np.testing.assert_array_equal(evflow.read_fcs(p).to_numpy(), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    p2 = _write(tmp_path, blob.replace(b"7,8,9", b"7,8  "), "g.fcs")
    with pytest.warns(FCSWarning, match="not a multiple of"):
        np.testing.assert_array_equal(evflow.read_fcs(p2).to_numpy(), [[1, 2, 3], [4, 5, 6]])


def test_info_walks_nextdata_chain_once(tmp_path, monkeypatch, capsys):
    import evflow.io.fcs as F

    n = 25
    blob = build_multi([{"values": np.full((2, 2), k), "datatype": "I"} for k in range(n)])
    p = _write(tmp_path, blob)
    calls = []
    orig = F._read_data_set_info
    monkeypatch.setattr(F, "_read_data_set_info", lambda *a, **k: calls.append(1) or orig(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.count("[data set ") == n and f"[data set {n} of {n}]" in out
    assert len(calls) == n  # each data set's HEADER and TEXT read once (not 1 + 2 + ... + n)
    calls.clear()
    assert evflow.read_fcs(p, data_set=n - 1).to_numpy()[0, 0] == n - 1  # outside info: no cache
    assert len(calls) == n
