"""Benchmark: Gating-ML 2.0 strategies and the logicle/hyperlog scales, evflow vs FlowKit/flowutils.

Two parts, one Markdown table each:

1. Scale transforms on ``--values`` data values: evflow's lookup table
   (NumPy, parallel Numba, CuPy when a GPU is there), evflow's exact
   root-finding reference, and flowutils' C implementation (what FlowKit uses),
   with the largest difference to flowutils in display units.
2. The whole Gating-ML compliance strategy (``gml_all_gates.xml``: 49
   populations with rectangles, polygons, ellipses, quadrants, Boolean gates,
   ratios, four scales and a spectrum matrix) applied to ``--events`` events
   (data1.fcs tiled): evflow ``strategy.apply(...).stats`` on row-chunked dask
   arrays vs FlowKit ``gate_sample`` on the same values; the per-gate counts are
   checked to agree.

``python benchmarks/bench_gatingml.py --events 200000 --values 1000000`` is a quick run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine, table  # noqa: E402

DATA = Path(os.environ.get("EVFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def bench_transforms(n_values, repeat):
    from evflow.flow.transforms import HyperlogTransform, LogicleTransform

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 300, n_values // 2), rng.lognormal(7, 2.5, n_values - n_values // 2)])
    rows = []
    try:
        import flowutils.transforms as fu
    except ImportError:
        fu = None
    for cls, fu_name in ((LogicleTransform, "logicle"), (HyperlogTransform, "hyperlog")):
        t = cls(262144, 0.5, 4.5, 0)
        t.apply(x[:10], impl="numba")  # compile / build the table once
        ref = None
        if fu is not None:
            tf, ref = best_of(lambda: getattr(fu, fu_name)(x, channel_indices=None, t=262144, w=0.5, m=4.5, a=0), repeat)
            rows.append((fu_name, "flowutils (C, FlowKit)", f"{tf * 1e3:.1f}", f"{n_values / tf / 1e6:.1f}", "0"))

        def diff(y):
            return f"{np.abs(y - ref).max():.1e}" if ref is not None else "-"

        for impl in ("numpy", "numba"):
            te, y = best_of(lambda: t.apply(x, impl=impl), repeat)
            rows.append((fu_name, f"evflow table ({impl})", f"{te * 1e3:.1f}", f"{n_values / te / 1e6:.1f}", diff(y)))
        sub = x[: min(n_values, 200000)]
        te, _ = best_of(lambda: t.apply_exact(sub), 1)
        rows.append((fu_name, "evflow exact (bisection)", f"{te * 1e3 * n_values / len(sub):.1f}*", f"{len(sub) / te / 1e6:.2f}", "-"))
        try:
            from evflow.backend import gpu_available

            if gpu_available():
                import cupy

                xg = cupy.asarray(x)
                t.apply(xg)
                cupy.cuda.Device().synchronize()

                def run():
                    y = t.apply(xg)
                    cupy.cuda.Device().synchronize()
                    return y

                tg, yg = best_of(run, repeat)
                rows.append((fu_name, "evflow table (CuPy, on device)", f"{tg * 1e3:.2f}", f"{n_values / tg / 1e6:.0f}", diff(cupy.asnumpy(yg))))
        except Exception as exc:  # pragma: no cover - GPU only
            rows.append((fu_name, f"evflow CuPy failed: {exc}", "-", "-", "-"))
    return table(["scale", "implementation", "time (ms)", "Mvalues/s", "max abs diff vs flowutils"], rows)


def bench_strategy(n_events, chunk, repeat):
    import dask
    import dask.array as da

    import evflow

    fcs = DATA / "gatingml" / "data1.fcs"
    gml = DATA / "gatingml" / "gml" / "gml_all_gates.xml"
    s = evflow.read_fcs(fcs, scale=True)
    base = s.to_numpy()
    reps = -(-n_events // len(base))
    ev = np.tile(base, (reps, 1))[:n_events]
    strategy = evflow.read_gatingml(gml)
    rows = []

    def ours(scheduler):
        with dask.config.set(scheduler=scheduler):
            res = strategy.apply((da.from_array(ev, chunks=(chunk, -1)), s.channels), backend="numpy")
            return res.stats

    counts = None
    for scheduler in ("threads", "synchronous"):
        ours(scheduler)
        t, st = best_of(lambda: ours(scheduler), repeat)
        counts = st["count"]
        rows.append((f"evflow apply + stats ({scheduler}, chunks of {chunk})", f"{t:.3f}", f"{n_events / t / 1e6:.2f}", "-"))
    try:
        import flowkit as fk
        import pandas as pd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gs = fk.parse_gating_xml(str(gml))
            t0 = time.perf_counter()
            sample = fk.Sample(pd.DataFrame(ev, columns=s.channels), sample_id="tiled")
            t_load = time.perf_counter() - t0
            t, res = best_of(lambda: gs.gate_sample(sample), repeat)
        rep = res.report.set_index("gate_name")["count"]
        agree = all(int(rep[g]) == int(counts[g]) for g in counts.index)
        rows.append(("FlowKit gate_sample", f"{t:.3f}", f"{n_events / t / 1e6:.2f}", "yes" if agree else "NO"))
        rows.append(("FlowKit Sample() from the array (not in the time above)", f"{t_load:.3f}", "-", "-"))
    except ImportError:
        rows.append(("FlowKit not installed", "-", "-", "-"))
    return table(["implementation (49 populations)", "time (s)", "Mevents/s", "counts agree with evflow"], rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000, help="events for the strategy benchmark")
    ap.add_argument("--values", type=int, default=10_000_000, help="values for the transform benchmark")
    ap.add_argument("--chunk", type=int, default=500_000, help="dask chunk (events)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    print(f"Machine: {machine()}\n")
    print(f"### Logicle / hyperlog (T=262144, W=0.5, M=4.5, A=0), {a.values:,} values\n")
    print(bench_transforms(a.values, a.repeat))
    print("\n(* extrapolated from 200,000 values)\n")
    print(f"### Gating-ML compliance strategy on {a.events:,} events\n")
    print(bench_strategy(a.events, a.chunk, a.repeat))


if __name__ == "__main__":
    main()
