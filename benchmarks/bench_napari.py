"""napari plugin benchmark: density recompute after a transform change, opening a lazy field stack.

Prints a Markdown table.  ``python benchmarks/bench_napari.py --events 10000000 --fields 50``
(quick: ``--events 1000000 --fields 10``).

* density: 512x512 ``evflow.density2d`` of two channels of an FCS file after the
  display transform changes (logicle -> asinh -> logicle), the plugin's
  recompute; peer: ``numpy.histogram2d`` on the same transformed values
  (transform by evflow, timed separately) and FlowKit's ``Sample`` transform
  + ``numpy.histogram2d`` when FlowKit is installed.
* recount: the gating widget's recount after a gate edit (``Recounter.counts``: polygon
  gate on a linear and a logicle axis, phenotypes of ``--markers`` markers, thresholds in
  channel units) on ``--recount-events`` events (default 1,000,000; target under 0.3 s):
  a new gate (edited vertex), a gate seen before (membership cached), a threshold change;
  peer: ``counts_for`` (``evflow.count_phenotypes`` on the events in memory, what the
  widget ran before).  ``--only recount`` runs just these rows.
* stack: opening N TIFF fields (3 x 512 x 512 uint16) with the plugin's reader
  (lazy, dask) versus reading them all with tifffile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _t(fn, repeat=3):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--fields", type=int, default=50)
    ap.add_argument("--bins", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--recount-events", type=int, default=1_000_000)
    ap.add_argument("--markers", type=int, default=6)
    ap.add_argument("--only", choices=["recount"], default=None)
    a = ap.parse_args(argv)

    import evflow
    from evflow_napari._flow import FlowView, channel_top, counts_for, make_transform
    from evflow_napari._reader import read_tiff_layers
    from evflow_napari._recount import Recounter

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        n = a.events if a.only is None else 1000  # --only recount: the density rows are dropped below
        ev = np.column_stack([rng.lognormal(5, 1.2, n), rng.lognormal(3, 1.5, n), rng.uniform(0, 60, n)])
        ev = ev.astype(np.float32)
        path = tmp / "big.fcs"
        evflow.write_fcs(path, ev, ["SSC-H", "FL1-H", "Time"])
        view = FlowView(path, "SSC-H", "FL1-H", "logicle", "logicle", bins=a.bins)
        view.density()  # warm-up (file pages, Numba)
        kinds = ["asinh", "logicle"]

        def recompute():
            k = kinds.pop(0)
            kinds.append(k)
            view.x_transform = view.y_transform = k
            view.image_layer_data()

        t_evflow = _t(recompute, a.repeat)
        rows.append(("density 512x512 after a transform change (evflow plugin: density2d + layer data)", n,
                     t_evflow))
        s = view.sample
        raw = np.asarray(s.linear_events()[:, :2].compute(), np.float64)
        tx = make_transform("asinh", channel_top(s, "SSC-H"))
        ty = make_transform("asinh", channel_top(s, "FL1-H"))

        def numpy_peer():
            x = tx.apply(raw[:, 0])
            y = ty.apply(raw[:, 1])
            np.histogram2d(x, y, bins=a.bins, range=((0, 1), (0, 1)))

        rows.append(("same, in memory: evflow transform + numpy.histogram2d", n, _t(numpy_peer, a.repeat)))
        try:
            import flowkit as fk

            fs = fk.Sample(str(path))
            xf = fk.transforms.AsinhTransform(param_t=channel_top(s, "SSC-H"), param_m=4.5, param_a=0.0)

            def flowkit_peer():
                fs.apply_transform(xf)
                d = fs.get_events(source="xform")
                np.histogram2d(d[:, 0], d[:, 1], bins=a.bins, range=((0, 1), (0, 1)))

            rows.append(("same, FlowKit Sample.apply_transform + numpy.histogram2d", n, _t(flowkit_peer, 1)))
        except Exception as exc:  # noqa: BLE001 - peer optional
            rows.append((f"FlowKit peer skipped ({type(exc).__name__})", n, float("nan")))

        # recount after a gate edit: 1e6 events, k markers
        k, nr = a.markers, a.recount_events
        names = ["FSC-H", "SSC-H"] + [f"FL{i}-H" for i in range(1, k + 1)] + ["Time"]
        evr = np.column_stack([rng.lognormal(5, 1.2, (nr, k + 2)), rng.uniform(0, 60, nr)]).astype(np.float32)
        pr = tmp / "recount.fcs"
        evflow.write_fcs(pr, evr, names)
        vr = FlowView(pr, "SSC-H", "FL1-H", "linear", "logicle")
        dims = vr.dimensions()
        mk = {c: (c, 500.0, None) for c in names[2:-1]}
        edits = [0]

        def recount():
            edits[0] += 1
            poly = np.array([[0.05, 0.01], [0.9, 0.01], [0.9, 0.3 + 0.01 * (edits[0] % 7)], [0.05, 0.3]])
            counts_for(vr, evflow.gates.PolygonGate("g", dims, poly[:, ::-1]), mk)

        if a.only is not None:
            rows = []
        recount()  # first count reads the channels
        rows.append((f"recount, count_phenotypes on the events in memory ({k} markers, {1 << k} phenotypes)", nr,
                     _t(recount, a.repeat)))
        rc = Recounter(vr)

        def poly_gate(i):
            poly = np.array([[0.05, 0.01], [0.9, 0.01], [0.9, 0.3 + 0.001 * i], [0.05, 0.3]])
            return evflow.gates.PolygonGate("g", dims, poly[:, ::-1])

        rc.counts(poly_gate(-1), mk)  # first count reads the channels and the display values
        np.testing.assert_array_equal(rc.counts(poly_gate(0), mk)["count"].values,
                                      counts_for(vr, poly_gate(0), mk)["count"].values)
        edit = [0]

        def new_gate():
            edit[0] += 1
            rc.counts(poly_gate(edit[0]), mk)

        rows.append((f"recount after a gate edit, plugin Recounter ({k} markers; target < 0.3 s)", nr,
                     _t(new_gate, a.repeat)))
        rows.append(("same, a gate counted before (cached membership)", nr, _t(lambda: rc.counts(poly_gate(0), mk),
                                                                              a.repeat)))
        thr = [500.0]

        def new_threshold():
            thr[0] += 10.0
            rc.counts(poly_gate(0), {**mk, names[2]: (names[2], thr[0], None)})

        rows.append(("same, after a threshold change (one marker recomputed)", nr, _t(new_threshold, a.repeat)))
        if a.only is not None:
            _print(rows)
            return

        import tifffile

        files = []
        img = rng.integers(100, 200, (3, 512, 512), dtype=np.uint16)
        for i in range(a.fields):
            p = tmp / f"f{i:03d}.tif"
            tifffile.imwrite(p, img, photometric="minisblack", metadata={"axes": "CYX"})
            files.append(str(p))
        t_open = _t(lambda: read_tiff_layers(files, markers=["CD9", "CD63", "CD81"]), a.repeat)
        rows.append((f"open {a.fields} fields of 3x512x512 (evflow reader, lazy)", a.fields, t_open))
        t_read = _t(lambda: [tifffile.imread(f) for f in files], 1)
        rows.append((f"read {a.fields} fields with tifffile (eager)", a.fields, t_read))

    _print(rows)


def _print(rows):
    print("| task | size | time (s) |")
    print("|---|---:|---:|")
    for name, size, t in rows:
        print(f"| {name} | {size:,} | {t:.3f} |")


if __name__ == "__main__":
    main()
