"""Change points of many photobleaching traces at once (binary segmentation; PELT, the exact optimum).

Model of one trace ``x[0..n)``: piecewise-constant mean ``mu`` with Gaussian
noise whose variance follows the photon budget,

    var(mu) = noise_var + noise_gain * max(mu, 0)

(``noise_var``: camera and background noise; ``noise_gain``: counts per
photon times the excess-noise factor, so shot noise grows with the number of
fluorophores still on).  The cost of a segment ``[s, t)`` is its negative
log-likelihood times two with the segment mean plugged in,

    C(s, t) = SSE(s, t) / var(mean) + (t - s) * log(var(mean)),

and the segmentation minimises ``sum C + penalty * n_changepoints`` over all
segmentations whose segments are at least ``min_size`` frames long (optimal
partitioning; candidates are pruned as in PELT, Killick et al. 2012, with the
margin ``K = penalty``, which keeps more candidates than K = 0 and so never
prunes the optimum for this cost in practice).

- :func:`changepoints_numpy`: the reference (one trace per loop iteration,
  vectorised over candidates); the oracle of the parity tests.
- :func:`changepoints_numba`: the fast CPU version, one ``prange`` over
  traces, the same arithmetic in the same order.
- :func:`binseg_numpy` / :func:`binseg_numba` / :func:`binseg_cupy`: binary
  segmentation under the same cost and penalty (split the segment whose best
  split gains most while the gain exceeds the penalty): O(frames x depth)
  instead of PELT's O(frames^2) on traces with few steps, the default of
  :func:`evflow.count_bleaching_steps`.  The CUDA version (``steps.cu``,
  ``steps_cupy.py``) runs one block per trace, all traces in one launch; its
  equality contract is in :mod:`evflow.kernels.steps_cupy`.

All return ``(cps, n_cp)``: ``cps[i, :n_cp[i]]`` are the first frames of
the new segments of trace ``i`` (ascending); ``n_cp[i] == -1`` when a trace
has more than ``max_cp`` change points (its row is then not meaningful).
"""

from __future__ import annotations

import math

import numpy as np

from evflow.errors import ImplementationError

from ._numba import HAVE_NUMBA, LAUNCH_LOCK, njit, prange as _prange
from .steps_cupy import binseg_cupy

__all__ = ["changepoints_numpy", "changepoints_numba", "binseg_numpy", "binseg_numba", "binseg_cupy", "changepoints"]


def _njit(**kwargs):
    return njit(cache=True, error_model="numpy", **kwargs)


_VAR_FLOOR = 1e-12
_PRUNE_K = 0.0  # PELT pruning margin K (0: the standard rule)


def _prepare(traces, noise_var, noise_gain):
    x = np.ascontiguousarray(traces, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"traces must be 2-D (traces, frames), got shape {x.shape}")
    n_tr = x.shape[0]
    a = np.ascontiguousarray(np.broadcast_to(np.asarray(noise_var, dtype=np.float64), (n_tr,)))
    g = np.ascontiguousarray(np.broadcast_to(np.asarray(noise_gain, dtype=np.float64), (n_tr,)))
    return x, a, g


def _launch(batch, traces, noise_var, noise_gain, penalty, min_size, max_cp):
    """Run a batched Numba kernel ``batch(x, a, g, pen, ms, max_cp, cps, n_cp)`` over every trace."""
    x, a, g = _prepare(traces, noise_var, noise_gain)
    n_tr = x.shape[0]
    cps = np.full((n_tr, max_cp), -1, dtype=np.int64)
    n_cp = np.zeros(n_tr, dtype=np.int64)
    if n_tr:
        with LAUNCH_LOCK:
            batch(x, a, g, float(penalty), int(min_size), int(max_cp), cps, n_cp)
    return cps, n_cp


def _backtrack(last, n):
    out = []
    t = n
    while t > 0:
        s = last[t]
        if s > 0:
            out.append(s)
        t = s
    return out[::-1]


def changepoints_numpy(traces, noise_var, noise_gain, penalty, min_size=2, max_cp=64):
    """Reference implementation; ``traces`` is (traces, frames)."""
    x, a, g = _prepare(traces, noise_var, noise_gain)
    n_tr, n = x.shape
    cps = np.full((n_tr, max_cp), -1, dtype=np.int64)
    n_cp = np.zeros(n_tr, dtype=np.int64)
    pen = float(penalty)
    ms = int(min_size)
    for i in range(n_tr):
        c = np.cumsum(x[i])[-1] / n  # centre (sequential sum, as the Numba loop): accurate sums of squares
        d = x[i] - c
        s1 = np.zeros(n + 1)
        s2 = np.zeros(n + 1)
        np.cumsum(d, out=s1[1:])
        np.cumsum(d * d, out=s2[1:])
        f = np.zeros(n + 1)
        f[0] = -pen
        last = np.zeros(n + 1, dtype=np.int64)
        cand = np.zeros(0, dtype=np.int64)
        cand = np.append(cand, 0)
        for t in range(ms, n + 1):
            if t - ms >= ms:
                cand = np.append(cand, t - ms)
            ln = (t - cand).astype(np.float64)
            sm = s1[t] - s1[cand]
            m = sm / ln
            sse = np.maximum(s2[t] - s2[cand] - sm * m, 0.0)
            v = np.maximum(a[i] + g[i] * np.maximum(m + c, 0.0), _VAR_FLOOR)
            tot = f[cand] + (sse / v + ln * np.log(v)) + pen
            k = int(np.argmin(tot))
            f[t] = tot[k]
            last[t] = cand[k]
            cand = cand[tot - pen <= f[t] + _PRUNE_K]
        found = _backtrack(last, n)
        if len(found) > max_cp:
            n_cp[i] = -1
        else:
            n_cp[i] = len(found)
            cps[i, : len(found)] = found
    return cps, n_cp


@_njit(inline="always")
def _centred_sums1(x, s1, s2):
    """Prefix sums of ``x - mean(x)`` and of its square into ``s1``/``s2`` (n + 1 each); returns the mean."""
    n = x.shape[0]
    c = 0.0
    for j in range(n):
        c += x[j]
    c = c / n
    s1[0] = 0.0
    s2[0] = 0.0
    acc1 = 0.0
    acc2 = 0.0
    for j in range(n):
        d = x[j] - c
        acc1 += d
        acc2 += d * d
        s1[j + 1] = acc1
        s2[j + 1] = acc2
    return c


@_njit(inline="always")
def _cost1(s1, s2, c, a, g, s, t):
    ln = float(t - s)
    sm = s1[t] - s1[s]
    m = sm / ln
    sse = s2[t] - s2[s] - sm * m
    if sse < 0.0:
        sse = 0.0
    mu = m + c
    if mu < 0.0:
        mu = 0.0
    v = a + g * mu
    if v < _VAR_FLOOR:
        v = _VAR_FLOOR
    return sse / v + ln * math.log(v)


@_njit()
def _one_trace(x, a, g, pen, ms, max_cp, cps_row, s1, s2, f, last, cand, tots):
    n = x.shape[0]
    c = _centred_sums1(x, s1, s2)
    f[0] = -pen
    n_c = 1
    cand[0] = 0
    for t in range(ms, n + 1):
        if t - ms >= ms:
            cand[n_c] = t - ms
            n_c += 1
        best = np.inf
        best_s = 0
        for k in range(n_c):
            s = cand[k]
            tot = f[s] + _cost1(s1, s2, c, a, g, s, t) + pen
            tots[k] = tot
            if tot < best:
                best = tot
                best_s = s
        f[t] = best
        last[t] = best_s
        # prune: same test as the reference (total - pen <= f[t] + pen)
        w = 0
        for k in range(n_c):
            if tots[k] - pen <= best + _PRUNE_K:
                cand[w] = cand[k]
                w += 1
        n_c = w
    # backtrack (into cand as scratch, reversed)
    n_found = 0
    t = n
    while t > 0:
        s = last[t]
        if s > 0:
            cand[n_found] = s
            n_found += 1
        t = s
    if n_found > max_cp:
        return -1
    for k in range(n_found):
        cps_row[k] = cand[n_found - 1 - k]
    return n_found


@_njit(parallel=True)
def _changepoints_batch(x, a, g, pen, ms, max_cp, cps, n_cp):
    n_tr, n = x.shape
    for i in _prange(n_tr):
        s1 = np.empty(n + 1)
        s2 = np.empty(n + 1)
        f = np.empty(n + 1)
        last = np.zeros(n + 1, dtype=np.int64)
        cand = np.empty(n + 1, dtype=np.int64)
        tots = np.empty(n + 1)
        n_cp[i] = _one_trace(x[i], a[i], g[i], pen, ms, max_cp, cps[i], s1, s2, f, last, cand, tots)


def changepoints_numba(traces, noise_var, noise_gain, penalty, min_size=2, max_cp=64):
    """Fast CPU version; same arguments and results as :func:`changepoints_numpy`."""
    if not HAVE_NUMBA:  # pragma: no cover
        return changepoints_numpy(traces, noise_var, noise_gain, penalty, min_size, max_cp)
    return _launch(_changepoints_batch, traces, noise_var, noise_gain, penalty, min_size, max_cp)


# ---------------------------------------------------------------------------
# binary segmentation: the same cost and penalty, greedy (O(n x depth) per trace)
# ---------------------------------------------------------------------------


def _sums_numpy(x):
    n = x.size
    c = np.cumsum(x)[-1] / n
    d = x - c
    s1 = np.zeros(n + 1)
    s2 = np.zeros(n + 1)
    np.cumsum(d, out=s1[1:])
    np.cumsum(d * d, out=s2[1:])
    return c, s1, s2


def _cost_numpy(s1, s2, c, a, g, s, t):
    """Vectorised segment cost (s, t arrays or scalars)."""
    ln = np.asarray(t - s, dtype=np.float64)
    sm = s1[t] - s1[s]
    m = sm / ln
    sse = np.maximum(s2[t] - s2[s] - sm * m, 0.0)
    v = np.maximum(a + g * np.maximum(m + c, 0.0), _VAR_FLOOR)
    return sse / v + ln * np.log(v)


def _best_split_numpy(s1, s2, c, a, g, s, e, ms):
    """(gain, split) of the best single split of [s, e); gain -inf when too short."""
    if e - s < 2 * ms:
        return -np.inf, -1
    tau = np.arange(s + ms, e - ms + 1)
    tot = _cost_numpy(s1, s2, c, a, g, s, tau) + _cost_numpy(s1, s2, c, a, g, tau, e)
    k = int(np.argmin(tot))
    whole = float(_cost_numpy(s1, s2, c, a, g, np.int64(s), np.int64(e)))
    return whole - float(tot[k]), int(tau[k])


def binseg_numpy(traces, noise_var, noise_gain, penalty, min_size=2, max_cp=64):
    """Binary segmentation, reference; arguments and results as :func:`changepoints_numpy`.

    The segment whose best split lowers the cost most is split while that
    gain exceeds ``penalty`` (ties: the earliest segment, the earliest frame).
    """
    x, a, g = _prepare(traces, noise_var, noise_gain)
    n_tr, n = x.shape
    cps = np.full((n_tr, max_cp), -1, dtype=np.int64)
    n_cp = np.zeros(n_tr, dtype=np.int64)
    ms = int(min_size)
    for i in range(n_tr):
        c, s1, s2 = _sums_numpy(x[i])
        segs = [(0, n)]
        best = [_best_split_numpy(s1, s2, c, a[i], g[i], 0, n, ms)]
        found = []
        while True:
            gains = np.array([b[0] for b in best])
            j = int(np.argmax(gains))
            if not gains[j] > penalty:
                break
            if len(found) == max_cp:
                found = None
                break
            s, e = segs[j]
            tau = best[j][1]
            found.append(tau)
            segs[j] = (s, tau)
            best[j] = _best_split_numpy(s1, s2, c, a[i], g[i], s, tau, ms)
            segs.append((tau, e))
            best.append(_best_split_numpy(s1, s2, c, a[i], g[i], tau, e, ms))
        if found is None:
            n_cp[i] = -1
        else:
            found.sort()
            n_cp[i] = len(found)
            cps[i, : len(found)] = found
    return cps, n_cp


@_njit()
def _best_split1(s1, s2, c, a, g, s, e, ms):
    if e - s < 2 * ms:
        return -np.inf, -1
    best = np.inf
    bt = -1
    for tau in range(s + ms, e - ms + 1):
        tot = _cost1(s1, s2, c, a, g, s, tau) + _cost1(s1, s2, c, a, g, tau, e)
        if tot < best:
            best = tot
            bt = tau
    return _cost1(s1, s2, c, a, g, s, e) - best, bt


@_njit()
def _binseg_one(x, a, g, pen, ms, max_cp, cps_row, s1, s2, seg_s, seg_e, gain, split):
    n = x.shape[0]
    c = _centred_sums1(x, s1, s2)
    n_seg = 1
    seg_s[0] = 0
    seg_e[0] = n
    gain[0], split[0] = _best_split1(s1, s2, c, a, g, 0, n, ms)
    n_found = 0
    while True:
        j = 0
        for k in range(1, n_seg):
            if gain[k] > gain[j]:
                j = k
        if not gain[j] > pen:
            break
        if n_found == max_cp:
            return -1
        s = seg_s[j]
        e = seg_e[j]
        tau = split[j]
        cps_row[n_found] = tau
        n_found += 1
        seg_e[j] = tau
        gain[j], split[j] = _best_split1(s1, s2, c, a, g, s, tau, ms)
        seg_s[n_seg] = tau
        seg_e[n_seg] = e
        gain[n_seg], split[n_seg] = _best_split1(s1, s2, c, a, g, tau, e, ms)
        n_seg += 1
    cps_row[:n_found].sort()
    return n_found


@_njit(parallel=True)
def _binseg_batch(x, a, g, pen, ms, max_cp, cps, n_cp):
    n_tr, n = x.shape
    for i in _prange(n_tr):
        s1 = np.empty(n + 1)
        s2 = np.empty(n + 1)
        seg_s = np.empty(max_cp + 2, dtype=np.int64)
        seg_e = np.empty(max_cp + 2, dtype=np.int64)
        gain = np.empty(max_cp + 2)
        split = np.empty(max_cp + 2, dtype=np.int64)
        n_cp[i] = _binseg_one(x[i], a[i], g[i], pen, ms, max_cp, cps[i], s1, s2, seg_s, seg_e, gain, split)


def binseg_numba(traces, noise_var, noise_gain, penalty, min_size=2, max_cp=64):
    """Fast CPU binary segmentation; same arguments and results as :func:`binseg_numpy`."""
    if not HAVE_NUMBA:  # pragma: no cover
        return binseg_numpy(traces, noise_var, noise_gain, penalty, min_size, max_cp)
    cps, n_cp = _launch(_binseg_batch, traces, noise_var, noise_gain, penalty, min_size, max_cp)
    cps[n_cp < 0] = -1
    return cps, n_cp


_PELT = {"numpy": changepoints_numpy, "numba": changepoints_numba}


def changepoints(traces, noise_var, noise_gain, penalty, min_size=2, max_cp=64, *, method="binseg", impl="auto"):
    """Change points by ``method`` ('binseg' or 'pelt') with ``impl`` ('auto', 'numpy', 'numba', 'cupy').

    Binary segmentation goes through the kernel registry (family ``steps``:
    NumPy, Numba, CUDA); PELT has NumPy and Numba versions.
    """
    from . import _registry

    if method == "binseg":
        return _registry.steps(impl, traces, noise_var, noise_gain, penalty, min_size, max_cp)
    if method != "pelt":
        raise ValueError(f"method must be 'binseg' or 'pelt', got {method!r}")
    name = _registry.check_impl(impl, family="PELT")
    name = ("numba" if _registry.numba_available() else "numpy") if name == "auto" else name
    if name not in _PELT:
        raise ImplementationError(f"impl={impl!r}: PELT has no {name!r} implementation; expected one of auto, numpy, numba")
    return _PELT[name](traces, noise_var, noise_gain, penalty, min_size, max_cp)
