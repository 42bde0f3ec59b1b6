"""Parallel Numba version of the fused phenotype kernel (same results as the NumPy reference).

Besides the general kernel (:func:`_nb_fused`), a density plot on
lookup-table axes is binned by exact data-space bin edges (:func:`density_edges`,
:func:`edge_index`; no transform per event), and a plain density plot of two
raw columns by :func:`_nb_density_only`.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import LAUNCH_LOCK as _NUMBA_LOCK, njit as _njit, numba, prange as _prange
from .phenotype_numpy import table_eval
from .phenotype_plan import (  # noqa: F401
    _D_COMP,
    _D_DIM_PARAM,
    _D_ELL_D2,
    _D_ELL_MEAN,
    _D_H2,
    _D_MK_THR,
    _D_POLY,
    _D_RNG_HI,
    _D_RNG_LO,
    _FINE_HI,
    _FINE_LO,
    _H_D,
    _H_DX,
    _H_DY,
    _H_E,
    _H_K,
    _H_M,
    _H_NOUT,
    _H_NX,
    _H_NY,
    _H_P,
    _H_R,
    _H_S,
    _O_COMP_COLS,
    _O_DIM_KIND,
    _O_DIM_SLOT,
    _O_ELL_DIMS,
    _O_ELL_ICOV_OFF,
    _O_ELL_OFF,
    _O_MK_SLOT,
    _O_POLY_DIMS,
    _O_POLY_OFF,
    _O_RNG_SLOT,
    _O_SLOT_INDEX,
    _O_SLOT_KIND,
    _O_TAB,
    DIM_AFFINE,
    DIM_IDENTITY,
    DIM_TABLE,
    FINE_EMIN,
    FINE_NBINS,
    FINE_SUB,
    FusedPlan,
    Partial,
    _check_events,
)


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

        raise BackendError("the fast CPU kernel needs Numba (pip install numba); use impl='numpy'")

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

