"""GPU end to end: the GPU figures beside the CPU ones on the same machine, against their targets, in one table.

Rows: the fused gating kernel on 10M events (effective memory bandwidth, target >= 40% of the GPU's peak),
count_phenotypes from host chunks (each chunk crosses once, one copy back per sample), batched 7x7
Gaussian fits (target >= 3e7 fits/s), one 2048x2048 3-colour field from photons to phenotype counts
(target < 20 ms) with its host<->device crossings counted, and the demo pipeline (``evflow demo``) on
``--backend cupy`` against ``numpy`` with identical flow counts.  Each row runs on its own: a failing row
prints its error and the others go on.  ``--json`` writes the figures.  Needs CuPy and a CUDA GPU.
Run by ci/gpu-check; alone: ``python benchmarks/bench_gpu_e2e.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import best_of, machine, table  # noqa: E402


def _sync():
    import cupy

    cupy.cuda.Device().synchronize()


def row_gating(a):
    from bench_gating import make_events, run_evflow, run_gpu

    ev = make_events(a.events)
    t, counts, _t_sum, peak, _name = run_gpu(ev, a.repeat)
    gbs = ev.nbytes / t
    t_cpu, counts_cpu = run_evflow(ev, 1 << 20, "auto", a.repeat, backend="numpy")
    same = bool(np.array_equal(np.asarray(counts)[: len(counts_cpu)], counts_cpu)) if counts_cpu is not None else None
    return [f"fused gating kernel, {a.events:,} events (float32, 12 ch)",
            f"{gbs / 1e9:.0f} GB/s = {100 * gbs / peak:.0f}% of {peak / 1e12:.2f} TB/s", ">= 40% of peak",
            "yes" if gbs >= 0.4 * peak else "NO", f"{t_cpu * 1e3:.1f} ms (count_phenotypes, Numba)",
            f"{t_cpu / t:.0f}x", f"counts equal: {same}"]


def row_count_phenotypes(a):
    import dask.array as da
    from bench_gating import CHANNELS, LOGICLE, MARKER_CH, POLY, THR_LOGICLE, make_events

    import evflow
    from evflow.backend import count_transfers
    from evflow.flow import gates as G, transforms as T

    ev = make_events(a.events)
    chunk = 1 << 21
    arr = (da.from_array(ev, chunks=(chunk, -1)), list(CHANNELS))
    lg = T.LogicleTransform(*LOGICLE)
    gate = G.PolygonGate("EVs", [G.Dimension("FSC-A"), G.Dimension("SSC-A")], POLY)
    markers = {m: (MARKER_CH[m], float(lg.inverse(np.array([THR_LOGICLE[m]]))[0])) for m in MARKER_CH}
    evflow.count_phenotypes((arr[0][:10000], arr[1]), parent=gate, markers=markers, backend="cupy")  # compile
    t_gpu, ds_gpu = best_of(lambda: evflow.count_phenotypes(arr, parent=gate, markers=markers, backend="cupy"),
                            a.repeat)
    with count_transfers() as log:
        evflow.count_phenotypes(arr, parent=gate, markers=markers, backend="cupy")
    t_cpu, ds_cpu = best_of(lambda: evflow.count_phenotypes(arr, parent=gate, markers=markers, backend="numpy"),
                            a.repeat)
    n_chunks = len(arr[0].chunks[0])
    same = bool(np.array_equal(ds_gpu["count"].values, ds_cpu["count"].values))
    return [f"count_phenotypes from host chunks, {a.events:,} events ({n_chunks} chunks)",
            f"{t_gpu * 1e3:.1f} ms ({ev.nbytes / t_gpu / 1e9:.1f} GB/s incl. copies)",
            "1 copy in per chunk, 1 out per sample", "yes" if (log.count("to_device", "events chunk") == n_chunks
                                                               and log.count("to_host") == 1) else "NO",
            f"{t_cpu * 1e3:.1f} ms", f"{t_cpu / t_gpu:.1f}x",
            f"in {log.to_device} ({log.count('to_device', 'plan')} plan), out {log.to_host}; counts equal: {same}"]


def row_fits(a):
    from bench_imaging import fits_per_second

    gpu, iters, _ = fits_per_second(a.fits, impl="cupy")
    cpu, _, _ = fits_per_second(min(a.fits, 500_000), impl="numba")
    return [f"7x7 Gaussian fits (MLE, {a.fits:,} windows)", f"{gpu:.3g} fits/s ({iters:.1f} iterations)",
            ">= 3e7 fits/s", "yes" if gpu >= 3e7 else "NO", f"{cpu:.3g} fits/s (Numba)", f"{gpu / cpu:.0f}x", ""]


def row_field(a):
    from evflow.backend import count_transfers
    from evflow.imaging.count import count_vesicles
    from evflow.synth.tirf import tirf

    syn = tirf((a.field_px, a.field_px), n_fields=1, seed=3, n_vesicles=a.vesicles)
    markers = list(syn.images.channel.values)
    im = syn.images.load()

    def go(backend):
        ds, spots = count_vesicles(im, markers=markers, detect_kwargs={"backend": backend})
        if backend == "cupy":
            _sync()
        return ds, spots

    go("cupy")  # compile
    t_gpu, (ds_gpu, sp_gpu) = best_of(lambda: go("cupy"), a.repeat)
    with count_transfers() as log:
        go("cupy")
    t_cpu, (ds_cpu, sp_cpu) = best_of(lambda: go("numpy"), max(1, a.repeat - 1))
    per = log.by_label()
    return [f"{a.field_px}x{a.field_px} {len(markers)}-colour field, photons to counts ({len(sp_gpu)} vesicles)",
            f"{t_gpu * 1e3:.1f} ms", "< 20 ms", "yes" if t_gpu < 0.020 else "NO", f"{t_cpu * 1e3:.0f} ms",
            f"{t_cpu / t_gpu:.1f}x", f"vesicles CPU {len(sp_cpu)}; crossings {log.to_device} in, {log.to_host} out: "
            + ", ".join(f"{w} {n}" for (_d, w), n in sorted(per.items()))]


def row_demo(a):
    from evflow.pipeline.demo import demo

    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(n_events=a.demo_events, n_fields=2, field_shape=(a.demo_px, a.demo_px), quiet=True, force=True)
        demo(Path(tmp) / "warm", backend="cupy", **{**kw, "n_events": 20_000, "field_shape": (256, 256)})
        t0 = time.perf_counter()
        ds_gpu, _ = demo(Path(tmp) / "gpu", backend="cupy", **kw)
        t_gpu = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds_cpu, _ = demo(Path(tmp) / "cpu", backend="numpy", **kw)
        t_cpu = time.perf_counter() - t0
    same = bool(np.array_equal(ds_gpu["count"].values, ds_cpu["count"].values))
    d_img = int(np.abs(ds_gpu["image_count"].values - ds_cpu["image_count"].values).max())
    return [f"evflow demo --backend cupy ({a.demo_events:,} events/sample, 2 fields {a.demo_px} px)",
            f"{t_gpu:.1f} s", "runs; flow counts = numpy", "yes" if same else "NO", f"{t_cpu:.1f} s",
            f"{t_cpu / t_gpu:.1f}x", f"flow counts equal: {same}; image counts differ by <= {d_img}"]


ROWS = {"gating": row_gating, "count": row_count_phenotypes, "fits": row_fits, "field": row_field, "demo": row_demo}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--fits", type=int, default=2_000_000)
    ap.add_argument("--field-px", type=int, default=2048)
    ap.add_argument("--vesicles", type=int, default=3000)
    ap.add_argument("--demo-events", type=int, default=200_000)
    ap.add_argument("--demo-px", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    ap.add_argument("--tests", default="", help="the gpu test summary line, shown as the table's first row")
    ap.add_argument("--json", default=None, metavar="PATH")
    a = ap.parse_args(argv)

    from evflow.backend import _probe_cupy

    why = _probe_cupy()
    if why:
        sys.exit(f"bench_gpu_e2e: no usable GPU: {why}")
    import cupy

    p = cupy.cuda.runtime.getDeviceProperties(0)
    gpu = f"{p['name'].decode()}, {p['totalGlobalMem'] / 2**30:.0f} GiB, CuPy {cupy.__version__}"
    rows = []
    if a.tests:
        rows.append(["pytest -m gpu", a.tests, "all pass", "yes" if " failed" not in a.tests and "error" not in
                     a.tests else "NO", "", "", ""])
    for name in a.only:
        t0 = time.perf_counter()
        try:
            rows.append(ROWS[name](a))
        except Exception as exc:
            traceback.print_exc()
            rows.append([name, f"ERROR {type(exc).__name__}: {exc}"[:160], "", "NO", "", "", ""])
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"\nGPU: {gpu}; CPU: {machine()}\n")
    print(table(["what", "GPU", "target", "met", "CPU (same machine)", "GPU/CPU", "notes"], rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"gpu": gpu, "cpu": machine(), "rows": rows}, indent=1))
    return 0 if all(r[3] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
