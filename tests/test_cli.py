"""The evflow command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_path

import evflow


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


# ---------------------------------------------------------------- --version, info on images, validate


def test_version_flag(capsys):
    import evflow
    from evflow.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"evflow {evflow.__version__}"


def test_info_on_multiposition_ome_tiff(tmp_path, capsys):
    import tifffile

    from evflow.cli import main

    path = tmp_path / "chip.ome.tif"
    data = np.zeros((2, 16, 20), np.uint16)
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k, (x, y) in enumerate([(100.0, 200.0), (350.5, 200.0)]):
            tw.write(data, photometric="minisblack", metadata={
                "axes": "CYX", "Name": f"pos{k}", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108,
                "Channel": {"Name": ["CD9", "CD63"]},
                "Plane": {"PositionX": [x, x], "PositionY": [y, y]},
            })
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 series (positions)" in out
    assert out.count("C=2 x Y=16 x X=20  (uint16)") == 2
    assert "channels  2: CD9, CD63" in out
    assert "pixel     108 nm" in out
    assert "position  x 350.5 um, y 200 um" in out
    assert "'pos1'" in out


def test_info_on_imagej_time_lapse_and_plain_tiff(tmp_path, capsys):
    import tifffile

    from evflow.cli import main

    movie = tmp_path / "bleach.tif"
    tifffile.imwrite(movie, np.zeros((7, 8, 9), np.uint16), imagej=True, metadata={"axes": "TYX"})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((5, 6), np.float32))
    assert main(["info", str(movie), str(plain)]) == 0
    out = capsys.readouterr().out
    assert "T=7 x Y=8 x X=9  (uint16)" in out and "7 time points" in out
    assert "Y=5 x X=6  (float32)" in out
    assert "size not stored" in out


def test_info_on_real_tiffs_and_a_non_tiff(capsys, tmp_path):
    from evflow.cli import main

    assert main(["info", str(shared_path("images", "spotmax", "single_image.tiff"))]) == 0
    assert "Y=700 x X=700  (uint16)" in capsys.readouterr().out
    bad = tmp_path / "fake.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "fake.tif" in err and ("not a readable TIFF" in err or "no image series" in err)


def test_validate_good_and_bad_experiment(tmp_path, capsys):
    from evflow.cli import main
    from evflow.pipeline.demo import build_demo

    exp = build_demo(tmp_path / "demo", n_events=2000, n_fields=1, field_shape=(160, 160))
    assert main(["validate", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "10 flow file(s)" in out
    assert not (tmp_path / "demo" / "results").exists()  # nothing computed, nothing written
    text = exp.read_text()
    bad = exp.with_name("bad.toml")
    bad.write_text(text.replace('name = "evflow demo"', 'name = "evflow demo"\nnot_a_key = 1', 1)
                   .replace("flow/S1.fcs", "flow/S1-missing.fcs"))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not_a_key" in err and "S1-missing.fcs" in err  # every problem at once


def test_redirected_log_has_one_line_per_stage(tmp_path):
    """A batch job's log (stderr not a terminal): stage lines with counts and times, no progress-bar redraws."""
    out = _run("demo", "--out", str(tmp_path / "d"), "--events", "5000", "--fields", "1", "--field-px", "160", "-v")
    assert out.returncode == 0, out.stderr
    log = out.stderr
    assert "Completed" not in log and "\r" not in log
    assert "[calibration] 3 item(s): 3 computed, 0 reused, 0 failed in" in log
    assert "[samples] 14 item(s): 14 computed, 0 reused, 0 failed in" in log
    assert "  flow S1: " in log and "  image S1 fov 0: " in log  # --verbose: one line per item
    again = _run("run", str(tmp_path / "d" / "data" / "experiment.toml"), "--out", str(tmp_path / "d"))
    assert again.returncode == 0, again.stderr
    assert "[samples] 14 item(s): 0 computed, 14 reused, 0 failed in" in again.stderr
    assert "  flow S1: " not in again.stderr


def test_info_on_every_shared_tiff(capsys):
    """Every TIFF in ../shared/data/images is described without reading pixels; doubtful metadata is flagged."""
    from evflow.cli import main

    root = shared_path("images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    assert len(paths) >= 10
    assert main(["info", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert out.count("  series 0") == len(paths)
    # ImageJ XResolution of 2147483646/5000 px per um (0.0023 nm): refused with a warning, not reported
    assert "0.00233 nm, outside 1 nm - 100 um: taken as not stored" in out
    assert "pixel     0.00" not in out
    assert "Z=20 x Y=64 x X=64  (uint16)" in out and "pixel     100 nm" in out  # deepstorm: 100 nm pixels
    # a plain 100-page TIFF that tifffile takes as 100 channels is flagged as doubtful
    assert "channels  100: (no names stored)  [doubtful: more than 32 channels" in out


def test_validate_experiment_on_real_files(tmp_path, capsys):
    """`evflow validate` on FlowCal's real bead and cell files: valid as written, a channel typo caught up front."""
    from evflow.cli import main

    beads = shared_path("beads", "flowcal", "sample001.fcs")
    cells = shared_path("beads", "flowcal", "sample006.fcs")
    toml = f"""
[experiment]
name = "real files"
[flow]
scatter_channel = "SSC"
markers = {{ "FL1" = "CD63" }}
flow_rate_ul_per_min = 3.0
time_channel = "TIME"
[flow.calibration.fluorescence]
file = "{beads}"
channel = "FL1"
values = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
[thresholds]
rule = "fixed"
values = {{ CD63 = 200.0 }}
[[samples]]
name = "cells"
flow = "{cells}"
"""
    good = tmp_path / "real.toml"
    good.write_text(toml)
    assert main(["validate", str(good)]) == 0
    assert "1 flow file(s)" in capsys.readouterr().out
    bad = tmp_path / "typo.toml"
    bad.write_text(toml.replace('"FL1" = "CD63"', '"FL1-H" = "CD63"'))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "FL1-H" in err and "sample006.fcs" in err


def test_demo_backend_cupy_without_gpu_is_a_clear_error(tmp_path):
    from evflow.backend import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU: evflow demo --backend cupy runs there (ci/gpu-check)")
    out = tmp_path / "demo"
    r = _run("demo", "--backend", "cupy", "--out", str(out), "--events", "2000", "--fields", "1")
    assert r.returncode == 1, r.stderr
    assert "backend 'cupy' was requested" in r.stderr and "backend='numpy'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()  # stopped before anything was written


def test_local_cuda_scheduler_names_the_missing_extra():
    import importlib.util

    from evflow.errors import ConfigError
    from evflow.pipeline.scheduler import scheduler_context

    if importlib.util.find_spec("dask_cuda") is not None:
        from evflow.backend import gpu_available

        if gpu_available():
            pytest.skip("dask-cuda and a GPU are here: the local-cuda cluster starts (tests marked gpu)")
        match = "needs a CUDA GPU with CuPy"
    else:
        match = r"needs dask-cuda.*evflow\[dask-cuda\]"
    with pytest.raises(ConfigError, match=match):
        with scheduler_context("local-cuda"):
            pass
