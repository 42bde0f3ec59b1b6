"""Noise of the detection filter's response and the data-driven detection threshold.

Everything here is built from *samples* that a field or any tile of it (with a
halo) gives identically, so a tiled run reaches the numbers of the whole field:

- noise samples: the filter response ``v`` on the global sub-grid, with ``m``
  the largest response within :func:`mask_radius` px (a maximum filter).  The
  noise is ``1.4826 * MAD`` of the samples with ``m < clip * noise``, iterated
  from the plain MAD (:func:`robust_noise`): pixels near spots (their peak and
  the negative ring of the filter) are left out, so spots cannot inflate the
  noise of a small or dense field.
- a local noise model (:func:`fit_noise_model`): the same estimate per block
  of ``block_px`` (aligned to the field) against the block's background
  level (an opening that removes the spots), fitted as ``noise^2 = a + c *
  background``; the map (:func:`noise_from_model`) follows the local
  background at the scale of a few PSFs, so the threshold rises over a bright
  nucleus or a diffuse blob and falls in dim corners.
- the threshold (:func:`choose_threshold`): extrema of the response in SNR units.
  Minima of the response away from candidate spots (not within the filter's
  negative ring of a maximum >= ``T_MIN``) are the empirical null of the
  maxima (pure noise is symmetric, spots are not): the expected number of false
  maxima above ``t`` is the number of such minima below ``-t``, scaled by the
  share of the field they were counted in, corrected for the skew of Poisson
  noise and never below the expected number of local maxima of a Gaussian
  random field through the filter (:func:`null_counts`).  The threshold
  maximises the estimated F1 among those with an estimated false-discovery
  rate ``FP(t) / D(t)`` of at most ``FDR_MAX``, within ``[t_min, t_max]``; a
  field too small to calibrate the null (fewer than ``MIN_NULL_PIXELS``
  spot-free pixels, or fewer than ``MIN_NULL`` expected null maxima) keeps ``t_max``.
- the field's edges (:func:`border_noise_divide`): the filter reflects the
  image at its edges, so an edge pixel's response counts its neighbours twice
  and its noise is up to ~1.4x the interior's; the SNR there is divided by
  the exact factor of white noise through the reflected filter, so the edge
  gives no more false spots than the interior.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["mask_radius", "noise_samples", "robust_noise", "background_level", "fit_noise_model", "noise_from_model", "extrema", "choose_threshold", "null_counts", "null_peak_density", "border_noise_divide",
           "NOISE_CLIP", "NOISE_ITERATIONS", "T_MIN", "FDR_MAX"]

#: samples within mask_radius of a response above NOISE_CLIP * noise are left out
NOISE_CLIP = 3.0
NOISE_ITERATIONS = 6
#: lowest automatic threshold (noise sigmas)
T_MIN = 3.0
#: weight of the Poisson uncertainty sqrt(FP) of the false-positive count in the threshold score
FP_UNCERTAINTY = 1.0
#: the threshold is lowered below t_max only when at least this many minima calibrate the null
MIN_NULL = 20
#: largest estimated false-discovery rate of an automatic threshold (share of false spots among those kept)
FDR_MAX = 0.3
#: the null minima's depths are smoothed by a Gaussian of this width (noise sigmas): the expected false
#: maxima are a smooth function of the threshold, so a flat optimum of the score does not jump with the
#: noise of single minima (a saturated block elsewhere in a real field moved the count by 7 %)
NULL_SMOOTH = 0.15
#: ... and only when the spot-free area counted in is at least this many pixels
MIN_NULL_PIXELS = 4096


def mask_radius(sigma: float) -> int:
    """Radius (px) around a candidate spot left out of the noise estimate (peak and most of the ring)."""
    return int(math.ceil(3.0 * float(sigma))) + 1


def mad_sigma(values) -> float:
    """Robust standard deviation ``1.4826 * median(|v - median(v)|)`` (NaN for no values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    med = np.median(v)
    return float(1.4826 * np.median(np.abs(v - med)))


def noise_samples(response, sigma, ndi, *, origin=(0, 0), stride=1, core=None, valid=None, background=None):
    """(gy, gx, v, m, b) on the global sub-grid of ``response`` (within ``core``, tile coordinates).

    ``valid`` (bool, the response's shape) leaves out pixels (saturated or
    non-finite neighbourhoods).  NumPy arrays.
    """
    from ..backend import array_module, to_host_all

    r = int(mask_radius(sigma))
    mx = ndi.maximum_filter(response, size=2 * r + 1, mode="nearest")
    y0, y1, x0, x1 = core if core is not None else (0, response.shape[0], 0, response.shape[1])
    oy, ox = int(origin[0]), int(origin[1])
    sy = y0 + (-(oy + y0)) % stride
    sx = x0 + (-(ox + x0)) % stride
    xp = array_module(response)
    sl = (slice(sy, y1, stride), slice(sx, x1, stride))
    # one crossing: the sampled pixels of the response, its local maximum and (where they are on the
    # device too) the valid flags and the background, stacked; host arrays are sampled on the host
    extra = [a for a in (valid, background) if a is not None and array_module(a) is xp]
    v, m, *rest = to_host_all([a[sl] for a in (response, mx, *extra)], what="noise samples")

    def _sampled(a, fill):
        if a is None:
            return np.full(v.shape, fill)
        return rest.pop(0) if array_module(a) is xp else np.asarray(a[sl], np.float64)

    keep = _sampled(valid, 1.0).astype(bool)
    b = _sampled(background, 0.0)
    gy, gx = np.meshgrid(np.arange(sy, y1, stride) + oy, np.arange(sx, x1, stride) + ox, indexing="ij")
    return gy[keep], gx[keep], v[keep], m[keep], b[keep]


def robust_noise(v, m, *, clip=NOISE_CLIP, iterations=NOISE_ITERATIONS, fallback=None) -> float:
    """1.4826 * MAD of ``v`` over samples away from candidates (``m < clip * noise``), iterated.

    Stops when fewer than 50 samples (or 5 % of them) would remain: the
    previous estimate is kept, or, when that happens at once (spots cover a
    small or dense field), ``fallback`` (e.g. :func:`propagated_noise`).
    """
    from ..kernels.noise import robust_mad

    v = np.asarray(v, np.float64)
    if v.size == 0:
        return float("nan")
    s, starved = robust_mad(v, np.asarray(m, np.float64), clip, iterations)
    if starved and fallback is not None:  # spots cover the field: the white-noise propagation
        return float(fallback)
    return s


def background_level(photons, sigma, ndi):
    """Local background (photons/px) that the noise model follows: an opening (spots removed) of radius
    ``ceil(2.5 sigma)`` of the lightly smoothed image, box-averaged (float32, same backend)."""
    from .background import background_map

    return background_map(photons, background_radius(sigma), smooth_px=1.0)


def background_radius(sigma: float) -> int:
    return int(math.ceil(2.5 * float(sigma)))


def fit_noise_model(gy, gx, v, m, b, block_px, global_noise):
    """Variance model ``noise^2 = a + c * background`` of the filter response, fitted over blocks.

    Each block of ``block_px`` (aligned to the field) gives its robust noise
    and median background; ``a`` and ``c`` (>= 0) are a least-squares fit of
    the squared noise on the background, refitted without blocks more than
    3 MADs off (starting from the blocks within 3 MADs of a Theil-Sen line).
    Returns ``(a, c, excess)``, or None when the background varies too little
    (its 5-95 % range, a tenth of its median), the slope is not positive or
    fewer than 4 blocks have 64 samples: then the field's noise holds everywhere.
    """
    from ..kernels import _registry

    gy, gx, v, m, b = (np.asarray(a) for a in (gy, gx, v, m, b))
    key = (gy // block_px) * (1 << 20) + gx // block_px
    order = np.argsort(key, kind="stable")
    ks = key[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ks)) + 1, [len(ks)]]).astype(np.int64)
    impl = _registry.block_noise.resolve("auto")
    # each block's robust noise, with candidates masked at the block's own noise, and its median background
    s_b, n_keep, b_med = _registry.block_noise.get(impl)(v[order], m[order], b[order], starts, NOISE_CLIP,
                                                          NOISE_ITERATIONS)
    ok = (np.diff(starts) >= 64) & (s_b > 0) & (n_keep >= 32)  # blocks of at least 64 samples
    nb, sb, keys = list(b_med[ok]), list(s_b[ok]), [int(k) for k in ks[starts[:-1][ok]]]
    if len(nb) < 4:
        return None
    nb, var = np.asarray(nb), np.asarray(sb) ** 2
    lo, hi = np.percentile(nb, [5.0, 95.0])  # the bulk of the blocks (not a few beside one bright object)
    if not hi - lo > 0.1 * max(abs(float(np.median(nb))), 1e-12):
        return None
    # the blocks that start the fit: those within 3 MADs of a Theil-Sen line (a bright object's blocks lie at
    # backgrounds no other block has; least squares from all blocks let them tilt the line for the whole field)
    a, c = _theil_sen(nb, var)
    keep = _within_mads(var - (a + c * nb), np.ones(len(nb), bool))
    if keep.sum() < 4:
        keep = np.ones(len(nb), bool)
    for _ in range(3):
        A = np.column_stack([np.ones(keep.sum()), nb[keep]])
        (a, c), *_ = np.linalg.lstsq(A, var[keep], rcond=None)
        new = _within_mads(var - (a + c * nb), keep)
        if new.sum() < 4 or (new == keep).all():
            break
        keep = new
    if not c > 0:
        return None
    # blocks whose noise exceeds the model by more than EXCESS (structure: cell edges, texture) keep their own
    pred = np.sqrt(np.maximum(a + c * nb, (0.5 * global_noise) ** 2))
    sb = np.asarray(sb)
    excess = {k: float(v) for k, v, p in zip(keys, sb, pred) if v > EXCESS * p}
    return float(a), float(c), excess


#: the Theil-Sen start of the variance model takes its slopes from at most this many blocks (evenly spaced in
#: the blocks' order: the same blocks for a field and its tiles)
THEIL_SEN_BLOCKS = 600


def _theil_sen(x, y):
    """(intercept, slope) of the Theil-Sen line: the median of the pairwise slopes, then the median of
    ``y - slope x``; robust to a minority of points anywhere, those far along ``x`` included."""
    idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), THEIL_SEN_BLOCKS)).round().astype(np.int64))
    xs, ys = x[idx], y[idx]
    i, j = np.triu_indices(len(xs), 1)
    dx = xs[j] - xs[i]
    ok = dx != 0
    if not ok.any():
        return float(np.median(y)), 0.0
    c = float(np.median((ys[j] - ys[i])[ok] / dx[ok]))
    return float(np.median(y - c * x)), c


def _within_mads(res, keep):
    """Points whose residual lies within 3 MADs (of the ``keep`` points' residuals) of their median."""
    mad = 1.4826 * np.median(np.abs(res[keep] - np.median(res[keep])))
    return np.abs(res - np.median(res[keep])) <= 3 * mad if mad > 0 else keep


def noise_from_model(model, background, global_noise, xp=np, *, origin=(0, 0), block_px=32):
    """Noise map of the variance model at a background map (never below half the field's noise), raised
    to the block's own noise in blocks where that exceeds the model (``origin``: global (y, x) of the map)."""
    a, c, excess = model
    floor = (0.5 * global_noise) ** 2
    out = xp.sqrt(xp.maximum(np.float32(a) + np.float32(c) * background, np.float32(floor))).astype(np.float32)
    if excess:
        h, w = background.shape
        by = (np.arange(h) + int(origin[0])) // block_px
        bx = (np.arange(w) + int(origin[1])) // block_px
        keys = by[:, None] * (1 << 20) + bx[None, :]
        ex = np.zeros((h, w), np.float32)
        for k, v in excess.items():
            ex[keys == k] = v
        out = xp.maximum(out, xp.asarray(ex))
    return out


#: a block keeps its own noise where it exceeds the variance model by this factor
EXCESS = 1.15
#: minima are collected from this share of ``t_low`` (the skew correction compares maxima with shallower minima)
MIN_DEPTH_SHARE = 0.6


def extrema(snr, radius, ndi, *, core=None, t_low=T_MIN, ring_radius=None):
    """SNR of the local maxima >= t_low and of the null minima <= -MIN_DEPTH_SHARE * t_low of ``snr``.

    The null minima are counted only away from candidate spots: a minimum
    within ``ring_radius`` of a maximum >= ``t_low`` is left out (the
    filter's negative ring shifts the noise there), and so are the pixels
    counted in.  Returns (maxima, minima as positive numbers, pixels whose
    minima were counted, pixels), within ``core``.
    """
    from ..backend import array_module, to_host_all

    size = 2 * int(radius) + 1
    s = snr
    mx = ndi.maximum_filter(s, size=size, mode="nearest")
    mn = ndi.minimum_filter(s, size=size, mode="nearest")
    rr = int(ring_radius) if ring_radius else 3 * size
    near = ndi.maximum_filter(s, size=2 * rr + 1, mode="nearest")
    y0, y1, x0, x1 = core if core is not None else (0, s.shape[0], 0, s.shape[1])
    sl = (slice(y0, y1), slice(x0, x1))
    sc, mxc, mnc, nc = (a[sl] for a in (s, mx, mn, near))
    xp = array_module(sc)
    is_max = (sc == mxc) & (sc >= t_low)
    free = nc < t_low
    is_min = (sc == mnc) & (sc <= -MIN_DEPTH_SHARE * t_low) & free
    # one crossing: the maxima, the minima (negated) and the spot-free pixel count, selected on the device
    maxima, minima, n_free = to_host_all([sc[is_max], -sc[is_min], xp.asarray(xp.count_nonzero(free))],
                                         what="extrema")
    return maxima, minima, int(n_free), int(sc.size)


def response_skewness(sigma: float, pixel_noise: float, background: float) -> float:
    """Skewness of the detection filter's response to Poisson noise.

    ``K / sqrt(n)`` with ``K = sum(w^3) / sum(w^2)^1.5`` of the filter's
    weights and ``n`` the photons per pixel, taken as the smaller of the pixel
    variance and ``background^2 / variance`` (photons: both are the mean;
    read noise or a gain make one of them smaller, so the correction errs on
    the safe side).  0 when unknown.
    """
    v = float(pixel_noise) ** 2
    if not v > 0:
        return 0.0
    n = min(v, float(background) ** 2 / v) if background > 0 else v
    return _kernel_skew(float(sigma)) / math.sqrt(max(n, 0.25))


@functools.lru_cache(maxsize=64)
def _kernel_skew(sigma):
    w = _kernel(sigma)
    return float(np.sum(w**3) / np.sum(w**2) ** 1.5)


def propagated_noise(sigma: float, pixel_noise: float) -> float:
    """Response noise of white pixel noise ``pixel_noise``: ``pixel_noise * sqrt(sum(w^2))``."""
    return float(pixel_noise) * _kernel_norm(float(sigma))


def photon_noise_excess(noise, sigma, background, camera) -> float:
    """The detection filter's measured noise over what photon statistics give at ``background`` photons/px.

    The prediction is the filter's response to white noise of variance ``F^2 background + read variance``
    (:attr:`~evflow.imaging.camera.Camera.excess_variance`, ``readout_var_photons``).  About 1 where the
    camera model is right and the field is sparse (synthetic sCMOS and EMCCD fields: 1.02-1.11); larger where
    spots leave no spot-free area to measure the noise on (a crowded field: 2.3 at 1,500 vesicles per 256x256
    px, 7.4 at 3,000, where the measured noise hides most of them), on a structured background, or where the
    camera model is wrong.  NaN without a camera model (photons of unknown gain).
    """
    if camera is None or not (noise == noise) or not (background == background):
        return float("nan")
    pred = photon_response_noise(sigma, background, camera)
    return float(noise) / pred if pred > 0 else float("nan")


def photon_response_noise(sigma, background, camera) -> float:
    """The filter's response noise from photon statistics at ``background`` photons/px: white noise of variance
    ``F^2 max(background, 0) + read variance`` through the filter of ``sigma``."""
    var = camera.excess_variance * max(float(background), 0.0) + camera.readout_var_photons
    return propagated_noise(float(sigma), float(np.sqrt(var)))


@functools.lru_cache(maxsize=64)
def _kernel_norm(sigma):
    return float(np.sqrt(np.sum(_kernel(sigma) ** 2)))


@functools.lru_cache(maxsize=64)
def _kernel(sigma):
    from .dog import dog_filter

    n = 2 * int(math.ceil(4 * 3.0 * sigma)) + 11
    d = np.zeros((n, n), np.float64)
    d[n // 2, n // 2] = 1.0
    return np.asarray(dog_filter(d, sigma, impl="numpy"), np.float64)


def _fold_sums(n, sigma, ratio, ndi, xp):
    """Sums over the input pixels of the products of the DoG's two reflected 1-D Gaussians (scales
    ``sigma`` and ``ratio * sigma``, truncate 4, as :func:`evflow.kernels.filters.dog_ndimage`) at each
    position of a line of ``n`` px: ``(a11, a12, a22)`` for the first ``min(n, band)`` positions (the far
    end mirrors them), the interior's values and the band ``r`` (positions closer than ``r`` px to an
    end fold the filter; the rest are interior).  A line of at most ``2 r + 1`` px is folded throughout
    and its sums cover it all (``r = n``)."""
    from .dog import dog_reach

    r = dog_reach(sigma, ratio)
    short = n <= 2 * r + 1
    L = n if short else 2 * r + 1
    eye = xp.eye(L, dtype=xp.float64)
    m1 = ndi.gaussian_filter1d(eye, float(sigma), axis=0, mode="reflect", truncate=4.0)
    m2 = ndi.gaussian_filter1d(eye, ratio * float(sigma), axis=0, mode="reflect", truncate=4.0)
    sums = ((m1 * m1).sum(axis=1), (m1 * m2).sum(axis=1), (m2 * m2).sum(axis=1))
    if short:
        return sums, None, n
    return tuple(a[:r] for a in sums), tuple(a[r] for a in sums), r


def _line_profile(sums, inner, r, n, start, length, xp):
    """The fold sums at global positions ``start .. start + length`` of a line of ``n`` px."""
    if inner is None:
        return [a[start:start + length] for a in sums]
    out = []
    for a, v in zip(sums, inner):
        p = xp.full(length, 1.0, dtype=xp.float64) * v
        lo, hi = max(start, 0), min(start + length, r)  # near the start of the line
        if hi > lo:
            p[lo - start:hi - start] = a[lo:hi]
        lo, hi = max(start, n - r), min(start + length, n)  # near its end: the mirror of the start
        if hi > lo:
            p[lo - start:hi - start] = a[n - 1 - lo:n - 1 - hi:-1] if n - 1 - hi >= 0 else a[n - 1 - lo::-1]
        out.append(p)
    return out


def border_noise_divide(snr, sigma, ratio, field_shape, origin, ndi, xp):
    """Divide ``snr`` (a region of a field, its ``[0, 0]`` at global ``origin``) by the response noise of
    white noise at each pixel relative to the interior's, where the field's edges fold the filter.

    The filter ``G(s) - G(ratio s)`` with reflected edges weighs input pixel ``m`` at output ``i`` by
    ``g1_i(m) g1_j(n) - g2_i(m) g2_j(n)`` (``gk_i`` the 1-D Gaussian folded at the edges), so its
    variance is ``A11(i) A11(j) - 2 A12(i) A12(j) + A22(i) A22(j)`` with ``Akl(i) = sum_m gk_i(m) gl_i(m)``:
    exact for white noise, and computed only in the bands of the field's edges where it differs from
    the interior.  In place; returns ``snr``."""
    H, W = (int(v) for v in field_shape)
    h, w = snr.shape
    oy, ox = int(origin[0]), int(origin[1])
    (sy, iy, ry), (sx, ix, rx) = (_fold_sums(n, sigma, ratio, ndi, xp) for n in (H, W))
    inner = (iy if iy is not None else ix)
    if inner is None:  # a field folded throughout: the interior of an unbounded line
        from .dog import dog_reach

        inner = _fold_sums(2 * dog_reach(sigma, ratio) + 2, sigma, ratio, ndi, xp)[1]
    v0 = inner[0] ** 2 - 2.0 * inner[1] ** 2 + inner[2] ** 2
    # rows (and columns) of the region inside the field's edge bands
    t1 = min(h, max(0, ry - oy)) if iy is not None else h
    b0 = max(t1, min(h, H - ry - oy)) if iy is not None else h
    l1 = min(w, max(0, rx - ox)) if ix is not None else w
    r0 = max(l1, min(w, W - rx - ox)) if ix is not None else w
    py = _line_profile(sy, iy, ry, H, oy, h, xp)
    px = _line_profile(sx, ix, rx, W, ox, w, xp)

    def divide(ys, xs):
        if ys.stop <= ys.start or xs.stop <= xs.start:
            return
        v = (py[0][ys, None] * px[0][None, xs] - 2.0 * py[1][ys, None] * px[1][None, xs]
             + py[2][ys, None] * px[2][None, xs])
        snr[ys, xs] /= xp.sqrt(v / v0).astype(snr.dtype)

    divide(slice(0, t1), slice(0, w))
    divide(slice(b0, h), slice(0, w))
    divide(slice(t1, b0), slice(0, l1))
    divide(slice(t1, b0), slice(r0, w))
    return snr


def _gaussian_depth(ts, skew):
    """The standard-normal quantile with the upper-tail probability of ``ts`` under the skew (Cornish-Fisher,
    inverted); ``ts`` itself without skew."""
    g = skew / 6.0
    if g <= 1e-9:
        return ts
    return (-1.0 + np.sqrt(1.0 + 4.0 * g * (ts + g))) / (2.0 * g)


def _mirror(ts, skew):
    """Depth on the negative side with the tail probability of ``ts`` on the positive side (Cornish-Fisher)."""
    g = skew / 6.0
    if g <= 1e-9:
        return ts
    w = _gaussian_depth(ts, skew)
    return w - g * (w * w - 1.0)


@functools.lru_cache(maxsize=64)
def null_peak_density(sigma: float) -> float:
    """``lambda_2`` of the detection filter's response to white noise: the variance of its spatial
    derivative over its variance (px^-2), which sets the density of its local maxima."""
    w = _kernel(float(sigma))
    g = np.gradient(w, axis=1)
    return float(np.sum(g**2) / np.sum(w**2))


def null_counts(ts, minima, *, skew=0.0, n_pixels=0, null_pixels=None, peak_density=0.0):
    """Expected false maxima above each SNR ``ts`` of the field (the null).

    The null minima deeper than the mirrored depth (:func:`_mirror`, equal
    tail probability under the skew; each depth smoothed by a Gaussian of
    :data:`NULL_SMOOTH`), scaled from the ``null_pixels`` they
    were counted in to the field's ``n_pixels``; never below the expected
    number of local maxima of a Gaussian random field (the Euler-characteristic
    density ``n_pixels * lambda_2 / (2 pi)^1.5 * t * exp(-t^2 / 2)``,
    ``lambda_2`` = ``peak_density``, :func:`null_peak_density`; at the depth
    of equal tail probability under the skew).  Heavier tails than the
    Gaussian (camera noise, artefacts) show in the minima.
    """
    ts = np.asarray(ts, np.float64)
    mn = np.sort(np.asarray(minima, np.float64))
    from scipy.special import ndtr

    # each minimum deeper than the mirrored depth counts, smoothed over NULL_SMOOTH (a step without it)
    # (on a histogram of the depths in bins of NULL_SMOOTH / 20: a bin's centre is within 0.4 % of the width of
    # its minima's; minima more than 6 widths deeper than every depth count 1)
    depth = np.atleast_1d(_mirror(ts, skew))
    cut = float(depth.max()) + 6.0 * NULL_SMOOTH
    deep = int(mn.size - np.searchsorted(mn, cut))
    width = NULL_SMOOTH / 20.0
    edges = np.arange(float(mn[0]) if mn.size else 0.0, cut + width, width)
    counts, edges = np.histogram(mn[mn < cut], bins=edges) if edges.size > 1 else (np.zeros(0), edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fp = (deep + ndtr((centres[None, :] - depth[:, None]) / NULL_SMOOTH) @ counts).reshape(np.shape(ts))
    if n_pixels and null_pixels:
        fp = fp * (float(n_pixels) / max(float(null_pixels), 1.0))
    if n_pixels and peak_density > 0:
        w = _gaussian_depth(ts, skew)
        fp = np.maximum(fp, n_pixels * peak_density / (2 * np.pi) ** 1.5 * w * np.exp(-0.5 * w * w))
    return fp


def choose_threshold(maxima, minima, *, t_min=T_MIN, t_max=5.0, step=0.05, skew=0.0, n_pixels=0,
                     null_pixels=None, peak_density=0.0, fdr_max=FDR_MAX) -> float:
    """The SNR threshold with the largest estimated F1, within a false-discovery-rate bound.

    ``maxima``: SNR of the candidate maxima (``D(t)`` of them at or above
    ``t``); ``minima``: depths of the null minima of the same field, counted
    in ``null_pixels`` of its ``n_pixels`` (:func:`null_counts` gives the
    expected false maxima ``FP(t)``, counted as ``FP + FP_UNCERTAINTY *
    sqrt(FP)``).  ``t`` maximises ``2 (D - FP) / (D + max(D - FP))`` (the
    estimated F1) among the thresholds whose estimated false-discovery rate
    ``FP(t) / D(t)`` is at most ``fdr_max`` (the Benjamini-Hochberg estimate
    with the null's expected count); ties take the highest ``t``.  A field
    whose spot-free area ``null_pixels`` is under ``MIN_NULL_PIXELS``,
    fewer than ``MIN_NULL`` expected null maxima at ``t_min``, or no more
    maxima than the null keeps ``t_max``.
    """
    if t_max <= t_min:
        return float(t_max)
    ts = np.arange(t_min, t_max + 1e-9, step)
    mx = np.sort(np.asarray(maxima, np.float64))
    d = (mx.size - np.searchsorted(mx, ts, side="left")).astype(np.float64)
    if null_pixels is not None and null_pixels < MIN_NULL_PIXELS:  # too little spot-free area to calibrate
        return float(t_max)
    fp = null_counts(ts, minima, skew=skew, n_pixels=n_pixels, null_pixels=null_pixels, peak_density=peak_density)
    if fp[0] < MIN_NULL:  # too few null maxima expected to tell noise from dim spots (a small field)
        return float(t_max)
    if d[0] <= fp[0]:  # no more maxima than the null gives: nothing to gain below t_max
        return float(t_max)
    fp = fp + FP_UNCERTAINTY * np.sqrt(fp)
    tp = np.maximum(d - fp, 0.0)
    score = 2.0 * tp / np.maximum(d + tp.max(), 1.0)
    fdr = np.minimum(fp / np.maximum(d, 1.0), 1.0)
    score = np.where(fdr <= fdr_max, score, -1.0)
    if score.max() < 0:
        return float(t_max)
    best = np.flatnonzero(score == score.max())
    return round(float(ts[best[-1]]), 6)
