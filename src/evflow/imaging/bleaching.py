"""Photobleaching step counting, unit brightness and copies per vesicle.

Model
-----
A background-corrected trace is piecewise constant: ``n`` fluorophores
bleach one by one, each removing about one *unit* ``q`` of intensity.  The
noise is Gaussian with a variance that follows the photon budget,
``var(level) = noise_var + noise_gain * level`` (camera/background noise
plus shot noise), estimated per trace from windows of the trace itself.

1. Change points: penalised likelihood segmentation under that model,
   penalty ``penalty * log(n_frames)`` per change point (BIC-like; the noise
   is in the cost, so the penalty needs no tuning to the trace's brightness),
   by binary segmentation (default) or exactly (PELT), batched over traces
   in :mod:`evflow.kernels.steps` (NumPy reference, Numba, CUDA).
2. Steps smaller than ``min_step`` units are merged away; the unit ``q`` of a
   trace is the median height of its single steps (steps between 0.6 and 1.5
   times the median step height), or the ``unit_height`` given.
3. Each down step counts ``round(height / q)`` fluorophores (>= 1), so two
   dyes bleaching within a frame count two.
4. Flags: ``'ok'``; ``'blinking'`` (an up step of at least ``min_step``
   units; counted as the most dyes on at once unless ``blinking='flag'``),
   ``'no_final_background'`` (the last level is not within half a unit of
   zero, or too short), ``'large_step'`` (a step of more than
   ``max_multiplicity`` units), ``'too_many_steps'`` (more than
   ``max_steps``), ``'no_signal'`` (no step and no intensity).  Uncounted
   traces get ``n_steps = -1`` and keep their detected steps for inspection.
5. Confidence: the product over steps of the posterior probability of the
   chosen multiplicity against the neighbouring ones (0 = no step, m +- 1),
   with Gaussian likelihoods of mean ``m q`` and variance ``se^2 + m (cv q)^2``
   (``cv``: dye-to-dye brightness spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError, EvflowError

__all__ = [
    "count_bleaching_steps",
    "BleachingSteps",
    "estimate_trace_noise",
]

FLAGS = ("ok", "blinking", "no_final_background", "large_step", "too_many_steps", "no_signal")


@dataclass
class BleachingSteps:
    """Per-trace result of :func:`count_bleaching_steps`.

    Attributes
    ----------
    n_steps : ndarray of int (traces,)
        Fluorophores counted (number of bleaching steps, multiplicities
        included); -1 where the trace was flagged and not counted.
    flag : ndarray of str
        ``'ok'`` or why the trace was not counted (see module docstring).
    confidence : ndarray of float
        Probability (0-1) of the count under the model.
    unit_height : ndarray of float
        Intensity of one fluorophore in that trace (trace units); NaN without steps.
    initial_level : ndarray of float
        Mean of the first segment (trace units).
    heights, frames, multiplicity : list of ndarray
        Per trace: each detected step's height (positive = intensity lost),
        first frame after it, and fluorophores it counts (<= 0 for up steps).
    noise_var, noise_gain : ndarray
        The noise model used per trace.
    """

    n_steps: np.ndarray
    flag: np.ndarray
    confidence: np.ndarray
    unit_height: np.ndarray
    initial_level: np.ndarray
    heights: list = field(repr=False)
    frames: list = field(repr=False)
    multiplicity: list = field(repr=False)
    noise_var: np.ndarray = field(repr=False)
    noise_gain: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.n_steps)

    @property
    def counted(self) -> np.ndarray:
        """Traces with a count (``n_steps >= 0``)."""
        return self.n_steps >= 0

    def to_frame(self) -> pd.DataFrame:
        """One row per trace: n_steps, flag, confidence, unit_height, initial_level, heights, frames."""
        return pd.DataFrame(
            {
                "n_steps": self.n_steps,
                "flag": self.flag,
                "confidence": self.confidence,
                "unit_height": self.unit_height,
                "initial_level": self.initial_level,
                "n_detected": [len(h) for h in self.heights],
                "heights": self.heights,
                "frames": self.frames,
            }
        )


def _as_traces(traces) -> np.ndarray:
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise EvflowError(f"traces must be (frames, traces) or one 1-D trace, got shape {x.shape}")
    if x.shape[0] < 10:
        raise EvflowError(f"traces need at least 10 frames, got {x.shape[0]} (is the array (frames, traces)?)")
    if not np.isfinite(x).all():
        bad = np.unique(np.nonzero(~np.isfinite(x))[1])
        raise EvflowError(f"traces hold NaN or inf values (traces {bad[:10].tolist()})")
    return x


def estimate_trace_noise(traces, *, window: int = 20, kind: str = "diff"):
    """Noise model ``var = noise_var + noise_gain * max(level, 0)`` per trace.

    Each window of ``window`` frames gives a variance from the median absolute
    frame-to-frame difference (robust to a step inside it) and a level (its
    median); a least-squares line through them, refitted once without
    outlying windows, gives the intercept and slope.

    Returns
    -------
    noise_var, noise_gain : ndarray (traces,)
    """
    x = _as_traces(traces).T  # (traces, frames)
    n_tr, n = x.shape
    w = int(min(window, max(n // 5, 4)))
    n_win = n // w
    X = x[:, : n_win * w].reshape(n_tr, n_win, w)
    if kind == "diff":
        d = np.diff(X, axis=2)
        var_w = (1.4826 * np.median(np.abs(d), axis=2)) ** 2 / 2.0
    else:
        var_w = X.var(axis=2, ddof=1)
    lev = np.clip(np.median(X, axis=2), 0.0, None)
    keep = np.ones_like(var_w, dtype=bool)
    a = g = None
    for _ in range(2):
        k = keep.astype(np.float64)
        sw = k.sum(1)
        mx = (k * lev).sum(1) / sw
        my = (k * var_w).sum(1) / sw
        sxx = (k * (lev - mx[:, None]) ** 2).sum(1)
        sxy = (k * (lev - mx[:, None]) * (var_w - my[:, None])).sum(1)
        g = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
        g = np.clip(g, 0.0, None)
        a = my - g * mx
        r = var_w - (a[:, None] + g[:, None] * lev)
        s = 1.4826 * np.median(np.abs(r), axis=1) + 1e-12
        keep = np.abs(r) <= 3.0 * s[:, None]
    low = np.quantile(var_w, 0.25, axis=1)
    a = np.maximum(a, 0.25 * low)
    a = np.maximum(a, 1e-9 * (1.0 + np.abs(x).max(1)) ** 2)
    return a, g


def _segments(cs, bounds):
    """Means and lengths of the segments between sorted bounds (0 and n included); cs: cumulative sums."""
    b = np.asarray(bounds)
    ln = np.diff(b).astype(np.float64)
    return (cs[b[1:]] - cs[b[:-1]]) / ln, ln


def _unit_from(heights, q0=None):
    """Median height of the single steps: down steps within 0.6-1.5 of ``q0`` (default: their median)."""
    down = heights[heights > 0]
    if down.size == 0:
        return np.nan
    if q0 is None or not np.isfinite(q0):
        q0 = np.median(down)
    single = down[(down >= 0.6 * q0) & (down <= 1.5 * q0)]
    return float(np.median(single)) if single.size else float(q0)


def _typical_step(heights):
    """Typical single-dye step: median of the down steps of at least 0.35 x their 90th percentile.

    A double step is at most about twice a single one, so the 90th percentile
    lies between one and two units and the cut keeps the real steps while
    dropping the small ones that slow fluctuations leave; NaN without down steps.
    """
    down = heights[heights > 0]
    if down.size == 0:
        return np.nan
    big = down[down >= 0.35 * np.percentile(down, 90)]
    return float(np.median(big))


def _last_unit(heights):
    """The last real down step (the last dye, seen at the lowest noise): the last one of at least half
    the typical step; NaN without down steps."""
    typ = _typical_step(heights)
    if not np.isfinite(typ):
        return typ
    real = heights[heights >= 0.5 * typ]
    return float(real[-1])


def _posterior(h, se2, q, cv, m):
    """Probability of multiplicity m for a step of height h against m-1 .. m+1 (0 = no step)."""
    ll = []
    for k in range(max(m - 1, 0), m + 2):
        var = se2 + k * (cv * q) ** 2
        ll.append((k, -0.5 * (h - k * q) ** 2 / var - 0.5 * math.log(var)))
    top = max(v for _, v in ll)
    w = {k: math.exp(v - top) for k, v in ll}
    return w[m] / sum(w.values())


def _refine(x, cps, a, g, min_step, unit_height, min_background_frames, max_steps, max_multiplicity, cv,
            count_blinking):
    n = x.size
    bounds = [0, *[int(c) for c in cps], n]
    cs = np.concatenate([[0.0], np.cumsum(x)])
    mu, ln = _segments(cs, bounds)
    # the unit to merge against (fixed while merging), unless given
    q = unit_height if unit_height is not None else _typical_step(-np.diff(mu))
    # merge steps below min_step units, smallest first
    while len(bounds) > 2 and np.isfinite(q) and q > 0:
        h = np.abs(np.diff(mu))
        k = int(np.argmin(h))
        if h[k] >= min_step * q:
            break
        del bounds[k + 1]
        mu, ln = _segments(cs, bounds)
    heights = -np.diff(mu)
    frames = np.asarray(bounds[1:-1], dtype=np.int64)
    var = np.maximum(a + g * np.clip(mu, 0.0, None), 1e-12)
    se2 = var[:-1] / ln[:-1] + var[1:] / ln[1:]
    init = float(mu[0])
    if heights.size == 0:
        sd_frame = np.sqrt(var[0])
        if abs(init) < 3.0 * sd_frame:
            return 0, "ok", 1.0, np.nan, init, heights, frames, np.zeros(0, np.int64)
        return -1, ("no_signal" if init <= 0 else "no_final_background"), 0.0, np.nan, init, heights, frames, np.zeros(0, np.int64)
    if unit_height is None:
        q = _unit_from(heights, _last_unit(heights))
    ratio = heights / q
    big = np.abs(ratio) >= min_step
    mult = (np.sign(ratio) * np.where(big, np.maximum(np.rint(np.abs(ratio)), 1), 0)).astype(np.int64)
    occupancy = mult.sum() - np.concatenate([[0], np.cumsum(mult)])  # dyes on in each segment
    n_fl = int(occupancy.max())
    flag = "ok"
    last_level, last_len = mu[-1], ln[-1]
    if abs(last_level) > 0.5 * q or last_len < min_background_frames:
        flag = "no_final_background"
    elif mult.max() > max_multiplicity:
        flag = "large_step"
    elif n_fl > max_steps:
        flag = "too_many_steps"
    elif (mult < 0).any():
        flag = "blinking"
    conf = 1.0
    for h, s2, m in zip(heights, se2, mult):
        if m != 0:
            conf *= _posterior(abs(h), s2, q, cv, int(abs(m)))
    counted = flag == "ok" or (flag == "blinking" and count_blinking)
    if flag == "blinking":
        conf *= 0.5  # a dye dark at the start or at its bleaching time is not seen
    if not counted:
        conf = 0.0
    return (n_fl if counted else -1), flag, conf, float(q), init, heights, frames, mult


def count_bleaching_steps(
    traces,
    *,
    penalty: float = 3.0,
    min_step: float = 0.5,
    min_segment_frames: int = 2,
    min_background_frames: int = 10,
    max_steps: int = 40,
    max_multiplicity: int = 3,
    unit_height="auto",
    blinking: str = "count",
    brightness_cv: float = 0.15,
    noise_var=None,
    noise_gain=None,
    method: str = "binseg",
    impl: str = "auto",
) -> BleachingSteps:
    """Count photobleaching steps in background-corrected intensity traces.

    Parameters
    ----------
    traces : array (frames, traces) or 1-D (frames,)
        Background-corrected intensity per frame (photons or counts) of one
        dye (one channel) per call.
    penalty : float
        Penalty per change point in units of ``log(n_frames)`` of twice the
        negative log-likelihood (2 is the BIC; larger finds fewer steps).
    min_step : float
        Steps smaller than this many units are merged away.
    min_segment_frames : int
        Shortest segment (frames); dyes bleaching closer together count as one
        step of multiplicity 2.
    min_background_frames : int
        Frames of final background needed to count a trace.
    max_steps : int
        Traces with more fluorophores are flagged ``'too_many_steps'``.
    max_multiplicity : int
        A step of more units than this (several dyes in one frame: rather a
        spot leaving or a focus jump) flags the trace ``'large_step'``.
    unit_height : 'auto', None or float
        Intensity of one fluorophore (trace units).  None: per trace;
        ``'auto'``: per trace, then, when at least 5 traces were counted, a
        second pass in which a trace whose unit differs from the median unit
        by more than 1.4x takes the median (one dye per call); a float or
        array (traces,): that value (e.g. from :func:`evflow.unit_brightness`).
    blinking : {'count', 'flag'}
        Traces with up steps (a dye back from a dark state) are flagged
        ``'blinking'``; 'count' still counts them (the most dyes on at once,
        confidence halved), 'flag' leaves them uncounted.
    brightness_cv : float
        Dye-to-dye brightness spread used in the confidence.
    noise_var, noise_gain : float or array, optional
        Noise model (see module docstring); default from
        :func:`estimate_trace_noise`.
    method : {'binseg', 'pelt'}
        Change-point search: binary segmentation (greedy, O(frames x depth))
        or PELT (the exact optimum of the same cost; O(frames^2) for traces
        with few steps).
    impl : {'auto', 'numba', 'numpy', 'cupy'}
        Change-point kernel: the batched Numba version, the NumPy reference
        or the CUDA kernel (``steps.cu``, binary segmentation only; all
        traces in one launch).  'auto' is Numba when it imports.

    Returns
    -------
    BleachingSteps
        ``.n_steps`` (-1: not counted), ``.flag``, ``.confidence``,
        ``.heights``, ``.frames``; ``.to_frame()`` for a table.

    Examples
    --------
    >>> from evflow.synth import bleaching_traces
    >>> sim = bleaching_traces([1, 2, 3], seed=0)
    >>> count_bleaching_steps(sim.traces).n_steps.tolist()
    [1, 2, 3]
    """
    from ..kernels.steps import changepoints

    x = _as_traces(traces)
    n, n_tr = x.shape
    if penalty <= 0 or min_step <= 0 or min_segment_frames < 1 or max_steps < 1 or max_multiplicity < 1:
        raise ConfigError(
            f"penalty and min_step must be > 0, min_segment_frames, max_steps and max_multiplicity >= 1 "
            f"(got {penalty}, {min_step}, {min_segment_frames}, {max_steps}, {max_multiplicity})"
        )
    if blinking not in ("count", "flag"):
        raise ConfigError(f"blinking must be 'count' or 'flag', got {blinking!r}")
    if isinstance(unit_height, str):
        if unit_height != "auto":
            raise ConfigError(f"unit_height must be 'auto', None or a number > 0, got {unit_height!r}")
    elif unit_height is not None:
        uh = np.asarray(unit_height, dtype=np.float64)
        if uh.ndim > 1 or (uh.ndim == 1 and uh.size != n_tr) or not (np.isfinite(uh) & (uh > 0)).all():
            raise ConfigError(f"unit_height must be > 0, one value or one per trace ({n_tr}), got {unit_height!r}")
    if noise_var is None or noise_gain is None:
        a_est, g_est = estimate_trace_noise(x)
        a = a_est if noise_var is None else np.broadcast_to(np.asarray(noise_var, float), (n_tr,))
        g = g_est if noise_gain is None else np.broadcast_to(np.asarray(noise_gain, float), (n_tr,))
    else:
        a = np.broadcast_to(np.asarray(noise_var, float), (n_tr,))
        g = np.broadcast_to(np.asarray(noise_gain, float), (n_tr,))
    max_cp = max(4 * max_steps, 64)
    if method not in ("binseg", "pelt"):
        raise ConfigError(f"method must be 'binseg' or 'pelt', got {method!r}")
    cps, n_cp = changepoints(x.T, a, g, penalty * np.log(n), min_segment_frames, max_cp, method=method, impl=impl)
    opts = (min_background_frames, max_steps, max_multiplicity, brightness_cv, blinking == "count")

    def refine_all(unit):
        out = {k: [] for k in ("n", "flag", "conf", "q", "init", "h", "f", "m")}
        units = np.broadcast_to(np.asarray(np.nan if unit is None else unit, dtype=np.float64), (n_tr,))
        for i in range(n_tr):
            if n_cp[i] < 0:
                res = (-1, "too_many_steps", 0.0, np.nan, float(x[:5, i].mean()), np.zeros(0),
                       np.zeros(0, np.int64), np.zeros(0, np.int64))
            else:
                ui = None if not np.isfinite(units[i]) else float(units[i])
                res = _refine(x[:, i], cps[i, : n_cp[i]], a[i], g[i], min_step, ui, *opts)
            for k, v in zip(out, res):
                out[k].append(v)
        return out

    out = refine_all(None if isinstance(unit_height, str) else unit_height)
    if isinstance(unit_height, str):
        q = np.asarray(out["q"], dtype=np.float64)
        ok = (np.asarray(out["n"]) > 0) & np.isfinite(q)
        if ok.sum() >= 5:
            # the trace's own unit where it agrees with the others' within 1.4x (uneven illumination),
            # else the median unit (a unit thrown off by fluctuations or by too few steps)
            qm = float(np.median(q[ok]))
            own = np.isfinite(q) & (q >= qm / 1.4) & (q <= qm * 1.4)
            out = refine_all(np.where(own, q, qm))
    return BleachingSteps(
        n_steps=np.asarray(out["n"], dtype=np.int64),
        flag=np.asarray(out["flag"], dtype=object),
        confidence=np.asarray(out["conf"], dtype=np.float64),
        unit_height=np.asarray(out["q"], dtype=np.float64),
        initial_level=np.asarray(out["init"], dtype=np.float64),
        heights=out["h"],
        frames=out["f"],
        multiplicity=out["m"],
        noise_var=np.asarray(a, dtype=np.float64),
        noise_gain=np.asarray(g, dtype=np.float64),
    )
