"""The HTML report escapes every piece of user- and file-derived text: FCS keywords ($CYT, $PnS), input file
names, experiment and marker names, sample metadata and error messages; checked in the HTML and in a real
headless browser (no script runs)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import evflow
from evflow.pipeline.report import Html, _table, esc

#: each payload, if it ran, would set an attribute whose value only a running script can assemble
IMG = "<span><img src=x onerror=\"document.body.setAttribute('data-a','ran'+'img')\">"
SCRIPT = "<span><script>document.body.setAttribute('data-b','ran'+'script')</script>"
SVG = "<span><svg onload=\"document.body.setAttribute('data-c','ran'+'svg')\">"


def test_esc_and_table_escape_everything_but_built_fragments():
    assert esc("<span onclick='x'>&") == "&lt;span onclick=&#x27;x&#x27;&gt;&amp;"
    assert esc(Html("<b>ok</b>")) == "<b>ok</b>"
    t = _table([(IMG, SCRIPT, Html("<span class='pass'>pass</span>"))], [SVG, "b", "c"])
    assert "<img" not in t and "<script" not in t and "<svg" not in t
    assert "<span class='pass'>pass</span>" in t
    assert t.count("<span") == 1


def _experiment(tmp_path):
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.lognormal(5, 1, 3000), rng.lognormal(5, 1, 3000), rng.lognormal(4, 1, 3000)])
    fname = f"{IMG}.fcs"  # a file name is a carrier too
    evflow.write_fcs(tmp_path / fname, data.astype(np.float32), ["FSC-H", "SSC-H", "FL1-H"],
                     markers=[None, f"{SVG}pns", f"{SCRIPT}pns"], meta={"$CYT": SCRIPT, "$SMNO": IMG})
    # a second file that fails when counted: its error message reaches the report's failure table
    evflow.write_fcs(tmp_path / "empty.fcs", np.zeros((0, 3), np.float32), ["FSC-H", "SSC-H", "FL1-H"],
                     meta={"$CYT": SVG})
    exp = tmp_path / "exp.yaml"
    q = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731  (YAML single-quoted scalar)
    exp.write_text(
        f"experiment: {{name: {q(SCRIPT + ' & ' + IMG)}}}\n"
        f"flow:\n  markers: {{FL1-H: {q(IMG)}, SSC-H: {q(SCRIPT)}}}\n"
        f"thresholds: {{rule: fixed, values: {{{q(IMG)}: 100.0, {q(SCRIPT)}: 50.0}}}}\n"
        "samples:\n"
        f"  - {{name: 'a&amp;b onerror=x', flow: {q(fname)}, volume_ul: 2.0, series: {q(SVG)}}}\n"
        f"  - {{name: 'empty', flow: 'empty.fcs', volume_ul: 2.0, series: {q(IMG)}}}\n"
    )
    return exp


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xss")
    exp = _experiment(tmp)
    ds = evflow.run(exp, output=tmp / "out", quiet=True)
    assert "a&amp;b onerror=x" in ds["sample"].values  # the run itself worked
    return tmp / "out" / "report.html"


def test_report_html_has_no_raw_payload(hostile_report):
    text = hostile_report.read_text()
    low = text.lower()
    assert "<script" not in low and "<img src=x" not in low and "<svg" not in low and "onerror=\"" not in low
    # the payloads are there, as text
    assert esc(SCRIPT) in text and esc(IMG) in text  # experiment name, markers, $CYT, file name
    assert "a&amp;amp;b onerror=x" in text  # an ampersand in a sample name is escaped, not decoded
    # every <span> in the report is one the report built (pass/fail marks)
    assert low.count("<span") == low.count("<span class='pass'>") + low.count("<span class='fail'>")


def test_no_script_runs_in_headless_browser(hostile_report, headless_chromium):
    base = [*headless_chromium, "--virtual-time-budget=3000"]
    dom = subprocess.run(base + ["--dump-dom", hostile_report.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "evflow report" in dom and "Provenance" in dom, dom[:2000]
    for marker in ("ranimg", "ranscript", "ransvg"):
        assert marker not in dom, marker
    assert "data-a=" not in dom and "data-b=" not in dom and "data-c=" not in dom
