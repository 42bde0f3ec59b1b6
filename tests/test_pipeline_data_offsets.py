"""``data_offsets`` in the experiment file: where a flow file's DATA lies when its HEADER and TEXT disagree.

The ambiguous file is written by evflow's own writer, then bytes are appended and the HEADER's DATA offsets
moved by whole events over them (as in test_io_fcs_offsets.py): both readings fit ``$TOT`` x event size, both
decode to finite floats and there is no time channel, so ``read_fcs`` cannot decide.  The HEADER's reading
holds the written events from event K on, then K bright events; the TEXT's, the events as written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import shared_path
from fcs_builder import header_field, shift_offsets

import evflow
from evflow import ConfigError, FCSError
from evflow.pipeline import load_experiment

CHANNELS = ["FSC-A", "SSC-A", "FL1-A"]
K = 40  # events between the two readings
THRESHOLD = 500.0
SSC_MIN = 50.0


def _events(n, seed):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.gamma(2, 300, n), rng.gamma(2, 100, n), rng.gamma(1.2, 250, n)]).astype(np.float32)


def _ambiguous(path, n=3000):
    v = _events(n, 1)
    evflow.write_fcs(path, v, CHANNELS)
    bright = np.column_stack([np.full(K, 120.0), np.full(K, 300.0), np.linspace(4000, 9000, K)]).astype("<f4")
    path.write_bytes(shift_offsets(path.read_bytes() + bright.tobytes(), "HEADER", K * 12))
    return v


def _exp(tmp_path, s1_line="", flow_line="", first="S2"):
    """S1 (the ambiguous file) and S2 (a file whose offsets agree); ``first`` is listed first."""
    d = tmp_path / "flow"
    d.mkdir(exist_ok=True)
    if not (d / "S1.fcs").exists():
        _ambiguous(d / "S1.fcs")
        evflow.write_fcs(d / "S2.fcs", _events(2000, 2), CHANNELS)
    entries = {"S1": f'[[samples]]\nname = "S1"\nflow = "flow/S1.fcs"\nvolume_ul = 1.0\n{s1_line}\n',
               "S2": '[[samples]]\nname = "S2"\nflow = "flow/S2.fcs"\nvolume_ul = 1.0\n'}
    p = tmp_path / "exp.toml"
    p.write_text(
        '[experiment]\nname = "offsets"\n'
        f'[flow]\nscatter_channel = "SSC-A"\nmarkers = {{ "FL1-A" = "CD63" }}\n{flow_line}\n'
        f'[[flow.gates.range]]\nchannel = "SSC-A"\nmin = {SSC_MIN}\n'
        f'[thresholds]\nrule = "fixed"\nvalues = {{ CD63 = {THRESHOLD} }}\n'
        + entries[first] + entries["S2" if first == "S1" else "S1"]
    )
    return p


def _direct(path, choice):
    """(n_total, n_parent, [CD63-, CD63+]) computed from ``read_fcs(path, data_offsets=choice)``."""
    v = evflow.read_fcs(path, data_offsets=choice, scale=True).to_numpy()
    inside = v[:, 1] >= SSC_MIN
    pos = v[inside, 2] > THRESHOLD
    return len(v), int(inside.sum()), [int((~pos).sum()), int(pos.sum())]


def _counts(ds, name):
    s = ds.sel(sample=name)
    return int(s["n_total"]), int(s["n_parent"]), s["count"].values.tolist()


def test_the_file_is_ambiguous_and_the_two_readings_differ(tmp_path):
    p = tmp_path / "S1.fcs"
    v = _ambiguous(p)
    with pytest.raises(FCSError, match="both readings pass.*read_fcs\\(path, data_offsets='header'\\)"):
        evflow.read_fcs(p)
    text = evflow.read_fcs(p, data_offsets="text").to_numpy()
    head = evflow.read_fcs(p, data_offsets="header").to_numpy()
    np.testing.assert_array_equal(text, v)
    np.testing.assert_array_equal(head[:-K], v[K:])
    assert (head[-K:, 2] >= 4000).all()
    assert _direct(p, "header")[2] != _direct(p, "text")[2]  # the runs below can tell them apart


def test_validate_names_the_key_and_the_sample(tmp_path):
    p = _exp(tmp_path)
    blob = (tmp_path / "flow" / "S1.fcs").read_bytes()
    hb, he = header_field(blob, "DATA begin"), header_field(blob, "DATA end")
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    (line,) = [ln for ln in str(exc.value).splitlines() if "S1" in ln]
    assert line.strip().startswith(f"{p}: 'samples[1]' (S1): S1.fcs: DATA offsets disagree")
    assert "both readings pass" in line and "read_fcs(" not in line
    assert (f"choose it for sample 'S1' in the experiment file: 'samples[1].data_offsets' = \"header\" reads bytes "
            f"{hb}-{he}, \"text\" reads bytes {hb - K * 12}-{he - K * 12}") in line
    assert str(exc.value).startswith("1 problem(s)")  # S2 is fine
    # the command line says the same and exits 1
    r = subprocess.run([sys.executable, "-m", "evflow", "validate", str(p)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "'samples[1].data_offsets' = \"header\"" in r.stderr
    # a [flow] default decides for every file; a sample's own key overrides it
    for flow_line, s1_line in (('data_offsets = "header"', ""), ('data_offsets = "text"', 'data_offsets = "header"'),
                               ("", 'data_offsets = "text"')):
        exp = load_experiment(_exp(tmp_path, s1_line, flow_line))
        want = "text" if s1_line.endswith('"text"') else "header"
        assert {s.name: s.data_offsets for s in exp.samples} == {"S1": want, "S2": flow_line[16:-1] or "auto"}


def test_bad_values_are_problems_at_validation(tmp_path):
    p = _exp(tmp_path, 'data_offsets = "HEADER"', 'data_offsets = "both"')
    text = p.read_text().replace('[[flow.gates.range]]', '[flow.calibration.size]\nfile = "flow/S2.fcs"\n'
                                 'channel = "SSC-A"\ndiameters_nm = [100, 200]\ndata_offsets = 1\n'
                                 '[[flow.gates.range]]')
    p.write_text(text)
    for check_files in (True, False):
        with pytest.raises(ConfigError) as exc:
            load_experiment(p, check_files=check_files)
        msg = str(exc.value)
        assert f"{p}: 'samples[1].data_offsets' is 'HEADER', expected one of auto, header, text" in msg
        assert f"{p}: 'flow.data_offsets' is 'both', expected one of auto, header, text" in msg
        assert f"{p}: 'flow.calibration.size.data_offsets' must be auto, header or text" in msg
        assert "found 1 (int)" in msg
        assert "cannot be read" not in msg and "DATA offsets disagree" not in msg  # not read with a bad choice


def test_a_bead_file_names_its_calibration_key(tmp_path):
    p = _exp(tmp_path, 'data_offsets = "text"')
    size = '[flow.calibration.size]\nfile = "flow/S1.fcs"\nchannel = "SSC-A"\ndiameters_nm = [100, 200]\n'
    text = p.read_text()
    p.write_text(text.replace("[[flow.gates.range]]", size + "[[flow.gates.range]]"))
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    (line,) = str(exc.value).splitlines()[1:]
    assert "'file' S1.fcs cannot be read as FCS: DATA offsets disagree" in line
    assert ("choose it for the size beads in the experiment file: 'flow.calibration.size.data_offsets' = "
            "\"header\"") in line
    # the bead table's own key, or the [flow] default, decides (the sample's key is the sample's only)
    for where in ("size", "flow"):
        body = size + 'data_offsets = "header"\n' if where == "size" else size
        t = text.replace("[[flow.gates.range]]", body + "[[flow.gates.range]]")
        p.write_text(t.replace("[flow]\n", '[flow]\ndata_offsets = "header"\n') if where == "flow" else t)
        load_experiment(p)


@pytest.mark.parametrize("choice", ["header", "text"])
def test_the_run_reads_where_the_sample_says(tmp_path, choice):
    p = _exp(tmp_path, f'data_offsets = "{choice}"', first="S1")  # S1 first: its choice sets the density axes too
    ds = evflow.run(p, output=tmp_path / "out", quiet=True)
    flow = tmp_path / "flow"
    assert _counts(ds, "S1") == _direct(flow / "S1.fcs", choice)
    assert _counts(ds, "S2") == _direct(flow / "S2.fcs", "auto")
    assert ds.attrs["flow_data_offsets"] == f"S1: {choice}"
    assert json.loads(ds.attrs["failed"]) == {}


def test_changing_the_key_recomputes_the_sample(tmp_path):
    flow = tmp_path / "flow"
    out = tmp_path / "out"
    p = _exp(tmp_path, 'data_offsets = "header"')
    first = evflow.run(p, output=out, quiet=True)
    assert json.loads(first.attrs["_timings"])["computed_items"] == 2
    again = evflow.run(p, output=out, quiet=True)
    assert json.loads(again.attrs["_timings"])["computed_items"] == 0
    assert _counts(again, "S1") == _direct(flow / "S1.fcs", "header")
    p = _exp(tmp_path, 'data_offsets = "text"')
    changed = evflow.run(p, output=out, quiet=True)
    assert json.loads(changed.attrs["_timings"])["computed_items"] == 1  # S1 only
    assert _counts(changed, "S1") == _direct(flow / "S1.fcs", "text") != _counts(first, "S1")
    assert _counts(changed, "S2") == _counts(first, "S2")
    # S2's offsets agree: "auto" keeps the fingerprint it had before data_offsets existed (no key in it)
    p = _exp(tmp_path, 'data_offsets = "text"', 'data_offsets = "auto"')
    assert json.loads(evflow.run(p, output=out, quiet=True).attrs["_timings"])["computed_items"] == 0


def test_a_control_is_read_where_it_says(tmp_path):
    """S1 as the isotype control: its thresholds are those of a clean file holding the HEADER's events."""
    rule = 'rule = "percentile 99.5 of isotype"'
    p = _exp(tmp_path, 'role = "isotype"\ndata_offsets = "header"')
    p.write_text(p.read_text().replace(f'rule = "fixed"\nvalues = {{ CD63 = {THRESHOLD} }}', rule))
    assert rule in p.read_text() and "fixed" not in p.read_text()
    ds = evflow.run(p, output=tmp_path / "out", quiet=True)
    head = evflow.read_fcs(tmp_path / "flow" / "S1.fcs", data_offsets="header")
    evflow.write_fcs(tmp_path / "flow" / "clean.fcs", head.to_numpy(), CHANNELS)
    p.write_text(p.read_text().replace('flow = "flow/S1.fcs"', 'flow = "flow/clean.fcs"')
                 .replace('data_offsets = "header"', ""))
    clean = evflow.run(p, output=tmp_path / "out_clean", quiet=True)
    thr = float(ds["threshold"].sel(sample="S2").item())
    assert thr == float(clean["threshold"].sel(sample="S2").item())
    assert thr > 4000  # the bright events the HEADER's reading ends with (1.3 % of them) ...
    text = evflow.read_fcs(tmp_path / "flow" / "S1.fcs", data_offsets="text", scale=True).to_numpy()
    assert np.quantile(text[text[:, 1] >= SSC_MIN, 2], 0.995) < 4000  # ... are not in the TEXT's


def test_an_unvalidated_run_names_the_key_in_the_failure(tmp_path):
    # files checked before the run (evflow run validates them) would stop here; unchecked, the sample fails
    # alone, and its error names the key to set
    exp = load_experiment(_exp(tmp_path), check_files=False)
    ds = evflow.run(exp, output=tmp_path / "out", quiet=True)
    failed = json.loads(ds.attrs["failed"])
    (msg,) = failed.values()
    assert "both readings pass" in msg and "read_fcs(" not in msg
    assert "choose it for sample 'S1' in the experiment file: 'samples[1].data_offsets' = \"header\"" in msg
    assert _counts(ds, "S2") == _direct(tmp_path / "flow" / "S2.fcs", "auto")
    # the first sample's file is also read for the report's axes, before any item: the run stops, naming it
    exp = load_experiment(_exp(tmp_path, first="S1"), check_files=False)
    with pytest.raises(FCSError, match="choose it for sample 'S1' in the experiment file: "
                                       "'samples\\[0\\].data_offsets' = \"header\""):
        evflow.run(exp, output=tmp_path / "out2", quiet=True)


def test_info_takes_the_choice_too(tmp_path):
    p = tmp_path / "S1.fcs"
    _ambiguous(p)
    r = subprocess.run([sys.executable, "-m", "evflow", "info", str(p)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--data-offsets header reads bytes" in r.stdout and "data_offsets=" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "evflow", "info", str(p), "--data-offsets", "text"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "events      3,000" in r.stdout and "not readable" not in r.stdout


def test_real_file_whose_header_points_into_the_text(shared_data, tmp_path):
    """FlowIO's data_start_offset_discrepancy_example.fcs: TEXT bytes 74-6080; the HEADER says DATA begins at byte
    5555 (inside the TEXT), $BEGINDATA at 6081 (right after it), both end at 6188 = 2 events of 25 x 16 + 32 bits
    ($TOT 2).  The HEADER's bytes are keyword text, so the TEXT's offsets are right: "auto" takes them (the only
    reading that fits), "text" reads the same events, and "header" is refused (a DATA segment cannot begin inside
    the TEXT: its first values would be the TEXT's SPILL digits), in read_fcs and as a per-sample problem."""
    from evflow.errors import FCSDataError

    p = shared_path("fcs", "flowio", "data_start_offset_discrepancy_example.fcs")
    blob = p.read_bytes()
    assert header_field(blob, "TEXT end") == 6080 and header_field(blob, "DATA begin") == 5555
    assert blob[5555:5561].decode("ascii") == ",0,0,0"  # what the HEADER's reading would take for events
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = evflow.read_fcs(p).to_numpy()
        text = evflow.read_fcs(p, data_offsets="text").to_numpy()
        with pytest.raises(FCSDataError, match=r"data_offsets='header'.*bytes 5555-6188\) begins inside the TEXT "
                                               r"\(TEXT is bytes 74-6080\); read with data_offsets='auto' or 'text'"):
            evflow.read_fcs(p, data_offsets="header").to_numpy()
    np.testing.assert_array_equal(text, auto)
    assert auto.shape == (2, 26)
    # in an experiment the choice is the sample's key: the run counts the events read_fcs reads with it
    exp = tmp_path / "exp.toml"
    head = '[flow]\nscatter_channel = "SSC LinH"\nmarkers = { "FSC LinH" = "M" }\n[thresholds]\nrule = "fixed"\n'
    head += 'values = { M = 5000.0 }\n'
    exp.write_text(head + "".join(f'[[samples]]\nname = "read_{c}"\nflow = "{p}"\nvolume_ul = 1.0\n'
                                  f'data_offsets = "{c}"\n' for c in ("auto", "text")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = evflow.run(exp, output=tmp_path / "out", quiet=True)
        direct = {}
        for c in ("auto", "text"):
            s = evflow.read_fcs(p, data_offsets=c, scale=True)
            pos = s.to_numpy()[:, s.channel_index("FSC LinH")] > 5000.0
            direct[c] = [int((~pos).sum()), int(pos.sum())]
    assert {c: ds["count"].sel(sample=f"read_{c}").values.tolist() for c in direct} == direct
    assert direct["auto"] == direct["text"] == [0, 2]
    assert ds.attrs["flow_data_offsets"] == "read_text: text"
    bad = tmp_path / "bad.toml"
    bad.write_text(head + f'[[samples]]\nname = "read_header"\nflow = "{p}"\nvolume_ul = 1.0\n'
                   'data_offsets = "header"\n')
    with pytest.raises(ConfigError, match=r"'samples\[0\]\.flow' .* begins inside the TEXT"):
        load_experiment(bad)


def test_real_file_whose_header_end_is_past_the_file(shared_data):
    """FlowIO's data_stop_offset_discrepancy_example.fcs: the same bytes but the HEADER's DATA end, 6944, lies past the
    end of the 6263-byte file; both begin at 6081 and $TOT x event size ends at 6188 ($ENDDATA).  The TEXT is right
    again, and here every choice reads the same two events ($TOT decides how many)."""
    p = shared_path("fcs", "flowio", "data_stop_offset_discrepancy_example.fcs")
    blob = p.read_bytes()
    assert header_field(blob, "DATA end") == 6944 > len(blob) == 6263
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reads = {c: evflow.read_fcs(p, data_offsets=c).to_numpy() for c in ("auto", "header", "text")}
    assert reads["auto"].shape == (2, 26)
    np.testing.assert_array_equal(reads["header"], reads["auto"])
    np.testing.assert_array_equal(reads["text"], reads["auto"])


def test_napari_experiment_views_read_each_file_with_its_data_offsets(tmp_path):
    """The plugin's experiment layers open a sample's flow file with the sample's data_offsets: the density of
    the ambiguous S1 holds exactly the events read_fcs reads with that choice (the two readings differ)."""
    from evflow_napari._experiment_flow import experiment_flow_layers

    counts = {}
    for choice in ("header", "text"):
        sub = tmp_path / choice
        sub.mkdir()
        p = _exp(sub, s1_line=f'data_offsets = "{choice}"')
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layers = experiment_flow_layers(p, bins=64)
        meta = {kw["metadata"]["evflow"]["sample"]: kw["metadata"]["evflow"] for _d, kw, kind in layers
                if kind == "image"}
        assert meta["S1"]["data_offsets"] == choice and "data_offsets" not in meta["S2"]
        n = int(meta["S1"]["n_total"])
        assert n == _direct(sub / "flow" / "S1.fcs", choice)[0]
        counts[choice] = int(np.asarray(meta["S1"]["density"]).sum())
    assert counts["header"] != counts["text"]
