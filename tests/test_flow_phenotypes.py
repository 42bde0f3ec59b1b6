"""count_phenotypes / density2d: Gating-ML truth, known counts, parity across kernels/chunkings, rules, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow.flow import gates as G, transforms as T
from evflow.flow.compensation import Compensation
from evflow.flow.phenotypes import ThresholdRule, count_phenotypes, density2d, parse_threshold_rule
from evflow.kernels import phenotype as kp

# ----------------------------------------------------------------------------
# synthetic EV sample with known phenotypes
# ----------------------------------------------------------------------------

CHANNELS = ["FSC-A", "SSC-A", "FL1-A", "FL2-A", "FL3-A", "Time"]
MARKERS = ["scatter fwd", "scatter side", "CD63", "CD9", "EpCAM", None]
SCATTER_POLY = [[100, 100], [900, 120], [1000, 500], [800, 950], [300, 900], [120, 600], [60, 300], [80, 150]]
THR = {"CD63": 1000.0, "CD9": 500.0, "EpCAM": 2000.0}


def _synthetic(n_per=(400, 300, 200, 150, 120, 90, 60, 30), n_out=500, seed=0):
    """Events inside the scatter polygon with phenotype b repeated n_per[b] times, plus outside events."""
    rng = np.random.default_rng(seed)
    rows, codes = [], []
    for b, n in enumerate(n_per):
        fsc = rng.uniform(300, 700, n)
        ssc = rng.uniform(300, 700, n)
        fl = np.empty((n, 3))
        for i, thr in enumerate(THR.values()):
            pos = (b >> i) & 1
            fl[:, i] = thr * np.where(pos, rng.uniform(1.5, 20, n), rng.uniform(-0.3, 0.8, n))
        rows.append(np.c_[fsc, ssc, fl, np.arange(n)])
        codes += [b] * n
    # outside the polygon: all positive, so a missing gate shows at once
    fsc = rng.uniform(1200, 2000, n_out)
    ssc = rng.uniform(0, 1000, n_out)
    fl = np.c_[[np.full(n_out, 10 * t) for t in THR.values()]].T
    rows.append(np.c_[fsc, ssc, fl, np.arange(n_out)])
    ev = np.concatenate(rows).astype(np.float32)
    perm = rng.permutation(len(ev))
    return ev[perm], np.asarray(codes + [-1] * n_out)[perm]


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    ev, codes = _synthetic()
    path = tmp_path_factory.mktemp("ph") / "ev_sample.fcs"
    evflow.write_fcs(path, ev, CHANNELS, MARKERS)
    return path, ev, codes


def _poly_gate(parent=None):
    return G.PolygonGate("EVs", [G.Dimension("FSC-A"), G.Dimension("SSC-A")], SCATTER_POLY, parent=parent)


MK = {"CD63": ("FL1-A", THR["CD63"]), "CD9": ("CD9", THR["CD9"]), "EpCAM": ("FL3-A", THR["EpCAM"])}


def test_known_phenotype_counts(synth_file):
    path, ev, codes = synth_file
    ds = count_phenotypes(path, parent=_poly_gate(), markers=MK)
    want = np.bincount(codes[codes >= 0], minlength=8)
    assert list(ds.phenotype.values[:3]) == ["CD63- CD9- EpCAM-", "CD63+ CD9- EpCAM-", "CD63- CD9+ EpCAM-"]
    np.testing.assert_array_equal(ds["count"].values[0], want)
    assert int(ds.n_parent[0]) == want.sum() and int(ds.n_total[0]) == len(ev)
    np.testing.assert_allclose(ds.fraction_of_parent.values[0], want / want.sum())
    np.testing.assert_allclose(ds.fraction_of_total.values[0], want / len(ev))
    np.testing.assert_array_equal(ds.threshold.values[0], list(THR.values()))
    # medians and means of the positive events, against NumPy on the gated events
    for j, (_name, (_ch, thr)) in enumerate(MK.items()):
        col = ev[:, j + 2].astype(np.float64)
        pos = col[(codes >= 0) & (col > thr)]
        assert int(ds.n_positive.values[0, j]) == pos.size
        med = float(ds.median_positive.values[0, j])
        assert abs(med - np.median(pos)) <= (np.median(pos) - thr) / 1024 + 1e-9
        np.testing.assert_allclose(float(ds.mean_positive.values[0, j]), pos.mean(), rtol=1e-12)
    sel = ds["count"].sel(sample="ev_sample").where(ds.CD63_positive, 0).sum()
    assert int(sel) == sum(want[b] for b in range(8) if b & 1)


def test_parity_reference_fast_and_chunkings(synth_file):
    path, _, _ = synth_file
    base = count_phenotypes(path, parent=_poly_gate(), markers=MK, impl="numpy")
    for chunk in (None, 1, 97, 1000, 4096):
        smp = evflow.read_fcs(path, scale=True, chunk_events=chunk)
        if chunk == 1:  # one event per chunk: only the small file prefix is sensible
            smp = evflow.read_fcs(path, scale=True, chunk_events=701)
        for impl in ("numpy", "numba"):
            ds = count_phenotypes(smp, parent=_poly_gate(), markers=MK, impl=impl)
            np.testing.assert_array_equal(ds["count"].values, base["count"].values)
            np.testing.assert_array_equal(ds.median_positive.values, base.median_positive.values)
            np.testing.assert_allclose(ds.mean_positive.values, base.mean_positive.values, rtol=1e-12)


def test_unscaled_sample_is_scaled_first(synth_file):
    path, _, _ = synth_file
    a = count_phenotypes(evflow.read_fcs(path), parent=_poly_gate(), markers=MK)
    b = count_phenotypes(evflow.read_fcs(path, scale=True), parent=_poly_gate(), markers=MK)
    np.testing.assert_array_equal(a["count"].values, b["count"].values)


def test_many_samples_dict_and_list(synth_file, tmp_path):
    path, _, _ = synth_file
    ev2, codes2 = _synthetic(n_per=(10, 20, 30, 40, 50, 60, 70, 80), seed=3)
    p2 = tmp_path / "second.fcs"
    evflow.write_fcs(p2, ev2, CHANNELS, MARKERS)
    ds = count_phenotypes({"a": path, "b": evflow.read_fcs(p2, scale=True)}, parent=_poly_gate(), markers=MK)
    assert list(ds.sample.values) == ["a", "b"]
    np.testing.assert_array_equal(ds["count"].sel(sample="b").values, np.arange(10, 90, 10))
    single = count_phenotypes(path, parent=_poly_gate(), markers=MK)
    np.testing.assert_array_equal(ds["count"].sel(sample="a").values, single["count"].values[0])
    ds2 = count_phenotypes([path, p2], parent=_poly_gate(), markers=MK)
    assert list(ds2.sample.values) == ["ev_sample", "second"]


def test_parent_by_id_with_strategy_chain(synth_file):
    path, ev, codes = synth_file
    st = G.GatingStrategy()
    st.add_gate(_poly_gate())
    st.add_gate(G.RangeGate("bright", [G.Dimension("FL1-A", T.LogicleTransform(262144, 0.5, 4.5, 0))],
                            [T.LogicleTransform(262144, 0.5, 4.5, 0).apply(np.array([1000.0]))[0]], [None], parent="EVs"))
    ds = count_phenotypes(path, parent="bright", strategy=st, markers={"CD9": ("FL2-A", THR["CD9"])})
    inside = codes >= 0
    fl1 = ev[:, 2].astype(np.float64)
    # the logicle bound maps back to 1000 up to the inverse's rounding
    expect_parent = inside & (fl1 >= 1000.0 * (1 - 1e-9))
    assert int(ds.n_parent[0]) == expect_parent.sum()
    # the same population through the strategy's own evaluation
    m = st.mask(ev.astype(np.float64), CHANNELS, "bright")
    assert int(ds.n_parent[0]) == m.sum()
    assert ds.attrs["gates"] == "EVs, bright"


# ----------------------------------------------------------------------------
# Gating-ML 2.0 compliance set: every gate, event by event
# ----------------------------------------------------------------------------


def test_gatingml_compliance_every_gate():
    from evflow.flow import phenotypes as P
    from evflow.flow.gatingml import read_gatingml

    st = read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    smp = evflow.read_fcs(shared_path("gatingml", "data1.fcs"), scale=True)
    ev = np.asarray(smp.events.compute())
    n_fused = n_checked = 0
    for gid in st.gate_ids:
        tpath = shared_path("gatingml").joinpath("truth", f"Results_{gid}.txt")
        if not tpath.exists():
            continue
        truth = np.loadtxt(tpath).astype(bool)
        ds = count_phenotypes(smp, parent=gid, strategy=st, markers={"CD4": ("FL1-H", 100.0)})
        assert int(ds.n_parent[0]) == truth.sum(), gid
        comps = {getattr(d, "compensation_id", None) for g in st.parent_chain(gid) for d in st.gates[g].dims}
        if comps <= {None, "FCS"}:  # data1.fcs has no $SPILLOVER: the marker stays uncompensated
            assert int(ds["count"].values[0, 1]) == int((truth & (ev[:, 2] > 100.0)).sum()), gid
        # event by event, through the reference kernel
        chain, mg, _ = P._parent_gates(gid, st)
        comp, use_mask, fcs, _ = P._compile(smp, "data1", chain, mg, st, [], None)
        mask = None if use_mask is None else st.mask(ev, smp.channels, use_mask, fcs)
        _, keep, _ = kp.slot_values(ev, P._make_plan(comp, [], []), mask)
        np.testing.assert_array_equal(keep, truth, err_msg=gid)
        n_fused += use_mask is None
        n_checked += 1
    assert n_checked >= 45 and n_fused >= 25  # most of the set runs fully fused


# ----------------------------------------------------------------------------
# transformed polygons / ellipses agree with the strategy's own evaluation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tr",
    [
        T.LogicleTransform(262144, 0.5, 4.5, 0),
        T.HyperlogTransform(262144, 0.5, 4.5, 0),
        T.AsinhTransform(262144, 4.0, 1.0),
        T.LogTransform(262144, 5.0),
        T.LinearTransform(262144, 100.0),
    ],
    ids=lambda t: type(t).__name__,
)
def test_transformed_polygon_and_ellipse_match_strategy(tr, tmp_path):
    rng = np.random.default_rng(11)
    n = 20000
    ev = np.c_[10 ** rng.uniform(-1, 5, (n, 2)) * rng.choice([-1, 1, 1, 1], (n, 2)), rng.normal(size=(n, 4))]
    channels = ["A", "B", "C", "D", "E", "F"]
    ya, yb = tr.apply(np.array([50.0, 20000.0])), tr.apply(np.array([30.0, 50000.0]))
    verts = [[ya[0], yb[0]], [ya[1], yb[0] + 0.05], [ya[1] - 0.02, yb[1]], [0.5 * (ya[0] + ya[1]), 0.5 * (yb[0] + yb[1])], [ya[0] + 0.01, yb[1]]]
    dims = [G.Dimension("A", tr), G.Dimension("B", tr)]
    poly = G.PolygonGate("P", dims, verts)
    ell = G.EllipsoidGate("E", dims, [0.5 * (ya[0] + ya[1]), 0.5 * (yb[0] + yb[1])],
                          [[0.01, 0.003], [0.003, 0.02]], 1.0)
    p = tmp_path / "t.fcs"
    evflow.write_fcs(p, ev, channels)
    smp = evflow.read_fcs(p, scale=True)
    evs = np.asarray(smp.events.compute())
    st = G.GatingStrategy([poly, ell])
    for gate in (poly, ell):
        want = st.mask(evs, channels, gate.id)
        assert 50 < want.sum() < n - 50
        for impl in ("numpy", "numba"):
            ds = count_phenotypes(smp, parent=gate, markers={"m": ("C", 0.0)}, impl=impl)
            assert int(ds.n_parent[0]) == want.sum(), (gate.id, impl)
            assert int(ds["count"].values[0, 1]) == int((want & (evs[:, 2] > 0)).sum())


# ----------------------------------------------------------------------------
# compensation
# ----------------------------------------------------------------------------


def test_markers_use_the_gates_compensation(synth_file):
    path, ev, codes = synth_file
    spill = np.array([[1.0, 0.2, 0.0], [0.05, 1.0, 0.1], [0.0, 0.3, 1.0]])
    comp = Compensation(spill, ["FL1-A", "FL2-A", "FL3-A"], id="spill1")
    gate = G.RangeGate("fl3", [G.Dimension("FL3-A", compensation=comp)], [0.0], [None])
    ds = count_phenotypes(path, parent=gate, markers=MK)
    x = ev.astype(np.float64)
    c = x.copy()
    c[:, 2:5] = x[:, 2:5] @ np.linalg.inv(spill)
    parent = c[:, 4] >= 0.0
    code = sum(((c[:, 2 + i] > t) << i) for i, t in enumerate(THR.values()))
    np.testing.assert_array_equal(ds["count"].values[0], np.bincount(code[parent], minlength=8))
    # explicitly uncompensated markers differ
    raw = count_phenotypes(path, parent=gate, markers=MK, compensation=False)
    code_raw = sum(((x[:, 2 + i] > t) << i) for i, t in enumerate(THR.values()))
    np.testing.assert_array_equal(raw["count"].values[0], np.bincount(code_raw[parent], minlength=8))
    assert not np.array_equal(raw["count"].values, ds["count"].values)


# ----------------------------------------------------------------------------
# threshold rules from controls
# ----------------------------------------------------------------------------


def test_percentile_rule_from_isotype_control(synth_file, tmp_path):
    path, ev, codes = synth_file
    rng = np.random.default_rng(5)
    iso = np.c_[rng.uniform(300, 700, (3000, 2)), rng.lognormal(5, 1, (3000, 3)), np.arange(3000)]
    iso[:1000, 0] = 5000  # outside the scatter polygon: must not count for the threshold
    iso[:1000, 2] = 1e6
    p_iso = tmp_path / "isotype.fcs"
    evflow.write_fcs(p_iso, iso.astype(np.float32), CHANNELS, MARKERS)
    iso32 = iso.astype(np.float32).astype(np.float64)
    markers = {"CD63": ("FL1-A", "percentile 99.5 of isotype"),
               "CD9": ("FL2-A", {"rule": "percentile", "q": 90, "control": "isotype"}),
               "EpCAM": ("FL3-A", "mean+3sd of isotype")}
    ds = count_phenotypes(path, parent=_poly_gate(), markers=markers, controls={"isotype": p_iso})
    gated = iso32[1000:]
    want = [np.percentile(gated[:, 2], 99.5), np.percentile(gated[:, 3], 90), gated[:, 4].mean() + 3 * gated[:, 4].std()]
    np.testing.assert_allclose(ds.threshold.values[0], want, rtol=1e-12)
    x = ev.astype(np.float64)
    inside = codes >= 0
    code = sum(((x[:, 2 + i] > t) << i) for i, t in enumerate(ds.threshold.values[0]))
    np.testing.assert_array_equal(ds["count"].values[0], np.bincount(code[inside], minlength=8))
    assert "percentile 99.5 of isotype" in ds.attrs["threshold_rules"]


def test_rule_parsing():
    r = parse_threshold_rule("percentile 99.5 of isotype control")
    assert isinstance(r, ThresholdRule) and r.q == 99.5 and r.control == "isotype control"
    assert parse_threshold_rule("1e3") == 1000.0 and parse_threshold_rule(7) == 7.0
    r = parse_threshold_rule("mean + 2.5 sd of buffer")
    assert r.rule == "mean_sd" and r.n_sd == 2.5 and r.control == "buffer"
    for bad in ("median of iso", {"rule": "percentile", "control": "iso"}, {"rule": "percentile", "q": 150, "control": "i"},
                float("nan"), "percentile 99 of", None):
        with pytest.raises(evflow.GatingError, match="marker"):
            parse_threshold_rule(bad, "CD63")


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------


def test_missing_control_names_rule_and_control(synth_file):
    path, _, _ = synth_file
    with pytest.raises(evflow.GatingError, match=r"CD63.*percentile 99 of iso.*'iso'"):
        count_phenotypes(path, markers={"CD63": ("FL1-A", "percentile 99 of iso")}, controls={"buffer": path})


def test_gate_on_missing_channel_names_gate(synth_file):
    path, _, _ = synth_file
    gate = G.PolygonGate("scatter", [G.Dimension("FSC-H"), G.Dimension("SSC-A")], SCATTER_POLY)
    with pytest.raises(evflow.GatingError, match=r"gate 'scatter'.*'FSC-H'"):
        count_phenotypes(path, parent=gate, markers=MK)


def test_missing_marker_channel_and_nonfinite_vertices(synth_file):
    path, _, _ = synth_file
    with pytest.raises(evflow.GatingError, match="marker 'CD81'.*'FL7-A'"):
        count_phenotypes(path, markers={"CD81": ("FL7-A", 1.0)})
    with pytest.raises(evflow.GatingError, match="gate 'bad'.*non-finite"):
        G.PolygonGate("bad", ["FSC-A", "SSC-A"], [[0, 0], [1, np.nan], [1, 1]])
    with pytest.raises(evflow.GatingError, match="marker 'CD63'.*not finite"):
        count_phenotypes(path, markers={"CD63": ("FL1-A", np.inf)})


def test_empty_sample_is_an_error(tmp_path):
    p = tmp_path / "empty.fcs"
    evflow.write_fcs(p, np.zeros((0, 6), np.float32), CHANNELS, MARKERS)
    with pytest.raises(evflow.GatingError, match="empty.*no events"):
        count_phenotypes(p, markers=MK)


def test_parent_id_without_strategy(synth_file):
    path, _, _ = synth_file
    with pytest.raises(evflow.GatingError, match="strategy="):
        count_phenotypes(path, parent="EVs", markers=MK)


# ----------------------------------------------------------------------------
# density histograms
# ----------------------------------------------------------------------------


def test_density2d_matches_histogram2d(synth_file):
    path, ev, codes = synth_file
    tr = T.LogicleTransform(262144, 0.5, 4.5, 0)
    d = density2d(path, "FL1-A", "FL2-A", bins=64, transforms=tr, parent=_poly_gate())
    x = tr.apply(ev[codes >= 0, 2].astype(np.float64))
    y = tr.apply(ev[codes >= 0, 3].astype(np.float64))
    want, xe, ye = np.histogram2d(x, y, bins=64, range=((0, 1), (0, 1)))
    np.testing.assert_array_equal(d.values, want.astype(np.int64))
    np.testing.assert_allclose(d.attrs["x_edges"], xe)
    assert d.attrs["n_parent"] == (codes >= 0).sum() and d.attrs["n_outside"] == (codes >= 0).sum() - want.sum()
    ref = density2d(path, "FL1-A", "FL2-A", bins=(64, 64), transforms=tr, parent=_poly_gate(), impl="numpy")
    np.testing.assert_array_equal(ref.values, d.values)
    lin = density2d(path, "FSC-A", "SSC-A", bins=(20, 10), range=((0, 2000), (0, 1000)))
    w2, _, _ = np.histogram2d(ev[:, 0], ev[:, 1], bins=(20, 10), range=((0, 2000), (0, 1000)))
    np.testing.assert_array_equal(lin.values, w2.astype(np.int64))


def test_density2d_bad_range(synth_file):
    path, _, _ = synth_file
    with pytest.raises(evflow.GatingError, match="range"):
        density2d(path, "FL1-A", "FL2-A", range=((1, 0), (0, 1)))


# ----------------------------------------------------------------------------
# real beads file
# ----------------------------------------------------------------------------


def test_beads_file_parity_and_counts():
    p = shared_path("beads", "flowcal", "sample001.fcs")
    smp = evflow.read_fcs(p, scale=True, chunk_events=5000)
    ev = np.asarray(smp.events.compute())
    gate = G.EllipsoidGate("singlets", ["FSC", "SSC"], [np.median(ev[:, 1]), np.median(ev[:, 2])],
                           [[np.var(ev[:, 1]) / 4, 0], [0, np.var(ev[:, 2]) / 4]], 1.0)
    markers = {"FL1": ("FL1", 100.0), "FL3": ("FL3", 50.0)}
    ds = count_phenotypes(smp, parent=gate, markers=markers)
    st = G.GatingStrategy([gate])
    m = st.mask(ev, smp.channels, "singlets")
    code = (ev[:, 3] > 100.0).astype(int) + 2 * (ev[:, 5] > 50.0)
    np.testing.assert_array_equal(ds["count"].values[0], np.bincount(code[m], minlength=4))
    one = count_phenotypes(evflow.read_fcs(p, scale=True), parent=gate, markers=markers, impl="numpy")
    np.testing.assert_array_equal(one["count"].values, ds["count"].values)
    np.testing.assert_array_equal(one.median_positive.values, ds.median_positive.values)


# ----------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------


@pytest.mark.gpu
def test_cupy_backend_matches_cpu(synth_file):
    path, _, _ = synth_file
    cpu = count_phenotypes(path, parent=_poly_gate(), markers=MK, backend="numpy", impl="numpy")
    for chunk in (None, 777):
        gpu = count_phenotypes(evflow.read_fcs(path, scale=True, chunk_events=chunk), parent=_poly_gate(),
                               markers=MK, backend="cupy")
        np.testing.assert_array_equal(gpu["count"].values, cpu["count"].values)
        np.testing.assert_array_equal(gpu.median_positive.values, cpu.median_positive.values)
        np.testing.assert_allclose(gpu.mean_positive.values, cpu.mean_positive.values, rtol=1e-12)
    tr = T.LogicleTransform(262144, 0.5, 4.5, 0)
    dg = density2d(path, "FL1-A", "FL2-A", bins=64, transforms=tr, parent=_poly_gate(), backend="cupy")
    dc = density2d(path, "FL1-A", "FL2-A", bins=64, transforms=tr, parent=_poly_gate(), backend="numpy")
    np.testing.assert_array_equal(dg.values, dc.values)


@pytest.mark.gpu
def test_cupy_gatingml_compliance_counts():
    from evflow.flow.gatingml import read_gatingml

    st = read_gatingml(shared_path("gatingml", "gml", "gml_all_gates.xml"))
    smp = evflow.read_fcs(shared_path("gatingml", "data1.fcs"), scale=True, chunk_events=3000)
    for gid in st.gate_ids:
        tpath = shared_path("gatingml").joinpath("truth", f"Results_{gid}.txt")
        if not tpath.exists():
            continue
        truth = np.loadtxt(tpath).astype(bool)
        ds = count_phenotypes(smp, parent=gid, strategy=st, backend="cupy")
        assert int(ds.n_parent[0]) == truth.sum(), gid


def test_samples_and_controls_make_one_graph_one_compute(synth_file, tmp_path):
    import dask
    import dask.threaded

    path, _, _ = synth_file
    calls = []

    def counting_get(dsk, keys, **kw):
        calls.append(1)
        return dask.threaded.get(dsk, keys, **kw)

    markers = dict(MK, CD63=("FL1-A", "percentile 50 of iso"))
    with dask.config.set(scheduler=counting_get):
        copy = tmp_path / "copy.fcs"
        copy.write_bytes(path.read_bytes())
        ds = count_phenotypes({"a": path, "b": evflow.read_fcs(copy, scale=True, chunk_events=500)},
                              parent=_poly_gate(), markers=markers, controls={"iso": path})
    assert len(calls) == 1
    np.testing.assert_array_equal(ds["count"].sel(sample="a").values, ds["count"].sel(sample="b").values)
    build, graph = count_phenotypes(path, parent=_poly_gate(), markers=MK, compute=False)
    again = build(dask.compute(graph)[0])
    direct = count_phenotypes(path, parent=_poly_gate(), markers=MK)
    np.testing.assert_array_equal(again["count"].values, direct["count"].values)
    assert again["count"].values.sum() == (synth_file[2] >= 0).sum()


def test_array_input_and_display_scale_thresholds(synth_file):
    import dask.array as da

    path, ev, codes = synth_file
    lg = T.LogicleTransform(262144, 0.5, 4.5, 0)
    disp = {m: float(lg.apply_exact(np.array([t]))[0]) for m, t in THR.items()}
    chans = {"CD63": "FL1-A", "CD9": "FL2-A", "EpCAM": "FL3-A"}
    markers = {m: (chans[m], disp[m], lg) for m in THR}
    a = count_phenotypes((ev, CHANNELS), parent=_poly_gate(), markers=markers)
    b = count_phenotypes({"x": (da.from_array(ev, chunks=(333, -1)), CHANNELS)}, parent=_poly_gate(),
                         markers={m: (chans[m], t) for m, t in THR.items()})
    np.testing.assert_array_equal(a["count"].values, b["count"].values)
    np.testing.assert_array_equal(a["count"].values[0], np.bincount(codes[codes >= 0], minlength=8))
    np.testing.assert_allclose(a.threshold.values[0], list(THR.values()), rtol=1e-9)
    assert list(b.sample.values) == ["x"]
    with pytest.raises(evflow.GatingError, match="channel units; drop the transform"):
        count_phenotypes((ev, CHANNELS), markers={"CD63": ("FL1-A", "percentile 9 of iso", lg)}, controls={"iso": path})
    with pytest.raises(evflow.GatingError, match="shape"):
        count_phenotypes((ev[:, :3], CHANNELS), markers={"CD63": ("FL1-A", 1.0)})


def test_file_spillover_fcs_compensation(synth_file, tmp_path):
    path, ev, codes = synth_file
    spill = np.array([[1.0, 0.15, 0.02], [0.1, 1.0, 0.2], [0.0, 0.05, 1.0]])
    text = "3,FL1-A,FL2-A,FL3-A," + ",".join(f"{v:g}" for v in spill.ravel())
    p = tmp_path / "spill.fcs"
    evflow.write_fcs(p, ev, CHANNELS, MARKERS, meta={"$SPILLOVER": text})
    smp = evflow.read_fcs(p, scale=True)
    assert smp.spillover is not None
    gate = G.RectangleGate("scatter+fl", [G.Dimension("FSC-A", compensation="FCS"), G.Dimension("FL2-A", compensation="FCS")],
                           [250.0, 0.0], [750.0, None])
    ds = count_phenotypes(smp, parent=gate, markers=MK)
    x = ev.astype(np.float64)
    c = x.copy()
    c[:, 2:5] = x[:, 2:5] @ np.linalg.inv(spill)
    parent = (c[:, 0] >= 250) & (c[:, 0] < 750) & (c[:, 3] >= 0)
    code = sum(((c[:, 2 + i] > t) << i) for i, t in enumerate(THR.values()))
    np.testing.assert_array_equal(ds["count"].values[0], np.bincount(code[parent], minlength=8))
    assert "FCS" in ds.attrs["fused"]
    st = G.GatingStrategy([gate])
    assert int(ds.n_parent[0]) == int(st.mask(np.asarray(smp.events.compute()), CHANNELS, gate.id, smp.spillover).sum())
