"""Logicle and hyperlog scales: closed-form inverses, exact root finding and fast lookup tables.

Both scales of Gating-ML 2.0 are defined through their inverse ``x = B(y)``,
a closed form, mirrored about ``y = x1`` (``B(2 x1 - y) = -B(y)``):

- logicle (Parks, Roederer & Moore 2006): ``B(y) = a e^{b y} - c e^{-d y} + f``
- hyperlog (Bagwell 2005):                ``B(y) = a e^{b y} + c y - f``

for ``y >= x1``.  The forward transform ``y = B^{-1}(x)`` has no closed form.
This module provides

- :func:`forward_exact`: the reference, vectorised bisection to the last bit
  (NumPy only; the oracle of the tests),
- :func:`build_table` / :func:`table_forward`: the fast path, a dense table of
  knots ``x_k = B(y0 + k h)`` on a uniform ``y`` grid with linear
  interpolation between knots.  Inside the table only exactly rounded IEEE
  operations are used (search, subtract, divide, multiply, add), so NumPy,
  Numba and CuPy give bit-identical results; values beyond the table ends
  (``|x|`` above about ``1e12``) are finished by Newton steps from the
  asymptotic solution.
- :func:`table_forward_numba`: the same lookup as a parallel Numba loop,
- :func:`forward_fast`: one of them by ``impl`` (registry family ``biex_forward``).

The interpolation error in ``y`` is about ``b h^2 / 8`` with ``b = (M + A) ln 10``;
``h = 2**-13`` keeps it below ``3e-8`` display units for ``M + A <= 10``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._cuda import BoundedCache
from ._registry import renamed_impl

__all__ = [
    "LOGICLE",
    "HYPERLOG",
    "TABLE_STEP",
    "BiexParams",
    "logicle_params",
    "hyperlog_params",
    "inverse",
    "forward_exact",
    "build_table",
    "table_forward",
    "table_forward_numpy",
    "table_forward_numba",
    "forward_fast",
]

LOGICLE = 0
HYPERLOG = 1
TABLE_STEP = 2.0**-13
_LN10 = math.log(10.0)
_X_TABLE_MAX = 1e12  # the table reaches at least this |x|


class BiexParams(tuple):
    """``(kind, a, b, c, d, f, x1)`` of a logicle or hyperlog scale (d unused for hyperlog)."""

    __slots__ = ()

    kind = property(lambda s: s[0])
    a = property(lambda s: s[1])
    b = property(lambda s: s[2])
    c = property(lambda s: s[3])
    d = property(lambda s: s[4])
    f = property(lambda s: s[5])
    x1 = property(lambda s: s[6])


def _solve_d(b: float, w: float) -> float:
    """Root ``d`` in (0, b] of ``2 (ln d - ln b) + w (b + d) = 0`` (logicle)."""
    if w == 0:
        return b
    lo, hi = 0.0, b
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid == lo or mid == hi:
            break
        g = 2.0 * (math.log(mid) - math.log(b)) + w * (b + mid)
        if g < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=64)
def logicle_params(T: float, W: float, M: float, A: float) -> BiexParams:
    """Coefficients of the Gating-ML 2.0 logicle scale (``T`` top of scale, ``W`` linearisation
    width and ``M`` decades, both in decades, ``A`` additional negative decades)."""
    w = W / (M + A)
    x2 = A / (M + A)
    x1 = x2 + w
    x0 = x2 + 2 * w
    b = (M + A) * _LN10
    d = _solve_d(b, w)
    c_a = math.exp(x0 * (b + d))
    mf_a = math.exp(b * x1) - c_a / math.exp(d * x1)
    a = T / ((math.exp(b) - mf_a) - c_a / math.exp(d))
    c = c_a * a
    f = -mf_a * a
    return BiexParams((LOGICLE, a, b, c, d, f, x1))


@functools.lru_cache(maxsize=64)
def hyperlog_params(T: float, W: float, M: float, A: float) -> BiexParams:
    """Coefficients of the Gating-ML 2.0 hyperlog scale (same parameters as logicle)."""
    w = W / (M + A)
    x2 = A / (M + A)
    x1 = x2 + w
    x0 = x2 + 2 * w
    b = (M + A) * _LN10
    c_a = math.exp(b * x0) / w
    f_a = math.exp(b * x1) + c_a * x1
    a = T / ((math.exp(b) + c_a) - f_a)
    return BiexParams((HYPERLOG, a, b, c_a * a, 0.0, f_a * a, x1))


def _upper(y, p: BiexParams, xp):
    """B(y) for y >= x1 (no mirroring)."""
    kind, a, b, c, d, f, _ = p
    if kind == LOGICLE:
        return (a * xp.exp(b * y) + f) - c * xp.exp(-d * y)
    return (a * xp.exp(b * y) + c * y) - f


def _upper_d1(y, p: BiexParams, xp):
    kind, a, b, c, d, f, _ = p
    if kind == LOGICLE:
        return a * b * xp.exp(b * y) + c * d * xp.exp(-d * y)
    return a * b * xp.exp(b * y) + c


def inverse(y, p: BiexParams, xp=np):
    """Closed-form inverse: data value ``x = B(y)`` for display values ``y`` (any real)."""
    y = xp.asarray(y, dtype=xp.float64)
    x1 = p.x1
    neg = y < x1
    ym = xp.where(neg, 2 * x1 - y, y)
    with np.errstate(over="ignore", invalid="ignore"):
        x = _upper(ym, p, xp)
    return xp.where(neg, -x, x)


def forward_exact(x, p: BiexParams):
    """Reference forward transform by bisection (NumPy; exact to the last bit or so).

    NaN stays NaN; ``+-inf`` map to ``+-inf``.
    """
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    finite = np.isfinite(ax)
    axf = np.where(finite, ax, 0.0)
    lo = np.full(x.shape, p.x1)
    hi = np.full(x.shape, p.x1 + 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(2000):
            short = _upper(hi, p, np) < axf
            if not short.any():
                break
            hi = np.where(short, p.x1 + 2 * (hi - p.x1), hi)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = _upper(mid, p, np) < axf
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
    y = 0.5 * (lo + hi)
    y = np.where(axf == 0, p.x1, y)
    y = np.where(x < 0, 2 * p.x1 - y, y)
    y = np.where(np.isposinf(x), np.inf, y)
    y = np.where(np.isneginf(x), -np.inf, y)
    return np.where(np.isnan(x), np.nan, y)


@functools.lru_cache(maxsize=64)
def build_table(p: BiexParams, h: float = TABLE_STEP):
    """Knots ``x_k = B(y0 + k h)``, ``k = 0..n``, symmetric about ``x1``, covering ``|x| <= 1e12``.

    Returns
    -------
    knots : numpy.ndarray (float64, strictly increasing)
    y0 : float
    h : float
    """
    # half-width in y so that B(x1 + half) >= _X_TABLE_MAX
    half = 1.0
    while _upper(np.float64(p.x1 + half), p, np) < _X_TABLE_MAX:
        half *= 1.25
    n_half = int(math.ceil(half / h))
    k = np.arange(-n_half, n_half + 1, dtype=np.float64)
    y = p.x1 + k * h
    knots = inverse(y, p, np)
    knots[n_half] = 0.0
    if not np.all(np.diff(knots) > 0):
        raise ValueError("scale parameters give a non-increasing lookup table")
    knots.setflags(write=False)
    return knots, float(y[0]), float(h)


def _newton_tail(x, y, p: BiexParams, xp, iters: int = 12):
    """Polish ``y`` for |x| beyond the table (log regime) by Newton steps on B(y) = |x|."""
    ax = xp.abs(x)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        g = xp.log(xp.maximum(ax + xp.abs(p.f) + abs(p.c), 1.0) / p.a) / p.b
        g = xp.maximum(g, p.x1)
        for _ in range(iters):
            g = g - (_upper(g, p, xp) - ax) / _upper_d1(g, p, xp)
    return xp.where(x < 0, 2 * p.x1 - g, g)


#: tables uploaded to a device, by (parameters, device); the most recent 64
_DEVICE_KNOTS = BoundedCache(maxsize=64)


def _device_knots(p: BiexParams, xp):
    """The table uploaded once per parameter set and device (CuPy)."""
    key = (p, xp.cuda.runtime.getDevice())
    knots = _DEVICE_KNOTS.get(key)
    if knots is None:
        knots = xp.asarray(build_table(p)[0])
        _DEVICE_KNOTS.put(key, knots)
    return knots


def table_forward(x, p: BiexParams, xp=None):
    """Fast forward transform on NumPy or CuPy arrays (table lookup + linear interpolation)."""
    if xp is None:
        from evflow.backend import array_module

        xp = array_module(x)
    knots_np, y0, h = build_table(p)
    knots = knots_np if xp is np else _device_knots(p, xp)
    x = xp.asarray(x, dtype=xp.float64)
    n = knots.shape[0] - 1
    k = xp.searchsorted(knots, x, side="right") - 1
    k = xp.clip(k, 0, n - 1)
    xk = knots[k]
    with np.errstate(invalid="ignore"):
        frac = (x - xk) / (knots[k + 1] - xk)
    y = y0 + h * (k.astype(xp.float64) + frac)
    out = (x < knots[0]) | (x > knots[n])
    if bool(out.any()):
        tail = _newton_tail(x, y, p, xp)
        y = xp.where(out, tail, y)
        y = xp.where(x == xp.inf, xp.inf, y)
        y = xp.where(x == -xp.inf, -xp.inf, y)
    return y


def table_forward_numpy(x, p: BiexParams):
    """:func:`table_forward` on NumPy arrays (the reference of the fast path)."""
    return table_forward(x, p, np)


@functools.lru_cache(maxsize=1)
def _numba_kernel():
    from ._numba import njit, prange

    @njit(parallel=True, cache=True, nogil=True)
    def _lookup(x, knots, y0, h, out):
        n = knots.shape[0] - 1
        lo_x = knots[0]
        hi_x = knots[n]
        for i in prange(x.shape[0]):
            v = x[i]
            if not (v >= lo_x and v <= hi_x):
                out[i] = np.nan  # NaN or beyond the table: finished outside
                continue
            # k = searchsorted(knots, v, 'right') - 1, clipped to [0, n-1]
            lo = 0
            hi = n + 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if knots[mid] <= v:
                    lo = mid + 1
                else:
                    hi = mid
            k = lo - 1
            if k > n - 1:
                k = n - 1
            xk = knots[k]
            frac = (v - xk) / (knots[k + 1] - xk)
            out[i] = y0 + h * (np.float64(k) + frac)

    return _lookup


def table_forward_numba(x, p: BiexParams):
    """The table lookup of :func:`table_forward` as a parallel Numba loop (NumPy arrays)."""
    knots, y0, h = build_table(p)
    x = np.asarray(x, dtype=np.float64)
    flat = np.ascontiguousarray(x.reshape(-1))
    out = np.empty_like(flat)
    from ._numba import LAUNCH_LOCK

    with LAUNCH_LOCK:
        _numba_kernel()(flat, knots, y0, h, out)
    out = out.reshape(x.shape)
    beyond = (x < knots[0]) | (x > knots[-1])
    if beyond.any():
        tail = _newton_tail(x[beyond], None, p, np)
        tail = np.where(np.isposinf(x[beyond]), np.inf, tail)
        tail = np.where(np.isneginf(x[beyond]), -np.inf, tail)
        out[beyond] = tail
    return out


@renamed_impl("engine")
def forward_fast(x, p: BiexParams, impl: str = "auto"):
    """Forward transform by table lookup; ``impl`` 'auto', 'numpy', 'numba' or 'cupy'.

    'auto' uses Numba for NumPy arrays of more than 65536 values, the xp
    lookup otherwise (CuPy arrays always stay on the device, whatever
    ``impl``); 'cupy' on a NumPy array is the NumPy lookup.  Registry family
    ``biex_forward``; formerly ``engine=``.
    """
    from evflow.backend import array_backend

    from . import _registry

    name = _registry.biex_forward.resolve(impl, x)
    if array_backend(x) == "cupy" or name == "cupy":
        return table_forward(x, p)
    x = np.asarray(x, dtype=np.float64)
    if name == "numba" and _registry.check_impl(impl) == "auto" and x.size <= 65536:
        name = "numpy"  # a launch does not pay for small arrays
    return _registry.biex_forward.get(name)(x, p)
