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
spots of the whole field in its core."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..backend import array_backend, resolve_backend
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

from ._core import (  # noqa: F401  (the detection primitives, importable from here as before)
    DOG_RATIO,
    FLAG_COLUMNS,
    FLAT_COLUMNS,
    HOT_PIXEL_RULES,
    MAX_SIGMA_RATIO,
    MIN_SIGMA_RATIO,
    MIN_THRESHOLD_SNR,
    MIN_TILE,
    NOISE_BLOCK_PX,
    NOISE_FULL_BELOW,
    NOISE_MODELS,
    NOISE_STRIDE,
    STRUCTURED_BLOCKS,
    THRESHOLD_RULES,
    _apply_flat,
    _as_array,
    _background_level,
    _check_choice,
    _detection_image,
    _dog,
    _dog_gain,
    _extrema_region,
    _field_photons,
    _field_threshold,
    _finish_attrs,
    _mad_sigma,
    _measured,
    _min_distance,
    _noise_info,
    _noise_sample,
    _noise_sample_scale,
    _photon_noise,
    _refine_threshold,
    _resolve_ties,
    _responses,
    _sigmas,
    _skew,
    _snr,
    _stride,
    _structured,
    auto_background_radius,
    auto_threshold_factor,
    dog_filter,
    local_maxima,
    noise_level,
)
from ._field import (  # noqa: F401
    MAX_SHIFT_PX,
    SIGMA_RANGE,
    _detect_region,
    _empty_fit,
    _estimate_sigma,
    _fit_with_fallback,
)
from .artefacts import _field_scalars, _near, _pass0, _prepare, _valid_for_noise  # noqa: F401


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
        when fewer than 5 spots are found or the estimate is at least 3 px,
        fit windows that took in cells or clustered spots); ``attrs``
        ``psf_sigma_source`` says which and ``psf_sigma_estimate`` holds the
        estimate.
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
    noise : {'local', 'global', 'photon'}
        Noise model of the filter response: ``'local'`` a map from blocks of
        ``noise_block_px`` (fields at least two blocks wide; smaller ones use
        the field's number), ``'global'`` one number per field.  Both are
        robust (:func:`evflow.imaging.noise.robust_noise`: pixels near
        candidate spots are left out, iterated), but spots that leave no
        spot-free area raise them (``attrs['noise_excess']``).  ``'photon'``
        (needs ``camera``): photon statistics of the camera model at each
        pixel's background instead of a measurement, which crowded fields
        cannot raise (1,500 vesicles per 256x256 px: 723 found instead of
        361, precision 0.96); it trusts the camera model and sees no
        structure (cells, stripes), so it suits clean chips.
    noise_block_px : int
        Block size (px) of the local noise map.
    threshold_rule : {'adaptive', 'false_positives'}
        ``'adaptive'``: from the data (:func:`evflow.imaging.noise.choose_threshold`):
        the expected number of false maxima above ``t`` comes from the null
        (minima of the response away from candidate spots, never below the
        local-maximum count of a Gaussian random field through the filter,
        :func:`~evflow.imaging.noise.null_counts`); the threshold maximises the
        estimated F1 among those whose estimated false-discovery rate is at
        most :data:`~evflow.imaging.noise.FDR_MAX`, between 3 sigmas and the
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
        Saturated ones (pixels stuck at the camera's maximum) are repaired too,
        and spots near them are still flagged ``saturated``.
    min_sigma_ratio : float
        Shape test (with ``fit_sigma``): a spot whose converged free fit is
        narrower than ``min_sigma_ratio`` times the PSF sigma by more than two
        of its CRLBs is dropped (``attrs['n_rejected_narrow']``).  0 disables.
    max_sigma_ratio : float
        Likewise, wider than ``max_sigma_ratio`` times the PSF sigma by more
        than one CRLB (``attrs['n_rejected_wide']``).  With it, the photon
        test: the filter's response equals an isolated PSF spot's photons, so a
        spot whose fitted photons exceed 3x its response by more than 3 CRLBs
        took in a slope or a structure and is dropped
        (``attrs['n_rejected_photons']``; real and synthetic spots fit
        0.65-3.1x).  None disables both.

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
        A spot whose fit ended on an edge of its window inside the field or at
        the photon floor (``fit_status`` 3, :data:`evflow.imaging.localize.AT_BOUND`: it ran off to
        a neighbour or to the field's edge) keeps its maximum as ``y``, ``x`` and
        has NaN ``photons``, ``background``, ``llr`` and position/photon CRLBs.
        An image without spots gives an empty table with these columns.
        ``attrs``: ``noise``, ``threshold``, ``threshold_snr``, ``psf_sigma_px``,
        ``saturated_fraction``, ``n_hot_pixels``, ``crowding`` (share of vesicles expected within 2 PSF
        sigmas of another at the density of all the detections, flagged ones included, :func:`evflow.imaging.field_qc.crowding`: above 0.1
        vesicles are found as one and the count is a lower bound),
        ``noise_excess`` (with a ``camera``: the filter's measured noise over
        photon statistics at the field's median photons,
        :func:`~evflow.imaging.noise.photon_noise_excess`; well above 1, a
        crowded field whose count is a lower bound, a structured background or
        a wrong camera model; NaN without a camera),
        ``threshold_wide_maxima`` (on a background-subtracted field, maxima whose
        free fit is wider than twice the PSF, left out when the adaptive threshold
        counts its discoveries: smooth structure such as a bright blob's slopes,
        which would otherwise lower the threshold for the whole field), ...
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
    if noise == "photon" and camera is None:
        raise ConfigError("detect_spots: noise='photon' takes the noise from photon statistics and needs the "
                          "camera model (camera=...: gain, em_gain, read_noise_e; for images already in photons, "
                          "camera.in_photons())")
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
        psf_sigma_px = _estimate_sigma(ph, name, o["camera"], o["impl"], o)
    sig = _sigmas(psf_sigma_px)
    bg = _background_level(ph, sig, o, name)
    valid = _valid_for_noise(sat, invalid, float(sig.min()))
    radius = o["background_radius_px"]
    for auto in ([True, False] if radius == "auto" else [False]):
        o["background_radius_px"] = None if auto else radius
        resp = _responses(_detection_image(ph, o["background_radius_px"], name), sig, name)
        samples = [[_noise_sample_scale(r, s, name, (0, 0), _stride(H * W), None, valid, bg)
                    for r, s in zip(resp, sig)]]
        ninfo = _noise_info(samples, sig, (H, W), _measured(o["noise"]), o["block"], pnoise)
        measured = ninfo
        if auto and not _structured(ninfo):
            break
        radius = auto_background_radius(sig)
    if o["noise"] == "photon":  # the measurement chose the background subtraction; photon statistics the noise
        ninfo = _photon_noise(sig, fill, o["camera"])
    o["skew"] = _skew(sig, pnoise, fill, o)
    parts = [_extrema_region(resp, ninfo, sig, name, bg, None, o, field_shape=(H, W))]
    thr_snr = _field_threshold(parts, H * W, o, sig)
    out = _detect_region(ph, resp, sat, invalid, name, sig, ninfo, thr_snr, o, origin=(0, 0), field_shape=(H, W),
                         bg=bg)
    out = _refine_threshold(out, [p for p in parts if p is not None], thr_snr, H * W, o, sig)
    _finish_attrs(out, sat, hot, H * W, ninfo=measured, sig=sig, fill=fill, camera=o["camera"])
    return out, ph
