"""Per-vesicle intensity traces from a bleaching movie (T, Y, X).

1. Reference: the mean of the first ``detect_frames`` frames; vesicles are
   detected on it (:func:`evflow.detect_spots`) unless positions are given.
2. Drift: phase correlation (FFT cross-power spectrum, parabolic sub-pixel
   peak) of the mean of every ``drift_bin_frames`` frames against the
   reference; a bin whose correlation peak is weak (bleached, blank) keeps
   the last good shift; shifts are interpolated linearly between bins.
3. Traces: photons in a disc of ``r_peak_px`` around each (drifted) position
   minus the disc area times the median of the annulus ``r_bg_inner_px`` to
   ``r_bg_outer_px`` (local background), divided by the fraction of a
   Gaussian PSF inside the disc, so a trace is in total photons per frame,
   the unit of :func:`evflow.count_vesicles`' ``photons_<marker>``.

A dask-backed movie is read one time chunk at a time (the drift pass and the
trace pass each read it once); the result is a NumPy array.  Within a chunk,
:func:`aperture_photons` measures every vesicle in a batch of frames in one
vectorised pass (no Python loop over vesicles or frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ImageError

__all__ = ["extract_traces", "aperture_photons", "phase_correlation_shift", "BleachingTraces"]


@dataclass
class BleachingTraces:
    """Traces of one movie: ``traces`` (frames, vesicles) in photons per frame, ``yx`` (vesicles, 2)
    reference positions (px), ``drift`` (frames, 2) shift of each frame against the reference (px)."""

    traces: np.ndarray
    yx: np.ndarray
    drift: np.ndarray


def phase_correlation_shift(reference, moving, *, max_shift_px: float = 10.0):
    """Shift (dy, dx) of ``moving`` against ``reference`` by phase correlation, and the peak strength.

    The strength is the correlation peak over the RMS of the correlation
    surface (about 1-3 for unrelated images, tens for a clear match).
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(moving, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ImageError(f"phase correlation needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-12)
    r = np.fft.irfft2(cross, s=a.shape)
    H, W = a.shape
    m = int(np.ceil(max_shift_px))
    dy = np.r_[0 : m + 1, -m:0] % H
    dx = np.r_[0 : m + 1, -m:0] % W
    sub = r[np.ix_(dy, dx)]
    k = np.unravel_index(int(np.argmax(sub)), sub.shape)
    iy, ix = int(dy[k[0]]), int(dx[k[1]])
    peak = r[iy, ix]
    strength = float(peak / (r.std() + 1e-300))

    def parabolic(m1, c0, p1):
        den = m1 - 2 * c0 + p1
        return 0.0 if den == 0 else 0.5 * (m1 - p1) / den

    oy = parabolic(r[(iy - 1) % H, ix], peak, r[(iy + 1) % H, ix])
    ox = parabolic(r[iy, (ix - 1) % W], peak, r[iy, (ix + 1) % W])
    sy = (iy + H // 2) % H - H // 2 + oy
    sx = (ix + W // 2) % W - W // 2 + ox
    return np.array([sy, sx]), strength


def _psf_disc_fraction(sigma, r):
    """Fraction of a pixelated Gaussian PSF (centred on a pixel) inside the pixel disc of radius r."""
    from ..synth import integrated_gaussian

    n = 2 * int(np.ceil(r + 4 * sigma)) + 1
    c = n // 2
    e = integrated_gaussian(c, sigma, n)
    psf = e[:, None] * e[None, :]
    yy, xx = np.mgrid[:n, :n]
    return float(psf[(yy - c) ** 2 + (xx - c) ** 2 <= r * r].sum())


#: elements of the (frames, vesicles, window pixels) arrays :func:`aperture_photons` makes at once
BATCH_ELEMENTS = 2**22


def aperture_photons(frames, yx, shifts, r_peak_px, r_bg_inner_px, r_bg_outer_px, *, frame_batch=None):
    """Disc photons minus the disc area times the annulus median, for every frame and vesicle at once.

    ``frames`` (T, H, W), ``yx`` (vesicles, 2) reference positions, ``shifts``
    (T, 2) drift per frame; returns (T, vesicles).  Frames are processed in
    batches of ``frame_batch`` (default: as many as keep the window arrays
    under :data:`BATCH_ELEMENTS` elements), every vesicle of a batch in one
    vectorised pass; ``frame_batch=1`` is the frame-by-frame reference, and
    every batch size gives identical results (the same operations per frame
    and vesicle).
    """
    frames = np.asarray(frames, dtype=np.float64)
    n_t, H, W = frames.shape
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    n = len(yx)
    R = int(np.ceil(r_bg_outer_px))
    off = np.arange(-R, R + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    oy, ox = oy.ravel(), ox.ravel()
    out = np.zeros((n_t, n))
    if frame_batch is None:
        frame_batch = max(1, BATCH_ELEMENTS // max(n * oy.size, 1))
    for t0 in range(0, n_t, int(frame_batch)):
        t1 = min(t0 + int(frame_batch), n_t)
        pos = yx[None] + np.asarray(shifts[t0:t1], dtype=np.float64)[:, None, :]  # (B, n, 2)
        cy, cx = np.rint(pos[..., 0]).astype(np.int64), np.rint(pos[..., 1]).astype(np.int64)
        yy = cy[..., None] + oy  # (B, n, P)
        xx = cx[..., None] + ox
        d2 = (yy - pos[..., 0, None]) ** 2 + (xx - pos[..., 1, None]) ** 2
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        fr = np.arange(t0, t1)[:, None, None]
        vals = frames[fr, np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
        disc = (d2 <= r_peak_px**2) & inside
        ann = (d2 >= r_bg_inner_px**2) & (d2 <= r_bg_outer_px**2) & inside
        bg = np.nanmedian(np.where(ann, vals, np.nan), axis=2)
        out[t0:t1] = (vals * disc).sum(2) - disc.sum(2) * bg
    return out


def _frames(stack, start, stop):
    return np.asarray(stack[start:stop], dtype=np.float64)


def _chunks_t(stack, n_t):
    ch = getattr(stack, "chunks", None)
    if ch is not None and not callable(ch) and isinstance(ch[0], tuple):
        edges = np.concatenate([[0], np.cumsum(ch[0])])
    else:
        edges = np.arange(0, n_t + 100, 100)
        edges[-1:] = n_t
    edges = np.unique(np.clip(edges, 0, n_t))
    return list(zip(edges[:-1], edges[1:]))


def extract_traces(
    stack,
    yx=None,
    *,
    psf_sigma_px: float = 1.3,
    r_peak_px: float = 3.0,
    r_bg_inner_px: float = 4.0,
    r_bg_outer_px: float = 6.0,
    detect_frames: int = 10,
    drift: str | None = "correlation",
    drift_bin_frames: int = 20,
    max_shift_px: float = 5.0,
    min_strength: float = 8.0,
    aperture_correction: bool = True,
    camera=None,
    detect_kwargs=None,
) -> BleachingTraces:
    """Background-corrected intensity traces of the vesicles in a bleaching movie.

    Parameters
    ----------
    stack : array-like (frames, y, x)
        NumPy, dask or xarray (e.g. ``read_images(..., t=True).isel(fov=0, channel=0)``).
    yx : array (vesicles, 2), optional
        Positions in the reference (px); default: detected on the reference.
    psf_sigma_px : float
        PSF width, for detection and the aperture correction.
    r_peak_px, r_bg_inner_px, r_bg_outer_px : float
        Signal disc and background annulus radii (px).
    detect_frames : int
        Frames averaged into the reference.
    drift : {'correlation', None}
        Register frames by phase correlation, or assume none.
    drift_bin_frames, max_shift_px, min_strength : see module docstring.
    aperture_correction : bool
        Divide by the PSF fraction in the disc (traces in total photons).
    camera : Camera or dict, optional
        ADU -> photons before anything else.

    Returns
    -------
    BleachingTraces
    """
    from .camera import as_camera

    if hasattr(stack, "dims") and hasattr(stack, "data"):
        stack = stack.data
    shape = tuple(stack.shape)
    if len(shape) != 3:
        raise ImageError(f"a bleaching movie must be (frames, y, x), got shape {shape}")
    n_t, H, W = shape
    if not 0 < r_peak_px < r_bg_inner_px < r_bg_outer_px:
        raise ImageError(f"radii must satisfy 0 < r_peak_px < r_bg_inner_px < r_bg_outer_px, got "
                         f"{r_peak_px}, {r_bg_inner_px}, {r_bg_outer_px}")
    if drift not in ("correlation", None):
        raise ImageError(f"drift must be 'correlation' or None, got {drift!r}")
    camera = as_camera(camera)

    def load(a, b):
        f = _frames(stack, a, b)
        return camera.to_photons(f).astype(np.float64) if camera is not None else f

    ref = load(0, min(detect_frames, n_t)).mean(0)
    if yx is None:
        from .detect import detect_spots

        det = detect_spots(ref.astype(np.float32), psf_sigma_px=psf_sigma_px, **(detect_kwargs or {}))
        yx = det[["y", "x"]].to_numpy()
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    chunks = _chunks_t(stack, n_t)

    shifts = np.zeros((n_t, 2))
    if drift == "correlation":
        centers, found = [], []
        state = {"last": np.zeros(2)}

        def finish(k, acc, count):
            sh, strength = phase_correlation_shift(ref, acc / count, max_shift_px=max_shift_px)
            if strength >= min_strength:
                state["last"] = sh
            centers.append(k * drift_bin_frames + (count - 1) / 2)
            found.append(state["last"].copy())

        acc, count, cur = None, 0, 0
        for a, b in chunks:  # bins of drift_bin_frames frames, whatever the chunks
            blk = load(a, b)
            for j in range(b - a):
                k = (a + j) // drift_bin_frames
                if k != cur and count:
                    finish(cur, acc, count)
                    acc, count = None, 0
                cur = k
                acc = blk[j].copy() if acc is None else acc + blk[j]
                count += 1
        if count:
            finish(cur, acc, count)
        centers = np.asarray(centers)
        found = np.asarray(found)
        t = np.arange(n_t)
        shifts = np.stack([np.interp(t, centers, found[:, 0]), np.interp(t, centers, found[:, 1])], axis=1)

    n = len(yx)
    traces = np.zeros((n_t, n))
    frac = _psf_disc_fraction(psf_sigma_px, r_peak_px) if aperture_correction else 1.0
    if n:
        for a, b in chunks:
            traces[a:b] = aperture_photons(load(a, b), yx, shifts[a:b], r_peak_px, r_bg_inner_px, r_bg_outer_px) / frac
    return BleachingTraces(traces, yx, shifts)
