"""The napari plugin's flow side on a real viewer (Xvfb): an experiment's flow samples with its gates,
the gating widget on them, the cached recount, and screenshots that are not blank.

Run under a display: ``xvfb-run -a python -m pytest tests/test_napari_flow.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import evflow  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo experiment run through the pipeline: (output folder, data folder)."""
    from evflow.pipeline.demo import demo as run_demo

    out = tmp_path_factory.mktemp("napari-flow-demo")
    run_demo(out, quiet=True, progress=False, n_events=20_000, n_fields=1, field_shape=(96, 96))
    return out, out / "data"


def _meta(ly):
    return (ly.metadata or {}).get("evflow") or {}


def _wait_counts(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: w.counts_generation == w._gen and w.counts is not None or w.error is not None,
                    timeout=timeout)
    assert w.error is None, w.error


def test_open_experiment_brings_flow_samples_with_the_runs_gate(make_napari_viewer, demo):
    """Every flow sample of the experiment: a density image and one gates layer holding the experiment's
    size gate, drawn so that it holds the events the run counted as its parent population."""
    import xarray as xr

    from evflow.pipeline.config import load_experiment
    from evflow_napari._flow import shapes_to_gates

    out, data = demo
    exp = load_experiment(data / "experiment.toml", check_files=False)
    flow_samples = [s.name for s in exp.samples if s.flow is not None]
    viewer = make_napari_viewer()
    layers = viewer.open(str(data / "experiment.toml"), plugin="evflow")
    dens = [ly for ly in layers if _meta(ly).get("kind") == "flow"]
    gates = [ly for ly in layers if _meta(ly).get("kind") == "gates"]
    assert [_meta(ly)["sample"] for ly in dens] == flow_samples
    assert [_meta(ly)["sample"] for ly in gates] == flow_samples
    assert not any(ly.visible for ly in dens + gates)  # hidden beside the image fields (another frame)
    assert all(_meta(ly)["x"] == "SSC-H" and _meta(ly)["y"] == "FL1-H" for ly in dens)
    assert _meta(dens[0])["x_transform"] == "linear" and _meta(dens[0])["y_transform"] == "logicle"
    ds = xr.open_zarr(out / "results.zarr")
    checked = 0
    for ly in gates:
        m = _meta(ly)
        assert m["parent"] == "evflow_size" and m["experiment"] == str((data / "experiment.toml").resolve())
        if not len(ly.data):  # the gate lies beyond every event of the sample (the buffer): said so
            assert m["left_out"] == ["evflow_size"]
            assert int(ds["n_parent"].sel(sample=m["sample"])) == 0
            continue
        assert list(ly.shape_type) == ["rectangle"] and list(ly.features["gate"]) == ["evflow_size"]
        gate = shapes_to_gates(ly.data, ly.shape_type, m, list(ly.features["gate"]))[0]
        n = int(evflow.count_phenotypes(m["path"], parent=gate)["n_parent"][0])
        run = int(ds["n_parent"].sel(sample=m["sample"]))
        assert run > 0 and abs(n - run) <= 2, (m["sample"], n, run)  # vertices are stored as float32
        checked += 1
    assert checked >= len(flow_samples) - 1
    # flow=False: the image side only
    from evflow_napari._reader import read_experiment_layers

    assert not any(_meta(type("L", (), {"metadata": kw.get("metadata")})).get("kind") in ("flow", "gates")
                   for _, kw, _ in read_experiment_layers(data / "experiment.toml", flow=False))


def test_gating_widget_opens_an_experiment_and_gives_the_runs_counts(make_napari_viewer, qtbot, demo, tmp_path):
    """"Open experiment…" (``open_experiment``): samples listed, one gates layer per sample however often
    the experiment is opened, the experiment's markers and the run's thresholds, and on the run's gate
    the run's phenotype counts; choosing a sample shows its layers only."""
    import xarray as xr

    from evflow_napari._qt import FlowGatingWidget

    out, data = demo
    viewer = make_napari_viewer()
    w = FlowGatingWidget(viewer)
    qtbot.addWidget(w)
    added = w.open_experiment(data / "experiment.toml")
    qtbot.wait(50)
    names = [w.sample_box.itemText(i) for i in range(w.sample_box.count())]
    assert "S2 density" in names and len(added) == 2 * len(names)
    w.sample_box.setCurrentText("S2 density")
    qtbot.wait(50)
    _wait_counts(qtbot, w)
    assert w.markers == {"CD63": "FL1-H", "EpCAM": "FL2-H"}
    ds = xr.open_zarr(out / "results.zarr")
    assert w.threshold_values() == pytest.approx(dict(zip(["CD63", "EpCAM"], ds["threshold"].sel(sample="S2").values)),
                                                 rel=1e-6)
    assert w.gates_layer.name == "S2 gates" and w.active_gate == 0
    run = ds["count"].sel(sample="S2").values
    got = w.counts["count"].values[0]
    assert np.abs(got - run).max() <= 2 and got.sum() > 0, (got, run)
    shown = {ly.name for ly in viewer.layers if ly.visible and _meta(ly).get("kind") in ("flow", "gates", "axes")}
    assert shown == {"S2 density", "S2 gates", "S2 axes"}
    # opening the experiment again, or the sample's file, adds no second gates layer
    assert w.open_experiment(data / "experiment.toml") == []
    viewer.open(str(data / "experiment.toml"), plugin="evflow")
    w.open_sample(str(data / "flow" / "S2.fcs"))
    qtbot.wait(50)
    s2 = [ly for ly in viewer.layers if _meta(ly).get("kind") == "gates" and _meta(ly)["path"].endswith("S2.fcs")]
    assert len(s2) >= 1 and w.gates_layer is s2[0]


def _gate_shapes(view):
    """Gates drawn over the middle of the events (between their 5th and 95th percentiles on each axis)."""
    G = evflow.gates
    dims = view.dimensions()
    d = np.column_stack([np.asarray(t.apply(view.xy_events()[:, i].astype(np.float64))) for i, t in
                         enumerate(view.transforms)])
    lo, hi = np.nanpercentile(d, 5, axis=0), np.nanpercentile(d, 95, axis=0)

    def at(u):  # unit box -> display values
        return (lo + np.asarray(u, float) * (hi - lo)).tolist()

    poly = np.array([at(u) for u in ([0.12, 0.2], [0.85, 0.15], [0.9, 0.7], [0.5, 0.95], [0.1, 0.6])])
    sx, sy = (hi - lo) / 2
    return [G.PolygonGate("poly", dims, poly),
            G.RectangleGate("rect", dims, mins=at([0.2, 0.25]), maxs=at([0.8, 0.9])),
            G.RectangleGate("half-open", dims, mins=[None, at([0, 0.3])[1]], maxs=[at([0.7, 0])[0], None]),
            G.EllipsoidGate("ell", dims, mean=at([0.5, 0.5]), covariance=[[0.3 * sx * sx, 0.1 * sx * sy],
                                                                          [0.1 * sx * sy, 0.2 * sy * sy]],
                            distance_square=1.0)]


@pytest.mark.parametrize("kinds", [("linear", "logicle"), ("logicle", "logicle"), ("asinh", "log"), ("linear", "linear")])
def test_recount_equals_count_phenotypes_on_a_real_file(kinds):
    """The widget's cached recount gives count_phenotypes' integers on a real file (data1.fcs, BD FACSCalibur),
    for polygons, rectangles (also half-open) and ellipses on every display scale, with cached gates and
    thresholds reused, and after a threshold change."""
    from conftest import shared_path

    from evflow_napari._flow import FlowView
    from evflow_napari._recount import Recounter

    path = shared_path("gatingml", "data1.fcs")
    view = FlowView(path, "FSC-H", "FL1-H", *kinds)
    rc = Recounter(view)
    s = view.sample
    markers = {"CD4": ("FL1-H", 120.0, None), "CD8": ("FL2-H", 80.0, None), "CD3": ("FL3-H", 60.0, None)}
    for gate in [None, *_gate_shapes(view)]:
        ref = evflow.count_phenotypes(s, parent=gate, markers=markers)
        got = rc.counts(gate, markers)
        assert rc.last["fused"]
        np.testing.assert_array_equal(got["count"].values, ref["count"].values)
        np.testing.assert_array_equal(got["n_parent"].values, ref["n_parent"].values)
        np.testing.assert_array_equal(got["n_positive"].values, ref["n_positive"].values)
        np.testing.assert_allclose(got["fraction_of_parent"].values, ref["fraction_of_parent"].values)
        assert got["phenotype"].values.tolist() == ref["phenotype"].values.tolist()
        if gate is not None:
            assert 0 < int(ref["n_parent"][0]) < s.n_events  # the gate cuts the sample: the test can fail
            again = rc.counts(gate, markers)
            assert rc.last["gate_reused"]
            np.testing.assert_array_equal(again["count"].values, ref["count"].values)
    gate = _gate_shapes(view)[0]
    m2 = {**markers, "CD8": ("FL2-H", 300.0, None)}
    np.testing.assert_array_equal(rc.counts(gate, m2)["count"].values,
                                  evflow.count_phenotypes(s, parent=gate, markers=m2)["count"].values)
    assert rc.last["gate_reused"]


def test_recount_synthetic_truth_six_markers_and_fallback(tmp_path):
    """Synthetic events with known phenotypes: six markers, 64 phenotypes counted exactly in a gate; a
    compensated gate goes to count_phenotypes itself and gives its counts."""
    from evflow_napari._flow import FlowView
    from evflow_napari._recount import Recounter

    rng = np.random.default_rng(3)
    n, k = 40_000, 6
    truth = rng.integers(0, 1 << k, n)
    fl = np.where((truth[:, None] >> np.arange(k)) & 1, 5000.0, 20.0) * rng.lognormal(0, 0.1, (n, k))
    ssc = rng.uniform(0, 1000, n)
    names = ["SSC-H"] + [f"FL{i}-H" for i in range(1, k + 1)]
    p = tmp_path / "six.fcs"
    spill = "2,SSC-H,FL1-H,1,0.05,0.02,1"  # a $SPILLOVER: a gate on compensated SSC-H is not fused
    evflow.write_fcs(p, np.column_stack([ssc, fl]).astype(np.float32), names, meta={"$SPILLOVER": spill},
                     ranges=[1024] * (k + 1))
    view = FlowView(p, "SSC-H", "FL1-H", "linear", "logicle")
    rc = Recounter(view)
    markers = {c: (c, 500.0, None) for c in names[1:]}
    tx = view.transforms[0]
    lo, hi = 250.0, 750.0
    gate = evflow.gates.RectangleGate("g", [evflow.gates.Dimension("SSC-H", tx)],
                                      mins=[float(tx.apply(np.array([lo]))[0])], maxs=[float(tx.apply(np.array([hi]))[0])])
    got = rc.counts(gate, markers)["count"].values[0]
    sel = (ssc.astype(np.float32) >= lo) & (ssc.astype(np.float32) < hi)
    np.testing.assert_array_equal(got, np.bincount(truth[sel], minlength=1 << k))
    comp = evflow.gates.RectangleGate("c", [evflow.gates.Dimension("SSC-H", tx, compensation="FCS")], mins=[0.25],
                                      maxs=[0.75])
    ref = evflow.count_phenotypes(view.sample, parent=comp, markers=markers)
    np.testing.assert_array_equal(rc.counts(comp, markers)["count"].values, ref["count"].values)
    assert rc.last["fused"] is False


def _grab(widget):
    from napari._qt.utils import QImg2array

    return QImg2array(widget.grab().toImage())[..., :3].astype(np.int64)


def _has_colour(img, hex_colour, tol=10):
    rgb = np.array([int(hex_colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)])
    return bool((np.abs(img - rgb).max(axis=-1) <= tol).any())


def test_screenshots_of_the_flow_gating_and_results_widgets_are_not_blank(make_napari_viewer, qtbot, demo):
    """Screenshots on a real viewer: the gating window shows the density (many levels) and a filled counts
    table; the results browser's legend shows every phenotype colour of the
    shared palette."""
    from evflow.palette import phenotype_colour
    from evflow_napari._qt import FlowGatingWidget, ResultsBrowserWidget

    out, data = demo
    viewer = make_napari_viewer(show=True)
    w = FlowGatingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Flow gating")
    viewer.window._qt_window.resize(1200, 800)
    w.open_sample(str(data / "flow" / "S2.fcs"))
    w.gates_layer.add_polygons([np.array([[0.3, 0.05], [0.95, 0.05], [0.95, 0.6], [0.3, 0.6]])])
    _wait_counts(qtbot, w)
    viewer.reset_view()
    qtbot.wait(100)
    img = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(np.int64)
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    panel = _grab(w)
    assert panel.std() > 10 and w.table.rowCount() == 4 and w.table.item(0, 1).text()
    rb = ResultsBrowserWidget(viewer)
    qtbot.addWidget(rb)
    rb.load(out / "results.zarr")
    rb.resize(500, 900)
    rb.show()
    qtbot.wait(100)
    shot = _grab(rb)
    assert shot.std() > 10
    assert rb.legend.entries and all(_has_colour(shot, c) for c in rb.legend.entries.values())
    assert list(rb.legend.entries.values()) == [phenotype_colour(b) for b in rb.bitmasks()]
