"""Screenshots of the napari plugin's widgets for the README and the docs.

Builds and runs a small demo experiment, opens it in a real napari viewer and
saves one PNG per widget (the whole window: canvas and dock widget) to
``docs/_static/``; each image is checked not to be blank.  Needs a display:

    xvfb-run -a python ci/screenshots.py [--out docs/_static]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def check_not_blank(img, what):
    """Raise when a screenshot is (nearly) one colour."""
    rgb = np.asarray(img)[..., :3].astype(np.float64)
    levels = len(np.unique(rgb.reshape(-1, 3)[:: max(1, rgb.size // 300000)], axis=0))
    if rgb.std() < 5 or levels < 50:
        raise SystemExit(f"{what}: screenshot looks blank (std {rgb.std():.1f}, {levels} colours)")
    return rgb.std(), levels


def _settle(app, viewer, n=20):
    for _ in range(n):
        app.processEvents()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs" / "_static"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import time

    import napari
    from imageio import imwrite

    import evflow
    from evflow.pipeline.demo import build_demo
    from evflow_napari._qt import FlowGatingWidget, ResultsBrowserWidget, VesicleDetectionWidget

    with tempfile.TemporaryDirectory() as tmp:
        exp = build_demo(Path(tmp) / "demo", n_events=20_000, n_fields=1, field_shape=(256, 256))
        evflow.run(exp, quiet=True, progress=False)
        from evflow.pipeline.config import load_experiment

        e = load_experiment(exp, check_files=False)
        from napari._qt.qt_event_loop import get_qapp

        app = get_qapp()
        written = []

        def shot(viewer, name):
            viewer.window._qt_window.resize(1400, 850)
            _settle(app, viewer)
            viewer.reset_view()
            _settle(app, viewer)
            img = viewer.screenshot(canvas_only=False, flash=False)
            std, levels = check_not_blank(img, name)
            p = out / f"napari_{name}.png"
            imwrite(p, img)
            written.append((p, std, levels))

        # flow gating on a sample, with a gate drawn
        v = napari.Viewer(show=True)
        v.open(str(exp.parent / "flow" / "S2.fcs"), plugin="evflow")
        w = FlowGatingWidget(v)
        v.window.add_dock_widget(w, name="Flow gating")
        _settle(app, v)
        w.gates_layer.add_polygons([np.array([[0.3, 0.05], [0.95, 0.05], [0.95, 0.6], [0.3, 0.6]])])
        t0 = time.time()
        while (w.counts is None or w.counts_generation != w._gen) and time.time() - t0 < 60:
            app.processEvents()
        shot(v, "flow_gating")
        v.close()

        # vesicle detection on one field of the experiment (registered, experiment thresholds)
        v = napari.Viewer(show=True)
        s2 = next(s for s in e.samples if s.name == "S2")
        v.open(str(e.resolve(s2.images[0])), plugin="evflow")
        w = VesicleDetectionWidget(v)
        v.window.add_dock_widget(w, name="Vesicle detection")
        _settle(app, v)
        done = []
        w.detected.connect(lambda *_: done.append(1))
        w.run()
        t0 = time.time()
        while not done and w.error is None and time.time() - t0 < 120:
            app.processEvents()
        if w.error:
            raise SystemExit(w.error)
        shot(v, "vesicle_detection")
        v.close()

        # results browser on the run, with a sample opened
        v = napari.Viewer(show=True)
        w = ResultsBrowserWidget(v)
        v.window.add_dock_widget(w, name="Results browser")
        w.load(e.output / "results.zarr")
        w.modality.setCurrentText("imaging")
        w.open_sample("S2")
        for ly in v.layers:
            if ly._type_string != "image" and ly._type_string != "points":
                ly.visible = False
        shot(v, "results_browser")
        v.close()
    for p, std, levels in written:
        print(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}: std {std:.1f}, {levels} colours")


if __name__ == "__main__":
    main()
