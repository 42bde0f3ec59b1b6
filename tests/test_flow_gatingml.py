"""Gating-ML 2.0: the compliance suite (event for event), round trips and bad documents."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest
from conftest import SHARED_DATA, shared_path

import evflow
from evflow import GatingError
from evflow.flow.compensation import Compensation
from evflow.flow.gates import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    GatingStrategy,
    PolygonGate,
    QuadrantGate,
    RatioDimension,
    RectangleGate,
)
from evflow.flow.gatingml import parse_gatingml, to_gatingml_string
from evflow.flow.transforms import AsinhTransform, HyperlogTransform, LogicleTransform

GML_DIR = SHARED_DATA / "gatingml" / "gml"
GML_FILES = sorted(p.name for p in GML_DIR.glob("*.xml")) if GML_DIR.is_dir() else ["(no data)"]
# truth files named differently from the gate id
TRUTH_NAME = {"ParRectangle1": "ParQuadRect"}


@pytest.fixture(scope="module")
def data1():
    return evflow.read_fcs(shared_path("gatingml", "data1.fcs"), chunk_events=2500)


@pytest.fixture(scope="module")
def data1_scaled():
    return evflow.read_fcs(shared_path("gatingml", "data1.fcs"), scale=True).to_numpy()


def _truth(gid):
    p = SHARED_DATA / "gatingml" / "truth" / f"Results_{TRUTH_NAME.get(gid, gid)}.txt"
    if not p.exists():
        return None
    return np.loadtxt(p, dtype=np.int8).astype(bool)


def test_compliance_set_is_complete():
    shared_path("gatingml", "gml")
    assert len(GML_FILES) == 47


@pytest.mark.parametrize("name", GML_FILES)
def test_compliance(name, data1, data1_scaled):
    strategy = evflow.read_gatingml(shared_path("gatingml", "gml", name))
    res = strategy.apply(data1, backend="numpy")
    checked = 0
    for gid in strategy.gate_ids:
        truth = _truth(gid)
        if truth is None:
            continue
        got = np.asarray(res.membership(gid))
        assert got.dtype == bool and got.shape == (13367,)
        mismatch = np.flatnonzero(got != truth)
        assert mismatch.size == 0, f"{name}: gate {gid}: {mismatch.size} events differ, first {mismatch[:5]}"
        assert res.stats.loc[gid, "count"] == truth.sum()
        checked += 1
    if name == "gml_ellipse2_gate.xml":  # no truth file: check against the ellipse formula directly
        x = data1_scaled[:, :2] - 40.0
        inv = np.linalg.inv([[1134.5, -234.5], [-234.5, 1134.5]])
        want = np.einsum("ij,jk,ik->i", x, inv, x) <= 1
        np.testing.assert_array_equal(np.asarray(res.membership("myEllipse2")), want)
        assert 0 < want.sum() < len(want)
        checked += 1
    assert checked >= 1


def test_all_gates_every_chunking(data1_scaled):
    strategy = evflow.read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    ch = evflow.read_fcs(shared_path("gatingml", "data1.fcs")).channels
    ref = None
    for chunk in (1000, 4567, 13367):
        res = strategy.apply((da.from_array(data1_scaled, chunks=(chunk, -1)), ch), backend="numpy")
        m = np.asarray(res.masks)
        if ref is None:
            ref = m
            for j, gid in enumerate(strategy.gate_ids):
                np.testing.assert_array_equal(m[:, j], _truth(gid), err_msg=gid)
        np.testing.assert_array_equal(m, ref)


def test_stats_table_of_compliance_strategy(data1):
    strategy = evflow.read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    st = strategy.apply(data1, backend="numpy").stats
    assert set(st.columns) >= {"count", "percent_parent", "percent_total", "parent"}
    assert st.loc["ParAnd2", "parent"] == "Polygon1"
    assert st.loc["ParAnd2", "count"] == 12
    assert st.loc["ParAnd2", "percent_parent"] == pytest.approx(100 * 12 / 1582)
    assert st.loc["Range1", "percent_total"] == pytest.approx(100 * 440 / 13367)
    quads = ["FL2P-FL4P", "FL2N-FL4P", "FL2N-FL4N", "FL2P-FL4N"]
    assert st.loc[quads, "percent_parent"].sum() == pytest.approx(100.0)


def test_read_structure_of_compliance_file():
    s = evflow.read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    assert isinstance(s, GatingStrategy)
    assert s.transforms["Logicle_10000_1_4_0.5"] == LogicleTransform(10000, 1, 4, 0.5)
    assert s.transforms["AsinH_10000_4_1"] == AsinhTransform(10000, 4, 1)
    comp = s.compensations["MySpill"]
    assert comp.fluorochromes == ["FITC", "PE", "PerCP"] and comp.channels_in == ["FL1-H", "FL2-H", "FL3-H"]
    assert comp.matrix[1, 0] == 0.11
    g = s.gates["ScalePar1"]
    assert g.parent == "ScaleRect1" and g.dims[0].compensation_id == "MySpill"
    assert g.dims[0].transform == HyperlogTransform(10000, 1, 4.5, 0)
    r = s.gates["RatRange1a"].dims[0]
    assert isinstance(r, RatioDimension) and r.channels == ("FL2-H", "FL2-A") and r.transform.id == "MyRatLog"
    q = s.gates["FSCD-FL1P"]
    assert q.intervals == [(28.0654, 70.02725), None, (6.43567, None)]
    assert s.gates["And3"].refs == [("Range1", False), ("Ellipse1", True), ("Polygon1", False)]


def test_round_trip_compliance_strategy(tmp_path, data1):
    s = evflow.read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    out = tmp_path / "all.xml"
    evflow.write_gatingml(s, out)
    s2 = evflow.read_gatingml(out)
    assert s2.gate_ids == s.gate_ids
    assert s2.transforms == s.transforms
    assert set(s2.compensations) == {"MySpill"} and s2.compensations["MySpill"] == s.compensations["MySpill"]
    for gid in s.gate_ids:
        a, b = s.gates[gid], s2.gates[gid]
        assert type(a) is type(b) and a.parent == b.parent and a.dims == b.dims, gid
    m1 = np.asarray(s.apply(data1, backend="numpy").masks)
    m2 = np.asarray(s2.apply(data1, backend="numpy").masks)
    np.testing.assert_array_equal(m1, m2)
    # strategies travel to dask workers: pickling keeps every gate and the graph name is deterministic
    import pickle

    s3 = pickle.loads(pickle.dumps(s))
    assert s3.apply(data1, backend="numpy").counts() == s.apply(data1, backend="numpy").counts()
    assert s.apply(data1, backend="numpy").masks.name == s.apply(data1, backend="numpy").masks.name


def test_round_trip_python_built_strategy(tmp_path):
    rng = np.random.default_rng(0)
    ev = np.c_[rng.uniform(0, 100, 4000), rng.uniform(0, 100, 4000), rng.lognormal(4, 2, 4000)]
    ch = ["x", "y", "z"]
    comp = Compensation([[1, 0.1], [0.05, 1]], ["x", "y"], id="m1", fluorochromes=["fx", "fy"])
    s = GatingStrategy()
    s.add_gate(PolygonGate("p", [Dimension("fx", compensation=comp), "y"], [[0, 0], [90, 10], [50, 95], [40, 20]]))
    s.add_gate(RectangleGate("r", [Dimension("z", LogicleTransform(1e5, 0.5, 4.5, 0))], [0.3], [0.8], parent="p"))
    s.add_gate(EllipsoidGate("e", ["x", "y", "z"], [50, 50, 100], np.diag([400.0, 900, 1e4]), 2.0))
    s.add_gate(QuadrantGate("q", ["x", "y"], [[30.0, 60.0], [50.0]], {"a": [0, 0], "b": [45, None]}, parent="e"))
    s.add_gate(BooleanGate("bo", "and", ["r", ("b", True)]))
    s.add_gate(RectangleGate("rat", [RatioDimension("rt", ["x", "y"], 2.0, 1.0, -1.0)], [None], [1.5]))
    text = to_gatingml_string(s)
    assert "gating:Gating-ML" in text and 'transforms:id="m1"' in text
    s2 = parse_gatingml(text)
    assert s2.gate_ids == s.gate_ids
    np.testing.assert_array_equal(s2.masks(ev, ch), s.masks(ev, ch))
    assert s2.masks(ev, ch).sum(axis=0).min() > 0


# --------------------------------------------------------------------------- bad documents

_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
    'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations" '
    'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">\n'
)
_TAIL = "</gating:Gating-ML>\n"


def _rect(gid, ch="FSC-H", lo="1", extra="", tref=None, comp="uncompensated"):
    t = f' gating:transformation-ref="{tref}"' if tref else ""
    return (
        f'<gating:RectangleGate gating:id="{gid}"{extra}>\n'
        f'<gating:dimension gating:compensation-ref="{comp}" gating:min="{lo}"{t}>\n'
        f'<data-type:fcs-dimension data-type:name="{ch}"/>\n'
        "</gating:dimension>\n</gating:RectangleGate>\n"
    )


@pytest.mark.parametrize(
    "body,words",
    [
        (_rect("A") + "<gating:RectangleGate gating:id='B'>", ["line", "not well-formed"]),
        (_rect("A") + '<gating:FancyGate gating:id="F"/>', ["gating:FancyGate", "line 8"]),
        (_rect("A", tref="nope"), ["'A'", "transformation-ref 'nope'"]),
        (_rect("A", extra=' gating:parent_id="Z"'), ["'A'", "'Z'"]),
        (_rect("A", lo="NaN"), ["'A'", "min", "not finite"]),
        (_rect("A", lo="abc"), ["'A'", "min", "not a number"]),
        (_rect("A") + _rect("A"), ["'A'", "defined twice"]),
        (_rect("A", comp="Spill9"), ["'A'", "'Spill9'"]),
        (
            _rect("A", extra=' gating:parent_id="B"') + _rect("B", extra=' gating:parent_id="A"'),
            ["cycle"],
        ),
        (
            '<gating:PolygonGate gating:id="P"><gating:dimension gating:compensation-ref="FCS">'
            '<data-type:fcs-dimension data-type:name="a"/></gating:dimension><gating:dimension '
            'gating:compensation-ref="FCS"><data-type:fcs-dimension data-type:name="b"/></gating:dimension>'
            '<gating:vertex><gating:coordinate data-type:value="1"/><gating:coordinate data-type:value="INF"/>'
            "</gating:vertex></gating:PolygonGate>",
            ["'P'", "not finite"],
        ),
        (
            '<gating:BooleanGate gating:id="B"><gating:and><gating:gateReference gating:ref="A"/>'
            '<gating:gateReference gating:ref="Q"/></gating:and></gating:BooleanGate>' + _rect("A"),
            ["'B'", "'Q'"],
        ),
        (
            '<transforms:transformation transforms:id="t"><transforms:splitscale transforms:T="1"/>'
            "</transforms:transformation>",
            ["unsupported", "splitscale"],
        ),
        (
            '<transforms:transformation transforms:id="t"><transforms:logicle transforms:T="1000" '
            'transforms:W="3" transforms:M="4.5" transforms:A="0"/></transforms:transformation>',
            ["'t'", "W=3"],
        ),
        (
            '<transforms:transformation transforms:id="t"><transforms:flog transforms:T="1000"/>'
            "</transforms:transformation>",
            ["'t'", "missing parameter M"],
        ),
    ],
)
def test_bad_documents_raise_gating_error(body, words):
    with pytest.raises(GatingError) as e:
        parse_gatingml(_HEAD + body + _TAIL, source="doc.xml")
    msg = str(e.value)
    assert "doc.xml" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_wrong_root_and_missing_file(tmp_path):
    with pytest.raises(GatingError, match="gating:Gating-ML"):
        parse_gatingml("<root/>")
    with pytest.raises(GatingError, match="not found"):
        evflow.read_gatingml(tmp_path / "missing.xml")
    p = tmp_path / "bad.xml"
    p.write_text(_HEAD + _rect("A") + "<unclosed>" + _TAIL)
    with pytest.raises(GatingError) as e:
        evflow.read_gatingml(p)
    assert str(p) in str(e.value) and re.search(r"line \d+", str(e.value))


def test_gate_on_missing_channel_when_applied(data1):
    s = parse_gatingml(_HEAD + _rect("A") + _rect("B", ch="FL9-H", extra=' gating:parent_id="A"') + _TAIL)
    with pytest.raises(GatingError) as e:
        s.apply(data1)
    assert "'B'" in str(e.value) and "'FL9-H'" in str(e.value)
    # the valid gate alone still applies
    assert s.apply(data1, gate_ids=["A"], backend="numpy").stats.loc["A", "count"] > 0


def test_spectrum_matrix_with_missing_detector(data1):
    doc = (
        _HEAD
        + '<transforms:spectrumMatrix transforms:id="S"><transforms:fluorochromes>'
        '<data-type:fcs-dimension data-type:name="F1"/><data-type:fcs-dimension data-type:name="F2"/>'
        "</transforms:fluorochromes><transforms:detectors>"
        '<data-type:fcs-dimension data-type:name="FL1-H"/><data-type:fcs-dimension data-type:name="FLX"/>'
        "</transforms:detectors>"
        '<transforms:spectrum><transforms:coefficient transforms:value="1"/><transforms:coefficient transforms:value="0.1"/></transforms:spectrum>'
        '<transforms:spectrum><transforms:coefficient transforms:value="0.2"/><transforms:coefficient transforms:value="1"/></transforms:spectrum>'
        "</transforms:spectrumMatrix>" + _rect("G", ch="F1", comp="S") + _TAIL
    )
    s = parse_gatingml(doc)
    with pytest.raises(GatingError) as e:
        s.apply(data1)
    assert "'G'" in str(e.value) and "'FLX'" in str(e.value)
