"""Agreement with FlowKit on real files: the same gates give the same events and counts.

The strategies are built with evflow, written as Gating-ML and read by FlowKit,
so this also checks that FlowKit understands evflow's Gating-ML export.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path

import evflow
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
from evflow.flow.transforms import AsinhTransform, HyperlogTransform, LogicleTransform

fk = pytest.importorskip("flowkit")


def _flowkit_results(gml_path, fcs_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = fk.parse_gating_xml(str(gml_path))
        sample = fk.Sample(str(fcs_path))
        return gs.gate_sample(sample)


def _fk_membership(res, gid):
    return np.asarray(res.get_gate_membership(gid), dtype=bool)


def test_compliance_strategy_agrees_with_flowkit():
    gml = shared_path("gatingml", "gml", "gml_all_gates.xml")
    fcs = shared_path("gatingml", "data1.fcs")
    fk_res = _flowkit_results(gml, fcs)
    ours = evflow.read_gatingml(gml).apply(evflow.read_fcs(fcs), backend="numpy")
    report = fk_res.report.set_index("gate_name")
    for gid in ours.gate_ids:
        np.testing.assert_array_equal(np.asarray(ours.membership(gid)), _fk_membership(fk_res, gid), err_msg=gid)
        assert ours.stats.loc[gid, "count"] == report.loc[gid, "count"], gid


def _strategy_100715(ev, ch):
    """Gates on the FACSAria file 100715.fcs: its own $SPILLOVER ("FCS"), logicle/asinh/hyperlog scales."""
    lg = LogicleTransform(262144, 0.5, 4.5, 0, id="logicle")
    ah = AsinhTransform(262144, 4.5, 0.5, id="asinh")
    hl = HyperlogTransform(262144, 1, 4.5, 0, id="hyperlog")
    q = lambda c, p: float(np.percentile(ev[:, ch.index(c)], p))  # noqa: E731
    s = GatingStrategy()
    s.add_gate(
        PolygonGate(
            "cells",
            ["FSC-A", "SSC-A"],
            [[q("FSC-A", 5), q("SSC-A", 5)], [q("FSC-A", 95), q("SSC-A", 10)], [q("FSC-A", 90), q("SSC-A", 90)],
             [q("FSC-A", 40), q("SSC-A", 60)], [q("FSC-A", 10), q("SSC-A", 95)]],
        )
    )
    s.add_gate(RectangleGate("singlets", ["FSC-H"], [q("FSC-H", 3)], [q("FSC-H", 97)], parent="cells"))
    s.add_gate(
        RectangleGate(
            "B515pos",
            [Dimension("B515-A", lg, "FCS"), Dimension("G560-A", lg, "FCS")],
            [0.55, None],
            [None, 0.8],
            parent="singlets",
        )
    )
    s.add_gate(
        EllipsoidGate(
            "ell", [Dimension("R780-A", ah, "FCS"), Dimension("V450-A", ah, "FCS")], [0.55, 0.6],
            [[0.004, 0.001], [0.001, 0.003]], 1.0, parent="singlets",
        )
    )
    s.add_gate(
        QuadrantGate(
            "quad",
            # FlowKit compensates every dimension of a gate with one matrix, so a gate mixing
            # "FCS" and "uncompensated" on spilled channels would differ (evflow follows Gating-ML,
            # per dimension); both dividers use "FCS" here.
            [Dimension("V585-A", hl, "FCS"), Dimension("G610-A", hl, "FCS")],
            [[0.6], [0.55, 0.65]],
            {"QLL": [0.0, 0.0], "QLM": [0.0, 0.6], "QH": [0.9, None]},
            parent="cells",
            divider_ids=["d585", "d610"],
        )
    )
    s.add_gate(BooleanGate("B515_or_notell", "or", ["B515pos", ("ell", True)], parent="singlets"))
    s.add_gate(RectangleGate("ratio", [RatioDimension("r1", ["V800-A", "V655-A"], 1, 0, 0)], [1.05], [20.0]))
    return s


def _strategy_lsr(ev, ch):
    lg = LogicleTransform(262144, 1.0, 4.5, 0.5, id="lg")
    s = GatingStrategy()
    s.add_gate(RectangleGate("scatter", ["FSC-H", "SSC-H"], [100, 500], [None, 5000]))
    s.add_gate(
        PolygonGate(
            "fitc_percp",
            [Dimension("FITC-A", lg, "FCS"), Dimension("PerCP-Cy5-5-A", lg, "FCS")],
            [[0.2, 0.2], [0.6, 0.25], [0.7, 0.5], [0.3, 0.6], [0.45, 0.35]],  # concave
            parent="scatter",
        )
    )
    s.add_gate(BooleanGate("not_poly", "not", ["fitc_percp"], parent="scatter"))
    return s


@pytest.mark.parametrize(
    "parts,build",
    [
        (("fcs", "flowio", "100715.fcs"), _strategy_100715),
        (("fcs", "fcsparser", "HTS_BD_LSR-II", "HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs"), _strategy_lsr),
    ],
    ids=["FACSAria-100715", "LSR-II"],
)
def test_real_file_gates_agree_with_flowkit(parts, build, tmp_path):
    fcs = shared_path(*parts)
    sample = evflow.read_fcs(fcs, chunk_events=5000)
    ev = evflow.read_fcs(fcs, scale=True).to_numpy()
    strategy = build(ev, sample.channels)
    gml = tmp_path / "strategy.xml"
    evflow.write_gatingml(strategy, gml)
    ours = strategy.apply(sample, backend="numpy")
    fk_res = _flowkit_results(gml, fcs)
    report = fk_res.report.set_index("gate_name")
    for gid in strategy.gate_ids:
        mine = np.asarray(ours.membership(gid))
        theirs = _fk_membership(fk_res, gid)
        np.testing.assert_array_equal(mine, theirs, err_msg=gid)
        assert ours.stats.loc[gid, "count"] == report.loc[gid, "count"], gid
        assert 0 < mine.sum() < len(mine), gid  # every gate selects a real, non-trivial population


def test_exact_biex_matches_flowutils():
    fu = pytest.importorskip("flowutils.transforms")
    x = np.concatenate([np.linspace(-5000, 300000, 20001), np.logspace(-3, 9, 300)])
    for T, W, M, A in [(262144, 0.5, 4.5, 0), (10000, 1, 4, 0.5), (1e4, 2, 4.5, -1)]:
        ref = fu.logicle(x, channel_indices=None, t=T, w=W, m=M, a=A)
        np.testing.assert_allclose(LogicleTransform(T, W, M, A).apply_exact(x), ref, atol=1e-12, rtol=0)
        assert np.abs(LogicleTransform(T, W, M, A).apply(x) - ref).max() < 1e-7
        ref = fu.hyperlog(x, channel_indices=None, t=T, w=W, m=M, a=A)
        np.testing.assert_allclose(HyperlogTransform(T, W, M, A).apply_exact(x), ref, atol=1e-12, rtol=0)
        assert np.abs(HyperlogTransform(T, W, M, A).apply(x) - ref).max() < 1e-7
