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


from .artefacts import _field_scalars, _near, _pass0, _prepare, _valid_for_noise  # noqa: E402


def _field_photons(image, camera, name):
    if camera is not None:
        return camera.to_photons(image)
    return image.astype(np.float32, copy=False)


#: flag columns of every spot table (bool): the spot's maximum lies within
#: :func:`~evflow.imaging.artefacts.flag_radius` px of a saturated or a
#: non-finite pixel, or closer than half a fit window to the field's edge
FLAG_COLUMNS = ("saturated", "masked", "border")
#: the noise of blocks of this size (px) makes the local noise map
NOISE_BLOCK_PX = 32
NOISE_MODELS = ("local", "global")
THRESHOLD_RULES = ("adaptive", "false_positives")
HOT_PIXEL_RULES = ("repair", "keep")
#: a converged free-sigma fit narrower than this share of the PSF (by two CRLBs) is not a spot
MIN_SIGMA_RATIO = 0.5
#: ... or wider than this share (diffuse structure, not a diffraction-limited vesicle)
MAX_SIGMA_RATIO = 2.5


def _check_choice(value, choices, keyword):
    if value not in choices:
        raise ConfigError(f"detect_spots: {keyword} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _stride(n_pixels):
    return NOISE_STRIDE if n_pixels >= NOISE_FULL_BELOW else 1


def _as_array(sub, kind, name):
    if kind == "dask":
        sub = sub.compute()
    if name == "cupy":
        import cupy

        return cupy.asarray(sub)
    return to_numpy(sub)








def _noise_info(samples, sig, shape, noise_model, block_px, pixel_noise=None):
    """Per scale: (field noise, block grid or None) from the collected noise samples."""
    from .noise import fit_noise_model, propagated_noise, robust_noise

    out = []
    for i, _s in enumerate(sig):
        gy, gx, v, m, b = (np.concatenate([p[i][j] for p in samples]) for j in range(5))
        fb = propagated_noise(float(_s), pixel_noise) if pixel_noise else None
        nz = robust_noise(v, m, fallback=fb) if v.size else float("nan")
        if not nz > 0:
            raise ImageError(
                "the field has no measurable noise (constant, all-zero or saturated image): "
                f"filtered-image MAD is {nz}"
            )
        model = fit_noise_model(gy, gx, v, m, b, block_px, nz) if noise_model == "local" else None
        out.append((nz, model))
    return out




def _responses(det, sig, name):
    return [dog_filter(det, float(s), backend=name) for s in sig]


def _background_level(ph, sig, o, name):
    """Background map of the local noise model (None for the global one)."""
    if o["noise"] != "local":
        return None
    from ..backend import get_ndi
    from .noise import background_level

    return background_level(ph, float(sig.min()), get_ndi(name))


def _snr(responses, noise_info, name, bg, origin=(0, 0), block_px=NOISE_BLOCK_PX):
    """SNR map (best scale), response there and scale index (None for one scale)."""
    from .noise import noise_from_model

    xp = np if name == "numpy" else __import__("cupy")
    best = best_r = idx = None
    for i, (r, (nz, model)) in enumerate(zip(responses, noise_info)):
        if model is None or bg is None:
            snr = r * np.float32(1.0 / nz)
        else:
            snr = r / noise_from_model(model, bg, nz, xp, origin=origin, block_px=block_px)
        if best is None:
            best, best_r = snr, r
            idx = xp.zeros(r.shape, dtype=xp.int8) if len(responses) > 1 else None
        else:
            better = snr > best
            best = xp.where(better, snr, best)
            best_r = xp.where(better, r, best_r)
            idx = xp.where(better, xp.int8(i), idx)
    return best, best_r, idx




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
    background_radius_px="auto",
    noise="local",
    noise_block_px=NOISE_BLOCK_PX,
    threshold_rule="adaptive",
    saturation="auto",
    hot_pixels="repair",
    min_sigma_ratio=MIN_SIGMA_RATIO,
    max_sigma_ratio=MAX_SIGMA_RATIO,
) -> pd.DataFrame:
    """Detect and localise diffraction-limited spots (vesicles) in one 2-D field.

    Parameters
    ----------
    image : 2-D array
        NumPy, CuPy or dask array, in photons or (with ``camera``) ADU.
        NaN/inf pixels are filled and masked; at least 8x8 px.
    psf_sigma_px : float or sequence of float, optional
        PSF standard deviation (px).  A sequence is a scale space: each pixel
        takes the scale with the largest signal-to-noise.  None: estimated
        from the field (median fitted sigma of the brightest spots; 1.5 px
        when fewer than 5 spots are found).
    threshold : float, optional
        Minimum filter response in photons (manual override).  None: the
        automatic threshold in noise sigmas of ``threshold_rule``.
    backend : {'numpy', 'cupy', None}
        Array backend; None follows the input (or ``EVFLOW_BACKEND``).
    camera : Camera or dict, optional
        Converts ADU to photons before detection and fitting.
    false_positives : float
        Expected false detections per field from Gaussian noise: the
        threshold of rule ``'false_positives'`` and the upper bound of
        ``'adaptive'`` (see :func:`auto_threshold_factor`).
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
        read with a halo wide enough that a spot is found, resolved and
        fitted exactly as in the whole field; a spot is kept only by the tile
        whose core holds its maximum.  The field-level numbers (pixel noise,
        filter noise and its map, the adaptive threshold) are collected from
        every core in passes before the detection, so tiles give the spots of
        the whole field.  For mosaics larger than memory (a dask array is read
        tile by tile).  Without a PSF sigma, it is estimated on the central
        tile.  None: the whole field at once (a dask field is computed first).
    impl : {'auto', 'numpy', 'numba', 'cupy'}
        Implementation of the spot fits (``evflow.kernels`` registry, family
        ``gaussfit``).  Formerly ``fit_backend=``.
    flat : 2-D array or "estimate", optional
        Flat-field correction: the illumination profile (a measured flat of
        the image's shape, see :func:`evflow.imaging.background.normalise_flat`)
        or ``"estimate"`` (from this field's background,
        :func:`~evflow.imaging.background.estimate_flat`).  Spots are fitted
        on the raw photons and their ``photons``, ``background`` and CRLBs
        divided by the flat (maximum 1) at their position; column ``flat``.
    background_radius_px : int, 'auto' or None
        Background subtraction before detection: white top-hat (rolling-ball
        equivalent) with a ``2 r + 1`` px square element
        (:func:`~evflow.imaging.background.subtract_image_background`); the fits
        use the unsubtracted photons (free local background).  'auto': only
        on a structured field (blocks noisier than the local noise model
        explains, :data:`STRUCTURED_BLOCKS`), with :func:`auto_background_radius` (ceil(3.5 sigma));
        ``attrs['background_radius_px']`` says which.  None: never.
    noise : {'local', 'global'}
        Noise model of the filter response: ``'local'`` a map from blocks of
        ``noise_block_px`` (fields at least two blocks wide; smaller ones use
        the field's number), ``'global'`` one number per field.  Both are
        robust (:func:`evflow.imaging.noise.robust_noise`: pixels near
        candidate spots are left out, iterated).
    noise_block_px : int
        Block size (px) of the local noise map.
    threshold_rule : {'adaptive', 'false_positives'}
        ``'adaptive'``: from the data (:func:`evflow.imaging.noise.choose_threshold`:
        minima of the response are the null of its maxima; the threshold
        minimises estimated false plus missed spots), between 3 sigmas and the
        ``'false_positives'`` threshold.  ``'false_positives'``: ``k`` noise
        sigmas such that Gaussian noise gives ``false_positives`` per field (at least 5).
    saturation : 'auto', float or None
        Pixels at or above this level (raw units) are saturated: masked from
        the noise estimate, and spots near them flagged (column ``saturated``).
        'auto': the maximum of an integer dtype; None: no saturation.
    hot_pixels : {'repair', 'keep'}
        ``'repair'``: single-pixel outliers (hot or cold; see
        :mod:`evflow.imaging.artefacts`) take the median of their neighbours
        before detection and fitting; their number is ``attrs['n_hot_pixels']``.
    min_sigma_ratio : float
        Shape test (with ``fit_sigma``): a spot whose converged free fit is
        narrower than ``min_sigma_ratio`` times the PSF sigma by more than two
        of its CRLBs is dropped (``attrs['n_rejected_narrow']``).  0 disables.
    max_sigma_ratio : float
        Likewise, wider than ``max_sigma_ratio`` times the PSF sigma by more
        than one CRLB (``attrs['n_rejected_wide']``).  None disables.

    Returns
    -------
    pandas.DataFrame
        One row per spot: ``y``, ``x`` (px; the centre of pixel [0, 0] is
        (0, 0)), ``photons``, ``background`` (photons/px), ``sigma`` (px, the
        free fit's width even where the photons come from a fixed-sigma refit,
        ``sigma_fixed``), ``crlb_x``, ``crlb_y`` (px), ``crlb_photons``, ``llr``
        (fit quality), ``iterations``, ``fit_status``, ``response`` (filter
        photons), ``snr`` (response / local noise), ``y_peak``, ``x_peak``
        (integer maxima), and the flags ``saturated``, ``masked``, ``border``.
        An image without spots gives an empty table with these columns.
        ``attrs``: ``noise``, ``threshold``, ``threshold_snr``, ``psf_sigma_px``,
        ``saturated_fraction``, ``n_hot_pixels``, ...
    """
    from .camera import as_camera

    camera = as_camera(camera)
    kind = type(image).__module__.split(".")[0]
    if getattr(image, "ndim", None) != 2:
        raise ImageError(f"detect_spots expects a 2-D image (y, x), got shape {getattr(image, 'shape', None)}")
    if background_radius_px is not None and not (isinstance(background_radius_px, str)
                                                 and background_radius_px == "auto"):
        from .background import _check_radius

        background_radius_px = _check_radius(background_radius_px)
    if isinstance(flat, str) and flat != "estimate":
        raise ConfigError(f"detect_spots: flat must be an image or 'estimate', got {flat!r}")
    if flat is not None and not isinstance(flat, str):
        from .background import normalise_flat

        flat = normalise_flat(flat, shape=tuple(image.shape))
    _check_choice(noise, NOISE_MODELS, "noise")
    _check_choice(threshold_rule, THRESHOLD_RULES, "threshold_rule")
    _check_choice(hot_pixels, HOT_PIXEL_RULES, "hot_pixels")
    if isinstance(noise_block_px, bool) or not isinstance(noise_block_px, (int, np.integer)) or noise_block_px < 16:
        raise ConfigError(f"detect_spots: noise_block_px must be an integer >= 16 px, got {noise_block_px!r}")
    if not (isinstance(min_sigma_ratio, (int, float)) and 0 <= min_sigma_ratio < 1):
        raise ConfigError(f"detect_spots: min_sigma_ratio must be a number in [0, 1), got {min_sigma_ratio!r}")
    if max_sigma_ratio is not None and not (isinstance(max_sigma_ratio, (int, float)) and max_sigma_ratio > 1):
        raise ConfigError(f"detect_spots: max_sigma_ratio must be a number > 1 or None, got {max_sigma_ratio!r}")
    if threshold is not None and not (isinstance(threshold, (int, float, np.number)) and np.isfinite(threshold)):
        raise ConfigError(f"detect_spots: threshold must be a number of photons or None, got {threshold!r}")
    H, W = (int(v) for v in image.shape)
    if H < 8 or W < 8:
        raise ImageError(f"image of {(H, W)} px is too small for spot detection (at least 8x8)")
    level = _sat_level(image, saturation)
    opts = dict(threshold=threshold, camera=camera, false_positives=false_positives, min_distance_px=min_distance_px,
                exclude_border_px=exclude_border_px, fit=fit, method=method, fit_sigma=fit_sigma, window=window,
                impl=impl, background_radius_px=background_radius_px, noise=noise, block=int(noise_block_px),
                threshold_rule=threshold_rule, level=level, hot_pixels=hot_pixels,
                min_sigma_ratio=float(min_sigma_ratio),
                max_sigma_ratio=None if max_sigma_ratio is None else float(max_sigma_ratio))
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE:
            raise ConfigError(f"detect_spots: tile must be an integer >= {MIN_TILE} px, got {tile!r}")
        if isinstance(flat, str):
            raise ConfigError("detect_spots: flat='estimate' needs the whole field; pass a flat image with tile=")
        name = resolve_backend(backend) if backend is not None else array_backend(image)
        from ._tiled import detect_tiled

        out = detect_tiled(image, int(tile), kind, name, psf_sigma_px, opts)
        return _apply_flat(out, flat, None)
    name = resolve_backend(backend) if backend is not None else array_backend(image)
    image = _as_array(image, kind, name)
    out, photons = _detect_whole(image, name, psf_sigma_px, opts)
    return _apply_flat(out, flat, photons)


def _sat_level(image, saturation):
    from .artefacts import saturation_level

    return saturation_level(image, saturation)


def _detect_whole(image, name, psf_sigma_px, o):
    H, W = image.shape
    fill, pnoise = _field_scalars([_pass0(image, o["camera"], name, o["level"], (0, 0), _stride(H * W))], (H, W))
    hot_sigma = 1.0 if psf_sigma_px is None else float(_sigmas(psf_sigma_px).min())
    ph, sat, invalid, hot = _prepare(image, o["camera"], name, o["level"], fill, pnoise, hot_sigma, o["hot_pixels"])
    if psf_sigma_px is None:
        psf_sigma_px = _estimate_sigma(ph, name, o["camera"], o["impl"])
    sig = _sigmas(psf_sigma_px)
    bg = _background_level(ph, sig, o, name)
    valid = _valid_for_noise(sat, invalid, float(sig.min()))
    radius = o["background_radius_px"]
    for auto in ([True, False] if radius == "auto" else [False]):
        o["background_radius_px"] = None if auto else radius
        resp = _responses(_detection_image(ph, o["background_radius_px"], name), sig, name)
        samples = [[_noise_sample_scale(r, s, name, (0, 0), _stride(H * W), None, valid, bg)
                    for r, s in zip(resp, sig)]]
        ninfo = _noise_info(samples, sig, (H, W), o["noise"], o["block"], pnoise)
        if auto and not _structured(ninfo):
            break
        radius = auto_background_radius(sig)
    o["skew"] = _skew(sig, pnoise, fill, o)
    thr_snr = _field_threshold([_extrema_region(resp, ninfo, sig, name, bg, None, o)], H * W, o)
    out = _detect_region(ph, resp, sat, invalid, name, sig, ninfo, thr_snr, o, origin=(0, 0), field_shape=(H, W),
                         bg=bg)
    _finish_attrs(out, sat, hot, H * W)
    return out, ph


def _finish_attrs(out, sat, hot, n_pixels, n_sat=None, n_hot=None):
    out.attrs["saturated_fraction"] = float((sat.sum() if n_sat is None else n_sat) / n_pixels)
    out.attrs["n_hot_pixels"] = int(hot.sum() if n_hot is None else n_hot)


#: with ``background_radius_px='auto'``, a field with at least this many blocks whose noise exceeds the
#: variance model (structure: cell edges, stripes, texture) is background-subtracted before detection
STRUCTURED_BLOCKS = 2


def _structured(ninfo):
    return any(m is not None and len(m[2]) >= STRUCTURED_BLOCKS for _nz, m in ninfo)


def auto_background_radius(sig) -> int:
    """Background radius (px) of ``background_radius_px='auto'`` on a structured field: ceil(3.5 sigma)."""
    return int(math.ceil(3.5 * float(np.max(sig))))


def _detection_image(ph, radius, name):
    if radius is None:
        return ph
    from .background import subtract_image_background

    return subtract_image_background(ph, radius, backend=name)


def _noise_sample_scale(r, s, name, origin, stride, core, valid, bg=None):
    from ..backend import get_ndi
    from .noise import noise_samples

    return noise_samples(r, float(s), get_ndi(name), origin=origin, stride=stride, core=core, valid=valid,
                         background=bg)


def _extrema_region(resp, ninfo, sig, name, bg, core, o, origin=(0, 0)):
    """Maxima and null minima (SNR) of one region, for the adaptive threshold (None with a manual threshold)."""
    if o["threshold"] is not None or o["threshold_rule"] != "adaptive":
        return None
    from ..backend import get_ndi
    from .noise import extrema

    snr, _r, _i = _snr(resp, ninfo, name, bg, origin, o["block"])
    md = _min_distance(o["min_distance_px"], sig)
    return extrema(snr, md, get_ndi(name), core=core, ring_radius=int(np.ceil(2 * DOG_RATIO * float(sig.max()))))


def _field_threshold(parts, n_pixels, o):
    """Threshold in noise sigmas for the field (nan with a manual threshold)."""
    if o["threshold"] is not None:
        return float("nan")
    k = auto_threshold_factor(n_pixels, o["false_positives"])
    if o["threshold_rule"] != "adaptive":
        return k
    from .noise import choose_threshold

    maxima = np.concatenate([p[0] for p in parts])
    minima = np.concatenate([p[1] for p in parts])
    return choose_threshold(maxima, minima, t_max=k, skew=o.get("skew", 0.0), n_pixels=n_pixels)


def _skew(sig, pixel_noise, fill, o):
    from .noise import response_skewness

    return response_skewness(float(sig.min()), pixel_noise, fill)


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


def _sigmas(psf_sigma_px):
    s = np.atleast_1d(np.asarray(psf_sigma_px, dtype=np.float64))
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ConfigError(f"psf_sigma_px must be > 0 px, got {psf_sigma_px!r}")
    return s


def _estimate_sigma(photons, name, camera, impl):
    """PSF sigma from the field: median fitted sigma of the 200 brightest spots (start 1.5 px; 1.5 px
    when fewer than 5 fits converge)."""
    H, W = photons.shape
    o = dict(threshold=None, camera=camera, false_positives=0.1, min_distance_px=3, exclude_border_px=3, fit=True,
             method="mle", fit_sigma=True, window=11 if min(H, W) >= 11 else None, impl=impl,
             background_radius_px=None, noise="global", block=NOISE_BLOCK_PX, threshold_rule="false_positives",
             level=None, hot_pixels="keep", min_sigma_ratio=0.0, max_sigma_ratio=None)
    sig = _sigmas(1.5)
    resp = _responses(photons, sig, name)
    samples = [[_noise_sample_scale(resp[0], 1.5, name, (0, 0), _stride(H * W), None, None)]]
    try:
        ninfo = _noise_info(samples, sig, (H, W), "global", NOISE_BLOCK_PX)
    except ImageError:
        return 1.5
    none = np.zeros(photons.shape, bool)
    sp = _detect_region(photons, resp, none, none, name, sig, ninfo, auto_threshold_factor(H * W, 0.1), o,
                        origin=(0, 0), field_shape=(H, W), unfixed=True)
    if "fit_status" not in sp:
        return 1.5
    good = sp[(sp["fit_status"] == 0) & np.isfinite(sp["sigma"])]
    if len(good) < 5:
        return 1.5
    good = good.nlargest(200, "snr")
    return float(np.clip(np.median(good["sigma"]), 0.5, 5.0))


def _min_distance(min_distance_px, sig):
    return int(min_distance_px) if min_distance_px is not None else max(2, int(round(1.5 * float(sig.min()))))


from ._field import MAX_SHIFT_PX, SIGMA_RANGE, _detect_region, _empty_fit, _fit_with_fallback  # noqa: E402,F401
