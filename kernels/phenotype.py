"""Fused gating + marker-phenotype counting kernels.

One pass over a chunk of events (rows = events, columns = channels) that, per
event,

1. loads the channel values it needs ("slots"), optionally compensated
   (``comp[j] = sum_i raw[comp_cols[i]] * comp_matrix[i, j]``, summed in
   ``i`` order),
2. applies range conditions ``lo <= value < hi`` on slots (rectangle and range
   gates over monotone transforms are turned into conditions on the
   untransformed value by the caller),
3. computes transformed dimensions (identity, affine ``(x + p0) / p1`` or a
   monotone lookup table with linear interpolation) and tests polygons
   (even-odd rule) and ellipsoids (``(y - mean)' C^-1 (y - mean) <= d2``),
4. for events in the parent population, builds the marker bitmask (bit ``k``
   set when ``value_k > threshold_k``) and accumulates the histogram of
   bitmasks, the fine histogram of ``value_k - threshold_k`` of positive events
   (for medians), the float64 sum of positive values (for means), and an
   optional 2-D histogram of two dimensions (density plots).

Three implementations give identical integer results: :func:`fused_numpy`
(the reference, vectorised NumPy), :func:`fused_numba` (parallel Numba) and
:func:`fused_cupy` (a CUDA kernel from ``phenotype.cu``, compiled with
``--fmad=false`` so that every floating-point operation rounds exactly as in
NumPy).  Only exactly-rounded IEEE operations (+, -, *, /, comparisons,
``frexp``) are used per event, in the same order everywhere, so no libm
difference between backends can move an event across a gate edge.

Fine histogram (medians of positive events)
-------------------------------------------
For a positive event, ``d = value - threshold > 0`` is binned on a
logarithmic grid of :data:`FINE_SUB` bins per octave over
``[2**(FINE_EMIN-1), 2**(FINE_EMIN-1+FINE_OCT))`` (64 octaves, about
6e-8 .. 1.1e12 channel units above the threshold), plus an underflow bin 0
(``d`` below that) and an overflow bin (``d`` above it, or infinite), i.e.
``2**16 + 2`` bins.  A bin spans at most 1/1024 of its lower edge, so the
median of ``d`` (and hence of the value) is exact to 0.1 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._numba import LAUNCH_LOCK as _NUMBA_LOCK

__all__ = [
    "FINE_SUB",
    "FINE_EMIN",
    "FINE_OCT",
    "FINE_NBINS",
    "FusedPlan",
    "Partial",
    "fine_bin",
    "fine_bin_edges",
    "fine_median",
    "table_eval",
    "points_in_polygon",
    "fused_numpy",
    "fused_numba",
    "fused_cupy",
    "launch_cupy",
    "fused",
    "slot_values",
]

FINE_SUB = 1024
FINE_EMIN = -23
FINE_OCT = 64
FINE_NBINS = FINE_SUB * FINE_OCT + 2
_FINE_LO = math.ldexp(1.0, FINE_EMIN - 1)
_FINE_HI = math.ldexp(1.0, FINE_EMIN - 1 + FINE_OCT)

MAX_SLOTS = 32  # per-event registers in the CUDA kernel
MAX_DIMS = 16

# dimension kinds
DIM_IDENTITY = 0
DIM_AFFINE = 1
DIM_TABLE = 2


# ----------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------


@dataclass
class FusedPlan:
    """What the fused kernel computes, as plain arrays (see the module docstring).

    Parameters
    ----------
    n_columns : int
        Number of columns of the event chunks.
    slots : list of (kind, index)
        ``(0, column)`` for a raw column, ``(1, j)`` for output ``j`` of the
        compensation.
    comp_cols, comp_matrix : compensation inputs (detector columns) and the
        unmixing matrix ``M`` (detectors x outputs; the inverse of a square
        spillover matrix), ``comp = raw[:, comp_cols] @ M``.
    ranges : list of (slot, lo, hi)
        ``lo <= value < hi``; ``-inf``/``inf`` for open ends.
    dims : list of (slot, kind, p0, p1, table)
        Transformed dimensions: kind 0 identity, 1 affine ``(x + p0) / p1``,
        2 table: ``table`` holds increasing knots ``x_k`` of ``y_k = p0 + k * p1``.
    polygons : list of (dim_x, dim_y, vertices (v, 2))
    ellipses : list of (dims, mean, inverse covariance, distance_square)
    markers : list of (slot, threshold); positive when ``value > threshold``.
    density : None or (dim_x, dim_y, nx, ny, (lo_x, hi_x), (lo_y, hi_y))
        2-D histogram of two dimensions over half-open ranges ``[lo, hi)``.
    """

    n_columns: int
    slots: list = field(default_factory=list)
    comp_cols: list = field(default_factory=list)
    comp_matrix: np.ndarray | None = None
    ranges: list = field(default_factory=list)
    dims: list = field(default_factory=list)
    polygons: list = field(default_factory=list)
    ellipses: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    density: tuple | None = None

    def __post_init__(self):
        self.validate()
        self._packed = None

    # -- validation (programming errors of the plan builder, not user input) --
    def validate(self):
        S = len(self.slots)
        m = len(self.comp_cols)
        for kind, idx in self.slots:
            if kind == 0 and not (0 <= idx < self.n_columns):
                raise ValueError(f"slot column {idx} out of range 0..{self.n_columns - 1}")
            if kind == 1 and not (0 <= idx < self.n_comp_out):
                raise ValueError(f"slot compensation output {idx} out of range 0..{self.n_comp_out - 1}")
        for c in self.comp_cols:
            if not (0 <= c < self.n_columns):
                raise ValueError(f"compensation column {c} out of range")
        if m and (np.asarray(self.comp_matrix).ndim != 2 or np.asarray(self.comp_matrix).shape[0] != m):
            raise ValueError("comp_matrix must have len(comp_cols) rows")
        for s, _lo, _hi in self.ranges:
            if not (0 <= s < S):
                raise ValueError(f"range slot {s} out of range")
        for s, kind, _p0, _p1, table in self.dims:
            if not (0 <= s < S):
                raise ValueError(f"dimension slot {s} out of range")
            if kind == DIM_TABLE:
                t = np.asarray(table, dtype=np.float64)
                if t.ndim != 1 or t.size < 2 or not np.all(np.diff(t) > 0) or not np.all(np.isfinite(t)):
                    raise ValueError("a transform table must hold >= 2 finite, strictly increasing knots")
        D = len(self.dims)
        for dx, dy, verts in self.polygons:
            if not (0 <= dx < D and 0 <= dy < D):
                raise ValueError("polygon dimension out of range")
            if np.asarray(verts).ndim != 2 or np.asarray(verts).shape[1] != 2 or len(verts) < 3:
                raise ValueError("polygon needs (v >= 3, 2) vertices")
        for dims, mean, icov, _d2 in self.ellipses:
            k = len(dims)
            if any(not (0 <= d < D) for d in dims) or np.asarray(mean).shape != (k,) or np.asarray(icov).shape != (k, k):
                raise ValueError("ellipse dims/mean/inverse covariance do not agree")
        for s, thr in self.markers:
            if not (0 <= s < S):
                raise ValueError(f"marker slot {s} out of range")
            if not np.isfinite(thr):
                raise ValueError("marker thresholds must be finite")
        if len(self.markers) > 16:
            raise ValueError("at most 16 markers")
        if self.density is not None:
            dx, dy, nx, ny, (lox, hix), (loy, hiy) = self.density
            if not (0 <= dx < D and 0 <= dy < D) or nx < 1 or ny < 1 or not (hix > lox and hiy > loy):
                raise ValueError("invalid density specification")

    @property
    def n_comp_out(self) -> int:
        return 0 if not self.comp_cols else int(np.asarray(self.comp_matrix).shape[1])

    @property
    def n_markers(self) -> int:
        return len(self.markers)

    @property
    def n_phenotypes(self) -> int:
        return 1 << len(self.markers)

    def density_shape(self):
        return (0, 0) if self.density is None else (int(self.density[2]), int(self.density[3]))

    # -- packed form read by the Numba and CUDA kernels --
    def packed(self):
        """``(ip, dp)``: int64 and float64 arrays with the whole plan (layout in ``_HEADER``)."""
        if self._packed is None:
            self._packed = _pack(self)
        return self._packed


# header of the packed int array: counts, then offsets of each section
_H_S, _H_M, _H_R, _H_D, _H_P, _H_E, _H_K, _H_NX, _H_NY, _H_DX, _H_DY = range(11)
(
    _O_SLOT_KIND, _O_SLOT_INDEX, _O_COMP_COLS, _O_RNG_SLOT, _O_DIM_SLOT, _O_DIM_KIND, _O_TAB,
    _O_POLY_DIMS, _O_POLY_OFF, _O_ELL_OFF, _O_ELL_DIMS, _O_ELL_ICOV_OFF, _O_MK_SLOT,
    _D_COMP, _D_RNG_LO, _D_RNG_HI, _D_DIM_PARAM, _D_POLY, _D_ELL_MEAN, _D_ELL_D2, _D_MK_THR, _D_H2,
) = range(11, 33)
_H_NOUT = 33
_HEADER_LEN = 34


def _pack(plan: FusedPlan):
    ints: list[int] = [0] * _HEADER_LEN
    dbls: list[float] = []
    S, m, R, D = len(plan.slots), len(plan.comp_cols), len(plan.ranges), len(plan.dims)
    P, E, K = len(plan.polygons), len(plan.ellipses), len(plan.markers)
    nx, ny = plan.density_shape()
    ints[:11] = [S, m, R, D, P, E, K, nx, ny, 0, 0]
    ints[_H_NOUT] = plan.n_comp_out
    if plan.density is not None:
        ints[_H_DX], ints[_H_DY] = int(plan.density[0]), int(plan.density[1])

    def isec(key, values):
        ints[key] = len(ints)
        ints.extend(int(v) for v in values)

    def dsec(key, values):
        ints[key] = len(dbls)
        dbls.extend(float(v) for v in values)

    isec(_O_SLOT_KIND, [k for k, _ in plan.slots])
    isec(_O_SLOT_INDEX, [i for _, i in plan.slots])
    isec(_O_COMP_COLS, plan.comp_cols)
    isec(_O_RNG_SLOT, [r[0] for r in plan.ranges])
    isec(_O_DIM_SLOT, [d[0] for d in plan.dims])
    isec(_O_DIM_KIND, [d[1] for d in plan.dims])
    dsec(_D_COMP, np.asarray(plan.comp_matrix, dtype=np.float64).ravel() if m else [])
    dsec(_D_RNG_LO, [r[1] for r in plan.ranges])
    dsec(_D_RNG_HI, [r[2] for r in plan.ranges])
    params = []
    for d in plan.dims:
        params += [d[2], d[3]]
    dsec(_D_DIM_PARAM, params)
    # tables: ip[_O_TAB + d] = start in dp, ip[_O_TAB + D + d] = number of knots
    tab_start, tab_len = [], []
    for d in plan.dims:
        if d[1] == DIM_TABLE:
            t = np.asarray(d[4], dtype=np.float64)
            tab_start.append(len(dbls))
            tab_len.append(t.size)
            dbls.extend(t.tolist())
        else:
            tab_start.append(0)
            tab_len.append(0)
    isec(_O_TAB, tab_start + tab_len)
    isec(_O_POLY_DIMS, [v for p in plan.polygons for v in (p[0], p[1])])
    poly_off = [0]
    verts = []
    for p in plan.polygons:
        vv = np.asarray(p[2], dtype=np.float64)
        verts.extend(vv.ravel().tolist())
        poly_off.append(poly_off[-1] + len(vv))
    isec(_O_POLY_OFF, poly_off)
    dsec(_D_POLY, verts)
    ell_off, ell_dims, icov_off, means, icovs, d2s = [0], [], [0], [], [], []
    for dims, mean, icov, d2 in plan.ellipses:
        ell_dims.extend(dims)
        ell_off.append(ell_off[-1] + len(dims))
        icov_off.append(icov_off[-1] + len(dims) ** 2)
        means.extend(np.asarray(mean, dtype=np.float64).tolist())
        icovs.extend(np.asarray(icov, dtype=np.float64).ravel().tolist())
        d2s.append(float(d2))
    isec(_O_ELL_OFF, ell_off)
    isec(_O_ELL_DIMS, ell_dims)
    isec(_O_MK_SLOT, [s for s, _ in plan.markers])
    dsec(_D_ELL_MEAN, means)
    d_icov = len(dbls)
    dbls.extend(icovs)
    isec(_O_ELL_ICOV_OFF, [d_icov + o for o in icov_off])
    dsec(_D_ELL_D2, d2s)
    dsec(_D_MK_THR, [t for _, t in plan.markers])
    h2 = [0.0, 0.0, 0.0, 0.0]
    if plan.density is not None:
        _dx, _dy, nx, ny, (lox, hix), (loy, hiy) = plan.density
        h2 = [lox, nx / (hix - lox), loy, ny / (hiy - loy)]
    dsec(_D_H2, h2)
    ints.append(0)  # padding: every (possibly empty) section start is a valid index
    dbls.append(0.0)
    ip = np.asarray(ints, dtype=np.int64)
    dp = np.asarray(dbls, dtype=np.float64)
    return ip, dp


# ----------------------------------------------------------------------------
# shared helpers (NumPy, vectorised)
# ----------------------------------------------------------------------------


def fine_bin(d):
    """Fine-histogram bin of ``d = value - threshold > 0`` (vectorised, NumPy)."""
    d = np.asarray(d, dtype=np.float64)
    m, e = np.frexp(np.where((d >= _FINE_LO) & (d < _FINE_HI), d, 1.0))
    b = 1 + (e.astype(np.int64) - FINE_EMIN) * FINE_SUB + ((m * 2.0 - 1.0) * FINE_SUB).astype(np.int64)
    b = np.where(d < _FINE_LO, 0, b)
    b = np.where(d >= _FINE_HI, FINE_NBINS - 1, b)
    return b.astype(np.int64)


def fine_bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges of every fine-histogram bin, in units of ``value - threshold``."""
    q = np.arange(FINE_SUB * FINE_OCT)
    e = FINE_EMIN + q // FINE_SUB
    j = q % FINE_SUB
    base = np.ldexp(1.0, e - 1)
    lower = np.concatenate([[0.0], base * (1.0 + j / FINE_SUB), [_FINE_HI]])
    upper = np.concatenate([[_FINE_LO], base * (1.0 + (j + 1) / FINE_SUB), [np.inf]])
    return lower, upper


def fine_median(hist, threshold: float) -> float:
    """Median of the positive values from their fine histogram (exact to the bin).

    The median of ``n`` values is the mean of the order statistics of rank
    ``(n - 1) // 2`` and ``n // 2``; each is replaced by the centre of its bin.
    Returns NaN when there are no values or a middle value lies in the overflow
    bin (more than half the positive events ``>= threshold + 2**40``).
    """
    hist = np.asarray(hist, dtype=np.int64)
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    cum = np.cumsum(hist)
    lower, upper = fine_bin_edges()
    centre = np.where(np.isfinite(upper), 0.5 * (lower + upper), np.nan)
    b1 = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    b2 = int(np.searchsorted(cum, n // 2, side="right"))
    return float(threshold + 0.5 * (centre[b1] + centre[b2]))


def table_eval(x, table, y0: float, h: float):
    """Monotone lookup: ``y = y0 + h * (k + (x - x_k) / (x_{k+1} - x_k))``.

    ``table`` holds increasing knots ``x_k``; values below the first knot (or
    NaN) give ``-inf``, above the last give ``+inf``.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(table, dtype=np.float64)
    n = t.size - 1
    k = np.searchsorted(t, x, side="right") - 1
    k = np.clip(k, 0, n - 1)
    frac = (x - t[k]) / (t[k + 1] - t[k])
    y = y0 + h * (k.astype(np.float64) + frac)
    y = np.where(x > t[n], np.inf, y)
    y = np.where(~(x >= t[0]), -np.inf, y)
    return y


def points_in_polygon(px, py, vertices):
    """Even-odd point-in-polygon test (vectorised); non-finite points are outside.

    An event is inside when a ray towards ``+x`` crosses the edges an odd
    number of times; an edge counts when ``(yi > py) != (yj > py)`` and
    ``px < (xj - xi) * (py - yi) / (yj - yi) + xi``.
    """
    px = np.asarray(px, dtype=np.float64)
    py = np.asarray(py, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64)
    inside = np.zeros(px.shape, dtype=bool)
    nv = len(v)
    j = nv - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(nv):
            xi, yi = v[i]
            xj, yj = v[j]
            cross = (yi > py) != (yj > py)
            if yj != yi:
                xc = (xj - xi) * (py - yi) / (yj - yi) + xi
                inside ^= cross & (px < xc)
            j = i
    return inside & np.isfinite(px) & np.isfinite(py)


# ----------------------------------------------------------------------------
# results of one chunk
# ----------------------------------------------------------------------------


@dataclass
class Partial:
    """Per-chunk partial result; partials of chunks add up (``a + b``)."""

    n_events: int
    counts: np.ndarray  # int64 (2**k,): parent events per bitmask
    pos_hist: np.ndarray  # int64 (k, FINE_NBINS)
    pos_sum: np.ndarray  # float64 (k,)
    density: np.ndarray  # int64 (nx, ny) or (0, 0)

    def __add__(self, other: "Partial") -> "Partial":
        return Partial(
            self.n_events + other.n_events,
            self.counts + other.counts,
            self.pos_hist + other.pos_hist,
            self.pos_sum + other.pos_sum,
            self.density + other.density,
        )

    @property
    def n_parent(self) -> int:
        return int(self.counts.sum())

    @property
    def n_positive(self) -> np.ndarray:
        return self.pos_hist.sum(axis=1)

    @classmethod
    def empty(cls, plan: FusedPlan) -> "Partial":
        k = plan.n_markers
        return cls(
            0,
            np.zeros(plan.n_phenotypes, np.int64),
            np.zeros((k, FINE_NBINS), np.int64),
            np.zeros(k, np.float64),
            np.zeros(plan.density_shape(), np.int64),
        )


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------


def _check_events(events, plan):
    if events.ndim != 2 or events.shape[1] != plan.n_columns:
        raise ValueError(f"events chunk has shape {events.shape}, expected (n, {plan.n_columns})")


def slot_values(events, plan: FusedPlan, mask=None):
    """NumPy reference of steps 1-3: ``(slots (S, n) float64, parent (n,) bool, dims (D, n))``."""
    ev = np.asarray(events)
    _check_events(ev, plan)
    n = ev.shape[0]
    comp_cache = {}

    def comp(j):
        if j not in comp_cache:
            acc = np.zeros(n, dtype=np.float64)
            for q, c in enumerate(plan.comp_cols):
                acc = acc + ev[:, c].astype(np.float64) * float(plan.comp_matrix[q][j])
            comp_cache[j] = acc
        return comp_cache[j]

    slots = np.empty((len(plan.slots), n), dtype=np.float64)
    for s, (kind, idx) in enumerate(plan.slots):
        slots[s] = ev[:, idx].astype(np.float64) if kind == 0 else comp(idx)
    keep = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).copy()
    for s, lo, hi in plan.ranges:
        keep &= (slots[s] >= lo) & (slots[s] < hi)
    dims = np.empty((len(plan.dims), n), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for d, (s, kind, p0, p1, table) in enumerate(plan.dims):
            x = slots[s]
            if kind == DIM_IDENTITY:
                dims[d] = x
            elif kind == DIM_AFFINE:
                dims[d] = (x + p0) / p1
            else:
                dims[d] = table_eval(x, table, p0, p1)
        for dx, dy, verts in plan.polygons:
            keep &= points_in_polygon(dims[dx], dims[dy], verts)
        for edims, mean, icov, d2 in plan.ellipses:
            icov = np.asarray(icov, dtype=np.float64)
            diff = [dims[d] - float(mu) for d, mu in zip(edims, mean)]
            q = np.zeros(n)
            for a in range(len(edims)):
                t = np.zeros(n)
                for b in range(len(edims)):
                    t = t + icov[a, b] * diff[b]
                q = q + diff[a] * t
            keep &= q <= d2
    return slots, keep, dims


def fused_numpy(events, plan: FusedPlan, mask=None) -> Partial:
    """NumPy reference of the fused kernel on one in-memory chunk (the oracle)."""
    slots, keep, dims = slot_values(events, plan, mask)
    n = slots.shape[1] if slots.size else np.asarray(events).shape[0]
    k = plan.n_markers
    code = np.zeros(n, dtype=np.int64)
    pos_hist = np.zeros((k, FINE_NBINS), np.int64)
    pos_sum = np.zeros(k, np.float64)
    for i, (s, thr) in enumerate(plan.markers):
        pos = slots[s] > thr
        code |= pos.astype(np.int64) << i
        sel = pos & keep
        pos_hist[i] = np.bincount(fine_bin(slots[s][sel] - thr), minlength=FINE_NBINS)
        pos_sum[i] = slots[s][sel].sum()
    counts = np.bincount(code[keep], minlength=plan.n_phenotypes).astype(np.int64)
    density = np.zeros(plan.density_shape(), np.int64)
    if plan.density is not None:
        dx, dy, nx, ny, _rx, _ry = plan.density
        _ip, dp = plan.packed()
        lox, sx, loy, sy = dp[_ip[_D_H2] : _ip[_D_H2] + 4]
        with np.errstate(invalid="ignore"):
            fx = (dims[dx][keep] - lox) * sx
            fy = (dims[dy][keep] - loy) * sy
            ok = (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny)
        ix = fx[ok].astype(np.int64)
        iy = fy[ok].astype(np.int64)
        density = np.bincount(ix * ny + iy, minlength=nx * ny).reshape(nx, ny).astype(np.int64)
    return Partial(int(n), counts, pos_hist, pos_sum, density)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

try:  # Numba is a dependency of evflow; the NumPy and CuPy paths work without it
    import numba
    from numba import njit as _njit
    from numba import prange as _prange
except ImportError:  # pragma: no cover
    numba = None
    _prange = range

    def _njit(*args, **kwargs):
        return lambda f: f



@_njit(cache=True, inline="always")
def _nb_table_eval(x, dp, start, nk, y0, h):
    n = nk - 1
    if not (x >= dp[start]):
        return -np.inf
    if x > dp[start + n]:
        return np.inf
    lo = 0
    hi = n
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if dp[start + mid] <= x:
            lo = mid
        else:
            hi = mid
    xk = dp[start + lo]
    frac = (x - xk) / (dp[start + lo + 1] - xk)
    return y0 + h * (float(lo) + frac)


@_njit(cache=True, inline="always")
def _nb_fine_bin(d):
    if d < _FINE_LO:
        return 0
    if d >= _FINE_HI:
        return FINE_NBINS - 1
    m, e = math.frexp(d)
    return 1 + (e - FINE_EMIN) * FINE_SUB + int((m * 2.0 - 1.0) * FINE_SUB)


@_njit(cache=True, inline="always")
def _nb_event(ev, i, v, y, slot_kind, slot_index, comp_cols, comp, nout, rng_slot, rng_lo, rng_hi,
              dim_slot, dim_kind, dim_par, tab_start, tab_len, dp, poly_dims, poly_off, poly_xy,
              ell_off, ell_dims, ell_icov_off, ell_mean, ell_d2):
    """Steps 1-3 for event ``i``: True when it is in the parent population.

    The plan sections arrive as separate arrays (views of the packed plan) so
    that their addresses stay in registers across the event loop.
    """
    for s in range(slot_kind.size):
        idx = slot_index[s]
        if slot_kind[s] == 0:
            v[s] = float(ev[i, idx])
        else:
            acc = 0.0
            for q in range(comp_cols.size):
                acc = acc + float(ev[i, comp_cols[q]]) * comp[q * nout + idx]
            v[s] = acc
    for r in range(rng_slot.size):
        x = v[rng_slot[r]]
        if not (x >= rng_lo[r] and x < rng_hi[r]):
            return False
    D = dim_slot.size
    for d in range(D):
        x = v[dim_slot[d]]
        kind = dim_kind[d]
        if kind == 0:
            y[d] = x
        elif kind == 1:
            y[d] = (x + dim_par[2 * d]) / dim_par[2 * d + 1]
        else:
            y[d] = _nb_table_eval(x, dp, tab_start[d], tab_len[d], dim_par[2 * d], dim_par[2 * d + 1])
    for p in range(poly_off.size - 1):
        px = y[poly_dims[2 * p]]
        py = y[poly_dims[2 * p + 1]]
        if not (math.isfinite(px) and math.isfinite(py)):
            return False
        v0 = poly_off[p]
        nv = poly_off[p + 1] - v0
        inside = False
        j = nv - 1
        for k in range(nv):
            xi = poly_xy[2 * (v0 + k)]
            yi = poly_xy[2 * (v0 + k) + 1]
            xj = poly_xy[2 * (v0 + j)]
            yj = poly_xy[2 * (v0 + j) + 1]
            if (yi > py) != (yj > py):
                xc = (xj - xi) * (py - yi) / (yj - yi) + xi
                if px < xc:
                    inside = not inside
            j = k
        if not inside:
            return False
    for e in range(ell_off.size - 1):
        a0 = ell_off[e]
        ne = ell_off[e + 1] - a0
        ic = ell_icov_off[e]
        q = 0.0
        for a in range(ne):
            t = 0.0
            for b in range(ne):
                t = t + dp[ic + a * ne + b] * (y[ell_dims[a0 + b]] - ell_mean[a0 + b])
            q = q + (y[ell_dims[a0 + a]] - ell_mean[a0 + a]) * t
        if not (q <= ell_d2[e]):
            return False
    return True


#: mantissa bits (2**EDGE_BITS sub-buckets per octave) and octaves of the edge-lookup index
#: (see :func:`edge_index`)
EDGE_BITS = 5
EDGE_OCTAVES = 48


@_njit(cache=True, inline="always")
def _nb_edge_code(x, fbuf, ibuf, base, q):
    """Monotone bucket code of a finite ``x``: log2 buckets of ``|x|`` (exponent and the top
    :data:`EDGE_BITS` mantissa bits of the float64), mirrored at 0; ``fbuf``/``ibuf`` are a
    float64/int64 view pair for the bit cast."""
    fbuf[0] = x
    a = ibuf[0] & 0x7FFFFFFFFFFFFFFF
    if a == 0:
        return q
    b = (a >> (52 - EDGE_BITS)) - base
    if b < 0:
        b = 0
    elif b > q - 1:
        b = q - 1
    if x > 0.0:
        return q + 1 + b
    return q - 1 - b


@_njit(cache=True, inline="always")
def _nb_edge_bin(x, edges, nb, lut, fbuf, ibuf, base, q, steps):
    """Bin ``j`` with ``edges[j] <= x < edges[j + 1]``, or -1 outside ``[edges[0], edges[nb])`` (and NaN).

    The start comes from the bucket index ``lut`` (edges below the bucket of
    ``x``), then exactly ``steps`` branch-free forward steps (``steps`` from
    :func:`edge_steps`: the most edges any bucket can hold above its start),
    so no data-dependent branch beyond the range test is mispredicted.
    """
    if not (x >= edges[0] and x < edges[nb]):
        return -1
    j = lut[_nb_edge_code(x, fbuf, ibuf, base, q)]
    for _ in range(steps):
        j += edges[j + 1] <= x  # j stops at the bin: edges[bin + 1] > x, and bin + 1 <= nb
    return j


@_njit(cache=True, parallel=True, nogil=True)
def _nb_fused(ev, mask, has_mask, ip, dp, T, nx, ny, edge_mode, ex, ey, lx, ly, ix, iy, sx, sy):
    n = ev.shape[0]
    S = ip[_H_S]
    M = ip[_H_M]
    R = ip[_H_R]
    D = ip[_H_D]
    P = ip[_H_P]
    E = ip[_H_E]
    K = ip[_H_K]
    nout = ip[_H_NOUT]
    # plan sections as views
    slot_kind = ip[ip[_O_SLOT_KIND] : ip[_O_SLOT_KIND] + S]
    slot_index = ip[ip[_O_SLOT_INDEX] : ip[_O_SLOT_INDEX] + S]
    comp_cols = ip[ip[_O_COMP_COLS] : ip[_O_COMP_COLS] + M]
    comp = dp[ip[_D_COMP] : ip[_D_COMP] + M * nout]
    rng_slot = ip[ip[_O_RNG_SLOT] : ip[_O_RNG_SLOT] + R]
    rng_lo = dp[ip[_D_RNG_LO] : ip[_D_RNG_LO] + R]
    rng_hi = dp[ip[_D_RNG_HI] : ip[_D_RNG_HI] + R]
    dim_slot = ip[ip[_O_DIM_SLOT] : ip[_O_DIM_SLOT] + D]
    dim_kind = ip[ip[_O_DIM_KIND] : ip[_O_DIM_KIND] + D]
    dim_par = dp[ip[_D_DIM_PARAM] : ip[_D_DIM_PARAM] + 2 * D]
    tab_start = ip[ip[_O_TAB] : ip[_O_TAB] + D]
    tab_len = ip[ip[_O_TAB] + D : ip[_O_TAB] + 2 * D]
    poly_dims = ip[ip[_O_POLY_DIMS] : ip[_O_POLY_DIMS] + 2 * P]
    poly_off = ip[ip[_O_POLY_OFF] : ip[_O_POLY_OFF] + P + 1]
    poly_xy = dp[ip[_D_POLY] : ip[_D_POLY] + 2 * poly_off[P]]
    ell_off = ip[ip[_O_ELL_OFF] : ip[_O_ELL_OFF] + E + 1]
    ell_dims = ip[ip[_O_ELL_DIMS] : ip[_O_ELL_DIMS] + ell_off[E]]
    ell_icov_off = ip[ip[_O_ELL_ICOV_OFF] : ip[_O_ELL_ICOV_OFF] + E + 1]
    ell_mean = dp[ip[_D_ELL_MEAN] : ip[_D_ELL_MEAN] + ell_off[E]]
    ell_d2 = dp[ip[_D_ELL_D2] : ip[_D_ELL_D2] + E]
    mk_slot = ip[ip[_O_MK_SLOT] : ip[_O_MK_SLOT] + K]
    mk_thr = dp[ip[_D_MK_THR] : ip[_D_MK_THR] + K]
    d_h2 = ip[_D_H2]
    h2_lox = dp[d_h2]
    h2_sx = dp[d_h2 + 1]
    h2_loy = dp[d_h2 + 2]
    h2_sy = dp[d_h2 + 3]
    dx = ip[_H_DX]
    dy = ip[_H_DY]
    nph = 1 << K
    has_h2 = ip[_H_NX] > 0
    counts_t = np.zeros((T, nph), np.int64)
    ph_t = np.zeros((T, K, FINE_NBINS), np.int64)
    ps_t = np.zeros((T, K), np.float64)
    h2_t = np.zeros((T, nx, ny), np.int64)
    for t in _prange(T):
        # thread-local accumulators (no false sharing), copied out at the end
        counts = np.zeros(nph, np.int64)
        ph = np.zeros((K, FINE_NBINS), np.int64)
        ps = np.zeros(max(K, 1), np.float64)
        h2 = np.zeros((nx, ny), np.int64) if has_h2 else np.zeros((1, 1), np.int64)
        v = np.empty(max(S, 1), np.float64)
        y = np.empty(max(D, 1), np.float64)
        fbuf = np.empty(1, np.float64)
        ibuf = fbuf.view(np.int64)
        start = n * t // T
        stop = n * (t + 1) // T
        for i in range(start, stop):
            if has_mask and not mask[i]:
                continue
            if not _nb_event(ev, i, v, y, slot_kind, slot_index, comp_cols, comp, nout, rng_slot, rng_lo,
                             rng_hi, dim_slot, dim_kind, dim_par, tab_start, tab_len, dp, poly_dims, poly_off,
                             poly_xy, ell_off, ell_dims, ell_icov_off, ell_mean, ell_d2):
                continue
            code = 0
            for k in range(K):
                x = v[mk_slot[k]]
                thr = mk_thr[k]
                if x > thr:
                    code |= 1 << k
                    ps[k] += x
                    ph[k, _nb_fine_bin(x - thr)] += 1
            counts[code] += 1
            if has_h2:
                if edge_mode:
                    # bins from the exact data-space edges of the display bins (see density_edges)
                    jx = _nb_edge_bin(v[dim_slot[dx]], ex, nx, lx, fbuf, ibuf, ix[0], ix[1], sx)
                    jy = _nb_edge_bin(v[dim_slot[dy]], ey, ny, ly, fbuf, ibuf, iy[0], iy[1], sy)
                    if jx >= 0 and jy >= 0:
                        h2[jx, jy] += 1
                else:
                    fx = (y[dx] - h2_lox) * h2_sx
                    fy = (y[dy] - h2_loy) * h2_sy
                    if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < ny:
                        h2[int(fx), int(fy)] += 1
        counts_t[t] = counts
        ph_t[t] = ph
        for k in range(K):
            ps_t[t, k] = ps[k]
        if has_h2:
            h2_t[t] = h2
    counts = counts_t.sum(axis=0)
    pos_hist = ph_t.sum(axis=0)
    pos_sum = np.zeros(K, np.float64)
    for t in range(T):
        for k in range(K):
            pos_sum[k] += ps_t[t, k]
    return counts, pos_hist, pos_sum, h2_t.sum(axis=0)




@_njit(cache=True, parallel=True, nogil=True)
def _nb_density_only(ev, cx, cy, T, nx, ny, ex, ey, lx, ly, ix, iy, sx, sy):
    """Edge-mode 2-D histogram of columns ``cx``, ``cy`` of every event (no gate, mask or marker):
    the same bins as :func:`_nb_fused`, with int32 per-thread histograms (half the cache footprint;
    a chunk has fewer than 2**31 rows)."""
    n = ev.shape[0]
    h_t = np.zeros((T, nx, ny), np.int32)
    for t in _prange(T):
        h = np.zeros((nx, ny), np.int32)
        fbuf = np.empty(1, np.float64)
        ibuf = fbuf.view(np.int64)
        for i in range(n * t // T, n * (t + 1) // T):
            jx = _nb_edge_bin(float(ev[i, cx]), ex, nx, lx, fbuf, ibuf, ix[0], ix[1], sx)
            jy = _nb_edge_bin(float(ev[i, cy]), ey, ny, ly, fbuf, ibuf, iy[0], iy[1], sy)
            if jx >= 0 and jy >= 0:
                h[jx, jy] += 1
        h_t[t] = h
    out = np.zeros((nx, ny), np.int64)
    for t in range(T):
        for a in range(nx):
            for b in range(ny):
                out[a, b] += h_t[t, a, b]
    return out


def _ordered_keys(x):
    """float64 -> int64 keys in the same order (-0.0 and 0.0 share key 0)."""
    i = np.asarray(x, dtype=np.float64).view(np.int64)
    return np.where(i < 0, -(i & np.int64(0x7FFFFFFFFFFFFFFF)), i)


def _from_keys(k):
    k = np.asarray(k, dtype=np.int64)
    bits = np.where(k < 0, (-k) | np.int64(-0x8000000000000000), k)
    return bits.view(np.float64)


def _display_bin_position(x, plan: FusedPlan, d, lo, scale):
    """``(T_d(x) - lo) * scale`` exactly as :func:`fused_numpy` computes it (NumPy reference arithmetic)."""
    _s, kind, p0, p1, table = plan.dims[d]
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kind == DIM_IDENTITY:
            y = x
        elif kind == DIM_AFFINE:
            y = (x + p0) / p1
        else:
            y = table_eval(x, table, p0, p1)
        return (y - lo) * scale


def density_edges(plan: FusedPlan, d, lo, scale, nb):
    """Data-space edges ``t_0 < ... <= t_nb`` (float64) of the display bins of dimension ``d``.

    ``t_j`` is the smallest float64 ``x`` whose display position
    ``(T(x) - lo) * scale`` is ``>= j`` (found by bisection over the ordered
    float64 values), so ``t_j <= x < t_{j+1}`` selects exactly the events that
    the reference puts in bin ``j`` (``T`` is monotone and every step of its
    evaluation rounds monotonically).  Binning by these edges needs no
    transform per event.
    """
    j = np.arange(nb + 1, dtype=np.float64)
    lo_k = np.full(nb + 1, _ordered_keys(-np.inf))  # predicate false here
    hi_k = np.full(nb + 1, _ordered_keys(np.inf))  # predicate true here
    while True:
        open_ = hi_k > lo_k + 1  # (hi - lo overflows int64 on the first steps)
        if not open_.any():
            break
        mid = (lo_k >> 1) + (hi_k >> 1) + (lo_k & hi_k & 1)
        ok = _display_bin_position(_from_keys(mid), plan, d, lo, scale) >= j
        hi_k = np.where(open_ & ok, mid, hi_k)
        lo_k = np.where(open_ & ~ok, mid, lo_k)
    return np.ascontiguousarray(_from_keys(hi_k))


def _edge_codes(x, base, q):
    """NumPy twin of ``_nb_edge_code`` (vectorised; +inf gives ``2 q + 1``, above every code)."""
    x = np.asarray(x, dtype=np.float64)
    fin = np.isfinite(x)
    a = np.where(fin, x, 0.0).view(np.int64) & np.int64(0x7FFFFFFFFFFFFFFF)
    b = np.clip((a >> (52 - EDGE_BITS)) - base, 0, q - 1)
    code = np.where(x > 0, q + 1 + b, np.where(x < 0, q - 1 - b, q))
    return np.where(fin, code, np.where(x > 0, 2 * q + 1, -1)).astype(np.int64)


def edge_index(edges):
    """``(lut, (base, q))``: for bucket code ``c``, ``lut[c]`` = (edges in lower buckets) - 1, at least 0.

    Codes are log2 buckets of ``|x|`` (:data:`EDGE_BITS` mantissa bits, the
    :data:`EDGE_OCTAVES` octaves below the largest edge; smaller values share
    the lowest bucket), mirrored at zero.  Every edge in a bucket below
    ``x``'s is below ``x`` (the code is monotone), so the search for ``x``'s
    bin starts at ``lut[code(x)]`` and scans forward over the few edges in
    its own bucket.
    """
    e = np.asarray(edges, dtype=np.float64)
    fin = np.abs(e[np.isfinite(e)])
    top = int(fin.max().view(np.int64) >> 52) if fin.size else 1023  # biased exponent of the largest edge
    lowest = max(top - EDGE_OCTAVES + 1, 1)
    base = lowest << EDGE_BITS
    q = (top - lowest + 1) << EDGE_BITS
    codes = _edge_codes(e, base, q)
    lut = np.maximum(np.searchsorted(codes, np.arange(2 * q + 1), side="left") - 1, 0)
    return np.minimum(lut, e.size - 2).astype(np.int64), np.array([base, q], np.int64)


def edge_steps(edges, lut, index) -> int:
    """Forward steps that :func:`_nb_edge_bin` needs from ``lut[code(x)]`` to reach the bin of any
    ``x`` in ``[edges[0], edges[-1])``: the most edges (bins) any bucket code can hold above its start."""
    e = np.asarray(edges, dtype=np.float64)
    base, q = (int(v) for v in index[:2])
    codes = _edge_codes(e, base, q)
    c = np.arange(2 * q + 1)
    # the largest bin of an x with code c: edges at or below x have codes <= c (codes are monotone)
    top = np.minimum(np.searchsorted(codes, c, side="right") - 1, e.size - 2)
    return int(max(0, int((top - np.asarray(lut)).max())))


def _edge_plan(plan: FusedPlan):
    """``(ip, ex, ey)`` for edge-mode density binning, or None when the reference path is as fast.

    Used when a density axis is a lookup-table transform (logicle, hyperlog,
    log, asinh): the per-event table search is replaced by a search over the
    ``n + 1`` bin edges, and density-only dimensions are not evaluated.
    """
    cached = getattr(plan, "_edge_cache", None)
    if cached is not None:
        return cached[0]
    out = None
    if plan.density is not None:
        dx, dy, nx, ny, _rx, _ry = plan.density
        if DIM_TABLE in (plan.dims[dx][1], plan.dims[dy][1]):
            ip, dp = plan.packed()
            lox, sx, loy, sy = (float(v) for v in dp[ip[_D_H2] : ip[_D_H2] + 4])
            ex = density_edges(plan, dx, lox, sx, nx)
            ey = density_edges(plan, dy, loy, sy, ny)
            used = {d for p in plan.polygons for d in p[:2]} | {d for e in plan.ellipses for d in e[0]}
            ip = ip.copy()
            for d in {dx, dy} - used:  # evaluated for the histogram only: skip the transform
                ip[ip[_O_DIM_KIND] + d] = DIM_IDENTITY
            lx, ix = edge_index(ex)
            ly, iy = edge_index(ey)
            out = (ip, ex, ey, lx, ix, ly, iy, edge_steps(ex, lx, ix), edge_steps(ey, ly, iy))
    plan._edge_cache = (out,)
    return out


def _density_only_columns(plan: FusedPlan):
    """``(x column, y column)`` when ``plan`` is only a density plot of two raw columns (no ranges, polygons,
    ellipses, markers or compensation on its axes), else None."""
    if plan.density is None or plan.ranges or plan.polygons or plan.ellipses or plan.markers:
        return None
    dx, dy = plan.density[:2]
    cols = []
    for d in (dx, dy):
        kind, index = plan.slots[plan.dims[d][0]]
        if kind != 0:
            return None
        cols.append(int(index))
    return cols[0], cols[1]


def _get_numba_kernel():
    return _nb_fused


def fused_numba(events, plan: FusedPlan, mask=None, n_threads: int | None = None) -> Partial:
    """Parallel Numba version of the fused kernel (same results as :func:`fused_numpy`)."""
    if numba is None:  # pragma: no cover
        from evflow.errors import BackendError

        raise BackendError("the fast CPU kernel needs Numba (pip install numba); use kernel='reference'")

    ev = np.asarray(events)
    _check_events(ev, plan)
    # two compiled specialisations only (float32 / float64, C order); other
    # chunks are converted (exact: the kernel reads every value as float64)
    if ev.dtype.kind == "f" and ev.dtype.itemsize == 4:
        ev = np.ascontiguousarray(ev, dtype=np.float32)
    else:
        ev = np.ascontiguousarray(ev, dtype=np.float64)
    has_mask = mask is not None
    m = np.asarray(mask, dtype=np.bool_) if has_mask else np.zeros(1, dtype=np.bool_)
    if has_mask and m.shape != (ev.shape[0],):
        raise ValueError(f"mask has shape {m.shape}, expected ({ev.shape[0]},)")
    ip, dp = plan.packed()
    edge = _edge_plan(plan)
    if edge is not None:
        ip, ex, ey, lx, ix, ly, iy, sx, sy = edge
    else:
        ex = ey = np.zeros(1, np.float64)
        lx = ly = np.zeros(1, np.int64)
        ix = iy = np.ones(3, np.int64)
        sx = sy = 0
    T = int(n_threads or numba.get_num_threads())
    T = max(1, min(T, max(1, ev.shape[0] // 4096)))
    nx, ny = plan.density_shape()
    cols = _density_only_columns(plan) if edge is not None and not has_mask and ev.shape[0] < 2**31 else None
    if cols is not None:  # a plain density plot of all events: no per-event gate/marker machinery
        with _NUMBA_LOCK:
            density = _nb_density_only(ev, cols[0], cols[1], T, nx, ny, ex, ey, lx, ly, ix, iy, sx, sy)
        n = int(ev.shape[0])
        return Partial(n, np.array([n], np.int64), np.zeros((0, FINE_NBINS), np.int64), np.zeros(0, np.float64),
                       density)
    # one parallel launch at a time: Numba's 'workqueue' threading layer aborts
    # when parallel functions are entered from several threads (dask workers)
    # at once; each launch already uses all of Numba's threads.
    with _NUMBA_LOCK:
        counts, pos_hist, pos_sum, density = _get_numba_kernel()(ev, m, has_mask, ip, dp, T, max(nx, 1), max(ny, 1),
                                                                 edge is not None, ex, ey, lx, ly, ix, iy, sx, sy)
    if plan.density is None:
        density = np.zeros((0, 0), np.int64)
    return Partial(int(ev.shape[0]), counts, pos_hist, pos_sum, density)


# ----------------------------------------------------------------------------
# CuPy
# ----------------------------------------------------------------------------

_CUDA_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint64): "unsigned long long",
}


def _cuda_function(dtype):
    from ._cuda import load_module

    name = f"fused_phenotype<{_CUDA_TYPES[np.dtype(dtype)]}>"  # one instantiation per dtype, compiled on first use
    mod = load_module("phenotype.cu", options=("--fmad=false",), name_expressions=(name,))
    return mod.get_function(name)


_device_plans: dict = {}


def _device_plan(plan: FusedPlan):
    import cupy

    key = (id(plan), cupy.cuda.runtime.getDevice())
    got = _device_plans.get(key)
    if got is None or got[0] is not plan:
        ip, dp = plan.packed()
        got = (plan, cupy.asarray(ip), cupy.asarray(dp))
        _device_plans[key] = got
    return got[1], got[2]


def launch_cupy(events, plan: FusedPlan, mask=None):
    """Launch the CUDA kernel on a CuPy chunk; returns the device arrays (asynchronously).

    ``(counts uint64 (2**k,), pos_hist uint32 (max(k,1), FINE_NBINS), pos_sum
    float64 (max(k,1),), density uint32 (max(nx*ny,1),))``.
    """
    import cupy

    ev = cupy.asarray(events)
    _check_events(ev, plan)
    if ev.dtype not in _CUDA_TYPES:
        ev = ev.astype(cupy.float64)
    n = int(ev.shape[0])
    if n >= 2**31:
        raise ValueError("a chunk must hold fewer than 2**31 events; rechunk the events")
    if len(plan.slots) > MAX_SLOTS or len(plan.dims) > MAX_DIMS:
        raise ValueError(f"the CUDA kernel handles at most {MAX_SLOTS} channels and {MAX_DIMS} dimensions")
    item = ev.dtype.itemsize
    rs, cs = ev.strides[0] // item, ev.strides[1] // item
    if mask is not None:
        pm = cupy.asarray(mask, dtype=cupy.bool_).view(cupy.uint8)
        if pm.shape != (n,):
            raise ValueError(f"mask has shape {pm.shape}, expected ({n},)")
        has_mask = 1
    else:
        pm = cupy.zeros(1, dtype=cupy.uint8)
        has_mask = 0
    ip, dp = _device_plan(plan)
    k = plan.n_markers
    nx, ny = plan.density_shape()
    counts = cupy.zeros(plan.n_phenotypes, dtype=cupy.uint64)
    pos_hist = cupy.zeros((max(k, 1), FINE_NBINS), dtype=cupy.uint32)
    pos_sum = cupy.zeros(max(k, 1), dtype=cupy.float64)
    density = cupy.zeros(max(nx * ny, 1), dtype=cupy.uint32)
    if n == 0:
        return counts, pos_hist, pos_sum, density
    fn = _cuda_function(ev.dtype)
    block = 256
    n_sm = cupy.cuda.Device().attributes["MultiProcessorCount"]
    grid = max(1, min((n + block - 1) // block, n_sm * 8))
    nph = plan.n_phenotypes
    shared = (((nph * 4 + 7) // 8) * 8 if nph <= 4096 else 0) + 8 * max(k, 1)
    fn(
        (grid,),
        (block,),
        (ev, np.int64(n), np.int64(rs), np.int64(cs), pm, np.int32(has_mask), ip, dp,
         counts, pos_hist, pos_sum, density),
        shared_mem=shared,
    )
    return counts, pos_hist, pos_sum, density


def fused_cupy(events, plan: FusedPlan, mask=None) -> Partial:
    """CUDA version of the fused kernel on a CuPy chunk (``phenotype.cu``)."""
    counts, pos_hist, pos_sum, density = launch_cupy(events, plan, mask)
    k = plan.n_markers
    nx, ny = plan.density_shape()
    return Partial(
        int(events.shape[0]),
        counts.get().astype(np.int64),
        pos_hist.get().astype(np.int64)[:k],
        pos_sum.get()[:k],
        density.get().astype(np.int64)[: nx * ny].reshape(nx, ny),
    )


# ----------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------


def fused(events, plan: FusedPlan, mask=None, impl: str = "auto", n_threads: int | None = None) -> Partial:
    """Run the fused kernel on one in-memory chunk.

    ``impl``: 'numpy' (reference), 'numba', 'cupy', or 'auto' (CuPy for a CuPy
    chunk, Numba otherwise).  ``n_threads``: Numba threads for this chunk
    (default: all).
    """
    if impl == "auto":
        impl = "cupy" if type(events).__module__.split(".")[0] == "cupy" else ("numba" if numba is not None else "numpy")
    if impl == "numpy":
        if type(events).__module__.split(".")[0] == "cupy":
            events = events.get()
            mask = None if mask is None else mask.get() if hasattr(mask, "get") else mask
        return fused_numpy(events, plan, mask)
    if impl == "numba":
        if type(events).__module__.split(".")[0] == "cupy":
            events = events.get()
            mask = None if mask is None else mask.get() if hasattr(mask, "get") else mask
        return fused_numba(events, plan, mask, n_threads=n_threads)
    if impl == "cupy":
        return fused_cupy(events, plan, mask)
    raise ValueError(f"unknown kernel implementation {impl!r}; expected auto, numpy, numba or cupy")
