"""The napari plugin, in a real (offscreen-rendered under Xvfb) napari viewer.

Run under a display: ``xvfb-run -a python -m pytest tests/test_napari_plugin.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import evflow  # noqa: E402

DEMO = dict(n_events=20_000, n_fields=2, field_shape=(128, 128))


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo experiment run through the pipeline: (output folder, data folder)."""
    from evflow.pipeline.demo import demo as run_demo

    out = tmp_path_factory.mktemp("napari-demo")
    run_demo(out, quiet=True, progress=False, **DEMO)
    return out, out / "data"


def _wait_counts(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: w.counts_generation == w._gen and w.counts is not None or w.error is not None,
                    timeout=timeout)
    assert w.error is None, w.error

def _gating_widget(make_napari_viewer, qtbot, demo, name):
    """A viewer with the demo's flow sample ``name`` opened and the gating widget on it."""
    from evflow_napari._qt import FlowGatingWidget

    _, data = demo
    path = data / "flow" / name
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="evflow")
    w = FlowGatingWidget(viewer)
    qtbot.addWidget(w)
    return path, w



def test_manifest_discovered():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("evflow")
    assert mf.name == "evflow"
    assert {r.command for r in mf.contributions.readers} == {"evflow.get_reader"}
    assert [w.layer_types for w in mf.contributions.writers] == [["shapes"]]
    assert {s.key for s in mf.contributions.sample_data} == {"demo_flow", "demo_field"}
    assert len(mf.contributions.widgets) == 3


def test_open_fcs_density_and_gates_layers(make_napari_viewer, demo):
    from evflow_napari._flow import channel_top, make_transform

    _, data = demo
    path = data / "flow" / "S2.fcs"
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="evflow")
    assert [ly._type_string for ly in layers] == ["image", "shapes"]
    img, gates = layers
    assert img.name == "S2 density" and gates.name == "S2 gates"
    s = evflow.read_fcs(path)
    tx = make_transform("linear", channel_top(s, "SSC-H"))  # scatter: linear by default
    ty = make_transform("logicle", channel_top(s, "FL1-H"))  # fluorescence: logicle
    assert img.metadata["evflow"]["x_transform"] == "linear" and img.metadata["evflow"]["y_transform"] == "logicle"
    d = evflow.density2d(s, "SSC-H", "FL1-H", bins=512, range=((0, 1), (0, 1)), transforms=(tx, ty))
    np.testing.assert_array_equal(img.metadata["evflow"]["density"], d.values.T)
    np.testing.assert_allclose(img.data, np.log10(1 + d.values.T), rtol=1e-6)
    assert int(d.sum()) == s.n_events == 20_000
    assert tuple(img.axis_labels) == ("FL1-H", "SSC-H")
    # world coordinates are the display scale: bin centres of the first and last bins
    np.testing.assert_allclose(img.data_to_world((0, 0)), (0.5 / 512, 0.5 / 512))
    np.testing.assert_allclose(img.data_to_world((511, 511)), (511.5 / 512, 511.5 / 512))
    assert gates.metadata["evflow"]["kind"] == "gates" and gates.metadata["evflow"]["x"] == "SSC-H"


def test_open_tiff_fields_lazy_with_marker_names(make_napari_viewer, demo):
    import dask.array as da
    import tifffile

    from evflow_napari._reader import read_tiff_layers

    _, data = demo
    p0, p1 = data / "images" / "S1_fov0.tif", data / "images" / "S1_fov1.tif"
    viewer = make_napari_viewer()
    layers = viewer.open(str(p0), plugin="evflow")
    assert [ly.name for ly in layers] == ["CD9", "CD63", "CD81"]  # from the experiment file next to the images
    raw = tifffile.imread(p0)
    for c, ly in enumerate(layers):
        np.testing.assert_array_equal(np.asarray(ly.data), raw[c])
    stack = read_tiff_layers([str(p1), str(p0)])
    assert [kw["name"] for _, kw, _ in stack] == ["CD9", "CD63", "CD81"]
    d = stack[1][0]
    assert isinstance(d, da.Array) and d.shape == (2, 128, 128) and d.chunks[0] == (1, 1)
    np.testing.assert_array_equal(d[0].compute(), raw[1])  # sorted: fov0 first
    np.testing.assert_array_equal(d[1].compute(), tifffile.imread(p1)[1])


def test_open_a_multi_position_time_lapse_nd2_file(make_napari_viewer, tmp_path):
    """Each channel a layer (position, time, y, x) named as the file names it; before, a layer took the time
    axis for the channel axis and showed both channels of one frame."""
    pytest.importorskip("nd2")
    from nd2_builder import write_nd2

    frames = np.random.default_rng(0).poisson(50, (3, 2, 2, 16, 20)).astype(np.uint16)  # T, P, C, Y, X
    frames[:, :, 1] += 1000
    write_nd2(tmp_path / "chip.nd2", frames, channels=("CD9", "CD63"))
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "chip.nd2"), plugin="evflow")
    assert [ly.name for ly in layers] == ["CD9", "CD63"]
    for c, ly in enumerate(layers):
        assert ly.data.shape == (2, 3, 16, 20)
        np.testing.assert_array_equal(np.asarray(ly.data), frames[:, :, c].transpose(1, 0, 2, 3))


def test_detection_widget_on_a_time_lapse_detects_the_frame_in_view(make_napari_viewer, qtbot, tmp_path):
    """On (position, time, y, x) layers the widget detects in the position and frame the viewer shows and
    places the vesicles there (it took the (time, y, x) stack of the position for one field)."""
    pytest.importorskip("nd2")
    from nd2_builder import write_nd2

    from evflow_napari import detect_field
    from evflow_napari._qt import VesicleDetectionWidget

    chips = [evflow.synth.tirf((96, 96), n_fields=2, markers=("CD9", "CD63"), density_per_um2=0.3, seed=s,
                               chromatic_shift=False) for s in (1, 2, 3)]
    frames = np.stack([np.asarray(c.images.values) for c in chips]).astype(np.uint16)  # T, P, C, Y, X
    write_nd2(tmp_path / "movie.nd2", frames, channels=("CD9", "CD63"))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "movie.nd2"), plugin="evflow")
    w = VesicleDetectionWidget(viewer)
    qtbot.addWidget(w)
    viewer.dims.current_step = (1, 2, 0, 0)  # position 1, frame 2
    assert w.current_field_index() == (1, 2)
    with qtbot.waitSignal(w.detected, timeout=60000):
        w.run()
    assert w.error is None
    want = detect_field(frames[2, 1], ["CD9", "CD63"], w.parameters())
    pts = w.points_layer.data
    assert len(want) > 5 and pts.shape == (len(want), 4)
    np.testing.assert_array_equal(pts[:, :2], np.tile([1.0, 2.0], (len(want), 1)))
    np.testing.assert_allclose(pts[:, 2:], want[["y", "x"]].to_numpy(float), atol=1e-9)


@pytest.fixture
def results_copy(demo, tmp_path):
    """The demo's outputs without the run's private item store: the reader must use ``spots.parquet``."""
    import shutil

    out, _ = demo
    dst = tmp_path / "run"
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns(".evflow"))
    assert (dst / "spots.parquet").is_file() and not (dst / ".evflow").exists()
    return dst


@pytest.mark.parametrize("table", ["parquet", "csv"])
def test_open_results_zarr_points_by_phenotype(make_napari_viewer, results_copy, table):
    out = results_copy
    if table == "csv":
        (out / "spots.parquet").unlink()
    viewer = make_napari_viewer()
    layers = viewer.open(str(out / "results.zarr"), plugin="evflow")
    kinds = [ly._type_string for ly in layers]
    assert kinds == ["image", "image", "image", "points"]
    pts = layers[-1]
    import xarray as xr

    ds = xr.open_zarr(out / "results.zarr")
    n_fields = int(np.isfinite(ds["image_field_area_um2"].values).sum())
    assert layers[0].data.shape == (n_fields, 128, 128)
    # the points are the run's vesicles: counts per phenotype equal the stored counts
    feats = pts.features
    got = feats.groupby(["sample", "phenotype"], observed=True).size()
    for s in ds["image_sample"].values:
        for p, want in zip(ds["image_phenotype"].values, ds["image_count_all_fov"].sel(image_sample=s).values):
            assert int(got.get((str(s), str(p)), 0)) == int(want)
    assert len(pts.data) == int(ds["image_count_all_fov"].sum()) > 0
    # coloured by phenotype: one border colour per phenotype
    cols = {tuple(np.round(c, 3)) for c in pts.border_color}
    assert len(cols) == feats["phenotype"].nunique()
    # per-vesicle properties and positions are the run's spots table, row for row
    import pandas as pd

    spots = pd.read_csv(out / "spots.csv", float_precision="round_trip")
    assert {"photons", "sigma", "bitmask"} <= set(feats.columns)
    np.testing.assert_array_equal(feats["photons"].to_numpy(), spots["photons"].to_numpy())
    np.testing.assert_array_equal(pts.data[:, -2:], spots[["y", "x"]].to_numpy())


def test_gate_edit_updates_counts_to_library_values(make_napari_viewer, qtbot, demo, tmp_path):
    import xarray as xr

    from evflow_napari._flow import channel_top, make_transform

    out, data = demo
    path, w = _gating_widget(make_napari_viewer, qtbot, demo, "S2.fcs")
    _wait_counts(qtbot, w)
    s = evflow.read_fcs(path)
    assert int(w.counts["n_parent"][0]) == s.n_events  # no gate: all events
    # the experiment's markers, and its run's thresholds in channel units
    assert w.markers == {"CD63": "FL1-H", "EpCAM": "FL2-H"}
    ds = xr.open_zarr(out / "results.zarr")
    run_thr = ds["threshold"].sel(sample="S2").values
    assert w.threshold_values() == pytest.approx(dict(zip(["CD63", "EpCAM"], run_thr)), rel=1e-6)
    assert "results.zarr" in w.threshold_source.text()
    tr = make_transform("logicle", channel_top(s, "FL1-H"))
    assert w.display_labels["CD63"].text() == f"display {float(tr.apply(np.array([w.threshold_values()['CD63']]))[0]):.3f}"
    gates = w.gates_layer
    tx = make_transform("linear", channel_top(s, "SSC-H"))
    ty = make_transform("logicle", channel_top(s, "FL1-H"))
    dims = [evflow.gates.Dimension("SSC-H", tx), evflow.gates.Dimension("FL1-H", ty)]
    thr = w.threshold_values()
    markers = {"CD63": ("FL1-H", thr["CD63"]), "EpCAM": ("FL2-H", thr["EpCAM"])}

    def library(gate, mk=None):
        return evflow.count_phenotypes(s, parent=gate, markers=mk or markers)

    poly_yx = np.array([[0.05, 0.3], [0.9, 0.3], [0.9, 0.8], [0.05, 0.8], [0.02, 0.55]])
    gates.add_polygons([poly_yx])
    _wait_counts(qtbot, w)
    ref = library(evflow.gates.PolygonGate("gate1", dims, poly_yx[:, ::-1]))
    np.testing.assert_array_equal(w.counts["count"].values, ref["count"].values)
    first = ref["count"].values.copy()
    assert 0 < int(ref["n_parent"][0]) < s.n_events
    # edit the gate: move two vertices
    moved = poly_yx.copy()
    moved[1:3, 1] = 0.6
    gates.data = [moved]
    _wait_counts(qtbot, w)
    ref2 = library(evflow.gates.PolygonGate("gate1", dims, moved[:, ::-1]))
    np.testing.assert_array_equal(w.counts["count"].values, ref2["count"].values)
    assert not np.array_equal(first, ref2["count"].values)
    table = [int(w.table.item(i, 1).text().replace(",", "")) for i in range(w.table.rowCount())]
    assert table == ref2["count"].values[0].tolist()
    # a threshold change recounts (typed in channel units)
    w.set_threshold("EpCAM", 0.5 * thr["EpCAM"])
    _wait_counts(qtbot, w)
    m2 = {**markers, "EpCAM": ("FL2-H", w.threshold_values()["EpCAM"])}
    assert m2["EpCAM"][1] == pytest.approx(0.5 * thr["EpCAM"], rel=1e-3)
    ref3 = evflow.count_phenotypes(s, parent=evflow.gates.PolygonGate("g", dims, moved[:, ::-1]), markers=m2)
    np.testing.assert_array_equal(w.counts["count"].values, ref3["count"].values)
    assert not np.array_equal(ref3["count"].values, ref2["count"].values)
    # thresholds written back to the experiment file (fixed rule), which still validates
    exp = tmp_path / "experiment.toml"
    exp.write_text((data / "experiment.toml").read_text())
    w.write_thresholds(exp)
    from evflow.pipeline.config import load_experiment

    th = load_experiment(exp, check_files=False).settings["thresholds"]
    assert th["rule"] == "fixed" and th["values"] == pytest.approx(w.threshold_values())
    # the display-scale setter converts through the marker's logicle transform
    w.set_threshold("CD63", 0.5, scale="display")
    assert float(ty.apply(np.array([w.threshold_values()["CD63"]]))[0]) == pytest.approx(0.5, abs=1e-3)
    w.set_threshold("CD63", thr["CD63"])
    _wait_counts(qtbot, w)
    # rectangle and ellipse gates, saved as Gating-ML 2.0 by the plugin's writer and read back
    gates.add_rectangles([np.array([[0.1, 0.35], [0.7, 0.75]])])
    _wait_counts(qtbot, w)
    rect = evflow.gates.RectangleGate("gate2", dims, mins=[0.35, 0.1], maxs=[0.75, 0.7])
    np.testing.assert_array_equal(w.counts["count"].values, library(rect, m2)["count"].values)
    gates.add_ellipses([np.array([[0.4, 0.5], [0.25, 0.15]])])  # centre (y, x), radii (y, x)
    _wait_counts(qtbot, w)
    out = tmp_path / "gates.xml"
    written = gates.save(str(out), plugin="evflow")
    assert Path(written[0]) == out and out.is_file()
    strat = evflow.read_gatingml(out)
    assert list(strat.gates) == ["gate1", "gate2", "gate3"]
    res = strat.apply(s)
    c = res.counts()
    np.testing.assert_equal(c["gate1"], int(ref2["n_parent"][0]))
    np.testing.assert_equal(c["gate2"], int(library(rect)["n_parent"][0]))
    assert c["gate3"] == int(w.counts["n_parent"][0])  # the ellipse was the active gate
    # the ellipse is the one drawn: centre and radii on the display scale
    e = strat.gates["gate3"]
    np.testing.assert_allclose(e.mean, [0.5, 0.4], atol=1e-6)
    np.testing.assert_allclose(sorted(np.linalg.eigvalsh(e.covariance)), [0.15**2, 0.25**2], atol=1e-6)  # napari stores float32
    # loading the file into a fresh gates layer gives the same shapes back
    gates.data = []
    assert w.load_gates(out) == 3
    _wait_counts(qtbot, w)
    assert list(w.gates_layer.features["gate"]) == ["gate1", "gate2", "gate3"]
    assert int(w.counts["n_parent"][0]) == c["gate3"]


def test_transform_change_converts_gates(make_napari_viewer, qtbot, demo):
    """Gates drawn before a transform change keep the same events: counts agree up to events on the edges,
    and the widget counts the converted gate exactly as the library does."""
    from evflow_napari._flow import counts_for

    path, w = _gating_widget(make_napari_viewer, qtbot, demo, "S2.fcs")
    _wait_counts(qtbot, w)
    x, y = w.view.x, w.view.y
    gates = w.gates_layer
    poly = np.array([[0.05, 0.3], [0.9, 0.3], [0.9, 0.8], [0.05, 0.8], [0.02, 0.55]])
    rect = np.array([[0.2, 0.35], [0.2, 0.75], [0.7, 0.75], [0.7, 0.35]])
    gates.add_polygons([poly])
    gates.add_rectangles([rect])
    gates.add_ellipses([np.array([[0.4, 0.5], [0.3, 0.2]])])  # centre (y, x), radii
    _wait_counts(qtbot, w)
    before_view = w.view
    before = [int(counts_for(before_view, g, w.marker_spec())["n_parent"][0]) for g in w.gates()]
    assert all(0 < b < before_view.sample.n_events for b in before)
    with qtbot.waitSignal(w.density_updated, timeout=60000):
        w.set_axes(x, y, "asinh", "linear")
    _wait_counts(qtbot, w)
    assert list(gates.shape_type) == ["polygon", "rectangle", "polygon"]
    assert len(gates.data[0]) == 5 * 32 and len(gates.data[2]) == 4 * 32
    assert not np.allclose(gates.data[1], rect, atol=1e-3)  # redrawn on the new scales
    after = [int(counts_for(w.view, g, w.marker_spec())["n_parent"][0]) for g in w.gates()]
    for b, a in zip(before, after):
        assert abs(a - b) <= max(3, 2e-3 * b), (before, after)
    assert after[1] == before[1]  # a rectangle maps exactly
    # the widget counts the converted (active) gate exactly as count_phenotypes does
    gate = w.gates()[w.active_gate]
    ref = evflow.count_phenotypes(w.view.sample, parent=gate, markers={
        m: (ch, thr) for m, (ch, thr, kind) in w.marker_spec().items() if kind is None})
    assert len(ref["marker"]) == len(w.markers) == 2
    np.testing.assert_array_equal(w.counts["count"].values, ref["count"].values)
    assert int(w.counts["n_parent"][0]) == after[w.active_gate]
    # and back to the original scales (linear scatter, logicle fluorescence): close to the original shapes again
    assert (before_view.x_transform, before_view.y_transform) == ("linear", "logicle")
    with qtbot.waitSignal(w.density_updated, timeout=60000):
        w.set_axes(x, y, before_view.x_transform, before_view.y_transform)
    np.testing.assert_allclose(gates.data[1], rect, atol=1e-5)


def test_transform_change_recomputes_density(make_napari_viewer, qtbot, demo):
    from evflow_napari._flow import channel_top, make_transform

    path, w = _gating_widget(make_napari_viewer, qtbot, demo, "S3.fcs")
    with qtbot.waitSignal(w.density_updated, timeout=60000):
        w.set_axes("FL1-H", "FL2-H", "asinh", "log")
    s = evflow.read_fcs(path)
    tx = make_transform("asinh", channel_top(s, "FL1-H"))
    ty = make_transform("log", channel_top(s, "FL2-H"))
    d = evflow.density2d(s, "FL1-H", "FL2-H", bins=512, range=((0, 1), (0, 1)), transforms=(tx, ty))
    np.testing.assert_array_equal(w.density_layer.metadata["evflow"]["density"], d.values.T)
    np.testing.assert_allclose(w.density_layer.data, np.log10(1 + d.values.T), rtol=1e-6)
    assert w.gates_layer.metadata["evflow"]["x_transform"] == "asinh"


def test_detection_widget_gives_library_spots_and_screenshot(make_napari_viewer, qtbot, demo, tmp_path):
    import tifffile
    import xarray as xr

    from evflow.imaging.register import ChannelRegistration
    from evflow.pipeline.config import load_experiment
    from evflow.pipeline.imaging import analyse_field, registration_from_beads
    from evflow_napari._qt import VesicleDetectionWidget

    out, data = demo
    p = data / "images" / "S2_fov0.tif"
    viewer = make_napari_viewer(show=True)  # a shown window renders (under Xvfb in CI)
    viewer.open(str(p), plugin="evflow")
    w = VesicleDetectionWidget(viewer)
    qtbot.addWidget(w)
    # defaults from the experiment file next to the images
    assert w.sigma.value() == pytest.approx(1.3) and w.offset.value() == pytest.approx(100.0)
    assert w.radius.value() == pytest.approx(2.0)
    assert w.registration_box.currentText() == "experiment beads"
    with qtbot.waitSignal(w.detected, timeout=60000):
        w.run()
    assert w.error is None
    # the pipeline's field computation: registration from the experiment's beads, thresholds of its rule
    exp = load_experiment(data / "experiment.toml", check_files=False)
    img_s = exp.imaging
    reg = registration_from_beads(exp.resolve(img_s["registration_beads"]), img_s)
    assert max(abs(np.asarray(reg["transforms"]["CD81"])[:, 2]).max(), 0) > 0.5  # the demo's channels are shifted
    ds = xr.open_zarr(out / "results.zarr")
    thr = dict(zip(ds["image_marker"].values.tolist(), ds["image_threshold"].sel(image_sample="S2").values.tolist()))
    assert w.thresholds == pytest.approx(thr)
    item = analyse_field(p, img_s, reg, thresholds=w.thresholds)
    field = tifffile.imread(p)
    assert len(item["y"]) > 5
    pts = w.points_layer
    np.testing.assert_allclose(pts.data, np.column_stack([item["y"], item["x"]]), atol=1e-9)
    np.testing.assert_array_equal(pts.features["bitmask"].to_numpy(), item["bitmask"])
    # and the counts per phenotype equal evflow run's for this field
    want = ds["image_count"].sel(image_sample="S2", fov=0).values.tolist()
    assert [w.counts[str(lab)] for lab in ds["image_phenotype"].values] == want
    # channel layers carry the registration: a vesicle's position in a channel's pixels maps onto the point
    ch = {ly.name: ly for ly in viewer.layers if ly._type_string == "image"}
    A = ChannelRegistration.from_dict(reg)
    yx_c = A.to_channel("CD81", pts.data[:3])
    np.testing.assert_allclose([ch["CD81"].data_to_world(q) for q in yx_c], pts.data[:3], atol=1e-6)
    for m in ("CD9", "CD63", "CD81"):
        spots = evflow.detect_spots((field[["CD9", "CD63", "CD81"].index(m)] - 100.0) / 2.0, psf_sigma_px=1.3,
                                    exclude_border_px=2)
        assert len(w.tables[m]) == len(spots)
    assert {"photons", "sigma", "phenotype"} <= set(pts.features.columns)
    assert np.all(pts.features["photons"] > 0)
    counts = [int(w.table.item(i, 1).text()) for i in range(w.table.rowCount())]
    assert sum(counts) == len(item["y"])
    assert "vesicles/um^2" in w.density_text
    # screenshot: non-blank, and the points are drawn where the vesicles are
    for ly in viewer.layers:
        ly.visible = ly is pts
    pts.border_color = "white"
    pts.face_color = "white"
    pts.size = 4
    viewer.reset_view()
    img = viewer.export_figure(flash=False)
    assert img.ndim == 3 and img[..., :3].std() > 0
    gray = img[..., :3].astype(float).mean(axis=2)
    sy, sx = gray.shape[0] / 128.0, gray.shape[1] / 128.0
    yx = pts.data
    on = [gray[int((y + 0.5) * sy), int((x + 0.5) * sx)] for y, x in yx]
    assert np.median(on) > 200
    far = np.ones((128, 128), bool)
    for y, x in yx:
        far[max(0, int(y) - 6):int(y) + 7, max(0, int(x) - 6):int(x) + 7] = False
    ys, xs = np.nonzero(far)
    off = gray[((ys + 0.5) * sy).astype(int), ((xs + 0.5) * sx).astype(int)]
    assert np.mean(off > 128) < 0.01
    # parameters exported into the experiment file, which still validates
    exp = tmp_path / "experiment.toml"
    exp.write_text((data / "experiment.toml").read_text())
    w.sigma.setValue(1.5)
    w.auto.setChecked(False)
    w.thr.setValue(42.0)
    w.export(exp)
    from evflow.pipeline.config import load_experiment

    img_s = load_experiment(exp, check_files=False).imaging
    assert img_s["psf_sigma_px"] == 1.5 and img_s["detection_threshold_photons"] == 42.0
    assert img_s["channels"] == ["CD9", "CD63", "CD81"] and img_s["registration_beads"] == "images/beads.tif"


def test_results_browser_table_and_open(make_napari_viewer, qtbot, demo):
    import xarray as xr

    from evflow_napari._qt import ResultsBrowserWidget

    out, _ = demo
    viewer = make_napari_viewer()
    w = ResultsBrowserWidget(viewer)
    qtbot.addWidget(w)
    w.load(out / "results.zarr")
    ds = xr.open_zarr(out / "results.zarr")
    assert w.table.rowCount() == ds.sizes["sample"]
    i = list(ds["sample"].values).index("S2")
    row = [int(w.table.item(i, j + 1).text().replace(",", "")) for j in range(ds.sizes["phenotype"])]
    assert row == ds["count"].sel(sample="S2").values.tolist()
    ax = w.figure.axes[0]
    tops = [p.get_y() + p.get_height() for p in ax.patches[-ds.sizes["sample"]:]]
    np.testing.assert_allclose(tops, ds["count"].values.sum(axis=1))
    # one palette: the bars' colours are those of evflow.palette, by bitmask, and the legend shows them
    from matplotlib.colors import to_hex

    from evflow.palette import phenotype_colour

    for j, b in enumerate(ds["bitmask"].values):
        assert to_hex(ax.patches[j * ds.sizes["sample"]].get_facecolor()) == phenotype_colour(b)
    assert w.legend.entries == {str(p): phenotype_colour(b) for p, b in zip(ds["phenotype"].values,
                                                                             ds["bitmask"].values)}
    layers = w.open_sample("S2")
    assert [ly.name for ly in layers] == ["S2 density", "S2 gates", "S2 CD9", "S2 CD63", "S2 CD81", "S2 vesicles"]
    assert layers[2].data.shape == (2, 128, 128)
    assert not np.allclose(layers[4].affine.affine_matrix, np.eye(4))  # registered to the reference channel
    assert len(layers[5].data) == int(ds["image_count_all_fov"].sel(image_sample="S2").sum())
    # details: counts, fractions of the parent with 95 % Wilson intervals
    t = w.details
    c = ds["count"].sel(sample="S2").values
    n = int(ds["n_parent"].sel(sample="S2"))
    np.testing.assert_allclose(t["fraction"], c / n)
    p_ = c / n
    z = 1.959963984540054
    centre = (p_ + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p_ * (1 - p_) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    np.testing.assert_allclose(t["fraction_lo"], centre - half)
    np.testing.assert_allclose(t["fraction_hi"], centre + half)
    assert (t["fraction_lo"] <= t["fraction"]).all() and (t["fraction"] <= t["fraction_hi"]).all()
    assert w.detail.item(0, 3).text() == f"[{t['fraction_lo'][0]:.4f}, {t['fraction_hi'][0]:.4f}]"
    w.modality.setCurrentText("imaging")
    assert w.table.rowCount() == ds.sizes["image_sample"]
    ti = w.show_details("S2")
    assert [c for c in ti.columns if c.startswith("fov ")] == ["fov 0", "fov 1"]
    np.testing.assert_array_equal(ti["fov 0"] + ti["fov 1"], ds["image_count_all_fov"].sel(image_sample="S2").values)


def test_sample_data(make_napari_viewer, demo, monkeypatch):
    _, data = demo
    monkeypatch.setenv("EVFLOW_NAPARI_DEMO", str(data))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("evflow", "demo_flow")
    assert [ly.name for ly in layers] == ["S2 density", "S2 gates"]
    assert int(layers[0].metadata["evflow"]["density"].sum()) == 20_000
    layers = viewer.open_sample("evflow", "demo_field")
    assert [ly.name for ly in layers] == ["CD9", "CD63", "CD81"] and layers[0].data.shape == (128, 128)


def test_reader_rejects_other_files(tmp_path):
    from evflow_napari._reader import get_reader

    assert get_reader(str(tmp_path / "x.csv")) is None
    assert get_reader([str(tmp_path / "a.fcs"), str(tmp_path / "b.tif")]) is None
    assert get_reader(str(tmp_path / "x.fcs")) is not None
    from evflow_napari._reader import read_fcs_layers, read_results_layers, read_tiff_layers

    # each kind gets its own reader; case-insensitive suffixes; a .zarr must be a folder, and only one
    assert get_reader(str(tmp_path / "X.FCS")) is read_fcs_layers
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.TIFF")]) is read_tiff_layers
    assert get_reader(str(tmp_path / "chip.ND2")) is get_reader(str(tmp_path / "x.czi")) is read_tiff_layers
    assert get_reader(str(tmp_path / "x.lif")) is read_tiff_layers
    assert get_reader(str(tmp_path / "results.zarr")) is None
    (tmp_path / "results.zarr").mkdir()
    assert get_reader(str(tmp_path / "results.zarr")) is read_results_layers
    assert get_reader([str(tmp_path / "results.zarr")] * 2) is None
    assert get_reader([]) is None


def test_detect_field_equals_evflow_run(demo):
    """``evflow_napari.detect_field`` with the experiment's settings gives ``evflow run``'s phenotype table."""
    import tifffile
    import xarray as xr

    from evflow.errors import ConfigError
    from evflow.pipeline.config import load_experiment
    from evflow_napari import detect_field
    from evflow_napari._detection import DetectionParameters, experiment_thresholds, resolve_registration

    out, data = demo
    exp = load_experiment(data / "experiment.toml", check_files=False)
    img_s = exp.imaging
    reg = resolve_registration(exp.resolve(img_s["registration_beads"]), img_s)
    thr, desc = experiment_thresholds(exp, img_s, reg)
    assert thr["CD9"] == 300.0 and "isotype" in desc
    ds = xr.open_zarr(out / "results.zarr")
    labels = [str(p) for p in ds["image_phenotype"].values]
    n = 0
    for s in exp.samples:
        for f, path in enumerate(s.images):
            t = detect_field(tifffile.imread(path), img_s["channels"], DetectionParameters.from_experiment(img_s),
                             registration=reg, thresholds=thr)
            got = t["phenotype"].value_counts()
            assert [int(got.get(lab, 0)) for lab in labels] == ds["image_count"].sel(image_sample=s.name, fov=f
                                                                                     ).values.tolist()
            n += len(t)
    assert n > 20
    # without registration the table differs (the demo's channels are shifted): registration matters
    field = tifffile.imread(exp.samples[0].images[0]) if exp.samples[0].images else tifffile.imread(
        data / "images" / "S2_fov0.tif")
    a = detect_field(field, img_s["channels"], img_s, registration=reg, thresholds=thr)
    b = detect_field(field, img_s["channels"], img_s, registration=None, thresholds=thr)
    cols = ["y", "x", "photons_CD81"]
    assert len(a) != len(b) or not np.allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=0.05)
    assert list(a.columns[:6]) == ["y", "x", "photons", "sigma", "phenotype", "bitmask"]
    with pytest.raises(ConfigError, match="thresholds have no value"):
        detect_field(field, img_s["channels"], img_s, thresholds={"CD9": 1.0})
    with pytest.raises(ConfigError, match="bead field"):
        detect_field(field, img_s["channels"], img_s, registration=str(data / "nope.tif"))


def test_open_experiment_registered_layers_and_points(make_napari_viewer, demo):
    """An experiment file opens as registered channel layers (an affine each) and the run's vesicles as points
    in the reference frame; results.zarr layers are registered the same way; colours from evflow.palette."""
    import xarray as xr

    from evflow.imaging.register import ChannelRegistration
    from evflow.palette import channel_colormap, phenotype_colour
    from evflow.pipeline.config import load_experiment
    from evflow.pipeline.imaging import registration_from_beads

    out, data = demo
    exp = load_experiment(data / "experiment.toml", check_files=False)
    reg = registration_from_beads(exp.resolve(exp.imaging["registration_beads"]), exp.imaging)
    A = ChannelRegistration.from_dict(reg)
    viewer = make_napari_viewer()
    layers = viewer.open(str(data / "experiment.toml"), plugin="evflow")
    assert [ly.name for ly in layers][:4] == ["CD9", "CD63", "CD81", "vesicles"]
    # then the flow samples (tests/test_napari_flow.py): a density image and a gates layer each
    assert {(ly.metadata.get("evflow") or {}).get("kind") for ly in layers[4:]} == {"flow", "gates"}
    n_fields = sum(len(s.images) for s in exp.samples)
    assert layers[0].data.shape == (n_fields, 128, 128)
    meta = layers[0].metadata["evflow"]
    assert [s["name"] for s in meta["summary"]["samples"]] == [s.name for s in exp.samples]
    assert meta["fields"][0] == [exp.samples[[bool(s.images) for s in exp.samples].index(True)].name, 0]
    for c, ly in enumerate(layers[:3]):
        assert ly.colormap.name == channel_colormap(c)
        lo, hi = ly.contrast_limits
        plane = np.asarray(ly.data[0])
        assert lo == pytest.approx(np.percentile(plane, 50)) and hi == pytest.approx(np.percentile(plane, 99.8))
    pts = layers[3]
    yx = pts.data[:, 1:]
    for m, ly in zip(("CD9", "CD63", "CD81"), layers[:3]):
        in_channel = A.to_channel(m, yx[:5])
        world = [ly.data_to_world(np.r_[f, q])[1:] for f, q in zip(pts.data[:5, 0], in_channel)]
        np.testing.assert_allclose(world, yx[:5], atol=1e-6)
    shift = np.abs(np.asarray(reg["transforms"]["CD81"])[:, 2]).max()
    assert shift > 0.5 and not np.allclose(layers[2].affine.affine_matrix, np.eye(4))
    # points: the run's vesicles, all of them, coloured by phenotype with the shared palette
    ds = xr.open_zarr(out / "results.zarr")
    assert len(pts.data) == int(ds["image_count_all_fov"].sum())
    cmap = pts.metadata["evflow"]["phenotype_colours"]
    assert cmap == {str(p): phenotype_colour(b) for p, b in zip(ds["image_phenotype"].values,
                                                                ds["image_bitmask"].values)}
    # results.zarr: the same registration on its channel layers
    res = viewer.open(str(out / "results.zarr"), plugin="evflow")
    np.testing.assert_allclose(res[2].affine.affine_matrix, layers[2].affine.affine_matrix)


def test_one_gates_layer_per_sample_and_few_markers(make_napari_viewer, qtbot, demo, tmp_path):
    from evflow_napari._flow import default_markers
    from evflow_napari._qt import FlowGatingWidget

    _, data = demo
    viewer = make_napari_viewer()
    w = FlowGatingWidget(viewer)
    qtbot.addWidget(w)
    viewer.open(str(data / "flow" / "S2.fcs"), plugin="evflow")
    qtbot.waitUntil(lambda: w.view is not None, timeout=20000)
    qtbot.wait(50)
    gates = [ly for ly in viewer.layers if (ly.metadata.get("evflow") or {}).get("kind") == "gates"]
    assert len(gates) == 1 and w.gates_layer is gates[0]
    # axes: tick labels in channel units; linear scatter axis ticks at even steps of the display scale
    from evflow_napari._flow import channel_top

    ax = w.axes_layer
    xt = ax.features["axis"].to_numpy() == "x"
    np.testing.assert_allclose(ax.data[xt, 1], [0, 0.25, 0.5, 0.75, 1.0])
    from evflow_napari._flow import tick_label

    xl = list(ax.features["label"][xt])
    assert len(xl) == 5 and xl[0] == "0"
    assert xl[2] == tick_label(channel_top(w.view.sample, "SSC-H") / 2)
    assert [tick_label(v) for v in (0, 12, 250, 1000, 65536, 262144, 2.5e6)] == [
        "0", "12", "250", "1k", "65.5k", "262k", "2.5M"]
    # logicle fluorescence axis: 0 and decades, placed by the transform
    ty = w.view.transforms[1]
    yl = list(ax.features["label"][~xt])
    assert yl[0] == "0" and yl[1] == "1"
    np.testing.assert_allclose(ax.data[~xt, 0][1:], [float(ty.apply(np.array([10.0 ** k]))[0])
                                                      for k in range(len(yl) - 1)], atol=1e-9)
    w.open_sample(str(data / "flow" / "S3.fcs"))
    qtbot.wait(50)
    gates = [ly for ly in viewer.layers if (ly.metadata.get("evflow") or {}).get("kind") == "gates"]
    assert [ly.name for ly in gates] == ["S2 gates", "S3 gates"] and w.gates_layer is gates[1]
    # a 13-marker file: phenotypes of a handful of markers by default, not 2**13
    ev = np.random.default_rng(0).lognormal(3, 1, (500, 15)).astype(np.float32)
    names = ["FSC-H", "SSC-H"] + [f"FL{i}-H" for i in range(1, 14)]
    p = tmp_path / "many.fcs"
    evflow.write_fcs(p, ev, names)
    s = evflow.read_fcs(p)
    assert len(default_markers(s)) == 13 and list(default_markers(s, max_markers=6)) == names[2:8]
    w.open_sample(str(p))
    qtbot.wait(50)
    assert list(w.markers) == names[2:8]
    _wait_counts(qtbot, w)
    assert w.table.rowCount() == 2 ** 6
