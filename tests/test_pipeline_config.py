"""Experiment-file validation: every problem listed at once, with file and key; a real-file run with a Gating-ML parent."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_path

from evflow import ConfigError
from evflow.pipeline import load_experiment

BAD = """
[experiment]
name = "bad"
colour = "blue"

[flow]
scatter_channel = "SSC-H"
markers = { "FL9-H" = "CD63" }
flow_rate_ul_per_min = 1.0

[thresholds]
rule = "control_quantile"
control = "isotype"
quantile = 1.5

[qc]
min_dilution_r2 = 0.9

[[samples]]
name = "A"
role = "sample"
flow = "{data1}"

[[samples]]
name = "B"
role = "smaple"
flow = "missing.fcs"

[[samples]]
name = "A"
flow = "{data1}"
dilution = 0.5
"""


def _write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_experiment_lists_every_problem(tmp_path):
    data1 = shared_path("gatingml", "data1.fcs")
    p = _write(tmp_path, BAD.replace("{data1}", str(data1)))
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    msg = str(exc.value)
    lines = [line.strip() for line in msg.splitlines()[1:]]
    expected = [
        "unknown key 'experiment.colour'",
        "'samples[1].role' is 'smaple'",
        "'samples[1].flow' file 'missing.fcs' not found",
        "'samples[2].name' 'A' is used by another sample",
        "'samples[2].dilution' is 0.5",
        "'flow.markers.FL9-H' channel 'FL9-H' is not in samples[0].flow data1.fcs",
        "'thresholds.rule' control_quantile needs a flow sample with role 'isotype'",
        "'thresholds.quantile' is 1.5",
        "'qc.min_dilution_r2' needs a sample with role 'dilution'",
    ]
    for e in expected:
        assert any(e in line for line in lines), f"missing problem {e!r} in:\n{msg}"
    # every line names the experiment file
    assert all(str(p) in line for line in lines)
    assert msg.startswith(f"{len(lines)} problem(s)")
    # the channel error lists the file's real channels
    assert "FSC-H, SSC-H, FL1-H, FL2-H, FL3-H, FL2-A, FL4-H, Time" in msg


def test_cli_run_bad_experiment_exits_nonzero(tmp_path):
    p = _write(tmp_path, "[experiment]\nname = 1\n[[samples]]\nname = 'x'\nflow = 'nope.fcs'\n")
    r = subprocess.run([sys.executable, "-m", "evflow", "run", str(p), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "'experiment.name' must be a name, found 1 (int)" in r.stderr
    assert "'samples[0].flow' file 'nope.fcs' not found" in r.stderr
    assert "no [flow] section" in r.stderr
    assert not (tmp_path / "o").exists()


def test_invalid_toml_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(_write(tmp_path, "[experiment\n"))
    with pytest.raises(ConfigError, match="unknown key 'sample'"):
        load_experiment(_write(tmp_path, "sample:\n  - name: a\n", "e.yaml"))


def test_real_file_gatingml_parent_and_fixed_threshold(tmp_path):
    """data1.fcs gated by Gating-ML Rectangle1 (its compliance truth), FL2-H > 100 counted; YAML experiment."""
    from evflow import read_fcs, run

    data1 = shared_path("gatingml", "data1.fcs")
    gml = shared_path("gatingml", "gml", "gml_rect1_gate.xml")
    truth = np.loadtxt(shared_path("gatingml", "truth", "Results_Rectangle1.txt"), dtype=int).astype(bool)
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "experiment: {name: real}\n"
        "flow:\n  markers: {FL2-H: M2, FL1-H: M1}\n"
        f"  gates: {{gatingml: '{gml}', parent: Rectangle1}}\n"
        "thresholds: {rule: fixed, values: {M2: 100.0, M1: 50.0}}\n"
        f"samples:\n  - {{name: d1, flow: '{data1}', volume_ul: 2.0, dilution: 10}}\n"
    )
    ds = run(exp, output=tmp_path / "out", quiet=True)
    v = read_fcs(data1, scale=True).to_numpy()
    fl2, fl1 = v[:, 3], v[:, 2]
    code = (fl2 > 100).astype(int) | ((fl1 > 50).astype(int) << 1)  # bit 0: M2, bit 1: M1
    expected = np.bincount(code[truth], minlength=4)
    assert ds["count"].sel(sample="d1").values.tolist() == expected.tolist()
    assert int(ds["n_parent"].sel(sample="d1")) == int(truth.sum())
    assert int(ds["n_total"].sel(sample="d1")) == v.shape[0]
    conc = ds["concentration_per_ml"].sel(sample="d1").values
    np.testing.assert_allclose(conc, expected / 2e-3 * 10)
    assert list(ds["phenotype"].values) == ["M2- M1-", "M2+ M1-", "M2- M1+", "M2+ M1+"]
    assert (tmp_path / "out" / "report.html").is_file()


def test_gatingml_parent_and_channels_checked(tmp_path):
    data1 = shared_path("gatingml", "data1.fcs")
    gml = shared_path("gatingml", "gml", "gml_rect1_gate.xml")
    p = _write(tmp_path, f"""
[flow]
markers = {{ "FL2-H" = "M2" }}
gates = {{ gatingml = "{gml}", parent = "Rectangle9" }}
[thresholds]
rule = "fixed"
[[samples]]
name = "d1"
flow = "{data1}"
volume_ul = 1.0
""")
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    msg = str(exc.value)
    assert "'flow.gates.parent' 'Rectangle9' is not a gate of" in msg and "Rectangle1" in msg
    assert "'thresholds.values.M2' is missing" in msg


def test_imaging_threshold_rules_checked(tmp_path):
    import tifffile

    img = tmp_path / "f0.tif"
    tifffile.imwrite(img, np.ones((2, 32, 32), np.uint16), photometric="minisblack", metadata={"axes": "CYX"})
    base = """
[imaging]
channels = ["CD9", "CD63"]
snr = 5.0
camera_em_gain = 0.5
[imaging.thresholds]
{rule}
[[samples]]
name = "s"
images = ["f0.tif"]
"""
    p = _write(tmp_path, base.format(rule='rule = "control_quantile"\nquantile = 2.0\nvalues = { CD8 = 10.0, CD9 = "x" }'))
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    msg = str(exc.value)
    for e in ("unknown key 'imaging.snr'",
              "'imaging.camera_em_gain' is 0.5, expected a number >= 1",
              "'imaging.thresholds.rule' control_quantile needs image fields of a sample with role 'isotype'",
              "'imaging.thresholds.quantile' is 2.0",
              "'imaging.thresholds.values.CD8': 'CD8' is not one of 'imaging.channels'",
              "'imaging.thresholds.values.CD9' must be a number of photons"):
        assert e in msg, f"missing {e!r} in:\n{msg}"
    p = _write(tmp_path, base.replace("snr = 5.0\ncamera_em_gain = 0.5\n", "").format(
        rule='rule = "fixed"\nvalues = { CD9 = 300.0 }'))
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    assert "'imaging.thresholds.values.CD63' is missing" in str(exc.value)
    assert "CD9'" not in str(exc.value)
    p = _write(tmp_path, base.replace("snr = 5.0\ncamera_em_gain = 0.5\n", "").format(rule='rule = "bright"'))
    with pytest.raises(ConfigError, match="'imaging.thresholds.rule' is 'bright', expected detected, fixed or"):
        load_experiment(p)


def test_schema_table_defaults_and_types():
    from evflow.pipeline.config import default, schema_table, validate_experiment

    rows = schema_table()
    assert all(len(r) == 6 for r in rows)
    by = {(r[0], r[1]): r for r in rows}
    assert by[("thresholds", "quantile")][2:4] == ("number", 0.995)
    assert by[("imaging.thresholds", "quantile")][3] == 0.995
    assert by[("flow.calibration.size", "wavelength_nm")][2:5] == ("number", 488.0, "nm")
    assert by[("flow", "chunk_events")][2:4] == ("integer", 1 << 19)
    assert default("thresholds", "control") == "isotype" and default("samples", "role") == "sample"
    with pytest.raises(ConfigError, match="thresholds.quantil"):
        default("thresholds", "quantil")
    # every default has its key's type; the defaults of [experiment] and [imaging] validate as settings
    from evflow.pipeline.config import SCHEMA

    settings = {"samples": [{"name": "s", "images": ["f.tif"]}], "imaging": {"channels": ["CD9"]}}
    for section, key, *_ in rows:
        d = default(section, key)
        if d is not None:
            assert isinstance(d, SCHEMA[section][key].type), (section, key, d)
        if d is not None and section in ("experiment", "imaging", "imaging.thresholds"):
            node = settings
            for part in section.split("."):
                node = node.setdefault(part, {})
            node[key] = d
    exp = validate_experiment(settings, check_files=False)
    assert exp.settings["imaging"]["psf_sigma_px"] == 1.3
    bad = {"samples": [{"name": "s", "images": ["f.tif"]}], "imaging": {"channels": ["CD9"], "psf_sigma_px": "wide"}}
    with pytest.raises(ConfigError, match=r"'imaging.psf_sigma_px' must be a PSF sigma \(px\), found 'wide'"):
        validate_experiment(bad, check_files=False)


def test_imaging_detection_keys(tmp_path):
    import tifffile

    from evflow.pipeline.imaging import _detect_kwargs, _flats, _saturation_photons

    img = tmp_path / "f0.tif"
    tifffile.imwrite(img, np.ones((2, 32, 32), np.uint16), photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "flat.tif", np.ones((32, 32), np.float32))
    base = """
[imaging]
channels = ["CD9", "CD63"]
camera_offset = 100.0
camera_gain = 2.0
{keys}
[[samples]]
name = "s"
images = ["f0.tif"]
"""
    good = ('hot_pixels = "keep"\nnoise_model = "global"\nthreshold_rule = "false_positives"\n'
            'background_radius_px = 6\nsaturation_adu = 4095\nflat_field = "flat.tif"')
    exp = load_experiment(_write(tmp_path, base.format(keys=good)))
    img_s = exp.imaging
    kw = _detect_kwargs(img_s, "numpy")
    assert (kw["hot_pixels"], kw["noise"], kw["threshold_rule"], kw["background_radius_px"]) == (
        "keep", "global", "false_positives", 6)
    assert _saturation_photons(img, img_s) == pytest.approx((4095 - 100) / 2.0)
    assert _flats(img_s).shape == (32, 32)
    del img_s["saturation_adu"]
    assert _saturation_photons(img, img_s) == pytest.approx((65535 - 100) / 2.0)  # the TIFF's dtype maximum
    bad = ('hot_pixels = "drop"\nnoise_model = "map"\nthreshold_rule = "fdr"\nbackground_radius_px = "big"\n'
           'flat_field = "missing.tif"')
    with pytest.raises(ConfigError) as exc:
        load_experiment(_write(tmp_path, base.format(keys=bad)))
    msg = str(exc.value)
    for e in ("'imaging.hot_pixels' is 'drop'", "'imaging.noise_model' is 'map'", "'imaging.threshold_rule' is 'fdr'",
              "'imaging.background_radius_px' is 'big'", "'imaging.flat_field' file 'missing.tif' not found"):
        assert e in msg, f"missing {e!r} in:\n{msg}"


def test_imaging_detection_settings_per_channel(tmp_path):
    """``detection_threshold_photons`` and ``false_positives`` take a table marker -> value; each channel is
    detected with its own value (a channel not in the table keeps the automatic threshold / the default),
    exactly as detect_spots with that value; a marker not in 'imaging.channels', a value <= 0 or a boolean
    is a problem named at validation."""
    import tifffile

    from evflow.imaging.count import phenotype_field
    from evflow.imaging.detect import detect_spots
    from evflow.pipeline.imaging import _detect_kwargs
    from evflow.synth.tirf import tirf

    syn = tirf((96, 96), n_fields=1, seed=11, markers=["CD9", "CD63", "CD81"])
    ph = np.asarray(syn.images.values[0], np.float32)
    tifffile.imwrite(tmp_path / "f0.tif", np.zeros((3, 32, 32), np.uint16), photometric="minisblack",
                     metadata={"axes": "CYX"})
    base = ('[imaging]\nchannels = ["CD9", "CD63", "CD81"]\n{keys}\n[[samples]]\nname = "s"\nimages = ["f0.tif"]\n')
    keys = "detection_threshold_photons = { CD9 = 400.0, CD63 = 35.0 }\nfalse_positives = { CD81 = 2.0 }"
    img_s = load_experiment(_write(tmp_path, base.format(keys=keys))).imaging
    kw = _detect_kwargs(img_s, "numpy")
    assert kw["threshold"] == {"CD9": 400.0, "CD63": 35.0} and kw["false_positives"] == {"CD81": 2.0}
    df = phenotype_field(ph, ["CD9", "CD63", "CD81"], detect_kwargs=kw)
    det = df.attrs["detection"]
    for m, opts in (("CD9", {"threshold": 400.0}), ("CD63", {"threshold": 35.0}), ("CD81", {"false_positives": 2.0})):
        c = ["CD9", "CD63", "CD81"].index(m)
        ref = detect_spots(ph[c], psf_sigma_px=1.3, exclude_border_px=2, **opts)
        flagged = np.zeros(len(ref), bool)
        for col in ("saturated", "masked"):
            flagged |= ref[col].to_numpy(bool) if col in ref else False
        assert det[m]["threshold"] == ref.attrs["threshold"], m
        assert det[m]["n_spots"] == int((~flagged).sum()), m
    assert det["CD9"]["threshold"] == 400.0 and det["CD63"]["threshold"] == 35.0
    auto = detect_spots(ph[2], psf_sigma_px=1.3, exclude_border_px=2)  # CD81: automatic, with 2 false positives
    assert det["CD81"]["threshold"] != 400.0 and auto.attrs["threshold"] >= det["CD81"]["threshold"]
    bad = "detection_threshold_photons = { CD8 = 50.0, CD63 = -1.0 }\nfalse_positives = { CD81 = true }"
    with pytest.raises(ConfigError) as exc:
        load_experiment(_write(tmp_path, base.format(keys=bad)))
    msg = str(exc.value)
    for e in ("'imaging.detection_threshold_photons.CD8': 'CD8' is not one of 'imaging.channels'",
              "'imaging.detection_threshold_photons.CD63' is -1.0, expected a number > 0",
              "'imaging.false_positives.CD81' is True, expected a number > 0"):
        assert e in msg, f"missing {e!r} in:\n{msg}"
    with pytest.raises(ConfigError, match="'imaging.false_positives' must be expected noise detections"):
        load_experiment(_write(tmp_path, base.format(keys='false_positives = "many"')))
