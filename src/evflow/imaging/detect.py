"""Spot detection: scale-space DoG filter, local maxima, robust automatic threshold.

The filter is a difference of Gaussians (an approximation of the Laplacian
of Gaussian closer to the matched filter) scaled so that its response at the
centre of an isolated spot equals the spot's photon count (an estimate of
"photons" that is insensitive to a flat background).  The noise of the
filtered image is ``1.4826 * MAD`` over a fixed sub-grid of pixels (every
4th row and column, in global coordinates, so tiles and whole fields give
the same number), and the automatic threshold is ``k * noise`` with ``k``
chosen so that pure noise gives ``false_positives`` detections per field
(Gaussian tail over the number of pixels).

A pixel is a spot when its response is at least the threshold and the
largest within ``min_distance_px`` (square neighbourhood); equal maxima
closer than that are resolved once (the first in row-major order is kept).
Every step is local, so a tile with a large enough halo gives exactly the
spots of the whole field in its core.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from ..backend import array_backend, resolve_backend, to_numpy
from ..errors import ConfigError, ImageError
from ..kernels._registry import renamed_impl

__all__ = [
    "detect_spots",
    "dog_filter",
    "noise_level",
    "auto_threshold_factor",
    "local_maxima",
    "NOISE_STRIDE",
]

NOISE_STRIDE = 4
#: fields smaller than this (pixels) use every pixel for the noise estimate
NOISE_FULL_BELOW = 1 << 20


#: ratio of the background (outer) to the spot (inner) scale of the DoG filter
DOG_RATIO = 3.0


def _dog(img, sigma, ndi, out_dtype):
    from ..kernels.filters import dog_ndimage

    return dog_ndimage(img, sigma, DOG_RATIO * sigma, None, ndi, out_dtype)


@functools.lru_cache(maxsize=64)
def _dog_gain(sigma: float) -> float:
    """Response of the DoG filter at the centre of a 1-photon spot."""
    import scipy.ndimage as ndi

    from ..synth.tirf import integrated_gaussian

    n = 2 * int(math.ceil(4 * DOG_RATIO * sigma)) + 21
    c = n // 2
    e = integrated_gaussian(float(c), sigma, n)
    spot = np.outer(e, e)
    return float(_dog(spot, sigma, ndi, np.float64)[c, c])


def dog_filter(image, sigma_px, *, backend=None, impl="auto"):
    """Photon-scaled difference-of-Gaussians filter (scales sigma and 3 sigma).

    The response at the centre of an isolated spot equals its photon count
    and is zero on a flat background.  Its signal-to-noise ratio is within
    about 6% of the ideal matched filter (a LoG at the same scale loses ~30%).

    Parameters
    ----------
    image : 2-D array (photons), NumPy or CuPy
    sigma_px : float
        Filter scale (px), normally the PSF standard deviation.
    backend : {'numpy', 'cupy', None}
        Array library; None follows ``image``.
    impl : {'auto', 'numpy', 'numba', 'cupy'}
        Filter implementation (``evflow.kernels`` registry, family ``dog``);
        'auto': Numba for NumPy images, ndimage for CuPy ones.
    """
    from ..kernels import _registry

    name = backend or array_backend(image)
    kname = _registry.dog.resolve(impl, image)
    if kname == "numba" and name != "numpy":  # a CuPy image stays on the device
        kname = "cupy"
    s = float(sigma_px)
    return _registry.dog.get(kname)(image, s, DOG_RATIO * s, 1.0 / _dog_gain(s))


def noise_level(filtered, *, origin=(0, 0), field_pixels=None) -> float:
    """Robust noise (1.4826 * MAD) of a filtered image over the global sub-grid.

    Fields of at least ``NOISE_FULL_BELOW`` pixels are sampled on every
    ``NOISE_STRIDE``-th row and column; ``origin`` is the global (y, x) of
    ``filtered[0, 0]`` so that tiles sample the same pixels as the whole field.
    """
    sub = _noise_sample(filtered, origin, field_pixels)
    return _mad_sigma(sub)


def _noise_sample(filtered, origin, field_pixels=None):
    n = field_pixels if field_pixels is not None else filtered.shape[0] * filtered.shape[1]
    stride = NOISE_STRIDE if n >= NOISE_FULL_BELOW else 1
    oy = (-int(origin[0])) % stride
    ox = (-int(origin[1])) % stride
    return to_numpy(filtered[oy::stride, ox::stride]).ravel()


def _mad_sigma(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    med = np.median(v)
    return float(1.4826 * np.median(np.abs(v - med)))


#: the automatic threshold is never below this many noise sigmas: real camera
#: noise has heavier tails than the Gaussian the false-positive rule assumes
MIN_THRESHOLD_SNR = 5.0


def auto_threshold_factor(n_pixels: int, false_positives: float = 0.1) -> float:
    """k (in noise sigmas) for the automatic threshold.

    The Gaussian tail gives ``false_positives`` pixels of pure noise above
    ``k`` per field of ``n_pixels`` (conservative: neighbouring filtered
    pixels are correlated); ``k`` is at least :data:`MIN_THRESHOLD_SNR`.
    """
    from scipy.special import ndtri

    if not 0 < false_positives < n_pixels:
        raise ConfigError(f"false_positives must be in (0, n_pixels), got {false_positives}")
    return max(float(-ndtri(false_positives / float(n_pixels))), MIN_THRESHOLD_SNR)


def local_maxima(response, threshold, min_distance_px, *, backend=None, factor=1.0, impl="auto"):
    """Integer (y, x) of pixels >= threshold that are the maximum within ``min_distance_px``.

    The score is ``response * factor`` (float32; ``factor`` e.g. 1 / noise
    turns a response into an SNR without a full-image product).  Equal maxima
    within the distance keep the first in row-major order.  Returns NumPy
    arrays y, x and the score there, sorted row-major.  ``impl``: the filter
    implementation ('auto': Numba for NumPy arrays, ndimage for CuPy ones).
    """
    from ..kernels import _registry

    name = backend or array_backend(response)
    kname = _registry.local_maxima.resolve(impl, response)
    if kname == "numba" and name != "numpy":  # a CuPy score stays on the device
        kname = "cupy"
    yy, xx, val = _registry.local_maxima.get(kname)(response, threshold, int(min_distance_px), factor)
    if len(yy) > 1:
        keep = _resolve_ties(yy, xx, val, int(min_distance_px))
        yy, xx, val = yy[keep], xx[keep], val[keep]
    return yy, xx, val


def _resolve_ties(yy, xx, val, r):
    """Drop a maximum when an equal one lies within r (Chebyshev) earlier in row-major order."""
    from scipy.spatial import cKDTree

    keep = np.ones(len(yy), dtype=bool)
    if r < 1:
        return keep
    pts = np.column_stack([yy, xx])
    pairs = cKDTree(pts).query_pairs(r + 0.5, p=np.inf, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    i, j = pairs[:, 0], pairs[:, 1]
    tie = val[i] == val[j]
    later = np.maximum(i, j)[tie]  # indices are in row-major order already
    keep[later] = False
    return keep


def _field_photons(image, camera, name):
    if camera is not None:
        return camera.to_photons(image)
    return image.astype(np.float32, copy=False)


@renamed_impl("fit_backend")
def detect_spots(
    image,
    *,
    psf_sigma_px=None,
    threshold=None,
    backend=None,
    camera=None,
    false_positives=0.1,
    min_distance_px=None,
    exclude_border_px=0,
    fit=True,
    method="mle",
    fit_sigma=True,
    window=None,
    tile=None,
    impl="auto",
    flat=None,
    background_radius_px=None,
) -> pd.DataFrame:
    """Detect and localise diffraction-limited spots (vesicles) in one 2-D field.

    Parameters
    ----------
    image : 2-D array
        NumPy, CuPy or dask array, in photons or (with ``camera``) ADU.
    psf_sigma_px : float or sequence of float, optional
        PSF standard deviation (px).  A sequence is a scale space: each pixel
        takes the scale with the largest signal-to-noise.  None: estimated
        from the field (median fitted sigma of the brightest spots).
    threshold : float, optional
        Minimum filter response in photons (manual override).  None: the
        automatic threshold ``k * noise`` (see :func:`auto_threshold_factor`).
    backend : {'numpy', 'cupy', None}
        Array backend; None follows the input (or ``EVFLOW_BACKEND``).
    camera : Camera or dict, optional
        Converts ADU to photons before detection and fitting.
    false_positives : float
        Expected false detections per field from noise (automatic threshold).
    min_distance_px : int, optional
        Spots closer than this (px, square neighbourhood) are resolved into
        the brightest; default ``max(2, round(1.5 * sigma))``.
    exclude_border_px : int
        Ignore maxima closer than this to the image edge.
    fit : bool
        Fit each spot (sub-pixel position, photons, background, sigma, CRLB);
        otherwise return the integer maxima and filter responses.
    method : {'mle', 'lsq'}
        Fit estimator: Poisson maximum likelihood or least squares.
    fit_sigma : bool
        Fit the PSF width per spot.
    window : int, optional
        Fit window (px, odd).
    tile : int, optional
        Process the field in square tiles with this core size (px), each
        read with a halo wide enough (filter radius + twice the minimum
        distance + half the fit window) that a spot is found, resolved and
        fitted exactly as in the whole field; a spot is kept only by the tile
        whose core holds its maximum.  The noise (automatic threshold) is the
        field's: a first pass over the tiles collects the filtered pixels of
        the global noise sub-grid, a second one detects and fits (the filter
        runs twice).  For mosaics larger than memory (a dask array is read
        tile by tile).  Without a PSF sigma, it is estimated on the central
        tile.  None: the whole field at once (a dask field is computed first).
    impl : {'auto', 'numpy', 'numba', 'cupy'}
        Implementation of the spot fits (``evflow.kernels`` registry, family
        ``gaussfit``): 'auto' is CuPy on the GPU backend, Numba on the CPU.
        (The filters pick theirs by the array backend.)  Formerly ``fit_backend=``.
    flat : 2-D array or "estimate", optional
        Flat-field correction: the illumination profile (a measured flat of
        the image's shape, see :func:`evflow.imaging.background.normalise_flat`)
        or ``"estimate"`` (from this field's background,
        :func:`~evflow.imaging.background.estimate_flat`).  Spots are fitted
        on the raw photons and their ``photons``, ``background`` and CRLBs
        divided by the flat (maximum 1) at their position; column ``flat``.
    background_radius_px : int, optional
        Background subtraction before detection: white top-hat (rolling-ball
        equivalent) with a ``2 r + 1`` px square element
        (:func:`~evflow.imaging.background.subtract_image_background`); the fits
        use the unsubtracted photons (free local background).

    Returns
    -------
    pandas.DataFrame
        One row per spot: ``y``, ``x`` (px; the centre of pixel [0, 0] is
        (0, 0)), ``photons``, ``background`` (photons/px), ``sigma`` (px),
        ``crlb_x``, ``crlb_y`` (px), ``crlb_photons``, ``llr`` (fit quality),
        ``iterations``, ``fit_status``, ``response`` (filter photons),
        ``snr`` (response / noise), ``y_peak``, ``x_peak`` (integer maxima).
        ``attrs``: ``noise``, ``threshold``, ``psf_sigma_px``.
    """
    from .camera import as_camera

    camera = as_camera(camera)
    kind = type(image).__module__.split(".")[0]
    if getattr(image, "ndim", None) != 2:
        raise ImageError(f"detect_spots expects a 2-D image (y, x), got shape {getattr(image, 'shape', None)}")
    if background_radius_px is not None:
        from .background import _check_radius

        background_radius_px = _check_radius(background_radius_px)
    if isinstance(flat, str) and flat != "estimate":
        raise ConfigError(f"detect_spots: flat must be an image or 'estimate', got {flat!r}")
    if flat is not None and not isinstance(flat, str):
        from .background import normalise_flat

        flat = normalise_flat(flat, shape=tuple(image.shape))
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE:
            raise ConfigError(f"detect_spots: tile must be an integer >= {MIN_TILE} px, got {tile!r}")
        if isinstance(flat, str):
            raise ConfigError("detect_spots: flat='estimate' needs the whole field; pass a flat image with tile=")
        name = resolve_backend(backend) if backend is not None else array_backend(image)
        out = _detect_tiled(image, int(tile), kind, name, psf_sigma_px, threshold, camera, false_positives,
                            min_distance_px, exclude_border_px, fit, method, fit_sigma, window, impl,
                            background_radius_px)
        return _apply_flat(out, flat, None)
    if kind == "dask":
        image = image.compute()  # one field per chunk: small enough for memory
    name = resolve_backend(backend) if backend is not None else array_backend(image)
    if name == "cupy":
        import cupy

        image = cupy.asarray(image)
    else:
        image = to_numpy(image)
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ImageError(f"image of {image.shape} px is too small for spot detection (at least 8x8)")
    photons = _field_photons(image, camera, name)
    det = None
    if background_radius_px is not None:
        from .background import subtract_image_background

        det = subtract_image_background(photons, background_radius_px, backend=name)
    out = _detect_field(photons, name, psf_sigma_px, threshold, camera, false_positives, min_distance_px,
                        exclude_border_px, fit, method, fit_sigma, window, tile, impl, detect_image=det)
    return _apply_flat(out, flat, photons)


#: spot columns divided by the flat in a flat-field correction
FLAT_COLUMNS = ("photons", "background", "crlb_photons", "crlb_background")


def _apply_flat(out, flat, photons):
    if flat is None:
        return out
    from .background import estimate_flat, flat_at

    if isinstance(flat, str):  # "estimate"
        flat = estimate_flat(to_numpy(photons))
    f = flat_at(flat, out["y"].to_numpy(), out["x"].to_numpy()) if len(out) else np.empty(0)
    out["flat"] = f
    for col in FLAT_COLUMNS:
        if col in out:
            out[col] = out[col].to_numpy() / f
    return out


#: smallest tile core (px) accepted by ``detect_spots(tile=...)``
MIN_TILE = 32


def _detect_tiled(image, tile, kind, name, psf_sigma_px, threshold, camera, false_positives, min_distance_px,
                  exclude_border_px, fit, method, fit_sigma, window, impl, background_radius_px=None):
    from .localize import fit_window_size

    H, W = (int(v) for v in image.shape)
    if H < 8 or W < 8:
        raise ImageError(f"image of {(H, W)} px is too small for spot detection (at least 8x8)")

    def region(y0, y1, x0, x1):
        sub = image[y0:y1, x0:x1]
        if kind == "dask":
            sub = sub.compute()
        if name == "cupy":
            import cupy

            sub = cupy.asarray(sub)
        else:
            sub = to_numpy(sub)
        return _field_photons(sub, camera, name)

    if psf_sigma_px is None:  # estimated on the central tile
        cy, cx, h = H // 2, W // 2, tile // 2
        centre = region(max(cy - h, 0), min(cy + h, H), max(cx - h, 0), min(cx + h, W))
        psf_sigma_px = _estimate_sigma(centre, name, camera, impl)
    sig = _sigmas(psf_sigma_px)
    md = _min_distance(min_distance_px, sig)
    win = int(window) if window is not None else max(fit_window_size(float(s)) for s in sig)
    halo = max(int(4.0 * DOG_RATIO * float(s) + 0.5) for s in sig) + 2 * md + win // 2 + 1
    if background_radius_px is not None:
        from .background import background_halo, subtract_image_background

        halo += background_halo(background_radius_px)

    def detection_image(ph):
        return None if background_radius_px is None else subtract_image_background(ph, background_radius_px, backend=name)
    cores = [(y0, min(y0 + tile, H), x0, min(x0 + tile, W)) for y0 in range(0, H, tile) for x0 in range(0, W, tile)]

    def extent(c):
        return max(c[0] - halo, 0), min(c[1] + halo, H), max(c[2] - halo, 0), min(c[3] + halo, W)

    # pass 1: the field's noise per scale, from the global sub-grid of every core
    samples = [[] for _ in sig]
    for c in cores:
        e = extent(c)
        ph = region(*e)
        det = detection_image(ph)
        for i, s in enumerate(sig):
            r = dog_filter(ph if det is None else det, float(s), backend=name)
            rc = r[c[0] - e[0]:c[1] - e[0], c[2] - e[2]:c[3] - e[2]]
            samples[i].append(_noise_sample(rc, (c[0], c[2]), H * W))
    noise = [_mad_sigma(np.concatenate(v)) for v in samples]
    # pass 2: detection and fits per tile, spots of the core only
    parts = []
    for c in cores:
        e = extent(c)
        ph = region(*e)
        parts.append(_detect_field(
            ph, name, sig, threshold, camera, false_positives, md, exclude_border_px, fit, method, fit_sigma,
            window, None, impl, origin=(e[0], e[2]), field_shape=(H, W), noise=noise,
            core=(c[0] - e[0], c[1] - e[0], c[2] - e[2], c[3] - e[2]), detect_image=detection_image(ph),
        ))
    attrs = dict(parts[0].attrs)
    nonempty = [p for p in parts if len(p)]
    out = pd.concat(nonempty or parts[:1], ignore_index=True)
    out = out.sort_values(["y_peak", "x_peak"], kind="stable").reset_index(drop=True)  # row-major, as a whole field
    out.attrs.update(attrs)
    out.attrs.update({"tile": tile, "halo": halo, "n_tiles": len(cores)})
    return out


def _sigmas(psf_sigma_px):
    s = np.atleast_1d(np.asarray(psf_sigma_px, dtype=np.float64))
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ConfigError(f"psf_sigma_px must be > 0 px, got {psf_sigma_px!r}")
    return s


def _estimate_sigma(photons, name, camera, impl):
    """PSF sigma from the field: median fitted sigma of the 200 brightest spots (start 1.5 px)."""
    sp = _detect_field(photons, name, 1.5, None, camera, 0.1, 3, 3, True, "mle", True, 11, None, impl,
                       estimate=True)
    good = sp[(sp["fit_status"] == 0) & np.isfinite(sp["sigma"])]
    if len(good) < 5:
        return 1.5
    good = good.nlargest(200, "snr")
    return float(np.clip(np.median(good["sigma"]), 0.5, 5.0))


def _min_distance(min_distance_px, sig):
    return int(min_distance_px) if min_distance_px is not None else max(2, int(round(1.5 * float(sig.min()))))


def _detect_field(photons, name, psf_sigma_px, threshold, camera, false_positives, min_distance_px,
                  exclude_border_px, fit, method, fit_sigma, window, tile, impl, estimate=False,
                  origin=(0, 0), field_shape=None, noise=None, core=None, detect_image=None):
    """Detect (and fit) in one in-memory image.

    For a tile of a larger field: ``origin`` is the global (y, x) of
    ``photons[0, 0]``, ``field_shape`` the whole field's shape, ``noise`` the
    field's noise per scale, and ``core`` (y0, y1, x0, x1, tile coordinates)
    the region whose spots are kept.  Output coordinates are global.
    ``detect_image`` (e.g. background-subtracted) is filtered for detection
    instead of ``photons``; fits always use ``photons``.
    """
    if psf_sigma_px is None:
        psf_sigma_px = _estimate_sigma(photons, name, camera, impl)
    sig = _sigmas(psf_sigma_px)
    md = _min_distance(min_distance_px, sig)
    H, W = field_shape if field_shape is not None else photons.shape
    oy, ox = int(origin[0]), int(origin[1])
    k = auto_threshold_factor(H * W, false_positives)
    # filter and noise (global sub-grid); then maxima
    response, snr, scale_idx, noise = _scale_space(photons if detect_image is None else detect_image, sig, name,
                                                   origin=origin, noise=noise)
    factor = 1.0
    if threshold is None:
        score, thr = snr, k
        if snr is None:  # one scale: SNR = response / noise, evaluated only where needed
            score, factor = response, np.float32(1.0 / noise[0])
        thr_photons = float(k * noise[0]) if len(sig) == 1 else float("nan")
    else:
        score, thr = response, float(threshold)
        thr_photons = float(threshold)
    yy, xx, _ = local_maxima(score, thr, md, backend=name, factor=factor)
    if core is not None:
        ok = (yy >= core[0]) & (yy < core[1]) & (xx >= core[2]) & (xx < core[3])
        yy, xx = yy[ok], xx[ok]
    if exclude_border_px > 0:
        b = int(exclude_border_px)
        gy, gx = yy + oy, xx + ox
        ok = (gy >= b) & (gy < H - b) & (gx >= b) & (gx < W - b)
        yy, xx = yy[ok], xx[ok]
    xp = np if name == "numpy" else __import__("cupy")
    iy, ix = xp.asarray(yy), xp.asarray(xx)
    resp = to_numpy(response[iy, ix]).astype(np.float64) if len(yy) else np.empty(0)
    if snr is None:
        sn = (to_numpy(response[iy, ix]) * np.float32(1.0 / noise[0])).astype(np.float64) if len(yy) else np.empty(0)
    else:
        sn = to_numpy(snr[iy, ix]).astype(np.float64) if len(yy) else np.empty(0)
    sidx = to_numpy(scale_idx[iy, ix]).astype(np.int64) if (len(yy) and scale_idx is not None) else np.zeros(len(yy), np.int64)
    spot_sigma = sig[sidx] if len(yy) else np.empty(0)
    if fit and len(yy):
        parts = []
        for s_i in np.unique(sidx):
            sel = np.flatnonzero(sidx == s_i)
            df = _fit_with_fallback(
                photons, yy[sel], xx[sel], float(sig[s_i]), window, method, fit_sigma,
                camera.readout_var_photons if camera is not None else 0.0, name, impl, origin=(oy, ox),
            )
            df.index = sel
            parts.append(df)
        out = pd.concat(parts).sort_index()
    else:
        out = pd.DataFrame({"y": (yy + oy).astype(np.float64), "x": (xx + ox).astype(np.float64)})
    out["response"] = resp
    out["snr"] = sn
    out["scale_sigma"] = spot_sigma
    out["y_peak"] = yy + oy
    out["x_peak"] = xx + ox
    out = out.reset_index(drop=True)
    out.attrs.update(
        {
            "noise": [float(v) for v in noise],
            "threshold": thr_photons,
            "threshold_snr": float(k) if threshold is None else float("nan"),
            "psf_sigma_px": [float(v) for v in sig],
            "min_distance_px": md,
            "shape": (int(H), int(W)),
        }
    )
    return out


#: a free-sigma fit is redone with the PSF sigma fixed when its sigma leaves
#: this relative range or its position moves more than MAX_SHIFT_PX from the maximum
SIGMA_RANGE = (0.7, 1.4)
MAX_SHIFT_PX = 1.0


def _fit_with_fallback(photons, yy, xx, sigma, window, method, fit_sigma, readout_var, name, impl,
                       origin=(0, 0)):
    """Fit; spots pulled by a neighbour (sigma out of range, large shift, no convergence) are refitted
    with sigma fixed.  Column ``sigma_fixed`` says which.  Output positions are ``origin`` + image px."""
    from .localize import fit_spots

    kw = dict(psf_sigma_px=sigma, window=window, method=method, readout_var=readout_var, backend=name,
              impl=impl, origin=origin)
    df = fit_spots(photons, yy, xx, fit_sigma=fit_sigma, **kw)
    df["sigma_fixed"] = not fit_sigma
    if fit_sigma and len(df):
        rel = df["sigma"].to_numpy() / sigma
        shift = np.hypot(df["y"].to_numpy() - (yy + origin[0]), df["x"].to_numpy() - (xx + origin[1]))
        bad = (rel < SIGMA_RANGE[0]) | (rel > SIGMA_RANGE[1]) | (shift > MAX_SHIFT_PX) | (df["fit_status"].to_numpy() != 0)
        if bad.any():
            idx = np.flatnonzero(bad)
            re = fit_spots(photons, yy[idx], xx[idx], fit_sigma=False, **kw)
            re["sigma_fixed"] = True
            re.index = df.index[idx]
            df.loc[df.index[idx], re.columns] = re
    return df


def _scale_space(photons, sig, name, origin=(0, 0), noise=None):
    """Response (photons), SNR (None for one scale: response / noise), scale index (or None), noise per scale."""
    xp = np if name == "numpy" else __import__("cupy")
    best_snr = best_resp = best_idx = None
    noises = []
    for i, s in enumerate(sig):
        r = dog_filter(photons, s, backend=name)
        nz = noise[i] if noise is not None else noise_level(r, origin=origin)
        if not nz > 0:
            raise ImageError(
                "the field has no measurable noise (constant, all-zero or saturated image): "
                f"filtered-image MAD is {nz}"
            )
        noises.append(nz)
        if len(sig) == 1:
            return r, None, None, noises
        snr = r * np.float32(1.0 / nz)
        if best_snr is None:
            best_snr, best_resp = snr, r
            best_idx = xp.zeros(r.shape, dtype=xp.int8) if len(sig) > 1 else None
        else:
            better = snr > best_snr
            best_snr = xp.where(better, snr, best_snr)
            best_resp = xp.where(better, r, best_resp)
            best_idx = xp.where(better, xp.int8(i), best_idx)
    return best_resp, best_snr, best_idx, noises
