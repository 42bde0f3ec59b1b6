"""density2d on transformed axes (the report's and the napari plugin's density plots): wall time after a
transform change, fast CPU kernel with exact data-space bin edges vs the per-event table search it replaces,
and vs NumPy (transform + numpy.histogram2d).

    python benchmarks/bench_density.py [--events 500000 10000000] [--bins 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, nargs="+", default=[500_000, 10_000_000])
    ap.add_argument("--bins", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)

    from evflow.flow import transforms as T
    from evflow.flow.phenotypes import density2d
    from evflow.kernels import phenotype as K

    makers = {
        "logicle": lambda r: T.LogicleTransform(262144, 0.5 + 0.01 * r, 4.5, 0),
        "hyperlog": lambda r: T.HyperlogTransform(262144, 1.0 + 0.01 * r, 4.5, 0),
        "log": lambda r: T.LogTransform(262144, 4.5 + 0.01 * r),
    }
    rows = []
    for n in a.events:
        rng = np.random.default_rng(0)
        ev = np.column_stack([rng.lognormal(5, 1.5, n), rng.lognormal(4, 1.2, n) - 20]).astype(np.float32)
        smp = (ev, ["FSC-A", "FL1-A"])
        density2d(smp, "FSC-A", "FL1-A", bins=16, transforms=makers["logicle"](99))  # compile / warm up
        for name, mk in makers.items():
            res = {}
            for mode in ("edges", "table", "numpy"):
                best = np.inf
                for r in range(a.repeat):
                    tr = mk(r + (0 if mode == "edges" else 10 * (1 + ("table", "numpy").index(mode))))
                    t0 = time.perf_counter()
                    if mode == "numpy":
                        x, y = tr.apply(ev[:, 0].astype(np.float64)), tr.apply(ev[:, 1].astype(np.float64))
                        h = np.histogram2d(x, y, bins=a.bins, range=((0, 1), (0, 1)))[0]
                    else:
                        if mode == "table":  # the previous path: a table search per event and axis
                            orig = K._edge_plan
                            K._edge_plan = lambda plan: None
                        try:
                            h = density2d(smp, "FSC-A", "FL1-A", bins=a.bins, transforms=tr).values
                        finally:
                            if mode == "table":
                                K._edge_plan = orig
                    best = min(best, time.perf_counter() - t0)
                res[mode] = (best, int(h.sum()))
            rows.append((n, name, res))
    print("| events | transform | evflow (bin edges) s | evflow (table search, before) s | NumPy transform + histogram2d s |")
    print("|---:|---|---:|---:|---:|")
    for n, name, res in rows:
        print(f"| {n:,} | {name} | {res['edges'][0]:.3f} | {res['table'][0]:.3f} | {res['numpy'][0]:.3f} |")


if __name__ == "__main__":
    main()
