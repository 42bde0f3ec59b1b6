"""Box maximum and minimum filters of detection (family ``box_extreme``), and the host ndimage that uses them.

``scipy.ndimage.maximum_filter`` / ``minimum_filter`` with a square size are separable, but scipy's 1-D
pass costs about as much per pixel as the window is wide; detection runs five of them per field and
channel (the noise samples' local maximum, the extrema and their spot-free ring, the opening of the
background).  Van Herk / Gil-Werman does each 1-D pass in three comparisons per pixel whatever the
width: blocks of the window's length, a running extreme forward and backward in each, and the
window's extreme is that of one backward and one forward value.  The values are those of scipy (an
extreme is exact) for integer ``size`` (or one per axis), ``origin`` 0 and mode 'nearest' (edges
repeated) or 'reflect' (``d c b a | a b c d | d c b a``), on 2-D finite arrays of any real dtype.

- ``box_extreme_numpy``: the reference, ``scipy.ndimage``;
- ``box_extreme_numba``: the passes above (rows parallel over rows, columns over strips of 64);
- ``box_extreme_cupy``: ``cupyx.scipy.ndimage`` (device arrays stay on the device);
- :data:`HOST_NDIMAGE`: ``scipy.ndimage`` with ``maximum_filter`` and ``minimum_filter`` served by
  the Numba passes where those conditions hold (else scipy), what
  :func:`evflow.backend.get_ndi` gives for NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from ._numba import HAVE_NUMBA, LAUNCH_LOCK, njit, prange

__all__ = ["box_extreme_numpy", "box_extreme_numba", "box_extreme_cupy", "HOST_NDIMAGE", "MODES"]

MODES = ("nearest", "reflect")


def box_extreme_numpy(a, size, op: str, mode: str = "nearest"):
    """``scipy.ndimage.maximum_filter`` (``op='max'``) or ``minimum_filter`` (``'min'``) of ``a``."""
    import scipy.ndimage as sndi

    f = sndi.maximum_filter if op == "max" else sndi.minimum_filter
    return f(a, size=size, mode=mode)


def box_extreme_cupy(a, size, op: str, mode: str = "nearest"):
    """``cupyx.scipy.ndimage.maximum_filter`` / ``minimum_filter`` of a CuPy array."""
    import cupyx.scipy.ndimage as cndi

    f = cndi.maximum_filter if op == "max" else cndi.minimum_filter
    return f(a, size=size, mode=mode)


@njit(cache=True)
def _bound(k, n, reflect):
    if reflect:
        k = k % (2 * n)
        return 2 * n - 1 - k if k >= n else k
    return 0 if k < 0 else (n - 1 if k >= n else k)


@njit(cache=True)
def _pick(p, q, ismax):
    if ismax:
        return p if p >= q else q
    return p if p <= q else q


@njit(cache=True)
def _row_extreme(e, g, h, w, m, ismax):
    """Van Herk / Gil-Werman on one extended line ``e``: forward (``g``) and backward (``h``) running extremes
    in blocks of ``w``."""
    for s in range(0, m, w):
        t = min(s + w, m)
        g[s] = e[s]
        h[t - 1] = e[t - 1]
        if ismax:
            for j in range(s + 1, t):
                g[j] = g[j - 1] if g[j - 1] >= e[j] else e[j]
            for j in range(t - 2, s - 1, -1):
                h[j] = h[j + 1] if h[j + 1] >= e[j] else e[j]
        else:
            for j in range(s + 1, t):
                g[j] = g[j - 1] if g[j - 1] <= e[j] else e[j]
            for j in range(t - 2, s - 1, -1):
                h[j] = h[j + 1] if h[j + 1] <= e[j] else e[j]


@njit(parallel=True, cache=True)
def _rows(a, w, ismax, reflect, out):
    H, W = a.shape
    lo = w // 2
    m = W + w - 1
    n_chunks = min(H, 64)
    per = (H + n_chunks - 1) // n_chunks
    for ci in prange(n_chunks):
        e = np.empty(m, a.dtype)
        g = np.empty(m, a.dtype)
        h = np.empty(m, a.dtype)
        for y in range(ci * per, min(H, (ci + 1) * per)):
            row = a[y]
            for j in range(min(lo, m)):
                e[j] = row[_bound(j - lo, W, reflect)]
            e[lo:lo + W] = row
            for j in range(lo + W, m):
                e[j] = row[_bound(j - lo, W, reflect)]
            _row_extreme(e, g, h, w, m, ismax)
            o = out[y]
            if ismax:
                for i in range(W):
                    o[i] = h[i] if h[i] >= g[i + w - 1] else g[i + w - 1]
            else:
                for i in range(W):
                    o[i] = h[i] if h[i] <= g[i + w - 1] else g[i + w - 1]


@njit(parallel=True, cache=True)
def _cols(a, w, ismax, reflect, out):
    H, W = a.shape
    lo = w // 2
    m = H + w - 1
    n_strips = (W + 63) // 64
    for si in prange(n_strips):
        x0 = si * 64
        nx = min(x0 + 64, W) - x0
        g = np.empty((m, nx), a.dtype)
        h = np.empty((m, nx), a.dtype)
        for s in range(0, m, w):
            t = min(s + w, m)
            r = _bound(s - lo, H, reflect)
            for x in range(nx):
                g[s, x] = a[r, x0 + x]
            for j in range(s + 1, t):
                r = _bound(j - lo, H, reflect)
                for x in range(nx):
                    g[j, x] = _pick(g[j - 1, x], a[r, x0 + x], ismax)
            r = _bound(t - 1 - lo, H, reflect)
            for x in range(nx):
                h[t - 1, x] = a[r, x0 + x]
            for j in range(t - 2, s - 1, -1):
                r = _bound(j - lo, H, reflect)
                for x in range(nx):
                    h[j, x] = _pick(h[j + 1, x], a[r, x0 + x], ismax)
        for i in range(H):
            for x in range(nx):
                out[i, x0 + x] = _pick(h[i, x], g[i + w - 1, x], ismax)


def _sizes(size, ndim):
    s = (size,) * ndim if np.isscalar(size) else tuple(size)
    if len(s) != ndim or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in s):
        return None
    return tuple(int(v) for v in s)


def box_extreme_numba(a, size, op: str, mode: str = "nearest"):
    """:func:`box_extreme_numpy` by van Herk / Gil-Werman passes (2-D, mode 'nearest' or 'reflect')."""
    a = np.ascontiguousarray(a)
    sizes = _sizes(size, a.ndim)
    if a.ndim != 2 or sizes is None or mode not in MODES or a.dtype.kind not in "uif" or a.size == 0:
        raise ValueError(f"box_extreme_numba: a 2-D real array, integer sizes and mode in {MODES} "
                         f"(got shape {a.shape}, dtype {a.dtype}, size {size!r}, mode {mode!r})")
    ismax, reflect = op == "max", mode == "reflect"
    tmp = a
    with LAUNCH_LOCK:
        if sizes[1] > 1:
            tmp = np.empty_like(a)
            _rows(a, sizes[1], ismax, reflect, tmp)
        out = tmp.copy() if tmp is a else tmp
        if sizes[0] > 1:
            out = np.empty_like(a)
            _cols(tmp, sizes[0], ismax, reflect, out)
    return out


class _HostNdimage:
    """``scipy.ndimage`` with the square max/min filters of detection compiled (see the module text)."""

    def __init__(self):
        import scipy.ndimage as sndi

        self._sndi = sndi

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["_sndi"], name)

    def __reduce__(self):  # one instance per process, also after pickling (dask's process workers)
        return (_host_ndimage, ())

    def _fast(self, a, size, footprint, mode, kwargs):
        return (HAVE_NUMBA and footprint is None and not kwargs and mode in MODES and size is not None
                and isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype.kind in "uif" and a.size > 0
                and _sizes(size, 2) is not None and (a.dtype.kind != "f" or bool(np.isfinite(a).all())))

    def maximum_filter(self, a, size=None, footprint=None, output=None, mode="reflect", **kwargs):
        if output is None and self._fast(a, size, footprint, mode, kwargs):
            return box_extreme_numba(a, size, "max", mode)
        return self._sndi.maximum_filter(a, size=size, footprint=footprint, output=output, mode=mode, **kwargs)

    def minimum_filter(self, a, size=None, footprint=None, output=None, mode="reflect", **kwargs):
        if output is None and self._fast(a, size, footprint, mode, kwargs):
            return box_extreme_numba(a, size, "min", mode)
        return self._sndi.minimum_filter(a, size=size, footprint=footprint, output=output, mode=mode, **kwargs)


HOST_NDIMAGE = _HostNdimage()


def _host_ndimage():
    return HOST_NDIMAGE
