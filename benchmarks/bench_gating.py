"""Benchmark: marker-phenotype counting of a realistic EV gating strategy.

Strategy: an 8-vertex scatter polygon (FSC-A x SSC-A, linear), logicle on three
fluorescence channels (thresholds set on the logicle scale), three markers ->
eight phenotypes.  Compared, on the same in-memory events:

- evflow NumPy reference kernel and fast CPU kernel (Numba), through
  ``evflow.count_phenotypes`` on a row-chunked dask array,
- FlowKit (the same gates with FlowKit's own API: polygon, three logicle range
  gates, eight Boolean AND gates for the phenotypes),
- a bare ``sum`` over the same columns with the same dask chunks (the memory
  limit), and single-threaded ``np.sum``,
- on a GPU (CuPy available): the CUDA kernel, as effective bandwidth.

Prints one Markdown table.  ``python benchmarks/bench_gating.py --events 1000000``
for a quick run; the issue's size is the default (10,000,000 x 12).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

CHANNELS = ["FSC-A", "FSC-H", "SSC-A", "SSC-H", "FL1-A", "FL2-A", "FL3-A", "FL4-A", "FL1-H", "FL2-H", "FL3-H", "Time"]
POLY = [[2000, 1500], [30000, 1000], [60000, 8000], [70000, 30000], [50000, 60000], [20000, 55000], [5000, 30000], [1500, 8000]]
LOGICLE = (262144.0, 0.5, 4.5, 0.0)
MARKER_CH = {"CD63": "FL1-A", "CD9": "FL2-A", "EpCAM": "FL3-A"}
THR_LOGICLE = {"CD63": 0.45, "CD9": 0.5, "EpCAM": 0.55}


def make_events(n, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.empty((n, len(CHANNELS)), np.float32)
    ev[:, 0] = rng.lognormal(9.5, 1.0, n)
    ev[:, 1] = ev[:, 0] * 0.8
    ev[:, 2] = rng.lognormal(9.3, 1.1, n)
    ev[:, 3] = ev[:, 2] * 0.8
    for c in range(4, 11):
        ev[:, c] = rng.lognormal(5.0 + 0.3 * (c % 4), 1.6, n) - 60.0
    ev[:, 11] = np.linspace(0, 600, n, dtype=np.float32)
    return ev


def timeit(fn, repeat):
    best = np.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_evflow(ev, chunk, impl, repeat, backend="numpy", warm=True):
    import dask.array as da

    import evflow
    from evflow.flow import gates as G, transforms as T
    from evflow.io.fcs import FCSSample

    if backend == "cupy":
        import cupy

        arr = da.from_array(cupy.asarray(ev), chunks=(chunk, -1), asarray=False)
    else:
        arr = da.from_array(ev, chunks=(chunk, -1))
    sample = FCSSample(path="bench.fcs", version="FCS3.1", data_set=0, meta={}, channels=list(CHANNELS),
                       markers=[None] * len(CHANNELS), events=arr, scaled=True)
    lg = T.LogicleTransform(*LOGICLE)
    gate = G.PolygonGate("EVs", [G.Dimension("FSC-A"), G.Dimension("SSC-A")], POLY)
    thr = {m: float(lg.inverse(np.array([THR_LOGICLE[m]]))[0]) for m in MARKER_CH}
    markers = {m: (MARKER_CH[m], thr[m]) for m in MARKER_CH}
    if warm:  # imports, tables and JIT compilation (Numba, NVRTC) outside the timing, on a small slice
        small = FCSSample(path="warm.fcs", version="FCS3.1", data_set=0, meta={}, channels=list(CHANNELS),
                          markers=[None] * len(CHANNELS), events=arr[: min(len(ev), 10000)], scaled=True)
        evflow.count_phenotypes(small, parent=gate, markers=markers, impl=impl, backend=backend)
    t, ds = timeit(lambda: evflow.count_phenotypes(sample, parent=gate, markers=markers, impl=impl, backend=backend), repeat)
    return t, ds["count"].values[0]


def run_flowkit(ev, repeat):
    import flowkit as fk
    import pandas as pd

    df = pd.DataFrame(ev.astype(np.float64), columns=CHANNELS)
    t_sample = time.perf_counter()
    sample = fk.Sample(df, sample_id="bench", subsample=0)
    t_sample = time.perf_counter() - t_sample
    gs = fk.GatingStrategy()
    gs.add_transform("logicle", fk.transforms.LogicleTransform(*LOGICLE))
    dims = [fk.Dimension("FSC-A", "uncompensated"), fk.Dimension("SSC-A", "uncompensated")]
    gs.add_gate(fk.gates.PolygonGate("EVs", dims, [list(map(float, v)) for v in POLY]), gate_path=("root",))
    for m, ch in MARKER_CH.items():
        d = fk.Dimension(ch, "uncompensated", "logicle", range_min=THR_LOGICLE[m])
        gs.add_gate(fk.gates.RectangleGate(m + "+", [d]), gate_path=("root", "EVs"))
    names = list(MARKER_CH)
    for b in range(8):
        refs = [{"ref": m + "+", "path": ("root", "EVs"), "complement": not (b >> i) & 1} for i, m in enumerate(names)]
        gs.add_gate(fk.gates.BooleanGate(f"ph{b}", "and", refs), gate_path=("root", "EVs"))

    def go():
        res = gs.gate_sample(sample)
        return np.array([res.get_gate_count(f"ph{b}") for b in range(8)])

    t, counts = timeit(go, repeat)
    return t, counts, t_sample


def run_gpu(ev, repeat):
    import cupy

    from evflow.flow import gates as G, phenotypes as P, transforms as T
    from evflow.kernels import phenotype as kp

    d = cupy.asarray(ev)
    lg = T.LogicleTransform(*LOGICLE)
    comp = P._Compiler(CHANNELS)
    comp.add_gate(G.PolygonGate("EVs", [G.Dimension("FSC-A"), G.Dimension("SSC-A")], POLY))
    slots = [comp.slot(MARKER_CH[m], None, m) for m in MARKER_CH]
    thr = [float(lg.inverse(np.array([THR_LOGICLE[m]]))[0]) for m in MARKER_CH]
    plan = P._make_plan(comp, slots, thr)
    kp.fused_cupy(d, plan)  # compile
    cupy.cuda.Device().synchronize()

    def kern():  # kernel only (device results, no copy back)
        out = kp.launch_cupy(d, plan)
        cupy.cuda.Device().synchronize()
        return out

    t, _ = timeit(kern, repeat)
    out = kp.fused_cupy(d, plan)

    def bare():
        s = d.sum(axis=0)
        cupy.cuda.Device().synchronize()
        return s

    t_sum, _ = timeit(bare, repeat)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    peak = 2.0 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8
    return t, out.counts, t_sum, peak, props["name"].decode()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=1 << 20, help="events per dask chunk")
    ap.add_argument("--flowkit-events", type=int, default=None, help="events for FlowKit (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-flowkit", action="store_true")
    ap.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    a = ap.parse_args(argv)

    import dask
    import dask.array as da

    n = a.events
    ev = make_events(n)
    nbytes = ev.nbytes
    cols = [CHANNELS.index(c) for c in ("FSC-A", "SSC-A", *MARKER_CH.values())]
    rows = []

    arr = da.from_array(ev, chunks=(a.chunk, -1))
    t_bare, _ = timeit(lambda: arr[:, cols].sum(axis=0).compute(), a.repeat)
    t_np, _ = timeit(lambda: np.sum(ev, axis=0), a.repeat)
    t_ref, c_ref = run_evflow(ev, a.chunk, "numpy", max(1, a.repeat - 1))
    t_fast, c_fast = run_evflow(ev, a.chunk, "numba", a.repeat)
    assert np.array_equal(c_ref, c_fast), (c_ref, c_fast)
    rows.append(("bare sum of the 5 used columns (dask, same chunks)", t_bare, n / t_bare, nbytes / t_bare, ""))
    rows.append(("bare np.sum of all columns (1 thread)", t_np, n / t_np, nbytes / t_np, ""))
    rows.append(("evflow NumPy reference", t_ref, n / t_ref, nbytes / t_ref, f"{t_ref / t_bare:.1f}x bare"))
    rows.append(("evflow fast CPU (Numba)", t_fast, n / t_fast, nbytes / t_fast, f"{t_fast / t_bare:.2f}x bare"))
    fk_rate = None
    if not a.no_flowkit:
        try:
            nf = min(n, a.flowkit_events or n)
            t_fk, c_fk, t_fk_load = run_flowkit(ev[:nf], 1)
            fk_rate = nf / t_fk
            note = f"{nf:,} events; Sample() {t_fk_load:.2f} s not included"
            if nf == n:
                same = np.array_equal(c_fk, c_fast)
                note += "; counts identical" if same else f"; counts differ: {c_fk} vs {c_fast}"
            rows.append(("FlowKit gate_sample", t_fk, fk_rate, nf * ev.shape[1] * 4 / t_fk, note))
        except ImportError:
            print("FlowKit not installed (pip install flowkit); skipped", file=sys.stderr)
    if a.gpu != "no":
        try:
            from evflow.backend import gpu_available

            if gpu_available():
                t_g, c_g, t_gsum, peak, name = run_gpu(ev, a.repeat)
                same = np.array_equal(c_g, c_fast)
                rows.append((f"evflow CUDA kernel ({name})", t_g, n / t_g, nbytes / t_g,
                             f"{100 * nbytes / t_g / peak:.0f}% of {peak / 1e12:.2f} TB/s peak; counts "
                             + ("identical" if same else "DIFFER")))
                rows.append((f"bare cupy sum of all columns ({name})", t_gsum, n / t_gsum, nbytes / t_gsum,
                             f"{100 * nbytes / t_gsum / peak:.0f}% of peak"))
                t_gd, c_gd = run_evflow(ev, a.chunk, "auto", a.repeat, backend="cupy")
                rows.append((f"evflow count_phenotypes, cupy backend (dask chunks of {a.chunk:,})", t_gd, n / t_gd,
                             nbytes / t_gd, "identical" if np.array_equal(c_gd, c_fast) else "DIFFER"))
            elif a.gpu == "yes":
                sys.exit("no usable GPU")
        except ImportError:
            if a.gpu == "yes":
                raise
    print(f"\n### Phenotype counting, {n:,} events x {ev.shape[1]} channels (float32, {nbytes / 1e6:.0f} MB), "
          f"dask chunks of {a.chunk:,} events, {dask.config.get('scheduler', 'threads')} scheduler\n")
    print("| method | time (s) | events/s | GB/s | note |")
    print("|---|---:|---:|---:|---|")
    for name, t, rate, bw, note in rows:
        print(f"| {name} | {t:.3f} | {rate / 1e6:.1f} M | {bw / 1e9:.2f} | {note} |")
    if fk_rate:
        print(f"\nevflow fast CPU / FlowKit events/s: {n / t_fast / fk_rate:.0f}x")
    print(f"phenotype counts: {c_fast.tolist()}")


if __name__ == "__main__":
    main()
