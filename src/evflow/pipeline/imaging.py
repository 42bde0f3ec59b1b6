"""Imaging stage of the pipeline: channel registration from beads, per-field phenotypes.

Spots are found with :func:`evflow.imaging.detect.detect_spots` in every
channel; channel coordinates are mapped to the reference channel (the first)
with affine transforms fitted on registration beads; spots of different
channels closer than ``match_radius_px`` are one vesicle, whose phenotype
bitmask has bit ``c`` set when channel ``c`` has a spot.
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageError

__all__ = ["read_field", "registration_from_beads", "analyse_field", "match_points", "fit_affine"]


def read_field(path, n_channels: int | None = None) -> np.ndarray:
    """One field as a (channel, y, x) array from a TIFF file."""
    import tifffile

    a = np.asarray(tifffile.imread(str(path)))
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ImageError(f"{path}: expected a (channel, y, x) image, got shape {a.shape}")
    if n_channels is not None and a.shape[0] != n_channels:
        raise ImageError(f"{path}: {a.shape[0]} channels, the experiment lists {n_channels}")
    return a


def _camera(img_s):
    return {"offset": float(img_s.get("camera_offset", 0.0)), "gain": float(img_s.get("camera_gain", 1.0))}


def _detect(channel_img, img_s, backend):
    from ..imaging.detect import detect_spots

    df = detect_spots(channel_img, psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3)), camera=_camera(img_s),
                      backend=backend, false_positives=float(img_s.get("false_positives", 0.1)), fit=True,
                      exclude_border_px=2)
    snr = float(img_s.get("snr", 0.0))
    if snr > 0 and "snr" in df:
        df = df[df["snr"] >= snr]
    ok = np.isfinite(df["y"].to_numpy()) & np.isfinite(df["x"].to_numpy())
    return np.stack([df["y"].to_numpy()[ok], df["x"].to_numpy()[ok]], axis=1).astype(np.float64)


def match_points(a, b, radius):
    """One-to-one matches between point sets ``a`` and ``b`` (n, 2) closer than ``radius``.

    Pairs are taken in order of increasing distance (ties by index), so the
    result does not depend on the order of the points beyond that.
    Returns index arrays ``(ia, ib)``.
    """
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = cKDTree(b).query_ball_point(a, r=radius)
    cand = [(float(np.hypot(*(a[i] - b[j]))), i, j) for i, js in enumerate(pairs) for j in js]
    cand.sort()
    used_a, used_b, ia, ib = set(), set(), [], []
    for _d, i, j in cand:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        ia.append(i)
        ib.append(j)
    return np.asarray(ia, int), np.asarray(ib, int)


def fit_affine(src, dst):
    """Least-squares affine (2, 3) with ``dst ~ A @ (y, x, 1)`` for matched (n, 2) points."""
    X = np.hstack([src, np.ones((len(src), 1))])
    A, *_ = np.linalg.lstsq(X, dst, rcond=None)
    return A.T


def _apply(A, pts):
    return pts @ A[:, :2].T + A[:, 2]


def _invert(A):
    M = np.vstack([A, [0, 0, 1]])
    return np.linalg.inv(M)[:2]


def registration_from_beads(path, img_s) -> dict:
    """Affine maps reference -> channel from a registration-bead image (visible in every channel)."""
    chans = list(img_s["channels"])
    img = read_field(path, len(chans))
    ref = _detect(img[0], img_s, "numpy")
    if len(ref) < 3:
        raise ImageError(f"{path}: only {len(ref)} registration beads found in channel {chans[0]!r} (need >= 3)")
    tfs, n_matched, rms = [np.array([[1.0, 0, 0], [0, 1.0, 0]])], [len(ref)], [0.0]
    for c in range(1, len(chans)):
        pts = _detect(img[c], img_s, "numpy")
        A = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        for radius in (6.0, 3.0, 1.5):
            ia, ib = match_points(_apply(A, ref), pts, radius)
            if len(ia) < 3:
                raise ImageError(f"{path}: only {len(ia)} beads of channel {chans[c]!r} match the reference channel "
                                 f"within {radius} px (need >= 3)")
            A = fit_affine(ref[ia], pts[ib])
        res = _apply(A, ref[ia]) - pts[ib]
        tfs.append(A)
        n_matched.append(len(ia))
        rms.append(float(np.sqrt(np.mean(np.sum(res**2, axis=1)))))
    return {"transforms": np.stack(tfs), "n_matched": n_matched, "rms_px": rms, "channels": chans}


def _thumbnail(img, img_s, size=256):
    cam = _camera(img_s)
    ph = (img.astype(np.float64) - cam["offset"]) / cam["gain"]
    step = max(1, int(np.ceil(max(ph.shape[1:]) / size)))
    if step > 1:
        H, W = (ph.shape[1] // step) * step, (ph.shape[2] // step) * step
        ph = ph[:, :H, :W].reshape(ph.shape[0], H // step, step, W // step, step).max(axis=(2, 4))
    rgb = np.zeros(ph.shape[1:] + (3,), np.float64)
    colours = [(0.2, 1.0, 0.2), (1.0, 0.2, 1.0), (0.2, 0.8, 1.0), (1.0, 0.8, 0.2)]
    for c in range(ph.shape[0]):
        lo, hi = np.percentile(ph[c], [50, 99.8])
        v = np.clip((ph[c] - lo) / max(hi - lo, 1e-9), 0, 1)
        rgb += v[..., None] * np.asarray(colours[c % len(colours)])
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), step


def analyse_field(path, img_s, registration=None, backend="numpy") -> dict:
    """Detect, register and phenotype the vesicles of one field.

    Returns
    -------
    dict with ``counts`` (2**k int64 per bitmask), ``n_spots`` per channel,
    ``y``, ``x`` (reference px), ``bitmask`` per vesicle, and a thumbnail.
    """
    chans = list(img_s["channels"])
    img = read_field(path, len(chans))
    radius = float(img_s.get("match_radius_px", 2.0))
    tfs = registration["transforms"] if registration is not None else None
    ves = np.zeros((0, 2))
    bits = np.zeros(0, np.int64)
    n_spots = []
    for c in range(len(chans)):
        pts = _detect(img[c], img_s, backend)
        n_spots.append(len(pts))
        if tfs is not None and c > 0:
            pts = _apply(_invert(np.asarray(tfs[c])), pts)
        if c == 0:
            ves, bits = pts, np.ones(len(pts), np.int64)
            continue
        ia, ib = match_points(ves, pts, radius)
        bits[ia] |= 1 << c
        new = np.setdiff1d(np.arange(len(pts)), ib)
        ves = np.vstack([ves, pts[new]])
        bits = np.concatenate([bits, np.full(len(new), 1 << c, np.int64)])
    counts = np.bincount(bits, minlength=1 << len(chans)).astype(np.int64)
    thumb, step = _thumbnail(img, img_s)
    return {"counts": counts, "n_spots": np.asarray(n_spots, np.int64), "y": ves[:, 0], "x": ves[:, 1],
            "bitmask": bits, "thumbnail": thumb, "thumbnail_step": step, "shape": list(img.shape[1:])}
