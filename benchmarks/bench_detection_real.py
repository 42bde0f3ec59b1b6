"""Detection accuracy: evflow.detect_spots (defaults) beside trackpy.locate (minmass tuned on the truth)
and Big-FISH (bigfish.detection.detect_spots, its automatic threshold).

Synthetic TIRF fields (evflow.synth.tirf) at peak SNR 1.6, 3, 5 and 10, and two
real-data sets with truth from ../shared/data/images: spotmax (a label mask of
81 spots: a spot is found when a detection falls in its label; a second
detection in the same label is a false one; localisation error against the
label's centroid) and deepstorm (20 frames of simulated emitters with
positions: matched within 1.5 px).  Prints precision, recall, F1 and
localisation error (px; nm for deepstorm).  trackpy's ``minmass`` (and, on the
real images, its ``diameter``) is tuned on the truth: an upper bound of what
a user could reach with it; evflow and Big-FISH run on their automatic
thresholds.

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
MINMASS = (0, 5, 10, 15, 20, 25, 30, 35, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200, 5000,
           8000)
DIAMETERS = (5, 7, 9, 11)


def trackpy_locate(img, diameter, minmass):
    import trackpy as tp

    tp.quiet()
    df = tp.locate(np.asarray(img, np.float32), diameter, minmass=minmass, engine="numba")
    return df[["y", "x"]].reset_index(drop=True)


def tuned(score, images, diameters):
    """trackpy's best (diameter, minmass) for ``score`` (F1 against the truth) and its detections."""
    best = (-1.0, None, None)
    for d in np.atleast_1d(diameters):
        for mm in MINMASS:
            det = [trackpy_locate(im, int(d), mm) for im in images]
            f1 = score(det)["f1"]
            if f1 > best[0]:
                best = (f1, (int(d), mm), det)
    return best[1], best[2]


def bigfish_locate(img, sigma_px):
    """Big-FISH's LoG detection with its automatic (elbow) threshold; spot radius sqrt(2) sigma."""
    import bigfish.detection as bd

    r = float(np.sqrt(2.0) * sigma_px) * 100.0
    im = np.clip(np.asarray(img, np.float64), 0, 65535).astype(np.uint16)
    sp = bd.detect_spots(images=im, voxel_size=(100, 100), spot_radius=(r, r))
    return pd.DataFrame(np.asarray(sp, np.float64).reshape(-1, 2), columns=["y", "x"])


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
        rows.append(("synthetic", f"SNR {snr:g}", "evflow defaults (sigma 1.3 given)", pooled(truths, ev)))
        (d, mm), tpd = tuned(lambda d: pooled(truths, d), imgs, 7)
        rows.append(("synthetic", f"SNR {snr:g}", f"trackpy d={d} minmass={mm} (tuned)", pooled(truths, tpd)))
        rows.append(("synthetic", f"SNR {snr:g}", "Big-FISH (automatic threshold)",
                     pooled(truths, [bigfish_locate(im, 1.3) for im in imgs])))
    return rows


def spotmax():
    import tifffile
    from scipy import ndimage

    import evflow

    img = tifffile.imread(DATA / "spotmax" / "single_image.tiff").astype(np.float32)
    lab = tifffile.imread(DATA / "spotmax" / "single_label.tiff")
    ids = np.unique(lab[lab > 0])
    n_lab = len(ids)
    cy, cx = (np.asarray(c) for c in zip(*ndimage.center_of_mass(np.ones(lab.shape), lab, ids)))
    centre = {int(i): (y, x) for i, y, x in zip(ids, cy, cx)}

    def score(dets):
        d = dets[0]
        y, x = d["y"].to_numpy(np.float64), d["x"].to_numpy(np.float64)
        iy = np.clip(np.rint(y), 0, lab.shape[0] - 1).astype(int)
        ix = np.clip(np.rint(x), 0, lab.shape[1] - 1).astype(int)
        hit = lab[iy, ix]
        # a label hit twice counts one true positive (its first detection); the second is a false one
        _, first = np.unique(hit, return_index=True)
        first = [j for j in first if hit[j] > 0]
        found = len(first)
        err = [np.hypot(y[j] - centre[int(hit[j])][0], x[j] - centre[int(hit[j])][1]) for j in first]
        p = found / max(len(d), 1)
        r = found / n_lab
        return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
                "rmse_px": float(np.sqrt(np.mean(np.square(err)))) if err else np.nan}

    ev = evflow.detect_spots(img)
    s = ev.attrs["psf_sigma_px"][0]
    rows = [("spotmax", f"{n_lab} labels", f"evflow defaults (sigma {s:.2f} px, {ev.attrs['psf_sigma_source']})",
             score([ev]))]
    (d, mm), det = tuned(score, [img], DIAMETERS)
    rows.append(("spotmax", f"{n_lab} labels", f"trackpy d={d} minmass={mm} (tuned)", score(det)))
    rows.append(("spotmax", f"{n_lab} labels", f"Big-FISH (sigma {s:.2f} px, automatic)",
                 score([bigfish_locate(img, s)])))
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
    n = f"{sum(map(len, truths))} emitters"
    ev = [evflow.detect_spots(f) for f in frames]
    rows = [("deepstorm", n, f"evflow defaults (sigma {ev[0].attrs['psf_sigma_px'][0]:.2f} px)", pooled(truths, ev))]
    ev = [evflow.detect_spots(f, psf_sigma_px=1.1) for f in frames]
    rows.append(("deepstorm", n, "evflow (sigma 1.1 px given)", pooled(truths, ev)))
    (d, mm), det = tuned(lambda x: pooled(truths, x), list(frames), DIAMETERS)
    rows.append(("deepstorm", n, f"trackpy d={d} minmass={mm} (tuned)", pooled(truths, det)))
    rows.append(("deepstorm", n, "Big-FISH (sigma 1.1 px, automatic)",
                 pooled(truths, [bigfish_locate(f, 1.1) for f in frames])))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="synthetic fields per SNR")
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", module="trackpy")
    rows = synthetic(args.seeds) + spotmax() + deepstorm()
    print(f"{'data':10s} {'case':16s} {'method':52s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'loc. error':>10s}")
    for data, case, method, m in rows:
        loc = m["rmse_px"] * (100 if data == "deepstorm" else 1)
        unit = "nm" if data == "deepstorm" else "px"
        loc_s = f"{loc:7.3f} {unit}" if np.isfinite(loc) else "       n/a"
        print(f"{data:10s} {case:16s} {method:52s} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {loc_s}")


if __name__ == "__main__":
    main()
