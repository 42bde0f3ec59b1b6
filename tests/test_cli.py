"""The evflow command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import evflow

from conftest import shared_path


def _run(*args):
    return subprocess.run([sys.executable, "-m", "evflow", *args], capture_output=True, text=True)


def test_info_on_real_file():
    path = shared_path("fcs", "flowio", "100715.fcs")
    out = _run("info", str(path))
    assert out.returncode == 0, out.stderr
    assert "FCS2.0" in out.stdout
    assert "Main Aria (FACSAria)" in out.stdout
    assert "65,016" in out.stdout
    s = evflow.read_fcs(path)
    for c in s.channels:
        assert c in out.stdout
    for m in s.markers:
        if m:
            assert m in out.stdout


def test_info_on_written_file_and_bad_file(tmp_path):
    p = tmp_path / "ev.fcs"
    evflow.write_fcs(p, np.ones((12, 2), np.float32), ["SSC-H", "FL1-H"], markers=[None, "CD63"], meta={"$CYT": "nanoFCM"})
    bad = tmp_path / "bad.fcs"
    bad.write_bytes(b"not an fcs file at all, really not" * 3)
    out = _run("info", str(p), str(bad))
    assert out.returncode == 1
    assert "nanoFCM" in out.stdout and "CD63" in out.stdout and "12" in out.stdout
    assert "not an FCS file" in out.stderr and str(bad) in out.stderr


def test_info_two_data_sets():
    out = _run("info", str(shared_path("fcs", "flowio", "coulter.lmd")))
    assert out.returncode == 0
    assert "data set 1 of 2" in out.stdout and "data set 2 of 2" in out.stdout
    assert "off-by-one" in out.stdout


def test_no_command_prints_help():
    out = _run()
    assert out.returncode == 2 and "info" in out.stdout


def test_info_header_only_file_lists_keywords():
    out = _run("info", str(shared_path("fcs", "fcsparser", "cytek-nl-2000", "sample_header.fcs")))
    assert out.returncode == 1
    assert "FCS3.1" in out.stdout and "Aurora" in out.stdout
    assert "20000 announced, not readable" in out.stdout
    assert "HEADER and TEXT only" in out.stdout
    assert "R8-A" in out.stdout


def test_info_malformed_spillover_is_reported_not_fatal():
    path = shared_path("fcs", "fcsparser", "MiltenyiBiotec", "FCS3.1", "EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs")
    out = _run("info", str(path))
    assert out.returncode == 0, out.stderr
    assert "spillover   not usable" in out.stdout and "$SPILLOVER" in out.stdout
    assert "10,000" in out.stdout
