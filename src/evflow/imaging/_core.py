"""Detection primitives shared by :mod:`evflow.imaging.detect` and its field/tile passes
(filters, noise, thresholds, option checks); imports none of them."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..backend import array_backend, to_host
from ..errors import ConfigError, ImageError
from .dog import DOG_RATIO, _dog, _dog_gain, dog_filter  # noqa: F401
from .noise import mad_sigma as _mad_sigma

NOISE_STRIDE = 4

#: fields smaller than this (pixels) use every pixel for the noise estimate
NOISE_FULL_BELOW = 1 << 20






@functools.lru_cache(maxsize=64)




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
    return to_host(filtered[oy::stride, ox::stride], what="noise sample").ravel()


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


#: flag columns of every spot table (bool): the spot's maximum lies within
#: :func:`~evflow.imaging.artefacts.flag_radius` px of a saturated or a
#: non-finite pixel, or closer than half a fit window to the field's edge
FLAG_COLUMNS = ("saturated", "masked", "border")


#: the noise of blocks of this size (px) makes the local noise map
NOISE_BLOCK_PX = 32


NOISE_MODELS = ("local", "global", "photon")


THRESHOLD_RULES = ("adaptive", "false_positives")


HOT_PIXEL_RULES = ("repair", "keep")


#: a converged free-sigma fit narrower than this share of the PSF (by two CRLBs) is not a spot
MIN_SIGMA_RATIO = 0.5


#: ... or wider than this share (diffuse structure, not a diffraction-limited vesicle)
MAX_SIGMA_RATIO = 2.5


#: photon test (with the shape test's ``max_sigma_ratio``): the detection filter's response equals an isolated
#: PSF spot's photons, so a fit whose photons exceed PHOTON_EXCESS x the response by more than
#: PHOTON_EXCESS_CRLB of their CRLBs took in a slope or a structure, not a vesicle
PHOTON_EXCESS = 3.0
PHOTON_EXCESS_CRLB = 3.0


def _check_choice(value, choices, keyword):
    if value not in choices:
        raise ConfigError(f"detect_spots: {keyword} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _stride(n_pixels):
    return NOISE_STRIDE if n_pixels >= NOISE_FULL_BELOW else 1


def _as_array(sub, kind, name):
    if kind == "dask":
        sub = sub.compute()
    # the field is prepared (photons, hot pixels, fill) on the host; it crosses to the device once after that
    # (evflow.imaging.artefacts._prepare)
    return to_host(sub, what="field to prepare") if array_backend(sub) == "cupy" else np.asarray(sub)


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


def _measured(noise):
    """The measured noise model behind ``noise`` (``'photon'`` still measures: the structure test and
    ``attrs['noise_excess']`` need the measurement)."""
    return "local" if noise == "photon" else noise


def _photon_noise(sig, fill, camera):
    """Per scale: the noise of ``noise='photon'``, photon statistics of the camera model instead of a measurement.

    The filter's response to white noise of variance ``F^2 b + read variance`` at each pixel's background ``b``
    (a variance model ``a + c b`` with no excess blocks), and at the field's median photons ``fill`` for the
    field's number.  Spots cannot raise it, so a crowded field keeps the noise of its background."""
    from .noise import photon_response_noise, propagated_noise

    f2, rv = float(camera.excess_variance), float(camera.readout_var_photons)
    out = []
    for s in sig:
        k2 = propagated_noise(float(s), 1.0) ** 2
        nz = photon_response_noise(float(s), fill, camera)
        if not nz > 0:
            raise ImageError(f"noise='photon': the field's median is {fill:g} photons and the camera has no read "
                             "noise, so photon statistics give no noise (offset not subtracted, or an empty field?)")
        out.append((nz, (k2 * rv, k2 * f2, {})))
    return out


def _responses(det, sig, name):
    return [dog_filter(det, float(s), backend=name) for s in sig]


def _background_level(ph, sig, o, name):
    """Background map of the local and photon noise models (None for the global one)."""
    if o["noise"] == "global":
        return None
    from ..backend import get_ndi
    from .noise import background_level

    return background_level(ph, float(sig.min()), get_ndi(name))


def _snr(responses, noise_info, name, bg, origin=(0, 0), block_px=NOISE_BLOCK_PX, *, sig, field_shape):
    """SNR map (best scale), response there and scale index (None for one scale).

    ``field_shape`` is the whole field's (the region's ``[0, 0]`` at global ``origin``): the SNR is
    corrected for the filter's folding at the field's edges (:func:`~evflow.imaging.noise.border_noise_divide`)."""
    from ..backend import get_ndi, get_xp
    from .noise import border_noise_divide, noise_from_model

    xp = get_xp(name)
    ndi = get_ndi(name)
    best = best_r = idx = None
    for i, (r, (nz, model)) in enumerate(zip(responses, noise_info)):
        if model is None or bg is None:
            snr = r * np.float32(1.0 / nz)
        else:
            snr = r / noise_from_model(model, bg, nz, xp, origin=origin, block_px=block_px)
        border_noise_divide(snr, float(sig[i]), DOG_RATIO, field_shape, origin, ndi, xp)
        if best is None:
            best, best_r = snr, r
            idx = xp.zeros(r.shape, dtype=xp.int8) if len(responses) > 1 else None
        else:
            better = snr > best
            best = xp.where(better, snr, best)
            best_r = xp.where(better, r, best_r)
            idx = xp.where(better, xp.int8(i), idx)
    return best, best_r, idx


def _finish_attrs(out, sat, hot, n_pixels, n_sat=None, n_hot=None, *, ninfo, sig, fill, camera):
    from .noise import photon_noise_excess

    out.attrs["saturated_fraction"] = float((sat.sum() if n_sat is None else n_sat) / n_pixels)
    out.attrs["n_hot_pixels"] = int(hot.sum() if n_hot is None else n_hot)
    # the first scale's noise over photon statistics at the field's median photons (NaN without a camera)
    out.attrs["noise_excess"] = photon_noise_excess(ninfo[0][0], float(sig[0]), fill, camera)
    from .field_qc import crowding  # the detections' crowding (a lower bound of the field's; QC flag above 0.1)

    out.attrs["crowding"] = crowding(len(out), n_pixels, min(out.attrs.get("psf_sigma_px") or [1.5]))


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


def _extrema_region(resp, ninfo, sig, name, bg, core, o, origin=(0, 0), *, field_shape):
    """Maxima and null minima (SNR) of one region, for the adaptive threshold (None with a manual threshold)."""
    if o["threshold"] is not None or o["threshold_rule"] != "adaptive":
        return None
    from ..backend import get_ndi
    from .noise import extrema

    snr, _r, _i = _snr(resp, ninfo, name, bg, origin, o["block"], sig=sig, field_shape=field_shape)
    md = _min_distance(o["min_distance_px"], sig)
    return extrema(snr, md, get_ndi(name), core=core, ring_radius=int(np.ceil(2 * DOG_RATIO * float(sig.max()))))


def _field_threshold(parts, n_pixels, o, sig=None):
    """Threshold in noise sigmas for the field (nan with a manual threshold)."""
    if o["threshold"] is not None:
        return float("nan")
    k = auto_threshold_factor(n_pixels, o["false_positives"])
    if o["threshold_rule"] != "adaptive":
        return k
    from .noise import choose_threshold, null_peak_density

    maxima = np.concatenate([p[0] for p in parts])
    minima = np.concatenate([p[1] for p in parts])
    null_px = sum(p[2] for p in parts)
    lam = null_peak_density(float(np.min(sig))) if sig is not None else 0.0
    return choose_threshold(maxima, minima, t_max=k, skew=o.get("skew", 0.0), n_pixels=n_pixels,
                            null_pixels=null_px, peak_density=lam)


#: maxima whose free fit is wider than this many PSF sigmas (by half a CRLB) are no discoveries for the
#: adaptive threshold (:func:`_refine_threshold`)
WIDE_FOR_THRESHOLD = 2.0


def _refine_threshold(out, parts, thr_snr, n_pixels, o, sig):
    """The adaptive threshold chosen again without the maxima the fit found wide, and the spots below it dropped.

    Smooth structure still gives the detection filter maxima: on the slopes of a bright diffuse blob (sigma 10
    px at 50x the background, subtracted with radius 5) a ring of maxima fits 2.2-3 PSF sigmas wide.  Counted
    as discoveries they lower the field's threshold (5 to 3.7 noise sigmas), which then lets in noise maxima
    far from the blob.  Their free fits say what they are: a maximum fitted wider than
    :data:`WIDE_FOR_THRESHOLD` PSF sigmas by more than half its sigma's CRLB is left out of the threshold's
    maxima (the null is unchanged), and the threshold is never lowered by it.  This is done on fields that
    are background-subtracted (structured), whose residue of structure gives such maxima: on the real spotmax
    cells the texture's are (F1 0.549 to 0.581).  An unstructured field keeps the threshold of all its maxima
    (on the real hybiss field with sigma 1.3 given, 33 maxima fitted 3.5-4 PSF sigmas wide, bright amplicon
    clusters, would move it from 4.7 to 5.0 and drop 15 spots).  ``attrs['threshold_wide_maxima']`` says how
    many maxima were left out (0 where nothing was: a manual or fixed-rule threshold, an unstructured field).
    """
    wide = np.asarray(out.attrs.pop("_wide_snr", ()), np.float64)
    adaptive = bool(parts) and o["threshold"] is None and o["threshold_rule"] == "adaptive"
    if not adaptive or o["background_radius_px"] is None:
        wide = wide[:0]
    out.attrs["threshold_wide_maxima"] = int(wide.size)
    if not wide.size:
        return out
    kept = [(p[0][~np.isin(np.asarray(p[0], np.float64), wide)],) + tuple(p[1:]) for p in parts]
    thr = max(_field_threshold(kept, n_pixels, o, sig), float(thr_snr))
    if thr <= thr_snr:
        return out
    attrs = dict(out.attrs)
    out = out[out["snr"].to_numpy() >= thr].reset_index(drop=True)
    out.attrs.update(attrs)
    if np.isfinite(attrs.get("threshold", np.nan)):
        out.attrs["threshold"] = float(attrs["threshold"] * thr / thr_snr)
    out.attrs["threshold_snr"] = float(thr)
    return out


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
        flat = estimate_flat(to_host(photons, what="flat estimate"))
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


def _min_distance(min_distance_px, sig):
    return int(min_distance_px) if min_distance_px is not None else max(2, int(round(1.5 * float(sig.min()))))
