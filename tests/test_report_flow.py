"""The flow report: the run's gates drawn in the plotted coordinates (a drawn gate holds the run's count), tables
that carry the dataset's numbers (thresholds, concentrations with intervals), calibration diagnostics and the
MIFlowCyt-EV checklist with its completeness line; on the synthetic demo and on a real instrument's files."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import shared_path

import evflow
from evflow.flow.gates import Dimension, EllipsoidGate, GatingStrategy, PolygonGate, RectangleGate
from evflow.flow.transforms import LogTransform
from evflow.pipeline.report_flow import axis_limits, gate_shapes, inside_shapes, miflowcyt_items


class _Tables(HTMLParser):
    """Tables of an HTML page by id (rows of cell texts), the text of elements by id, and the img alts."""

    def __init__(self):
        super().__init__()
        self.tables, self.ids, self.alts = {}, {}, []
        self._table, self._row, self._cell, self._id = None, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"_{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.alts.append(a.get("alt", ""))
        if "id" in a and tag != "table":
            self._id = a["id"]
            self.ids[self._id] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "p":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._id is not None:
            self.ids[self._id] += data


def _parse(path) -> _Tables:
    p = _Tables()
    p.feed(Path(path).read_text())
    return p


def _by_header(table) -> list[dict]:
    head = table[0]
    return [dict(zip(head, r)) for r in table[1:]]


# =========================================================================== gates as drawn (synthetic truth)


def test_drawn_gates_hold_the_strategy_counts():
    """Each kind of gate the run can use (rectangle/range on a plotted channel, a Gating-ML polygon on flog
    scales, an ellipse with its dimensions in the other order), drawn as a polygon in channel values and applied
    to the events, holds the events the gating strategy counts (within 2 of 40,000)."""
    rng = np.random.default_rng(3)
    ev = np.exp(rng.normal([4.0, 2.5, 3.0], [1.2, 1.0, 0.8], size=(40_000, 3)))
    chans = ["SSC-H", "FL1-H", "FSC-H"]
    extent = (-1e7, 1e7, -1e7, 1e7)
    lt = LogTransform(1e4, 5.0)
    poly = PolygonGate("gml_poly", [Dimension("SSC-H", lt), Dimension("FL1-H", lt)],
                       [[0.35, 0.3], [0.95, 0.35], [0.8, 0.9], [0.4, 0.75]])
    ell = EllipsoidGate("gml_ell", ["FL1-H", "SSC-H"], [20.0, 60.0], [[300.0, 80.0], [80.0, 2000.0]], 4.0)
    cases = [
        [RectangleGate("evflow_size", ["SSC-H"], [20.0], [900.0])],
        [RectangleGate("evflow_size", ["SSC-H"], [20.0], [900.0]),
         RectangleGate("evflow_range_0", ["FL1-H"], [5.0], [None], parent="evflow_size")],
        [poly],
        [ell],
        [RectangleGate("box", ["FL1-H", "SSC-H"], [3.0, 30.0], [200.0, 3000.0]), ]
    ]
    for gates in cases:
        st = GatingStrategy()
        for g in gates:
            st.add_gate(g)
        parent = gates[-1].id
        shapes = gate_shapes(st, parent, "SSC-H", "FL1-H", extent)
        assert [s["id"] for s in shapes] == [g.id for g in gates]
        assert all(s["xy"] is not None for s in shapes), shapes
        want = int(np.asarray(st.mask(ev, chans, parent)).sum())
        got = int(inside_shapes(shapes, ev[:, :2]).sum())
        assert 1000 < want < 39_000, (parent, want)
        assert abs(got - want) <= 2, (parent, got, want)
    # the colour follows the gate's origin; a gate on a channel not plotted is listed, not drawn
    st = GatingStrategy()
    st.add_gate(RectangleGate("evflow_range_0", ["FSC-H"], [10.0], [None]))
    (s,) = gate_shapes(st, "evflow_range_0", "SSC-H", "FL1-H", extent)
    assert s["xy"] is None and "FSC-H" in s["reason"] and s["origin"] == "range"


def test_axis_limits_from_the_data():
    rng = np.random.default_rng(0)
    v = np.concatenate([np.exp(rng.normal(3.0, 1.0, 10_000)), -np.ones(500)])
    lo, hi = axis_limits(v)
    p = np.percentile(v[v > 0], [0.5, 99.9])
    assert lo == pytest.approx(p[0] / 1.5) and hi == pytest.approx(p[1] * 1.5)
    lo2, hi2 = axis_limits(v, extra=[hi * 3, 1e9])  # a gate edge within a decade is taken in, a far one is not
    assert hi2 == pytest.approx(hi * 3 * 1.3) and lo2 == lo
    assert axis_limits([-1.0, 0.0]) is None


# =========================================================================== the demo (flow only, every event plotted)


@pytest.fixture(scope="module")
def flow_demo(tmp_path_factory):
    from evflow.pipeline.demo import build_demo

    out = tmp_path_factory.mktemp("flowreport")
    p = build_demo(out, n_events=3000, n_fields=1, field_shape=(160, 160))
    text = re.sub(r"\n\[imaging\][\s\S]*?(?=\n\[\[samples\]\])", "\n", p.read_text())
    text = re.sub(r"\nimages = \[.*\]", "", text)
    exp = out / "flow_only.toml"
    exp.write_text(text)
    ds = evflow.run(exp, output=out / "res", quiet=True)
    return exp, out / "res", ds


def test_demo_drawn_size_gate_holds_the_run_count(flow_demo):
    """The red size gate as the report draws it (gate_shapes of the run's strategy, rebuilt from the stored size
    calibration), applied to each sample's events, gives the run's parent-gate count; the report's gate-check
    table says the same."""
    from evflow.flow.calibration import ScatterCalibration
    from evflow.pipeline import load_experiment
    from evflow.pipeline.flow import gating, scatter_calibration
    from evflow.pipeline.store import ResultStore

    exp_path, res, ds = flow_demo
    exp = load_experiment(exp_path)
    size = ResultStore(res).load("calibration", "size")
    sc = scatter_calibration({"size": size}, {})
    assert isinstance(sc, ScatterCalibration)
    strategy, parent, _desc, _lim = gating(exp, sc)
    shapes = gate_shapes(strategy, parent, "SSC-H", "FL1-H", (-1e9, 1e9, -1e9, 1e9))
    assert [s["origin"] for s in shapes] == ["size"] and shapes[0]["xy"] is not None
    for i, s in enumerate(ds["sample"].values):
        f = evflow.read_fcs(exp.resolve(f"flow/{s}.fcs"), scale=exp.flow.get("scale", "auto"))
        xy = np.asarray(f.events[:, [f.channel_index("SSC-H"), f.channel_index("FL1-H")]].compute(), float)
        assert abs(int(inside_shapes(shapes, xy).sum()) - int(ds["n_parent"].values[i])) <= 2, s
    rows = _by_header(_parse(res / "report.html").tables["gate-check"])
    assert [r["sample"] for r in rows] == [str(s) for s in ds["sample"].values]
    for i, r in enumerate(rows):
        n = int(ds["n_parent"].values[i])
        assert int(r["in the run's gate (all events)"]) == n
        assert abs(int(r["in the drawn gates"]) - n) <= 2 and r["all events plotted"] == "yes"
        assert r["gates drawn"] == "1 of 1" and int(r["plotted events"]) == int(ds["n_total"].values[i])


def _num(text):
    return float(text.replace(",", ""))


def test_demo_report_tables_carry_the_dataset(flow_demo):
    _exp, res, ds = flow_demo
    page = _parse(res / "report.html")
    markers = [str(m) for m in ds["marker"].values]
    # thresholds in the main samples table and in the thresholds table, as the dataset holds them
    samples = _by_header(page.tables["flow-samples"])
    for i, r in enumerate(samples):
        for k, m in enumerate(markers):
            assert _num(r[f"threshold {m}"]) == pytest.approx(float(ds["threshold"].values[i, k]), rel=1e-3)
    thr = {r["marker"]: r for r in _by_header(page.tables["thresholds"])}
    assert set(thr) == set(markers)
    j = markers.index("CD63")
    t = float(ds["threshold"].values[0, j])
    assert _num(thr["CD63"]["threshold (channel units)"]) == pytest.approx(t, rel=1e-3)
    assert _num(thr["CD63"]["detection limit (channel units)"]) == pytest.approx(
        float(ds["detection_limit"].values[j]), rel=1e-3)
    cal = json.loads(ds.attrs["calibration"])["fluorescence"]["params"]
    assert _num(thr["CD63"]["threshold (MESF)"]) == pytest.approx(np.exp(cal["b"]) * t ** cal["m"], rel=1e-3)
    assert thr["EpCAM"]["threshold (MESF)"] == ""  # the uncalibrated channel has none
    # concentrations per phenotype with their 95% intervals
    conc = _by_header(page.tables["concentrations"])
    phen = [str(p) for p in ds["phenotype"].values]
    for i, r in enumerate(conc):
        for j, p in enumerate(phen):
            m = re.fullmatch(r"(\S+) \((\S+) to (\S+)\)", r[p])
            assert m, r[p]
            for v, var in zip(m.groups(), ("concentration_per_ml", "concentration_per_ml_lo", "concentration_per_ml_hi")):
                assert _num(v) == pytest.approx(float(ds[var].values[i, j]), rel=1e-3, abs=1e-9), (r["sample"], p, var)
    lo, mid, hi = (float(ds[v].values[0, 1]) for v in ("concentration_per_ml_lo", "concentration_per_ml",
                                                       "concentration_per_ml_hi"))
    assert lo < mid < hi
    # buffer-subtracted concentrations (the demo has a buffer-only control), as the dataset holds them
    sub = _by_header(page.tables["buffer-subtracted"])
    roles = [str(r) for r in ds["role"].values]
    for i, r in enumerate(sub):
        for j, p in enumerate(phen):
            v = float(ds["buffer_subtracted_concentration_per_ml"].values[i, j])
            if roles[i] == "buffer":
                assert r[p] == "" and np.isnan(v)
                continue
            m = re.fullmatch(r"(\S+) \((\S+) to (\S+)\)( doubtful)?", r[p])
            assert m, r[p]
            assert _num(m.group(1)) == pytest.approx(v, rel=1e-3, abs=1e-9)
            assert bool(m.group(4)) == bool(ds["buffer_subtracted_doubtful"].values[i, j])
    b = roles.index("buffer")
    rate_b = ds["count"].values[b] / float(ds["volume_ul"].values[b])  # events per uL of buffer
    for i in (k for k, r in enumerate(roles) if r != "buffer"):
        want = ds["concentration_per_ml"].values[i] - 1e3 * float(ds["dilution"].values[i]) * rate_b
        np.testing.assert_allclose(ds["buffer_subtracted_concentration_per_ml"].values[i], want, rtol=1e-9)
    # the figures: gates on density plots, marker histograms, calibration diagnostics, time QC
    for alt in ("density plots with gates", "marker histograms", "fluorescence calibration diagnostics",
                "event rate over time"):
        assert alt in page.alts, page.alts
    text = (res / "report.html").read_text()
    assert "<details>" not in text  # nothing of the flow result hidden in a collapsed section
    assert "Smallest resolved diameter" in text and "Detection limits" in text


def test_demo_miflowcyt_completeness(flow_demo):
    from evflow.pipeline import load_experiment
    from evflow.pipeline.stage import RunContext

    exp_path, res, ds = flow_demo
    page = _parse(res / "report.html")
    rows = [r for r in page.tables.values() if r and r[0] == ["section", "item", "status", "value"]][0][1:]
    present = [r[1] for r in rows if r[2] == "present"]
    missing = [r[1] for r in rows if r[2] == "MISSING"]
    assert len(rows) >= 20 and len(present) + len(missing) == len(rows)
    line = page.ids["miflowcyt-completeness"]
    assert line.startswith(f"{len(present)} of {len(rows)} items present; missing: ")
    assert line.split("missing: ", 1)[1] == (", ".join(missing) or "none")
    sections = {r[0] for r in rows}
    assert {"Preanalytical variables", "Experimental design", "Assay controls", "Instrument calibration",
            "EV gating and thresholds", "EV characterisation"} <= sections
    status = {r[1]: r[2] for r in rows}
    for item in ("Buffer-only control", "Unstained control", "Isotype control", "Detergent lysis control",
                 "Serial dilution", "Fluorescence calibration (MESF/ERF beads, reference values, fit)",
                 "Scatter calibration to diameter (bead and EV refractive indices, Mie)"):
        assert status[item] == "present", item
    value = {r[1]: r[3] for r in rows}
    assert status["Sample description (source, collection, isolation, storage)"] == "present"
    assert value["Sample description (source, collection, isolation, storage)"].startswith("Synthetic EVs")
    assert value["Trigger channel and threshold (FCS keywords)"] == "SSC-H 1"  # the files' THRESHOLD keyword
    assert value["Sample treatments"].startswith("detergent lysis")
    # without the buffer sample, the calibrations and the files' items, those items are missing
    exp = load_experiment(exp_path)
    keep = ds["role"].values != "buffer"
    small = ds.isel(sample=np.flatnonzero(keep))
    ctx = RunContext(experiment=exp, backend="numpy", markers=exp.markers)
    got = {it: ok for _s, it, ok, _v in miflowcyt_items(small, ctx)}
    assert not got["Buffer-only control"] and got["Isotype control"]
    assert not got["Fluorescence calibration (MESF/ERF beads, reference values, fit)"]
    assert not got["Scatter calibration to diameter (bead and EV refractive indices, Mie)"]
    assert not got["Instrument ($CYT)"]


# =========================================================================== a real instrument's files


def test_real_cytek_files_report(tmp_path):
    """FlowCal's Cytek xP3 files through the pipeline: range gates on the plotted scatter and fluorescence
    channels drawn, each holding the run's count."""
    s6, s15 = shared_path("beads", "flowcal", "sample006.fcs"), shared_path("beads", "flowcal", "sample015.fcs")
    text = f"""
[experiment]
name = "cytek real files"
[flow]
scatter_channel = "SSC"
markers = {{ "FL1" = "GFP" }}
flow_rate_ul_per_min = 1.0
[[flow.gates.range]]
channel = "SSC"
min = 20.0
max = 800.0
[[flow.gates.range]]
channel = "FL1"
min = 1.0
[thresholds]
rule = "fixed"
values = {{ GFP = 50.0 }}
[[samples]]
name = "s006"
flow = "{s6}"
[[samples]]
name = "s015"
flow = "{s15}"
"""
    p = tmp_path / "exp.toml"
    p.write_text(text)
    ds = evflow.run(p, output=tmp_path / "out", quiet=True, force=True)
    html = tmp_path / "out" / "report.html"
    page = _parse(html)
    rows = _by_header(page.tables["gate-check"])
    assert len(rows) == 2
    for i, r in enumerate(rows):
        n = int(ds["n_parent"].values[i])
        assert 0 < n < int(ds["n_total"].values[i])
        assert r["gates drawn"] == "2 of 2" and abs(int(r["in the drawn gates"]) - n) <= 2
    # independent count on the file's values (the experiment's scale policy)
    f = evflow.read_fcs(s6, scale="auto")
    v = np.asarray(f.events[:, [f.channel_index("SSC"), f.channel_index("FL1")]].compute(), float)
    assert int(((v[:, 0] >= 20) & (v[:, 0] < 800) & (v[:, 1] >= 1)).sum()) == int(ds["n_parent"].values[0])
    thr = _by_header(page.tables["thresholds"])
    assert _num(thr[0]["threshold (channel units)"]) == 50.0
    assert "Instrument ($CYT)" in html.read_text() and "Cytek" in html.read_text()
    assert "density plots with gates" in page.alts and "marker histograms" in page.alts
    with xr.open_zarr(tmp_path / "out" / "results.zarr") as z:
        assert int(z["n_parent"].values[1]) == int(ds["n_parent"].values[1])
