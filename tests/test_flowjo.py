"""FlowJo 10 workspaces: every gate type, FlowJo's transforms and compensation, against FlowKit's reading.

``tests/data/flowjo/*.wsp`` are written by ``make_workspaces.py`` there in FlowJo 10's XML.  The FCS files of
``ev_panel.wsp`` are written here with evflow's writer (synthetic, spillover applied); ``flowcal_beads.wsp`` gates
FlowCal's real bead file.  FlowKit reads the same workspace and events; the counts must be equal, gate by gate.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from fcs_builder import build_fcs

import evflow
from evflow.errors import GatingError
from evflow.flow.flowjo import flowjo_samples, read_gates_file
from evflow.flow.flowjo_transforms import FlowJoBiexTransform, FlowJoLogTransform
from evflow.flow.gates import BooleanGate, PolygonGate, RectangleGate

fk = pytest.importorskip("flowkit")

DATA = Path(__file__).parent / "data" / "flowjo"
WSP = DATA / "ev_panel.wsp"
BEADS = DATA / "flowcal_beads.wsp"
CHANNELS = ["FSC-A", "SSC-A", "FL1-A", "FL2-A", "FL3-A", "Time"]
SPILL = np.array([[1, 0.12, 0.02], [0.05, 1, 0.15], [0.0, 0.08, 1]])
SAMPLES = {"ev_01.fcs": (20000, 1), "ev_02.fcs": (15000, 2)}


def _events(n, seed):
    r = np.random.default_rng(seed)
    fsc = r.lognormal(np.log(40000), 0.9, n)
    ssc = r.lognormal(np.log(800), 1.5, n)
    true = np.column_stack([r.lognormal(np.log(m), s, n) for m, s in ((1500, 1.3), (900, 1.4), (700, 1.6))])
    true[r.random(n) < 0.1] *= -0.05  # some negative (compensated) values, where biex and logicle differ from log
    t = np.sort(r.uniform(0, 1000, n))
    return np.column_stack([fsc, ssc, true @ SPILL, t]).clip(-5000, 262143)


@pytest.fixture(scope="module")
def fcs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("flowjo")
    for name, (n, seed) in SAMPLES.items():
        evflow.write_fcs(d / name, _events(n, seed), CHANNELS, ranges=[262144] * 6)
    return d


def _flowkit_counts(wsp, samples, group):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = fk.Workspace(str(wsp), fcs_samples=samples)
        ws.analyze_samples(group_name=group)
        rep = ws.get_analysis_report(group_name=group)
    out = {}
    for _, row in rep.iterrows():
        path = "/".join([x for x in row["gate_path"] if x != "root"] + [row["gate_name"]])
        out[(row["sample_id"], path)] = int(row["count"])
    return out


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_gate_type_agrees_with_flowkit(fcs_dir, name):
    ref = _flowkit_counts(WSP, str(fcs_dir), "EV panel")
    strategy = evflow.read_flowjo(WSP, group="EV panel", sample=name)
    counts = strategy.apply(evflow.read_fcs(fcs_dir / name), backend="numpy").counts()
    theirs = {p: c for (s, p), c in ref.items() if s == name}
    assert len(theirs) == 13
    assert {p: counts[p] for p in theirs} == theirs
    # the gates hold events (the comparison is not between empty sets) and the hierarchy is FlowJo's
    assert all(c > 100 for c in theirs.values())
    assert counts["Cells/Ellipse/Bright"] < counts["Cells/Ellipse"] < counts["Cells"] < SAMPLES[name][0]
    quads = [p for p in theirs if p.startswith("Cells/Q") and ":" in p]
    assert sum(counts[q] for q in quads) == counts["Cells"]  # FlowJo's quadrants tile their parent
    assert counts["Cells/not CD9+"] + counts["Cells/CD9+"] == counts["Cells"]


def test_strategy_structure(fcs_dir):
    s = evflow.read_flowjo(WSP, sample="ev_01.fcs")
    assert s.flowjo_group == "EV panel" and s.flowjo_sample == "ev_01.fcs"
    assert s.flowjo_total == 20000  # FlowJo's own count of the sample's events
    assert s.fcs_file == str(DATA / "ev_01.fcs")
    assert s.flowjo_keywords["$TOT"] == "20000"
    g = s.gates
    assert isinstance(g["Cells"], PolygonGate) and g["Cells"].parent is None
    rng = g["Cells/CD9+"]  # a range gate: one dimension, open above
    assert isinstance(rng, RectangleGate) and len(rng.dims) == 1 and rng.maxs == [None]
    ell = g["Cells/Ellipse"]
    assert isinstance(ell, PolygonGate) and len(ell.vertices) == 128
    assert isinstance(ell.dims[0].transform, FlowJoBiexTransform)
    assert ell.dims[0].compensation == "EV comp" and ell.dims[0].channel == "Comp-FL1-A"
    # biex is 0..4096 on FlowJo's display, logicle 0..1: the ellipse's centre (140, 140 of 256 bins) lands there
    np.testing.assert_allclose(ell.vertices.mean(axis=0), [140 / 256 * 4096, 140 / 256], rtol=1e-6)
    out = g["Cells/Not debris"]  # eventsInside="0": the complement of the drawn rectangle
    assert isinstance(out, BooleanGate) and out.op == "not" and out.refs == [("Cells/Not debris [shape]", False)]
    assert isinstance(g["Cells/Q2 and Ellipse"], BooleanGate) and g["Cells/Q2 and Ellipse"].parent == "Cells"
    assert g["Cells/Ellipse/Bright"].parent == "Cells/Ellipse"
    np.testing.assert_allclose(s.compensations["EV comp"].matrix, SPILL)
    # the second sample has its own gate (owningGroup "") and its own SSC-A scale
    s2 = evflow.read_flowjo(WSP, sample="2")
    assert s2.flowjo_sample == "ev_02.fcs"
    assert not np.array_equal(s2.gates["Cells"].vertices, g["Cells"].vertices)
    assert s2.gates["Cells"].dims[1].transform.params == (1.0, 5.0)
    assert flowjo_samples(WSP) == {"All Samples": ["ev_01.fcs", "ev_02.fcs"], "EV panel": ["ev_01.fcs", "ev_02.fcs"],
                                   "Compensation": []}


def test_real_bead_file_agrees_with_flowkit():
    """FlowCal's real beads (log-amplified FL channels decoded by $PnE) through the same workspace in both tools."""
    path = shared_path("beads", "flowcal", "sample001.fcs")
    sample = evflow.read_fcs(path)
    events = np.asarray(sample.linear_events())
    # FlowIO cannot read this file's DATA segment, so FlowKit gets evflow's decoded events
    fks = fk.Sample(events, sample_id="sample001.fcs", channel_labels=list(sample.channels))
    ref = _flowkit_counts(BEADS, [fks], "Beads")
    counts = evflow.read_flowjo(BEADS).apply(sample, backend="numpy").counts()
    assert len(ref) == 9
    assert {p: counts[p] for (_, p) in ref} == {p: c for (_, p), c in ref.items()}
    assert counts["Singlets"] == 27153 and counts["Singlets/Peak 7"] > 2000


def test_transforms_match_flowkit():
    from flowkit._models.transforms._wsp_transforms import WSPBiexTransform, WSPLogTransform

    x = np.concatenate([-np.geomspace(1, 3e5, 300), [0.0], np.geomspace(1e-3, 3e5, 300)])
    for pos, neg, width, top in [(4.418540, 0, -10, 262144), (4.42, 1, -100, 262144), (4.5, 0.5, -1000, 1e5)]:
        ours = FlowJoBiexTransform(pos, neg, width, top)
        theirs = WSPBiexTransform(negative=neg, width=width, positive=pos, max_value=top)
        np.testing.assert_allclose(ours.apply(x), theirs.apply(x), atol=1e-9)
        c = np.linspace(0, 4096, 101)
        np.testing.assert_allclose(ours.inverse(c), theirs.inverse(c), rtol=1e-9, atol=1e-6)
        assert 4000 < ours.apply(np.array([top]))[0] <= 4096  # the top of the data scale is near the top channel
    lg = FlowJoLogTransform(1.0, 4.5)
    np.testing.assert_allclose(lg.apply(x), WSPLogTransform(offset=1.0, decades=4.5).apply(x))
    np.testing.assert_allclose(lg.inverse(lg.apply(np.array([2.0, 1e4]))), [2.0, 1e4])


def test_experiment_file_accepts_a_workspace(tmp_path):
    assert read_gates_file(WSP).gate_ids == evflow.read_flowjo(WSP).gate_ids
    assert read_gates_file(shared_path("gatingml", "gml", "gml_all_gates.xml")).gate_ids  # Gating-ML as before
    from evflow.pipeline.flow import gating

    class Exp:
        path = tmp_path / "experiment.toml"
        flow = {"gates": {"gatingml": str(WSP), "parent": "Cells/Ellipse"}}

        def resolve(self, p):
            return Path(p)

    strategy, parent, desc, _ = gating(Exp(), None)[:4]
    assert parent == "Cells/Ellipse" and "Cells/Ellipse" in strategy.gate_ids
    Exp.flow = {"gates": {"gatingml": str(WSP), "parent": "Nope"}}
    with pytest.raises(evflow.ConfigError, match="'Nope' is not a gate of"):
        gating(Exp(), None)


def _edited(tmp_path, old, new, count=1):
    text = WSP.read_text()
    assert re.search(old, text)
    p = tmp_path / "edited.wsp"
    p.write_text(re.sub(old, new, text, count=max(count, 0)))
    return p


def test_errors_name_file_and_element(tmp_path):
    with pytest.raises(GatingError, match=r"sample 'nope.fcs' is not in the workspace; samples are \['ev_01.fcs'"):
        evflow.read_flowjo(WSP, sample="nope.fcs")
    with pytest.raises(GatingError, match="group 'Other' is not in the workspace; groups are"):
        evflow.read_flowjo(WSP, group="Other")
    with pytest.raises(GatingError, match="not in group 'Compensation'"):
        evflow.read_flowjo(WSP, group="Compensation", sample="ev_01.fcs")
    p = _edited(tmp_path, "gating:RectangleGate", "gating:CircleGate", 0)
    with pytest.raises(GatingError, match=r"edited.wsp, line \d+: .*unsupported FlowJo gate element gating:CircleGate"):
        evflow.read_flowjo(p)
    p = _edited(tmp_path, r"transforms:log\b(?!icle)", "transforms:miracle", 0)
    with pytest.raises(GatingError, match=r"edited.wsp, line \d+: unsupported FlowJo transform transforms:miracle"):
        evflow.read_flowjo(p)
    p = _edited(tmp_path, r'<Dependent name="Cells/CD9\+"/>', '<Dependent name="Cells/CD99+"/>', 0)
    with pytest.raises(GatingError, match=r"edited.wsp, line \d+: Boolean node 'Cells/not CD9\+': dependent 'Cells/CD99\+' is not a population"):
        evflow.read_flowjo(p)
    p = _edited(tmp_path, 'data-type:value="10000"', 'data-type:value="ten"', 0)
    with pytest.raises(GatingError, match=r"edited.wsp, line \d+: .*'ten' is not a number"):
        evflow.read_flowjo(p)
    p = _edited(tmp_path, "</Workspace>", "</Workspac>")
    with pytest.raises(GatingError, match=r"edited.wsp, line \d+, column \d+: not well-formed XML"):
        evflow.read_flowjo(p)
    p = tmp_path / "gates.wsp"
    p.write_text('<?xml version="1.0"?><Gating-ML/>')
    with pytest.raises(GatingError, match="root element is 'Gating-ML', expected a FlowJo Workspace"):
        evflow.read_flowjo(p)
    with pytest.raises(GatingError, match="FlowJo workspace not found"):
        evflow.read_flowjo(tmp_path / "missing.wsp")


def _with_counts(src, out, counts):
    """A copy of workspace ``src`` with FlowJo's ``count`` attributes set from ``{(sample, gate path): n}``."""
    from lxml import etree

    tree = etree.parse(str(src))

    def walk(sub, path, sample):
        for c in sub:
            if c.tag in ("Population", "AndNode", "OrNode", "NotNode"):
                p = path + [c.get("name")]
                if (sample, "/".join(p)) in counts:
                    c.set("count", str(counts[(sample, "/".join(p))]))
                if c.find("Subpopulations") is not None:
                    walk(c.find("Subpopulations"), p, sample)

    for node in tree.iter("SampleNode"):
        if node.find("Subpopulations") is not None:
            walk(node.find("Subpopulations"), [], node.get("name"))
    tree.write(str(out))
    return out


@pytest.fixture(scope="module")
def counted_wsp(fcs_dir, tmp_path_factory):
    """ev_panel.wsp with the counts FlowJo stores on each population (taken from FlowKit's reading)."""
    ref = _flowkit_counts(WSP, str(fcs_dir), "EV panel")
    return _with_counts(WSP, tmp_path_factory.mktemp("counted") / "ev_panel.wsp", ref), ref


def test_counts_are_set_beside_the_ones_flowjo_stored(fcs_dir, counted_wsp, tmp_path):
    from evflow.flow.flowjo import compare_flowjo_counts, is_flowjo_sample

    wsp, ref = counted_wsp
    s = evflow.read_flowjo(wsp, sample="ev_01.fcs")
    assert len(s.flowjo_counts) == 13
    fcs = evflow.read_fcs(fcs_dir / "ev_01.fcs")
    assert is_flowjo_sample(s, fcs_dir / "ev_01.fcs", fcs.meta) and not is_flowjo_sample(s, fcs_dir / "ev_02.fcs")
    counts = s.apply(fcs, backend="numpy").counts()
    df = compare_flowjo_counts(s, counts, fcs.n_events)
    assert len(df) == 14 and df["gate"].iloc[0] == "(all events)" and not df["flagged"].any()
    assert (df["difference"] == 0).all()
    # a stored count off by 2 % is flagged, by one event (a boundary event) it is not
    off = dict(ref)
    off[("ev_01.fcs", "Cells/CD9+")] = int(ref[("ev_01.fcs", "Cells/CD9+")] * 1.02)
    off[("ev_01.fcs", "Cells")] = ref[("ev_01.fcs", "Cells")] + 1
    s2 = evflow.read_flowjo(_with_counts(WSP, tmp_path / "off.wsp", off), sample="ev_01.fcs")
    df = compare_flowjo_counts(s2, counts, fcs.n_events).set_index("gate")
    assert df.index[df["flagged"]].tolist() == ["Cells/CD9+"]
    assert df.loc["Cells", "difference"] == -1
    with pytest.raises(GatingError, match=r"no evflow count: \['Cells/CD9\+'\]"):
        compare_flowjo_counts(s2, {k: v for k, v in counts.items() if k != "Cells/CD9+"})


def test_a_gain_evflow_divides_out_and_flowjo_does_not_is_flagged(fcs_dir, counted_wsp, tmp_path):
    """The same events with $P3G = 2 (FL1-A): FlowJo's generic cytometer ignores the gain (useGain="0"), the
    FCS 3.1 rule evflow applies by default divides it out, so the FL1 gates count otherwise.  The pipeline says
    so in the sample's QC flags; on scale "linear" the counts agree."""
    wsp, ref = counted_wsp
    d = tmp_path / "gain"
    d.mkdir()
    ev = evflow.read_fcs(fcs_dir / "ev_01.fcs")
    # (evflow's writer computes $PnG itself: the file is built by the tests' independent builder)
    (d / "ev_01.fcs").write_bytes(build_fcs(ev.to_numpy(), datatype="F", ranges=[262144] * 6, names=CHANNELS,
                                            extra={"$P3G": "2"}))
    for scale, flagged in (("auto", True), ("linear", False)):
        exp = tmp_path / f"exp_{scale}.toml"
        exp.write_text(f'[experiment]\nname = "fj"\n[flow]\nscale = "{scale}"\nmarkers = {{ "FL2-A" = "CD63" }}\n'
                       f'gates = {{ gatingml = "{wsp}", parent = "Cells" }}\n'
                       '[thresholds]\nrule = "fixed"\nvalues = { CD63 = 2000.0 }\n'
                       f'[[samples]]\nname = "a"\nflow = "{d / "ev_01.fcs"}"\nvolume_ul = 1.0\n')
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = evflow.run(exp, output=tmp_path / f"out_{scale}", quiet=True)
        flags = str(ds["qc_flags"].sel(sample="a").values)
        assert ("counts differ from those FlowJo stored" in flags) == flagged, flags
        if flagged:
            assert "Cells/CD9+" in flags and "on scale 'linear-gain'" in flags and "Cells " not in flags
        check = json.loads(ds.attrs["flowjo_counts_check"])["a"]
        assert len(check) == 14 and sum(r["flagged"] for r in check) == (11 if flagged else 0)  # measured


def test_a_sample_flowjo_gated_with_its_own_gate_is_flagged(fcs_dir, counted_wsp, tmp_path):
    """The run applies the gates of the workspace's first sample to every file; ev_02.fcs has a Cells gate of
    its own in FlowJo (and its own SSC-A scale), so FlowJo's counts for it differ from the run's: flagged, naming
    whose gates the run applied.  ev_01.fcs agrees."""
    from evflow.flow.flowjo import workspace_sample

    wsp, ref = counted_wsp
    s = evflow.read_flowjo(wsp, sample="ev_01.fcs")
    other = workspace_sample(s, fcs_dir / "ev_02.fcs")
    assert other.flowjo_sample == "ev_02.fcs" and other.flowjo_counts["Cells"] == ref[("ev_02.fcs", "Cells")]
    assert workspace_sample(s, fcs_dir / "ev_01.fcs") is s and workspace_sample(s, tmp_path / "x.fcs") is None
    exp = tmp_path / "exp.toml"
    exp.write_text('[experiment]\nname = "fj"\n[flow]\nmarkers = { "FL2-A" = "CD63" }\n'
                   f'gates = {{ gatingml = "{wsp}", parent = "Cells" }}\n'
                   '[thresholds]\nrule = "fixed"\nvalues = { CD63 = 2000.0 }\n'
                   + "".join(f'[[samples]]\nname = "{n}"\nflow = "{fcs_dir / (n + ".fcs")}"\nvolume_ul = 1.0\n'
                             for n in ("ev_01", "ev_02")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = evflow.run(exp, output=tmp_path / "out", quiet=True)
    f1, f2 = (str(ds["qc_flags"].sel(sample=n).values) for n in ("ev_01", "ev_02"))
    assert "FlowJo" not in f1, f1
    assert "counts differ from those FlowJo stored" in f2 and "Cells " in f2, f2
    assert "with the gates FlowJo drew for sample 'ev_01.fcs'" in f2
    assert sorted(json.loads(ds.attrs["flowjo_counts_check"])) == ["ev_01", "ev_02"]


def test_flowjo_counts_check_on_a_real_bead_file(tmp_path):
    """FlowCal's real bead file against the bead workspace with the counts FlowJo stores on each population
    (FlowKit's reading of the same events): the run's file is recognised as the workspace's sample and every
    gate agrees, and a count off by 1 % is flagged."""
    from evflow.flow.flowjo import compare_flowjo_counts, workspace_sample

    path = shared_path("beads", "flowcal", "sample001.fcs")
    sample = evflow.read_fcs(path)
    fks = fk.Sample(np.asarray(sample.linear_events()), sample_id="sample001.fcs", channel_labels=list(sample.channels))
    ref = _flowkit_counts(BEADS, [fks], "Beads")
    s = evflow.read_flowjo(_with_counts(BEADS, tmp_path / "beads.wsp", ref))
    assert workspace_sample(s, path, sample.meta) is s and len(s.flowjo_counts) == 9
    counts = s.apply(sample, backend="numpy").counts()
    df = compare_flowjo_counts(s, counts, sample.n_events)
    assert len(df) == 10 and not df["flagged"].any() and (df["difference"] == 0).all()
    assert df.set_index("gate").loc["(all events)", "flowjo"] == 33024
    off = {k: (int(v * 1.01) if k[1] == "Singlets" else v) for k, v in ref.items()}
    s2 = evflow.read_flowjo(_with_counts(BEADS, tmp_path / "off.wsp", off))
    df2 = compare_flowjo_counts(s2, counts, sample.n_events)
    assert df2.loc[df2["flagged"], "gate"].tolist() == ["Singlets"]
