"""Photobleaching step counting: evflow (NumPy, Numba, CUDA) vs quickpbsa on 1,000-frame traces, in one run.

Simulated traces: 1-8 dyes (equal numbers), 200 photons per dye per frame,
300 background photons, EMCCD excess noise, 5 photons read noise, 10 %
brightness spread, blinking (0.05 % per frame dark, 30 % per frame back),
seed fixed.  Real traces: the 17 DNA-origami traces (9 dye sites) shipped
with quickpbsa (``../shared/data/bleaching/quickpbsa/ExampleStack_difference.csv``).

Prints Markdown: traces/s (best of ``--repeat``) and exact-count accuracy for
- evflow ``count_bleaching_steps`` (binary segmentation) with ``impl='numba'``,
  ``'numpy'`` and, with CuPy and a GPU, ``'cupy'`` (all traces in one launch
  of ``steps.cu``); the change-point kernel alone per implementation; the
  exact PELT search (Numba);
- quickpbsa 2021.0.1 ``pbsa_file`` (its Kalafut-Visscher step finder, threshold
  half a unit, then its Bayesian refinement, on 2 processes), run in its own
  environment (``benchmarks/quickpbsa-env``: NumPy < 1.24, pandas < 2) as a
  subprocess that times itself,
then the confusion matrix (true x counted), the unit brightness, and per real
trace evflow's count beside quickpbsa's.

    python benchmarks/bench_bleaching.py                 # 1,000 traces
    python benchmarks/bench_bleaching.py --traces 200    # quick
    python benchmarks/bench_bleaching.py --no-peer       # without quickpbsa
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_of, machine, table  # noqa: E402

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "bleaching" / "quickpbsa" / "ExampleStack_difference.csv"
REALISTIC = dict(unit_photons=200.0, background_photons=300.0, excess_noise=np.sqrt(2), read_noise_photons=5.0,
                 brightness_cv=0.1, blink_off_rate=0.0005, blink_on_rate=0.3)


def accuracy(counted, truth):
    ok = counted >= 0
    return float((counted[ok] == truth[ok]).mean()), float(ok.mean())


def quickpbsa_python():
    """The python of quickpbsa's environment (created by benchmarks/quickpbsa-env), or None."""
    r = subprocess.run(["bash", str(HERE / "quickpbsa-env")], capture_output=True, text=True)
    if r.returncode:
        print(f"quickpbsa environment not available:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return r.stdout.strip().splitlines()[-1]


def run_quickpbsa(py, traces, threshold, *, cores=2, maxiter=100):
    """quickpbsa's full analysis of ``traces`` (frames, traces) in its environment: (seconds, counts, flags)."""
    with tempfile.TemporaryDirectory() as td:
        f = Path(td) / "bench_difference.csv"
        n = traces.shape[0]
        with open(f, "w") as fh:
            fh.write("# {}\n")
            fh.write("id," + ",".join(str(k) for k in range(n)) + "\n")
            for i, row in enumerate(traces.T):
                fh.write(f"{i}," + ",".join(f"{v:.3f}" for v in row) + "\n")
        r = subprocess.run([py, str(HERE / "_quickpbsa_run.py"), str(f), str(threshold), str(maxiter), str(cores)],
                           capture_output=True, text=True, cwd=td)
    if r.returncode:
        raise RuntimeError(f"quickpbsa failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    order = np.argsort(out["id"])
    return out["seconds"], np.asarray(out["count"])[order], np.asarray(out["flag"])[order]


def read_real():
    """The 17 real traces as (frames, traces)."""
    import pandas as pd

    df = pd.read_csv(REAL, header=1)
    return np.asarray(df.loc[:, "0":], dtype=np.float64).T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--peer-traces", type=int, default=40, help="traces given to quickpbsa, NumPy and PELT")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (the fast rows)")
    ap.add_argument("--no-peer", action="store_true", help="skip quickpbsa")
    args = ap.parse_args(argv)

    import evflow
    from evflow.backend import gpu_available
    from evflow.imaging.bleaching import estimate_trace_noise
    from evflow.kernels.steps import binseg_numba, binseg_numpy
    from evflow.synth import bleaching_traces

    per = max(args.traces // 8, 1)
    truth = np.repeat(np.arange(1, 9), per)
    sim = bleaching_traces(truth, n_frames=args.frames, seed=7, **REALISTIC)
    x = sim.traces
    n = x.shape[1]
    sub = np.linspace(0, n - 1, min(args.peer_traces, n)).astype(int)
    gpu = gpu_available()
    impls = ["numba", "numpy"] + (["cupy"] if gpu else [])
    evflow.count_bleaching_steps(x[:, :4])  # warm-up (JIT load, kernel compile)
    evflow.count_bleaching_steps(x[:, :4], method="pelt")
    if gpu:
        evflow.count_bleaching_steps(x[:, :4], impl="cupy")
    a, g = estimate_trace_noise(x)
    pen = 3 * np.log(args.frames)
    rows, results = [], {}

    for impl in impls:
        cols = sub if impl == "numpy" else np.arange(n)
        rep = 1 if impl == "numpy" else args.repeat
        dt, r = best_of(lambda: evflow.count_bleaching_steps(x[:, cols], impl=impl), rep)
        results[impl] = r
        acc, frac = accuracy(r.n_steps, truth[cols])
        rows.append([f"evflow count_bleaching_steps, impl={impl}", len(cols), f"{len(cols) / dt:,.0f}", f"{acc:.3f}",
                     f"{frac:.3f}"])
    for impl in impls:
        cols = sub if impl == "numpy" else np.arange(n)
        rep = 1 if impl == "numpy" else args.repeat
        if impl == "cupy":
            import cupy

            from evflow.kernels.steps import binseg_cupy

            xd = cupy.asarray(x[:, cols].T)
            dt, (c, k) = best_of(lambda: binseg_cupy(xd, a[cols], g[cols], pen, 2, 160), rep)
        else:
            fn = binseg_numba if impl == "numba" else binseg_numpy
            dt, (c, k) = best_of(lambda: fn(x[:, cols].T, a[cols], g[cols], pen, 2, 160), rep)
        same = "(the reference)"
        if impl != "numpy":
            cr, kr = binseg_numpy(x[:, sub].T, a[sub], g[sub], pen, 2, 160)
            same = f"{((c[sub] == cr).all(axis=1) & (k[sub] == kr)).mean():.3f}"
        rows.append([f"evflow change-point kernel alone, impl={impl}", len(cols), f"{len(cols) / dt:,.0f}",
                     f"same change points as NumPy: {same}", ""])

    dt, rp = best_of(lambda: evflow.count_bleaching_steps(x[:, sub], method="pelt"), 1)
    acc_p, frac_p = accuracy(rp.n_steps, truth[sub])
    rows.append(["evflow exact PELT (Numba)", len(sub), f"{len(sub) / dt:,.0f}", f"{acc_p:.3f}", f"{frac_p:.3f}"])

    py = None if args.no_peer else quickpbsa_python()
    real_rows = []
    real = read_real() if REAL.exists() else None
    if py is not None:
        secs, qc, qf = run_quickpbsa(py, x[:, sub], 0.5 * REALISTIC["unit_photons"])
        ok = qf >= 0
        acc_q = float((qc[ok] == truth[sub][ok]).mean()) if ok.any() else float("nan")
        rows.append(["quickpbsa 2021.0.1 pbsa_file (KV + Bayesian refinement, 2 processes)", len(sub),
                     f"{len(sub) / secs:,.2f}", f"{acc_q:.3f}", f"{ok.mean():.3f}"])
    else:
        rows.append(["quickpbsa (environment not available)", "", "", "", ""])

    print(f"Machine: {machine()}; {args.frames}-frame traces, 1-8 dyes; traces/s best of {args.repeat} "
          f"(NumPy, PELT and quickpbsa: one run); GPU: {'yes' if gpu else 'none'}\n")
    print(table(["method", "traces", "traces/s", "exact count (of counted)", "counted"], rows))

    top = 10
    r = results["numba"]
    cm = np.zeros((8, top + 2), dtype=int)
    for t, c in zip(truth, r.n_steps):
        cm[t - 1, top + 1 if c < 0 else min(c, top)] += 1
    heads = ["true \\ counted"] + [str(k) for k in range(top)] + [f"{top}+", "not counted"]
    print("\nConfusion matrix (evflow, all traces)\n")
    print(table(heads, [[str(k + 1)] + cm[k].tolist() for k in range(8)]))
    u = evflow.unit_brightness(r)
    print(f"\nUnit brightness: {u.photons:.1f} photons (95 % CI {u.ci_low:.1f}-{u.ci_high:.1f}, "
          f"{u.n_steps} single steps); simulated {sim.unit_photons:.1f}")

    if real is None:
        print(f"\nReal traces: {REAL} not found")
        return
    ev = {impl: evflow.count_bleaching_steps(real, impl=impl) for impl in impls}
    for impl in impls[1:]:
        assert np.array_equal(ev[impl].n_steps, ev["numba"].n_steps), impl
    e = ev["numba"]
    if py is not None:
        unit = np.nanmedian(e.unit_height)
        secs_r, qc_r, qf_r = run_quickpbsa(py, real, 0.5 * unit)
    else:
        secs_r, qc_r, qf_r = float("nan"), np.full(real.shape[1], np.nan), np.zeros(real.shape[1], int)
    for i in range(real.shape[1]):
        q = "" if not np.isfinite(qc_r[i]) else (f"{qc_r[i]:.0f}" if qf_r[i] >= 0 else f"({qc_r[i]:.0f}, flag {qf_r[i]})")
        real_rows.append([i, int(e.n_steps[i]) if e.n_steps[i] >= 0 else f"- ({e.flag[i]})", q])
    both = (e.n_steps >= 0) & (qf_r >= 0) & np.isfinite(qc_r)
    print(f"\nReal traces (17 DNA origami, 9 sites): evflow counts identical for impl={', '.join(impls)}; "
          f"quickpbsa threshold {0.5 * np.nanmedian(e.unit_height):.0f} (half evflow's unit), {secs_r:.1f} s\n")
    print(table(["trace", "evflow", "quickpbsa"], real_rows))
    if both.any():
        d = e.n_steps[both] - qc_r[both]
        print(f"\nBoth counted: {both.sum()}; same count {np.mean(d == 0):.2f}, within 1 {np.mean(np.abs(d) <= 1):.2f}; "
              f"median evflow {np.median(e.n_steps[both]):.0f}, quickpbsa {np.median(qc_r[both]):.0f}")


if __name__ == "__main__":
    main()
