"""Image filters of spot detection: separable DoG filter, thresholded local maxima, fit windows.

Two implementations of each, registered in :mod:`evflow.kernels._registry`
(families ``dog``, ``local_maxima``, ``windows``):

- ``*_ndimage`` / ``windows_xp``: ``scipy.ndimage`` or ``cupyx.scipy.ndimage``
  (whichever the array belongs to): ``gaussian_filter`` with ``truncate=4``
  and mode ``reflect``; ``maximum_filter`` with mode ``nearest``; the NumPy
  reference and the CuPy version;
- ``*_numba``: the same definitions computed in float32 with vectorised
  loops, parallel over rows, without full-image temporaries other than the
  two row-filtered images.
"""

from __future__ import annotations

import numpy as np

from ._numba import HAVE_NUMBA, LAUNCH_LOCK, get_num_threads, njit, prange as _prange

__all__ = [
    "HAVE_NUMBA",
    "gaussian_kernel",
    "dog_ndimage",
    "dog_numba",
    "maxima_numba",
    "peaks_ndimage",
    "peaks_numba",
    "windows_numba",
    "windows_xp",
]


def _njit(*args, **kwargs):
    # error_model="numpy": no zero-division checks (they stop vectorisation)
    return njit(*args, cache=True, error_model="numpy", **kwargs)


def _ndimage(a):
    """``scipy.ndimage`` itself for host arrays (these are the references), ``cupyx.scipy.ndimage`` for CuPy."""
    from evflow.backend import array_backend, get_ndi

    if array_backend(a) == "numpy":
        import scipy.ndimage as sndi

        return sndi
    return get_ndi("cupy")


def dog_ndimage(image, sigma_small: float, sigma_large: float, scale=None, ndi=None, dtype=np.float32):
    """``scale * (G(sigma_small) - G(sigma_large)) * image`` with (cupyx.)scipy.ndimage, in ``dtype``.

    ``ndi`` defaults to the ndimage module of ``image``'s array library;
    ``scale=None`` leaves the difference unscaled.
    """
    if ndi is None:
        ndi = _ndimage(image)
        image = image.astype(np.float32, copy=False)
    a = ndi.gaussian_filter(image, sigma_small, mode="reflect", output=dtype)
    a -= ndi.gaussian_filter(image, sigma_large, mode="reflect", output=dtype)
    if scale is not None:
        a *= dtype(scale)
    return a


def peaks_ndimage(response, threshold, radius: int, factor=1.0):
    """``(y, x, score)`` of the local maxima of ``response * factor`` (see :func:`maxima_numba`)
    with ``maximum_filter``; NumPy results, row-major order."""
    from evflow.backend import array_module, to_host_all

    xp = array_module(response)
    ndi = _ndimage(response)
    f32 = np.float32(factor)
    score = response if factor == 1.0 else response * f32
    size = 2 * int(radius) + 1
    mx = ndi.maximum_filter(score, size=size, mode="nearest")
    mask = (score == mx) & (score >= threshold)
    yy, xx = xp.nonzero(mask)
    gy, gx, gv = to_host_all([yy, xx, score[yy, xx]], what="maxima")  # one crossing
    return gy.astype(np.int64), gx.astype(np.int64), gv.astype(score.dtype)


def peaks_numba(response, threshold, radius: int, factor=1.0):
    """:func:`peaks_ndimage` by :func:`maxima_numba` (NumPy arrays)."""
    f32 = np.float32(factor)
    yy, xx = maxima_numba(response, threshold, int(radius), factor=f32)
    val = response[yy, xx].astype(np.float32) * f32 if len(yy) else np.empty(0, np.float32)
    return yy, xx, val


def windows_xp(image, y0, x0, size: int):
    """``size x size`` float32 windows with top-left corners (y0, x0), by fancy indexing (NumPy or CuPy)."""
    from evflow.backend import array_module

    xp = array_module(image)
    k = xp.arange(size)
    win = image[(y0[:, None, None] + k[None, :, None]), (x0[:, None, None] + k[None, None, :])]
    return win.astype(xp.float32)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian weights of scipy.ndimage.gaussian_filter1d (radius ``int(truncate*sigma+0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x * x)
    return phi / phi.sum()


@_njit()
def _reflect(i, n):
    """scipy.ndimage 'reflect' (half-sample symmetric) index."""
    p = 2 * n
    i = i % p
    if i < 0:
        i += p
    return i if i < n else p - 1 - i


@_njit()
def _row_pass(w, r, pad, rpad, out):
    """out = the row held in pad[rpad:rpad + W] (reflect-padded) correlated with symmetric w of radius r."""
    W = out.shape[0]
    c = w[r]
    a = pad[rpad : rpad + W]  # slices: indices from range() are provably >= 0, so the loops vectorise
    for x in range(W):
        out[x] = c * a[x]
    for k in range(1, r + 1):
        wk = w[r + k]
        lo = pad[rpad - k : rpad - k + W]
        hi = pad[rpad + k : rpad + k + W]
        for x in range(W):
            out[x] += wk * (lo[x] + hi[x])


@_njit(parallel=True)
def _dog_rows(img, w1, r1, w2, r2, T1, T2, nblk):
    H, W = img.shape
    size = (H + nblk - 1) // nblk
    for b in _prange(nblk):
        pad = np.empty(W + 2 * r2, dtype=np.float32)
        for y in range(b * size, min(H, (b + 1) * size)):
            for x in range(W):
                pad[r2 + x] = np.float32(img[y, x])
            for k in range(1, r2 + 1):
                pad[r2 - k] = pad[r2 + _reflect(-k, W)]
                pad[r2 + W - 1 + k] = pad[r2 + _reflect(W - 1 + k, W)]
            _row_pass(w1, r1, pad, r2, T1[y])
            _row_pass(w2, r2, pad, r2, T2[y])


@_njit(parallel=True)
def _dog_cols(T1, w1, r1, T2, w2, r2, scale, out, nblk):
    H, W = T1.shape
    size = (H + nblk - 1) // nblk
    for b in _prange(nblk):
        acc = np.empty(W, dtype=np.float32)
        for y in range(b * size, min(H, (b + 1) * size)):
            c = w1[r1]
            a = T1[y]
            for x in range(W):
                acc[x] = c * a[x]
            for k in range(1, r1 + 1):
                wk = w1[r1 + k]
                lo = T1[_reflect(y - k, H)]
                hi = T1[_reflect(y + k, H)]
                for x in range(W):
                    acc[x] += wk * (lo[x] + hi[x])
            c = w2[r2]
            a = T2[y]
            for x in range(W):
                acc[x] -= c * a[x]
            for k in range(1, r2 + 1):
                wk = w2[r2 + k]
                lo = T2[_reflect(y - k, H)]
                hi = T2[_reflect(y + k, H)]
                for x in range(W):
                    acc[x] -= wk * (lo[x] + hi[x])
            o = out[y]
            for x in range(W):
                o[x] = acc[x] * scale


def _nblocks(n):
    return max(1, min(n, 4 * get_num_threads()))


def dog_numba(image, sigma_small: float, sigma_large: float, scale: float) -> np.ndarray:
    """``scale * (G(sigma_small) - G(sigma_large)) * image`` in float32 (2-D NumPy image)."""
    img = np.ascontiguousarray(image)
    if img.dtype not in (np.float32, np.float64, np.uint16, np.int32, np.int64, np.uint8):
        img = img.astype(np.float32)
    H, W = img.shape
    w1 = gaussian_kernel(sigma_small).astype(np.float32)
    w2 = gaussian_kernel(sigma_large).astype(np.float32)
    r1 = (len(w1) - 1) // 2
    r2 = (len(w2) - 1) // 2
    T1 = np.empty((H, W), dtype=np.float32)
    T2 = np.empty((H, W), dtype=np.float32)
    out = np.empty((H, W), dtype=np.float32)
    nb = _nblocks(H)
    with LAUNCH_LOCK:
        _dog_rows(img, w1, r1, w2, r2, T1, T2, nb)
        _dog_cols(T1, w1, r1, T2, w2, r2, np.float32(scale), out, nb)
    return out


@_njit()
def _is_max(score, factor, y, x, r, v):
    H, W = score.shape
    for yy in range(max(y - r, 0), min(y + r, H - 1) + 1):
        for xx in range(max(x - r, 0), min(x + r, W - 1) + 1):
            if score[yy, xx] * factor > v:
                return False
    return True


@_njit(parallel=True)
def _maxima(score, factor, thr, r, counts, offsets, ys, xs, fill):
    """Pass 1 (fill False): maxima per row into counts; pass 2: their (y, x) at offsets."""
    H, W = score.shape
    for y in _prange(H):
        row = score[y]
        n = 0
        o = offsets[y] if fill else 0
        for x in range(W):
            v = row[x] * factor
            if v >= thr and _is_max(score, factor, y, x, r, v):
                if fill:
                    ys[o + n] = y
                    xs[o + n] = x
                n += 1
        counts[y] = n


def maxima_numba(score, threshold: float, radius: int, factor: float = 1.0):
    """Pixels with ``score * factor >= threshold`` that equal the maximum of ``score * factor``
    over the ``(2 radius + 1)^2`` neighbourhood (image edges: mode 'nearest').

    ``score * factor`` is evaluated in float32, as the NumPy expression would be.
    Returns int64 (y, x) in row-major order.
    """
    s = np.ascontiguousarray(score, dtype=np.float32)
    H = s.shape[0]
    counts = np.zeros(H, dtype=np.int64)
    f = np.float32(factor)
    t = np.float32(threshold)
    none = np.empty(0, dtype=np.int64)
    with LAUNCH_LOCK:
        _maxima(s, f, t, int(radius), counts, counts, none, none, False)
        offsets = np.zeros(H, dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        n = int(counts.sum())
        ys = np.empty(n, dtype=np.int64)
        xs = np.empty(n, dtype=np.int64)
        _maxima(s, f, t, int(radius), counts, offsets, ys, xs, True)
    return ys, xs


@_njit()
def _windows(img, y0, x0, size, out):
    for p in range(y0.shape[0]):
        for i in range(size):
            for j in range(size):
                out[p, i, j] = np.float32(img[y0[p] + i, x0[p] + j])


def windows_numba(image, y0, x0, size: int) -> np.ndarray:
    """``size x size`` float32 windows with top-left corners (y0, x0) (inside the image)."""
    img = np.ascontiguousarray(image)
    out = np.empty((len(y0), size, size), dtype=np.float32)
    if len(y0):  # serial: a copy this small does not pay for a parallel launch
        _windows(img, np.ascontiguousarray(y0, dtype=np.int64), np.ascontiguousarray(x0, dtype=np.int64),
                 int(size), out)
    return out
