"""Robust noise of many blocks of filter-response samples at once (family ``block_noise``).

Each block's estimate is that of :func:`evflow.imaging.noise.robust_noise`
without a fallback: ``s = 1.4826 * MAD(v)``, then, up to ``iterations``
times, ``s = 1.4826 * MAD(v[m < clip * s])`` while at least
``max(50, 0.05 n)`` samples remain and ``s > 0``, stopping when ``s`` changes
by at most ``1e-4 s``.  With it come the samples kept at the final ``s``
(``m < clip * s``) and the median of ``b`` over them (the block's background
level).  Blocks are contiguous runs ``starts[i]:starts[i + 1]`` of samples
already grouped by block.

- ``block_noise_numpy``: the reference, one block at a time with NumPy;
- ``block_noise_numba``: the same arithmetic compiled, parallel over blocks.
  Medians are order statistics (the mean of the two middle values of an even
  count, as NumPy takes it), so both give the same bits.
"""

from __future__ import annotations

import numpy as np

from ._numba import LAUNCH_LOCK, njit, prange

__all__ = ["robust_mad", "block_noise_numpy", "block_noise_numba"]

_MAD = 1.4826


def _mad_np(v):
    med = np.median(v)
    return float(_MAD * np.median(np.abs(v - med)))


def robust_mad(v, m, clip: float, iterations: int):
    """``(s, starved)``: the iterated MAD sigma of one set of samples (see the module text); ``starved`` is
    True when the first masking already leaves too few samples (``s`` is then the plain MAD), which is when
    :func:`evflow.imaging.noise.robust_noise` takes its fallback."""
    s = _mad_np(v)
    if not s > 0:
        return s, False
    for it in range(iterations):
        keep = m < clip * s
        if keep.sum() < max(50, 0.05 * v.size):
            return s, it == 0
        s_new = _mad_np(v[keep])
        if not s_new > 0:
            break
        done = abs(s_new - s) <= 1e-4 * s
        s = s_new
        if done:
            break
    return s, False


def block_noise_numpy(v, m, b, starts, clip: float, iterations: int):
    """``(s, n_keep, b_median)`` per block (float64, int64, float64; NaN median where nothing is kept)."""
    v, m, b = (np.asarray(a, np.float64) for a in (v, m, b))
    starts = np.asarray(starts, np.int64)
    nb = len(starts) - 1
    s_out, n_out, b_out = np.full(nb, np.nan), np.zeros(nb, np.int64), np.full(nb, np.nan)
    for i in range(nb):
        vv, mm, bb = v[starts[i]:starts[i + 1]], m[starts[i]:starts[i + 1]], b[starts[i]:starts[i + 1]]
        if vv.size == 0:
            continue
        s = robust_mad(vv, mm, clip, iterations)[0]
        keep = mm < clip * s
        s_out[i], n_out[i] = s, int(keep.sum())
        if n_out[i]:
            b_out[i] = float(np.median(bb[keep]))
    return s_out, n_out, b_out


@njit(cache=True)
def _mad_nb(v):
    med = np.median(v)
    return _MAD * np.median(np.abs(v - med))


@njit(cache=True)
def _one_block(vv, mm, bb, clip, iterations):
    n = vv.size
    s = _mad_nb(vv)
    if s > 0:
        for _ in range(iterations):
            keep = mm < clip * s
            if keep.sum() < max(50.0, 0.05 * n):
                break
            s_new = _mad_nb(vv[keep])
            if not s_new > 0:
                break
            done = abs(s_new - s) <= 1e-4 * s
            s = s_new
            if done:
                break
    keep = mm < clip * s
    k = keep.sum()
    bm = np.median(bb[keep]) if k > 0 else np.nan
    return s, k, bm


@njit(parallel=True, cache=True)
def _blocks(v, m, b, starts, clip, iterations, s_out, n_out, b_out):
    for i in prange(starts.size - 1):
        lo, hi = starts[i], starts[i + 1]
        if hi > lo:
            s_out[i], n_out[i], b_out[i] = _one_block(v[lo:hi], m[lo:hi], b[lo:hi], clip, iterations)


def block_noise_numba(v, m, b, starts, clip: float, iterations: int):
    """:func:`block_noise_numpy`, compiled (Numba, parallel over blocks)."""
    v, m, b = (np.ascontiguousarray(a, np.float64) for a in (v, m, b))
    starts = np.ascontiguousarray(starts, np.int64)
    nb = len(starts) - 1
    s_out, n_out, b_out = np.full(nb, np.nan), np.zeros(nb, np.int64), np.full(nb, np.nan)
    if nb > 0:
        with LAUNCH_LOCK:
            _blocks(v, m, b, starts, float(clip), int(iterations), s_out, n_out, b_out)
    return s_out, n_out, b_out
