"""NumPy reference of the fused phenotype kernel (vectorised): the oracle of the parity tests."""

from __future__ import annotations

import numpy as np

from .phenotype_plan import (
    _D_H2,
    _FINE_HI,
    _FINE_LO,
    DIM_AFFINE,
    DIM_IDENTITY,
    FINE_EMIN,
    FINE_NBINS,
    FINE_OCT,
    FINE_SUB,
    FusedPlan,
    Partial,
    _check_events,
)


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
            keep &= ellipse_inside(dims, edims, mean, icov, d2)
    return slots, keep, dims


def ellipse_inside(dims, edims, mean, icov, d2) -> np.ndarray:
    """Events inside one of the plan's ellipses: ``(x - mean)' icov (x - mean) <= d2`` on the
    gate's display-scale dimensions ``dims[d]`` for ``d`` in ``edims`` (the kernels' order of sums)."""
    icov = np.asarray(icov, dtype=np.float64)
    diff = [dims[d] - float(mu) for d, mu in zip(edims, mean)]
    n = len(diff[0])
    q = np.zeros(n)
    for a in range(len(edims)):
        t = np.zeros(n)
        for b in range(len(edims)):
            t = t + icov[a, b] * diff[b]
        q = q + diff[a] * t
    return q <= d2


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

