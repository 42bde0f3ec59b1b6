"""Photobleaching step counting: evflow vs quickpbsa on simulated 1,000-frame traces.

Traces: 1-8 dyes (equal numbers), 200 photons per dye per frame, 300
background photons, EMCCD excess noise, 5 photons read noise, 10 % brightness
spread, blinking (0.05 % per frame dark, 30 % per frame back), seed fixed.

Prints Markdown: traces/s and exact-count accuracy for
- evflow ``count_bleaching_steps`` (binary segmentation, Numba kernel; the
  kernel alone; the NumPy reference; the exact PELT search),
- quickpbsa 2021.0.1 ``kv_single_fast`` (its Kalafut-Visscher step finder,
  threshold half a unit; its Bayesian refinement stage fails on NumPy 2 with a
  ragged-array error, so only the first stage runs),
then the confusion matrix (true x counted) and the unit brightness.

    python benchmarks/bench_bleaching.py               # 1,000 traces
    python benchmarks/bench_bleaching.py --traces 200  # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402

REALISTIC = dict(unit_photons=200.0, background_photons=300.0, excess_noise=np.sqrt(2), read_noise_photons=5.0,
                 brightness_cv=0.1, blink_off_rate=0.0005, blink_on_rate=0.3)


def accuracy(counted, truth):
    ok = counted >= 0
    return float((counted[ok] == truth[ok]).mean()), float(ok.mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--peer-traces", type=int, default=40, help="traces given to quickpbsa and the NumPy reference")
    args = ap.parse_args(argv)

    import evflow
    from evflow.imaging.bleaching import estimate_trace_noise
    from evflow.kernels.steps import binseg_numba
    from evflow.synth import bleaching_traces

    per = max(args.traces // 8, 1)
    truth = np.repeat(np.arange(1, 9), per)
    sim = bleaching_traces(truth, n_frames=args.frames, seed=7, **REALISTIC)
    x = sim.traces
    n = x.shape[1]
    sub = np.linspace(0, n - 1, min(args.peer_traces, n)).astype(int)
    evflow.count_bleaching_steps(x[:, :4])  # warm-up (JIT load)
    evflow.count_bleaching_steps(x[:, :4], method="pelt")
    rows = []

    t0 = time.perf_counter()
    r = evflow.count_bleaching_steps(x)
    dt = time.perf_counter() - t0
    acc, frac = accuracy(r.n_steps, truth)
    rows.append(["evflow count_bleaching_steps (binseg, Numba)", n, f"{n / dt:,.0f}", f"{acc:.3f}", f"{frac:.3f}"])

    a, g = estimate_trace_noise(x)
    t0 = time.perf_counter()
    binseg_numba(x.T, a, g, 3 * np.log(args.frames), 2, 160)
    dt = time.perf_counter() - t0
    rows.append(["evflow change-point kernel alone (binseg, Numba)", n, f"{n / dt:,.0f}", "", ""])

    t0 = time.perf_counter()
    rn = evflow.count_bleaching_steps(x[:, sub], impl="numpy")
    dt = time.perf_counter() - t0
    acc_n, frac_n = accuracy(rn.n_steps, truth[sub])
    rows.append(["evflow NumPy reference (binseg)", len(sub), f"{len(sub) / dt:,.0f}", f"{acc_n:.3f}", f"{frac_n:.3f}"])

    t0 = time.perf_counter()
    rp = evflow.count_bleaching_steps(x[:, sub], method="pelt")
    dt = time.perf_counter() - t0
    acc_p, frac_p = accuracy(rp.n_steps, truth[sub])
    rows.append(["evflow exact PELT (Numba)", len(sub), f"{len(sub) / dt:,.0f}", f"{acc_p:.3f}", f"{frac_p:.3f}"])

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from quickpbsa.steps_preliminary.kv_lowlevel import kv_single_fast
        counts = []
        t0 = time.perf_counter()
        for i in sub:
            jpos, means, _, _, _ = kv_single_fast(x[:, i], 0.5 * REALISTIC["unit_photons"], 100)
            counts.append(len(jpos))
        dt = time.perf_counter() - t0
        acc_q, _ = accuracy(np.asarray(counts), truth[sub])
        rows.append(["quickpbsa 2021.0.1 kv_single_fast (1 core)", len(sub), f"{len(sub) / dt:,.1f}", f"{acc_q:.3f}",
                     "1.000"])
    except ImportError:
        rows.append(["quickpbsa (not installed)", "", "", "", ""])

    print(f"Machine: {machine()}; {args.frames}-frame traces, 1-8 dyes\n")
    print(table(["method", "traces", "traces/s", "exact count (counted)", "counted"], rows))

    top = 10
    cm = np.zeros((8, top + 2), dtype=int)
    for t, c in zip(truth, r.n_steps):
        cm[t - 1, top + 1 if c < 0 else min(c, top)] += 1
    heads = ["true \\ counted"] + [str(k) for k in range(top)] + [f"{top}+", "not counted"]
    print("\nConfusion matrix (evflow, all traces)\n")
    print(table(heads, [[str(k + 1)] + cm[k].tolist() for k in range(8)]))
    u = evflow.unit_brightness(r)
    print(f"\nUnit brightness: {u.photons:.1f} photons (95 % CI {u.ci_low:.1f}-{u.ci_high:.1f}, "
          f"{u.n_steps} single steps); simulated {sim.unit_photons:.1f}")


if __name__ == "__main__":
    main()
