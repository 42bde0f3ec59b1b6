"""Gates, gating strategies and their application: boundaries, hierarchy, validation, parity."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

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
    RangeGate,
    RatioDimension,
    RectangleGate,
)
from evflow.flow.transforms import LogicleTransform

# --------------------------------------------------------------------------- geometric gates


def test_rectangle_boundaries_open_ends_and_nan():
    g = RectangleGate("R", ["a", "b"], [1.0, None], [2.0, 5.0])
    v = np.array(
        [
            [1.0, 0.0],  # min inclusive
            [2.0, 0.0],  # max exclusive
            [1.5, -1e300],  # open lower end
            [1.5, 5.0],  # max exclusive
            [np.nan, 0.0],
            [1.5, np.nan],
            [0.999999, 1.0],
        ]
    )
    np.testing.assert_array_equal(g.contains(v), [True, False, True, False, False, False, False])


def test_range_gate_is_one_dimensional():
    g = RangeGate("R", "a", 3, None)
    np.testing.assert_array_equal(g.contains(np.array([[2.9], [3.0], [1e9]])), [False, True, True])
    with pytest.raises(GatingError, match="one dimension"):
        RangeGate("R", ["a", "b"], [1, 1], [2, 2])


def test_polygon_simple_and_even_odd():
    square = PolygonGate("P", ["x", "y"], [[0, 0], [10, 0], [10, 10], [0, 10]])
    pts = np.array([[5, 5], [-1, 5], [11, 5], [5, 11], [0.001, 9.999], [np.nan, 5]], dtype=float)
    np.testing.assert_array_equal(square.contains(pts), [True, False, False, False, True, False])
    # a pentagram drawn in one stroke: the central pentagon is crossed twice -> outside (even-odd)
    ang = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = PolygonGate("S", ["x", "y"], np.c_[np.cos(ang), np.sin(ang)])
    tip = np.array([[0.0, 0.8]])  # inside one point of the star
    centre = np.array([[0.0, 0.0]])
    assert star.contains(tip)[0]
    assert not star.contains(centre)[0]
    # a self-overlapping loop around the same region twice: even-odd leaves it outside
    twice = PolygonGate("T", ["x", "y"], [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0], [4, 0], [4, 4], [0, 4]])
    assert not twice.contains(np.array([[2.0, 2.0]]))[0]


def test_ellipse_boundary_inclusive_and_rotation():
    g = EllipsoidGate("E", ["x", "y"], [0, 0], [[4, 0], [0, 1]], 1)
    v = np.array([[2.0, 0.0], [2.0001, 0.0], [0.0, 1.0], [0.0, -1.0001], [1.0, 0.5]])
    np.testing.assert_array_equal(g.contains(v), [True, False, True, False, True])
    # Gating-ML compliance ellipse: half-axes 10 and 5 rotated 45 degrees
    e1 = EllipsoidGate("E1", ["x", "y"], [12.99701, 16.22941], [[62.5, 37.5], [37.5, 62.5]], 1)
    u = np.array([1, 1]) / np.sqrt(2)
    w = np.array([-1, 1]) / np.sqrt(2)
    m = np.array([12.99701, 16.22941])
    p = np.array([m + 9.99 * u, m + 10.01 * u, m + 4.99 * w, m + 5.01 * w])
    np.testing.assert_array_equal(e1.contains(p), [True, False, True, False])


def test_ellipsoid_3d():
    cov = np.diag([1.0, 4.0, 9.0])
    g = EllipsoidGate("E3", ["a", "b", "c"], [1, 2, 3], cov, 1)
    v = np.array([[1, 2, 3], [2, 2, 3], [1, 4.01, 3], [1, 2, 6], [1.5, 3, 4]], dtype=float)
    np.testing.assert_array_equal(g.contains(v), [True, True, False, True, True])


def test_quadrant_intervals_and_partition():
    q = QuadrantGate(
        "Q",
        ["a", "b"],
        [[10.0, 20.0], [5.0]],
        {"lowlow": {"da": 0, "db": 0}, "midhigh": {"da": 15, "db": 7}, "high": {"da": 100}},
        divider_ids=["da", "db"],
    )
    v = np.array([[9.99, 4.0], [10.0, 5.0], [20.0, 0.0], [15, 7], [np.nan, 0]])
    np.testing.assert_array_equal(q.quadrants["lowlow"].contains(v), [True, False, False, False, False])
    np.testing.assert_array_equal(q.quadrants["midhigh"].contains(v), [False, True, False, True, False])
    np.testing.assert_array_equal(q.quadrants["high"].contains(v), [False, False, True, False, False])
    assert q.quadrants["midhigh"].intervals == [(10.0, 20.0), (5.0, None)]


@pytest.mark.parametrize(
    "make,word",
    [
        (lambda: PolygonGate("P1", ["x", "y"], [[0, 0], [1, np.nan], [1, 1]]), "non-finite"),
        (lambda: PolygonGate("P2", ["x", "y"], [[0, 0], [1, 1]]), "k >= 3"),
        (lambda: PolygonGate("P3", ["x"], [[0, 0], [1, 1], [2, 0]]), "2 dimensions"),
        (lambda: RectangleGate("R1", ["x"], [5], [1]), "min 5 > max 1"),
        (lambda: RectangleGate("R2", ["x"], [None], [None]), "neither"),
        (lambda: RectangleGate("R3", ["x", "y"], [1], [2]), "2 dimension"),
        (lambda: EllipsoidGate("E1", ["x", "y"], [0, 0], [[1, 1], [1, 1]], 1), "singular"),
        (lambda: EllipsoidGate("E2", ["x", "y"], [0, np.inf], [[1, 0], [0, 1]], 1), "non-finite"),
        (lambda: EllipsoidGate("E3", ["x", "y"], [0, 0], [[1, 0], [0, 1]], -1), "distance square"),
        (lambda: QuadrantGate("Q1", ["x"], [[2, 1]], {"q": [0]}), "increasing"),
        (lambda: BooleanGate("B1", "xor", ["a", "b"]), "xor"),
        (lambda: BooleanGate("B2", "not", ["a", "b"]), "exactly one"),
        (lambda: BooleanGate("B3", "and", ["a"]), "at least two"),
    ],
)
def test_bad_gate_definitions(make, word):
    with pytest.raises(GatingError) as e:
        make()
    assert word in str(e.value)
    assert "gate '" in str(e.value) or "quadrant" in str(e.value)


# --------------------------------------------------------------------------- strategies


def _events(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.c_[
        rng.uniform(0, 100, n),  # a
        rng.uniform(0, 100, n),  # b
        rng.lognormal(3, 1.5, n) - 5,  # c
        rng.uniform(1, 50, n),  # d
    ]
    return ev, ["a", "b", "c", "d"]


def _strategy():
    lg = LogicleTransform(10000, 0.5, 4.5, 0, id="lg")
    s = GatingStrategy()
    s.add_gate(RectangleGate("root", ["a"], [10], [90]))
    s.add_gate(PolygonGate("poly", ["a", "b"], [[0, 0], [100, 0], [50, 100]], parent="root"))
    s.add_gate(RangeGate("bright", Dimension("c", lg), 0.4, None, parent="poly"))
    s.add_gate(EllipsoidGate("ell", ["a", "b"], [50, 50], [[400, 100], [100, 300]], 1))
    s.add_gate(BooleanGate("either", "or", ["bright", ("ell", True)]))
    s.add_gate(BooleanGate("notell", "not", ["ell"], parent="root"))
    s.add_gate(
        QuadrantGate("quad", ["a", Dimension("d")], [[50.0], [25.0]], {"LL": [0, 0], "LH": [0, 30], "H": [60, None]})
    )
    s.add_gate(RectangleGate("ratio", [RatioDimension("r", ["a", "d"], 1, 0, 0)], [1], [None], parent="LH"))
    return s


def _oracle(ev):
    a, b, c, d = ev.T
    lg = LogicleTransform(10000, 0.5, 4.5, 0)
    root = (a >= 10) & (a < 90)
    # triangle (0,0),(100,0),(50,100): inside when y >= 0 and below both sides
    tri = (b > 0) & (b < 2 * a) & (b < 2 * (100 - a))
    poly = tri & root
    bright = (lg.apply_exact(c) >= 0.4) & poly
    inv = np.linalg.inv([[400, 100], [100, 300]])
    dd = np.c_[a - 50, b - 50]
    ell = np.einsum("ij,jk,ik->i", dd, inv, dd) <= 1
    return {
        "root": root,
        "poly": poly,
        "bright": bright,
        "ell": ell,
        "either": bright | ~ell,
        "notell": ~ell & root,
        "LL": (a < 50) & (d < 25),
        "LH": (a < 50) & (d >= 25),
        "H": a >= 50,
        "ratio": (a / d >= 1) & (a < 50) & (d >= 25),
    }


def test_strategy_masks_match_independent_oracle():
    ev, ch = _events()
    s = _strategy()
    want = _oracle(ev)
    assert s.gate_ids == list(want)
    for gid, w in want.items():
        got = s.mask(ev, ch, gid)
        np.testing.assert_array_equal(got, w, err_msg=gid)
        assert 0 < w.sum() < len(w), gid  # non-trivial populations
    assert s.parent_chain("ratio") == ["LH", "ratio"]
    assert s.parent_chain("bright") == ["root", "poly", "bright"]
    vals = s.dimension_values(ev, ch, ["b", Dimension("c", LogicleTransform(10000, 0.5, 4.5, 0))])
    np.testing.assert_array_equal(vals[:, 0], ev[:, 1])
    assert np.abs(vals[:, 1] - LogicleTransform(10000, 0.5, 4.5, 0).apply_exact(ev[:, 2])).max() < 1e-7


@pytest.mark.parametrize("chunk", [997, 4096, 20000])
def test_apply_parity_across_chunkings_and_stats(chunk):
    ev, ch = _events()
    s = _strategy()
    want = _oracle(ev)
    res = s.apply((da.from_array(ev, chunks=(chunk, 4)), ch), backend="numpy")
    assert res.masks.numblocks[0] == -(-len(ev) // chunk)
    for gid, w in want.items():
        np.testing.assert_array_equal(np.asarray(res.membership(gid)), w, err_msg=gid)
    st = res.stats
    assert list(st.index) == s.gate_ids
    for gid, w in want.items():
        assert st.loc[gid, "count"] == w.sum()
        assert st.loc[gid, "percent_total"] == pytest.approx(100 * w.sum() / len(ev))
    assert st.loc["bright", "parent"] == "poly"
    assert st.loc["bright", "percent_parent"] == pytest.approx(100 * want["bright"].sum() / want["poly"].sum())
    assert st.loc["ell", "percent_parent"] == pytest.approx(100 * want["ell"].sum() / len(ev))
    assert st.loc["ratio", "percent_parent"] == pytest.approx(100 * want["ratio"].sum() / want["LH"].sum())


def test_apply_large_chunks_use_numba_table_identically():
    """Chunks above 65536 events take the Numba logicle path; results equal small NumPy chunks."""
    ev, ch = _events(150000, seed=5)
    s = _strategy()
    big = s.apply((da.from_array(ev, chunks=(100000, 4)), ch), backend="numpy")
    small = s.apply((da.from_array(ev, chunks=(3000, 4)), ch), backend="numpy")
    np.testing.assert_array_equal(np.asarray(big.masks), np.asarray(small.masks))
    assert big.counts() == small.counts()


def test_apply_one_compute_for_all_gates():
    ev, ch = _events(5000)
    calls = []

    def counting(block):
        calls.append(block.shape[0])
        return block

    arr = da.from_array(ev, chunks=(1000, 4)).map_blocks(counting, dtype=float)
    res = _strategy().apply((arr, ch), backend="numpy")
    res.stats  # noqa: B018
    assert sum(calls) == 5000  # each chunk read once for all ten gates


def test_apply_with_compensation_objects_and_fcs_spillover():
    rng = np.random.default_rng(2)
    S = np.array([[1.0, 0.3], [0.2, 1.0]])
    true = rng.uniform(0, 100, (3000, 2))
    ev = np.c_[true @ S, rng.uniform(0, 1, 3000)]
    ch = ["d1", "d2", "other"]
    comp = Compensation(S, ["d1", "d2"], id="spec", fluorochromes=["F1", "F2"])
    s = GatingStrategy(compensations={"spec": comp})
    s.add_gate(RectangleGate("g1", [Dimension("F1", compensation="spec")], [20], [60]))
    s.add_gate(RectangleGate("g2", [Dimension("d2", compensation="FCS"), Dimension("other", compensation="FCS")], [30, 0.5], [None, None]))
    s.add_gate(RectangleGate("g3", [Dimension("d2")], [30], [None]))
    m1 = s.mask(ev, ch, "g1")
    np.testing.assert_array_equal(m1, (true[:, 0] >= 20) & (true[:, 0] < 60))
    # "FCS" with the file's matrix: compensated; without one: the same as uncompensated
    m2 = s.mask(ev, ch, "g2", spillover=Compensation(S, ["d1", "d2"]))
    np.testing.assert_array_equal(m2, (true[:, 1] >= 30) & (ev[:, 2] >= 0.5))
    np.testing.assert_array_equal(s.mask(ev, ch, "g2"), (ev[:, 1] >= 30) & (ev[:, 2] >= 0.5))
    with pytest.raises(GatingError, match="'nope'"):
        s.add_gate(RectangleGate("g4", [Dimension("F1", compensation="nope")], [0], [1]))


# --------------------------------------------------------------------------- validation


def test_add_gate_validation():
    s = GatingStrategy()
    s.add_gate(RectangleGate("A", ["x"], [0], [1]))
    with pytest.raises(GatingError, match="'A'.*already"):
        s.add_gate(RectangleGate("A", ["x"], [0], [1]))
    with pytest.raises(GatingError, match="'B'.*parent gate 'Z'"):
        s.add_gate(RectangleGate("B", ["x"], [0], [1], parent="Z"))
    with pytest.raises(GatingError, match="'C'.*referenced gate 'Y'"):
        s.add_gate(BooleanGate("C", "and", ["A", "Y"]))
    s.add_gate(QuadrantGate("Q", ["x"], [[0.5]], {"lo": [0], "hi": [1]}))
    with pytest.raises(GatingError, match="quadrant gate"):
        s.add_gate(RectangleGate("D", ["x"], [0], [1], parent="Q"))
    with pytest.raises(GatingError, match="'lo'.*already"):
        s.add_gate(RectangleGate("lo", ["x"], [0], [1]))
    with pytest.raises(GatingError, match="quadrant gate"):
        s.parent_chain("Q")
    assert s.gate_ids == ["A", "lo", "hi"]


def test_apply_missing_channel_names_gate_and_channel():
    ev, ch = _events(100)
    s = GatingStrategy([RectangleGate("A", ["a"], [0], [1]), PolygonGate("P", ["a", "FL9-H"], [[0, 0], [1, 0], [1, 1]], parent="A")])
    with pytest.raises(GatingError) as e:
        s.apply((ev, ch))
    assert "'P'" in str(e.value) and "'FL9-H'" in str(e.value)
    with pytest.raises(GatingError, match="'FL9-H'"):
        s.mask(ev, ch, "P")


def test_apply_empty_sample_raises():
    s = GatingStrategy([RectangleGate("A", ["a"], [0], [1])])
    with pytest.raises(GatingError, match="no events"):
        s.apply((np.zeros((0, 1)), ["a"]))
    with pytest.raises(GatingError, match="'nope'"):
        s.apply((np.zeros((3, 1)), ["a"]), gate_ids=["nope"])


def test_membership_of_unknown_gate():
    ev, ch = _events(100)
    res = _strategy().apply((ev, ch), backend="numpy")
    with pytest.raises(GatingError, match="'zzz'"):
        res.membership("zzz")


def test_apply_to_raw_fcs_sample_scales_first():
    """A sample read without scale=True is scaled ($PnE, $PnG) before gating, as Gating-ML requires."""
    from conftest import shared_path

    p = shared_path("gatingml", "data1.fcs")
    s = GatingStrategy([RectangleGate("fsc", ["FSC-H"], [100], [None]), RangeGate("fl1", "FL1-H", 70, 200)])
    raw = evflow.read_fcs(p, chunk_events=4000)
    scaled = evflow.read_fcs(p, scale=True).to_numpy()
    r = s.apply(raw, backend="numpy")
    np.testing.assert_array_equal(np.asarray(r.membership("fsc")), scaled[:, 0] >= 100)
    fl1 = scaled[:, 2]
    np.testing.assert_array_equal(np.asarray(r.membership("fl1")), (fl1 >= 70) & (fl1 < 200))
    assert r.stats.loc["fsc", "count"] == 440  # the Gating-ML compliance count for Range1


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [3000, 20000])
def test_apply_cupy_equals_numpy(chunk):
    import cupy

    ev, ch = _events()
    s = _strategy()
    ref = s.apply((da.from_array(ev, chunks=(chunk, 4)), ch), backend="numpy")
    gpu = s.apply((da.from_array(ev, chunks=(chunk, 4)), ch), backend="cupy")
    assert isinstance(gpu.masks._meta, cupy.ndarray)
    for gid in s.gate_ids:
        np.testing.assert_array_equal(np.asarray(gpu.membership(gid)), np.asarray(ref.membership(gid)), err_msg=gid)
    assert gpu.counts() == ref.counts()
    one = s.mask(cupy.asarray(ev), ch, "bright")
    assert isinstance(one, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(one), s.mask(ev, ch, "bright"))
