"""Detection accuracy: evflow.detect_spots (defaults) beside trackpy.locate (minmass tuned on the truth).

Synthetic TIRF fields (evflow.synth.tirf) at peak SNR 1.6, 3, 5 and 10, and two
real-data sets with truth from ../shared/data/images: spotmax (a label mask of
81 spots: a spot is found when a detection falls in its label) and deepstorm
(20 frames of simulated emitters with positions: matched within 1.5 px).
Prints precision, recall, F1 and localisation error (px; nm for deepstorm).

    python benchmarks/bench_detection_real.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
MINMASS = (0, 10, 20, 35, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200, 5000, 8000)


def trackpy_locate(img, diameter, minmass):
    import trackpy as tp

    tp.quiet()
    df = tp.locate(np.asarray(img, np.float32), diameter, minmass=minmass, engine="numba")
    return df[["y", "x"]].reset_index(drop=True)


def tuned(score, images, diameter):
    """trackpy's best minmass for ``score`` (F1 against the truth) and its detections."""
    best = (-1.0, None, None)
    for mm in MINMASS:
        det = [trackpy_locate(im, diameter, mm) for im in images]
        f1 = score(det)["f1"]
        if f1 > best[0]:
            best = (f1, mm, det)
    return best[1], best[2]


def pooled(truths, dets, radius=1.5):
    from evflow import metrics

    tp = fp = fn = 0
    err = []
    for t, d in zip(truths, dets):
        it, idt, dist = metrics.match_points(t, d[["y", "x"]].to_numpy() if len(d) else np.zeros((0, 2)), radius)
        tp, fp, fn = tp + len(it), fp + len(d) - len(it), fn + len(t) - len(it)
        err.append(dist)
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    e = np.concatenate(err) if err else np.zeros(0)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "rmse_px": float(np.sqrt(np.mean(e**2))) if e.size else np.nan}


def synthetic(seeds):
    import evflow
    from evflow import synth

    rows = []
    for snr in (1.6, 3, 5, 10):
        fields = [synth.tirf((256, 256), markers=["A"], n_vesicles=150, peak_snr=snr, photons_cv=0.2, camera="ideal",
                             chromatic_shift=False, min_separation_px=5, seed=100 + k) for k in range(seeds)]
        imgs = [s.images.values[0, 0].astype(np.float32) for s in fields]
        truths = [s.truth[["y", "x"]].to_numpy() for s in fields]
        ev = [evflow.detect_spots(im, psf_sigma_px=1.3) for im in imgs]
        rows.append(("synthetic", f"SNR {snr:g}", "evflow defaults", pooled(truths, ev)))
        mm, tpd = tuned(lambda d: pooled(truths, d), imgs, 7)
        rows.append(("synthetic", f"SNR {snr:g}", f"trackpy d=7 minmass={mm} (tuned)", pooled(truths, tpd)))
    return rows


def spotmax():
    import tifffile

    import evflow

    img = tifffile.imread(DATA / "spotmax" / "single_image.tiff").astype(np.float32)
    lab = tifffile.imread(DATA / "spotmax" / "single_label.tiff")
    n_lab = len(np.unique(lab[lab > 0]))

    def score(dets):
        d = dets[0]
        iy = np.clip(np.rint(d["y"].to_numpy()), 0, lab.shape[0] - 1).astype(int)
        ix = np.clip(np.rint(d["x"].to_numpy()), 0, lab.shape[1] - 1).astype(int)
        hit = lab[iy, ix]
        found = len(np.unique(hit[hit > 0]))
        # a label hit twice counts one true positive; the second detection is a false one
        p = found / max(len(d), 1)
        r = found / n_lab
        return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12), "rmse_px": np.nan}

    ev = evflow.detect_spots(img)
    rows = [("spotmax", f"{n_lab} labels", f"evflow defaults (sigma {ev.attrs['psf_sigma_px'][0]:.2f} px)",
             score([ev]))]
    d = 2 * int(np.ceil(2 * ev.attrs["psf_sigma_px"][0])) + 1
    mm, det = tuned(score, [img], d)
    rows.append(("spotmax", f"{n_lab} labels", f"trackpy d={d} minmass={mm} (tuned)", score(det)))
    return rows


def deepstorm():
    import tifffile

    import evflow

    stack = tifffile.imread(DATA / "deepstorm" / "ArtificialDataset_demo1.tif").astype(np.float32)
    pos = pd.read_csv(DATA / "deepstorm" / "positions_demo1.csv")
    # positions in nm at 100 nm/px from the corner of pixel [0, 0]: centre convention is (nm / 100 - 0.5)
    truths = [np.column_stack([g["y [nm]"] / 100 - 0.5, g["x [nm]"] / 100 - 0.5]) for _f, g in
              sorted(pos.groupby("frame"))]
    frames = stack[: len(truths)]
    ev = [evflow.detect_spots(f) for f in frames]
    m = pooled(truths, ev)
    rows = [("deepstorm", f"{sum(map(len, truths))} emitters", "evflow defaults", m)]
    d = 2 * int(np.ceil(2 * ev[0].attrs["psf_sigma_px"][0])) + 1
    mm, det = tuned(lambda x: pooled(truths, x), list(frames), d)
    rows.append(("deepstorm", f"{sum(map(len, truths))} emitters", f"trackpy d={d} minmass={mm} (tuned)",
                 pooled(truths, det)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="synthetic fields per SNR")
    args = ap.parse_args(argv)
    rows = synthetic(args.seeds) + spotmax() + deepstorm()
    print(f"{'data':10s} {'case':16s} {'method':44s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'loc. error':>10s}")
    for data, case, method, m in rows:
        loc = m["rmse_px"] * (100 if data == "deepstorm" else 1)
        unit = "nm" if data == "deepstorm" else "px"
        loc_s = f"{loc:7.3f} {unit}" if np.isfinite(loc) else "       n/a"
        print(f"{data:10s} {case:16s} {method:44s} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {loc_s}")


if __name__ == "__main__":
    main()
