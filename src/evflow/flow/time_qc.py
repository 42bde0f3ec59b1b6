"""Time-channel QC: the event rate over the acquisition, clogs, bubbles, bursts and drift.

The statistic (in the spirit of flowAI's flow-rate check and PeacoQC's MAD
rule) is stated here and in every result:

1. The acquisition span of the time channel is cut into equal bins (default
   ``n_bins`` = events / 50, between 10 and 100, so a bin holds about 50
   events or more).  Edge bins shorter than half a bin are not judged.
2. Per bin, the rate ``r_i`` (events per time unit).  Robust centre and spread
   over the bins: ``median(r)`` and ``sigma = max(1.4826 * MAD(r),
   sqrt(median count) / bin width)`` (the Poisson floor keeps a very steady
   run from flagging counting noise).  Robust z: ``z_i = (r_i - median) /
   sigma``.
3. ``z_i <= -z`` is a low-rate bin; a run of low-rate bins lasting at least
   ``min_clog_fraction`` of the acquisition (default 2 %) or 3 bins is a
   **clog**, a shorter run a **bubble**; ``z_i >= z`` is a **burst** bin.
   Default ``z = 5``.
4. **Drift**: over the bins not flagged, the best single changepoint of the
   rate (least squares: the split minimising the within-segment sum of
   squares, as in binary segmentation); drift is flagged when the two
   segments' mean rates differ by more than ``drift_fraction`` (default 20 %)
   of the median rate and by more than ``z`` standard errors (Welch).

Flagged intervals (clogs, bubbles, bursts) can be excluded:
:attr:`TimeQC.good_events` is the mask of events outside them; the excluded
fractions of events and of time are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EvflowError

__all__ = ["TimeQC", "time_qc", "STATISTIC"]

STATISTIC = ("robust z of per-bin event rates (median/MAD, Poisson floor) <= -{z:g}: clog (run >= {clog:.0%} of the "
             "time or 3 bins) or bubble; >= {z:g}: burst; drift: best single changepoint of the rate with a change "
             "> {drift:.0%} of the median and > {z:g} standard errors")


@dataclass
class TimeQC:
    """Result of :func:`time_qc` (all times in the time channel's units, seconds when ``$TIMESTEP`` is known).

    Attributes
    ----------
    edges : ndarray (n_bins + 1,)
        Bin edges.
    counts : ndarray (n_bins,)
        Events per bin.
    rate : ndarray (n_bins,)
        Events per time unit per bin.
    z : ndarray (n_bins,)
        Robust z-score of each bin's rate (NaN for edge bins not judged).
    median_rate, sigma_rate : float
    flags : list of str
        ``"clog"``, ``"bubble"``, ``"burst"``, ``"drift"`` (each at most once), empty when clean.
    intervals : list of (start, stop, kind)
        Flagged intervals.
    drift : dict
        ``time`` (changepoint), ``before``, ``after`` (mean rates), ``relative_change``, ``t``.
    good_events : ndarray of bool or None
        Events outside the flagged intervals.
    excluded_event_fraction, excluded_time_fraction : float
        Of the flagged intervals (whether or not they are excluded).
    statistic : str
        The rule, in words, with its parameters.
    """

    edges: np.ndarray
    counts: np.ndarray
    rate: np.ndarray
    z: np.ndarray
    median_rate: float
    sigma_rate: float
    flags: list = field(default_factory=list)
    intervals: list = field(default_factory=list)
    drift: dict = field(default_factory=dict)
    good_events: np.ndarray | None = field(default=None, repr=False)
    excluded_event_fraction: float = 0.0
    excluded_time_fraction: float = 0.0
    statistic: str = ""

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def summary(self) -> dict:
        """JSON-friendly summary (no per-event mask)."""
        return {"flags": list(self.flags), "intervals": [[float(a), float(b), k] for a, b, k in self.intervals],
                "median_rate": self.median_rate, "sigma_rate": self.sigma_rate, "drift": dict(self.drift),
                "excluded_event_fraction": self.excluded_event_fraction,
                "excluded_time_fraction": self.excluded_time_fraction, "n_bins": int(self.counts.size),
                "statistic": self.statistic}


def _runs(mask):
    """(start, stop) index pairs of the runs of True in ``mask`` (stop exclusive)."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _changepoint(rate):
    """(index, sse gain) of the best single split of ``rate`` (least squares), or (None, 0)."""
    n = rate.size
    if n < 6:
        return None, 0.0
    c1 = np.cumsum(rate)
    c2 = np.cumsum(rate ** 2)
    k = np.arange(2, n - 1)  # at least 2 bins on each side
    left = c2[k - 1] - c1[k - 1] ** 2 / k
    right = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (n - k)
    total = c2[-1] - c1[-1] ** 2 / n
    j = int(np.argmin(left + right))
    return int(k[j]), float(total - left[j] - right[j])


def time_qc(times, *, n_bins: int | None = None, bin_width: float | None = None, z: float = 5.0,
            min_clog_fraction: float = 0.02, drift_fraction: float = 0.2, source: str = "") -> TimeQC:
    """Event-rate QC of one sample from its time-channel values.

    Parameters
    ----------
    times : array (n_events,)
        Time of each event (time channel, linear scale: seconds when
        ``$TIMESTEP`` is given), in acquisition order.
    n_bins, bin_width : int, float, optional
        Number of bins, or their width in time units (default: events / 50,
        between 10 and 100 bins).
    z : float
        Robust z-score beyond which a bin is flagged (default 5).
    min_clog_fraction : float
        A low-rate run at least this fraction of the acquisition (or 3 bins) is a clog, shorter a bubble.
    drift_fraction : float
        Smallest change of the mean rate, relative to the median, reported as drift.

    Raises
    ------
    EvflowError
        Fewer than 100 events, a constant or non-finite time channel.
    """
    t = np.asarray(times, float).ravel()
    where = f"{source}: " if source else ""
    if t.size < 100:
        raise EvflowError(f"{where}time QC needs at least 100 events, got {t.size}")
    if not np.all(np.isfinite(t)):
        raise EvflowError(f"{where}the time channel holds non-finite values")
    t0, t1 = float(t.min()), float(t.max())
    span = t1 - t0
    if not span > 0:
        raise EvflowError(f"{where}the time channel is constant ({t0}): no event rate over time")
    u = np.unique(t)
    if u.size < 20:
        raise EvflowError(f"{where}the time channel holds only {u.size} distinct values: too coarse for a rate "
                          "over time")
    if bin_width is not None:
        if not bin_width > 0:
            raise EvflowError(f"{where}time bin width must be > 0, got {bin_width}")
        width = float(bin_width)
    else:
        nb = int(n_bins) if n_bins is not None else int(np.clip(t.size // 50, 10, 100))
        if nb < 1:
            raise EvflowError(f"{where}n_bins must be >= 1, got {n_bins}")
        width = span / nb
    # a time channel counts in ticks: bins of whole ticks, edges between ticks (else bins alternate
    # between n and n+1 ticks and the rate shows a false periodic dip)
    tick = float(np.diff(u).min())
    t_end = t1
    if tick > width * 1e-3:
        width = max(round(width / tick), 1) * tick
        t0, t_end = t0 - tick / 2, t1 + tick / 2
    span = t_end - t0
    nb = max(int(np.ceil(span / width - 1e-9)), 1)
    edges = t0 + width * np.arange(nb + 1)
    edges[-1] = t_end  # the last bin ends with the acquisition (its rate is over its own length)
    idx = np.minimum(((t - t0) / width).astype(np.int64), nb - 1)
    counts = np.bincount(idx, minlength=nb)
    widths = np.diff(edges)
    rate = counts / widths
    judged = widths >= 0.5 * width
    if t_end != t1 and width < 4 * tick:  # bins of a few ticks: the first and last tick are partly acquired
        judged[[0, -1]] = False
    med = float(np.median(rate[judged]))
    mad = float(np.median(np.abs(rate[judged] - med)))
    sigma = max(1.4826 * mad, np.sqrt(max(med * width, 1.0)) / width)
    zs = np.where(judged, (rate - med) / sigma, np.nan)
    stat = STATISTIC.format(z=z, clog=min_clog_fraction, drift=drift_fraction)
    out = TimeQC(edges=edges, counts=counts, rate=rate, z=zs, median_rate=med, sigma_rate=float(sigma),
                 statistic=stat)
    bad = np.zeros(nb, bool)
    kinds = set()
    for a, b in _runs(np.nan_to_num(zs, nan=0.0) <= -z):
        long = (b - a) >= 3 or (edges[b] - edges[a]) >= min_clog_fraction * span
        kind = "clog" if long else "bubble"
        out.intervals.append((float(edges[a]), float(edges[b]), kind))
        bad[a:b] = True
        kinds.add(kind)
    for a, b in _runs(np.nan_to_num(zs, nan=0.0) >= z):
        out.intervals.append((float(edges[a]), float(edges[b]), "burst"))
        bad[a:b] = True
        kinds.add("burst")
    out.intervals.sort()
    # drift: one changepoint over the bins not flagged
    keep = judged & ~bad
    r = rate[keep]
    k, _gain = _changepoint(r)
    if k is not None:
        before, after = r[:k], r[k:]
        m1, m2 = float(before.mean()), float(after.mean())
        se = float(np.sqrt(before.var(ddof=1) / before.size + after.var(ddof=1) / after.size))
        tstat = abs(m2 - m1) / se if se > 0 else np.inf
        rel = (m2 - m1) / med if med > 0 else np.nan
        tk = float(edges[np.flatnonzero(keep)[k]])
        out.drift = {"time": tk, "before": m1, "after": m2, "relative_change": float(rel), "t": float(tstat)}
        if abs(rel) > drift_fraction and tstat > z:
            kinds.add("drift")
    out.flags = [f for f in ("clog", "bubble", "burst", "drift") if f in kinds]
    ev_bad = bad[idx]
    out.good_events = ~ev_bad
    out.excluded_event_fraction = float(ev_bad.mean())
    out.excluded_time_fraction = float(widths[bad].sum() / span)
    return out
