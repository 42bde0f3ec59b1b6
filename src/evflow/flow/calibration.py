"""Calibration of single-vesicle flow data: MESF beads, scatter to diameter, concentration.

Fluorescence
    :func:`calibrate_mesf` finds the populations of a multi-peak bead file
    (a density gate on the singlet beads in FSC/SSC, then a Gaussian mixture
    on the peaks in a log-like scale), drops saturated or unresolved peaks,
    fits the standard curve ``m*log(rfi) + b = log(mesf_auto + mesf)`` (the
    model of FlowCal's ``fit_beads_autofluorescence``) and returns a
    :class:`MESFCalibration` whose :meth:`~MESFCalibration.to_mesf` converts
    any array (NumPy, CuPy, dask) of that channel to MESF, lazily.

Scatter
    :func:`calibrate_scatter` fits the gain between measured scatter and the
    Mie cross-section (:mod:`evflow.flow.mie`) of size beads; the resulting
    :class:`ScatterCalibration` converts scatter to a diameter (nm) for a
    particle model (e.g. an EV as a core-shell sphere) and flags values outside
    the range where the relation is unique.  :func:`size_gate` turns a diameter
    range into a rectangle gate on the scatter channel.

Concentration
    :func:`analysed_volume_ul` and :func:`concentration_per_ml`.

All values are on the channel's linear scale: after ``$PnE`` log decoding and
division by ``$PnG`` (what ``read_fcs(path, scale=True)`` returns, and what
FlowCal calls RFI).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import array_module
from ..errors import CalibrationError

__all__ = [
    "MESFCalibration",
    "calibrate_mesf",
    "fit_mesf_curve",
    "density_gate",
    "bead_populations",
    "ScatterCalibration",
    "calibrate_scatter",
    "fit_scatter_gain",
    "size_gate",
    "size_gate_limits",
    "analysed_volume_ul",
    "concentration_per_ml",
]

# number of display decades of the log-like (logicle, W=0) scale used for
# gating and clustering; FlowCal's default for channels of any range
_DECADES = 4.5


# --------------------------------------------------------------------------- event tables


@dataclass
class _Table:
    """Selected columns of a sample, linear scale, with the detector range per column."""

    data: np.ndarray  # (n_events, n_columns) float64
    names: list
    ranges: np.ndarray  # (n_columns, 2): lowest and highest value the detector can report
    source: str


def _channel_range(meta: dict, i: int) -> tuple[float, float] | None:
    """(low, high) linear-scale range of column ``i`` (0-based) from $PnR/$PnE/$PnG, or None."""
    n = i + 1
    try:
        rng = float(meta[f"$P{n}R"])
    except (KeyError, ValueError, TypeError):
        return None
    decades, log0 = 0.0, 0.0
    pne = str(meta.get(f"$P{n}E", "") or "").strip()
    if pne:
        try:
            decades, log0 = (float(x) for x in pne.split(","))
        except ValueError:
            decades, log0 = 0.0, 0.0
    try:
        gain = float(meta.get(f"$P{n}G", 1.0) or 1.0)
    except ValueError:
        gain = 1.0
    if gain == 0:
        gain = 1.0
    if decades > 0:
        log0 = log0 or 1.0
        return log0 / gain, log0 * 10.0 ** (decades * (rng - 1.0) / rng) / gain
    return 0.0, (rng - 1.0) / gain


def _as_table(sample, channels: Sequence[str], what: str = "beads") -> _Table:
    """Columns ``channels`` of ``sample`` as a linear-scale float64 table.

    ``sample`` is a path, an :class:`evflow.FCSSample` (its linear-scale
    events), a pandas DataFrame, or an xarray DataArray with dims (event, channel).
    """
    from ..backend import to_numpy

    channels = list(channels)
    if isinstance(sample, (str, Path)):
        from ..io.fcs import read_fcs

        sample = read_fcs(sample, scale=True)
    if hasattr(sample, "channel_index") and hasattr(sample, "events"):
        idx = [sample.channel_index(c) for c in channels]
        data = to_numpy(sample.linear_events()[:, idx]).astype(np.float64)
        ranges = []
        for j, i in enumerate(idx):
            r = _channel_range(sample.meta, i)
            col = data[:, j]
            ranges.append(r if r is not None else (float(np.nanmin(col)), float(np.nanmax(col))))
        return _Table(data, [sample.channels[i] for i in idx], np.asarray(ranges, float), str(sample.path))
    if hasattr(sample, "columns") and hasattr(sample, "to_numpy"):  # pandas DataFrame
        missing = [c for c in channels if c not in sample.columns]
        if missing:
            raise CalibrationError(f"{what}: no column(s) {missing}; columns are {list(sample.columns)}")
        data = np.asarray(sample[channels].to_numpy(), dtype=np.float64)
        source = str(getattr(sample, "attrs", {}).get("source", "DataFrame"))
    elif hasattr(sample, "dims") and "channel" in getattr(sample, "dims", ()):
        names = [str(c) for c in sample["channel"].values]
        missing = [c for c in channels if c not in names]
        if missing:
            raise CalibrationError(f"{what}: no channel(s) {missing}; channels are {names}")
        data = to_numpy(sample.sel(channel=channels).transpose(..., "channel").data).astype(np.float64)
        source = str(sample.attrs.get("path", sample.name or "DataArray"))
    else:
        raise CalibrationError(
            f"{what}: expected a path, an FCSSample, a pandas DataFrame or an xarray DataArray, "
            f"got {type(sample).__name__}"
        )
    if data.ndim != 2 or data.shape[0] == 0:
        raise CalibrationError(f"{what} ({source}): no events")
    # no detector range in the input: attrs["ranges"] = {channel: (low, high)} if given, else
    # from zero (or the lowest value, if negative) to the largest value
    given = dict(getattr(sample, "attrs", {}).get("ranges", {}) or {})
    ranges = np.stack([np.minimum(np.nanmin(data, axis=0), 0.0), np.nanmax(data, axis=0)], axis=1)
    for j, c in enumerate(channels):
        if c in given:
            ranges[j] = [float(v) for v in given[c]]
    return _Table(data, channels, ranges, source)


def _display(x, top):
    """The log-like display scale (logicle with W=0, i.e. asinh) used for gating and clustering.

    ``s = asinh(x * 10**M / (2*top)) / ln(10)`` with ``M = 4.5`` decades and
    ``top`` the channel's largest value: ``s`` runs from 0 (x = 0) to about M
    (x = top), is ~linear near zero and ~log10 for bright events, and accepts
    negative values.
    """
    top = np.where(np.asarray(top, float) > 0, top, 1.0)
    return np.arcsinh(np.asarray(x, float) * (10.0**_DECADES / (2.0 * top))) / np.log(10.0)


# --------------------------------------------------------------------------- gating


def density_gate(x, y, fraction=0.3, *, bins=1024, sigma=5.0, x_max=None, y_max=None):
    """Keep the densest ``fraction`` of events in a 2-D scatter plot (the singlet gate).

    The events are binned on the log-like display scale (``bins`` x ``bins``
    over 0..4.5 decades of each channel's range), the histogram is smoothed
    with a Gaussian of ``sigma`` bins, and whole bins are accepted from the
    densest down until at least ``fraction`` of the in-range events are kept
    (the algorithm of FlowCal's ``gate.density2d``).

    Parameters
    ----------
    x, y : array (n_events,)
        Linear-scale values, e.g. FSC and SSC.
    fraction : float
        Fraction of events to keep, 0..1.
    bins : int
        Histogram bins per axis.
    sigma : float
        Smoothing, in bins.
    x_max, y_max : float, optional
        Top of each channel's range (default: the largest value).

    Returns
    -------
    numpy.ndarray of bool (n_events,)
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if not 0.0 <= fraction <= 1.0:
        raise CalibrationError(f"density gate fraction is {fraction}, expected a value in 0..1")
    if x.shape != y.shape or x.ndim != 1:
        raise CalibrationError(f"density gate needs two equal 1-D arrays, got shapes {x.shape} and {y.shape}")
    x_max = float(np.nanmax(x)) if x_max is None else float(x_max)
    y_max = float(np.nanmax(y)) if y_max is None else float(y_max)
    sx, sy = _display(x, x_max), _display(y, y_max)
    step = _DECADES / (bins - 1)
    edges = np.linspace(-step / 2, _DECADES + step / 2, bins + 1)
    ix = np.digitize(sx, edges) - 1
    iy = np.digitize(sy, edges) - 1
    inside = (ix >= 0) & (ix < bins) & (iy >= 0) & (iy < bins) & np.isfinite(sx) & np.isfinite(sy)
    mask = np.zeros(x.shape, bool)
    n_in = int(inside.sum())
    n_keep = int(np.ceil(fraction * n_in))
    if n_keep == 0:
        return mask
    flat = ix[inside] * bins + iy[inside]
    hist = np.bincount(flat, minlength=bins * bins).astype(float)
    dens = gaussian_filter(hist.reshape(bins, bins), sigma=sigma, mode="constant", cval=0.0, truncate=6.0).ravel()
    order = np.argsort(dens, kind="stable")[::-1]
    csum = np.cumsum(hist[order])
    last = int(np.nonzero(csum >= n_keep)[0][0])
    accepted = np.zeros(bins * bins, bool)
    accepted[order[: last + 1]] = True
    mask[np.nonzero(inside)[0][accepted[flat]]] = True
    return mask


# --------------------------------------------------------------------------- clustering


def _gmm(X: np.ndarray, k: int, *, tol: float = 1e-7, max_iter: int = 500, reg: float = 1e-6):
    """Full-covariance Gaussian mixture by EM, initialised as FlowCal's ``clustering_gmm``.

    Initialisation: events sorted by distance to the per-axis minimum are cut
    into ``k`` equal groups; the central half of each gives the initial mean
    and covariance.  Deterministic (labels are the most probable component).

    Returns (labels, weights, means, covariances, responsibilities).
    """
    from scipy.linalg import cho_factor, solve_triangular
    from scipy.special import logsumexp

    n, d = X.shape
    dist = ((X - X.min(axis=0)) ** 2).sum(axis=1)
    order = np.argsort(dist, kind="stable")
    per = n / float(k)
    means = np.empty((k, d))
    covs = np.empty((k, d, d))
    for i in range(k):
        lo, hi = int((i + 0.25) * per), int((i + 0.75) * per)
        part = X[order[lo:max(hi, lo + 2)]]
        means[i] = part.mean(axis=0)
        covs[i] = np.atleast_2d(np.cov(part.T)) + np.eye(d) * 1e-3
    weights = np.full(k, 1.0 / k)
    prev = -np.inf
    logp = np.empty((n, k))
    for _ in range(max_iter):
        for j in range(k):
            c, _low = cho_factor(covs[j], lower=True)
            L = np.tril(c)
            z = solve_triangular(L, (X - means[j]).T, lower=True)
            logp[:, j] = (
                np.log(max(weights[j], 1e-300))
                - 0.5 * (z * z).sum(axis=0)
                - np.log(np.diag(L)).sum()
                - 0.5 * d * np.log(2 * np.pi)
            )
        lse = logsumexp(logp, axis=1)
        resp = np.exp(logp - lse[:, None])
        ll = float(lse.mean())
        nk = resp.sum(axis=0) + 10 * np.finfo(float).eps
        weights = nk / n
        means = (resp.T @ X) / nk[:, None]
        for j in range(k):
            diff = X - means[j]
            covs[j] = (resp[:, j, None] * diff).T @ diff / nk[j] + reg * np.eye(d)
        if abs(ll - prev) < tol:
            break
        prev = ll
    # final responsibilities with the final parameters
    for j in range(k):
        c, _low = cho_factor(covs[j], lower=True)
        L = np.tril(c)
        z = solve_triangular(L, (X - means[j]).T, lower=True)
        logp[:, j] = np.log(max(weights[j], 1e-300)) - 0.5 * (z * z).sum(axis=0) - np.log(np.diag(L)).sum()
    resp = np.exp(logp - logsumexp(logp, axis=1)[:, None])
    return np.argmax(resp, axis=1), weights, means, covs, resp


def _mixture_dip(w, mu, cov, i, j, n_points=65):
    """Ratio of the lowest two-component density between means ``i`` and ``j`` to the lower peak.

    1.0 means no dip at all (the two components make one unimodal bump):
    the peaks are not resolved.
    """
    from scipy.stats import multivariate_normal

    t = np.linspace(0.0, 1.0, n_points)
    pts = mu[i][None, :] * (1 - t)[:, None] + mu[j][None, :] * t[:, None]
    dens = w[i] * multivariate_normal(mu[i], cov[i]).pdf(pts) + w[j] * multivariate_normal(mu[j], cov[j]).pdf(pts)
    dens = np.atleast_1d(dens)
    # highest point near each end (the modes may sit slightly inside the segment)
    left = dens[: n_points // 2 + 1]
    right = dens[n_points // 2 :]
    a, b = int(np.argmax(left)), n_points // 2 + int(np.argmax(right))
    if b <= a + 1:
        return 1.0
    valley = float(dens[a : b + 1].min())
    return valley / float(min(dens[a], dens[b]))


@dataclass
class BeadPopulations:
    """Bead populations found by clustering, sorted from dimmest to brightest.

    Attributes
    ----------
    labels : ndarray of int (n_events,)
        Population of each gated event (0 = dimmest).
    mask : ndarray of bool (n_events,)
        Events that passed the scatter gate (the events ``labels`` refers to).
    weights, means, covariances : ndarray
        Fitted mixture in the display scale of the clustering channels.
    dip : ndarray (n_populations - 1,)
        Depth of the valley between neighbouring populations (1 = no valley).
    """

    labels: np.ndarray
    mask: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    dip: np.ndarray


def bead_populations(table_values, n_populations, tops, *, max_iter=500):
    """Cluster bead events into ``n_populations`` peaks (Gaussian mixture, log-like scale).

    Parameters
    ----------
    table_values : array (n_events, n_channels)
        Linear-scale values of the clustering channels.
    n_populations : int
    tops : sequence of float
        Top of each channel's range (sets the display scale).

    Returns
    -------
    labels, weights, means, covariances, dip
        Sorted so that population 0 is the dimmest (closest to the origin in
        the linear clustering space, as FlowCal orders them).
    """
    X = _display(np.asarray(table_values, float), np.asarray(tops, float)[None, :])
    labels, w, mu, cov, _resp = _gmm(X, n_populations, max_iter=max_iter)
    # order by distance of the linear-scale population mean to the origin
    lin = np.asarray(table_values, float)
    dist = np.array(
        [((lin[labels == j].mean(axis=0)) ** 2).sum() if np.any(labels == j) else np.inf for j in range(n_populations)]
    )
    order = np.argsort(dist, kind="stable")
    remap = np.empty(n_populations, int)
    remap[order] = np.arange(n_populations)
    labels = remap[labels]
    w, mu, cov = w[order], mu[order], cov[order]
    dip = np.array([_mixture_dip(w, mu, cov, i, i + 1) for i in range(n_populations - 1)])
    return labels, w, mu, cov, dip


# --------------------------------------------------------------------------- MESF fit


def fit_mesf_curve(channel_values, mesf_values):
    """Fit ``m*log(x) + b = log(mesf_auto + mesf)`` to bead peaks (natural logs, mesf_auto >= 0).

    Least squares in log space, started where FlowCal's
    ``fit_beads_autofluorescence`` starts (slope and intercept through the two
    brightest peaks, autofluorescence from the dimmest) and refined by a
    bounded quasi-Newton search (L-BFGS-B), as FlowCal does.  (The objective
    also decreases towards ``mesf_auto -> inf`` with a flat slope, so the
    local minimum near the start is the physical one.)

    Parameters
    ----------
    channel_values : array (n_peaks,)
        Peak positions on the channel's linear scale (> 0).
    mesf_values : array (n_peaks,)
        Manufacturer's values (>= 0).

    Returns
    -------
    dict with ``m``, ``b``, ``mesf_auto``, ``residuals`` (natural-log units,
    per peak), ``r2`` (log space).
    """
    from scipy.optimize import minimize

    x = np.asarray(channel_values, float)
    y = np.asarray(mesf_values, float)
    if x.shape != y.shape or x.ndim != 1:
        raise CalibrationError(f"peak values {x.shape} and MESF values {y.shape} must be equal 1-D arrays")
    if x.size < 3:
        raise CalibrationError(f"the standard curve needs at least 3 usable bead peaks, got {x.size}")
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        raise CalibrationError(f"bead peak positions must be finite and > 0, got {x.tolist()}")
    if np.any(~np.isfinite(y)) or np.any(y < 0):
        raise CalibrationError(f"MESF values must be finite and >= 0, got {y.tolist()}")
    lx = np.log(x)
    if lx[-1] == lx[-2]:
        raise CalibrationError(f"the two brightest bead peaks have the same position {x[-1]:g}; cannot fit")
    p0 = np.zeros(3)
    p0[0] = (np.log(y[-1]) - np.log(y[-2])) / (lx[-1] - lx[-2])
    p0[1] = np.log(y[-1]) - p0[0] * lx[-1]
    p0[2] = max(np.exp(p0[0] * lx[0] + p0[1]) - y[0], 0.0)

    def sse(p):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.log(y + p[2]) - (p[0] * lx + p[1])
        v = float(r @ r)
        return v if np.isfinite(v) else 1e300

    res = minimize(sse, p0, method="L-BFGS-B", bounds=((None, None), (None, None), (0, None)),
                   options={"gtol": 1e-10, "ftol": 1e-10})
    m, b, a = (float(v) for v in res.x)
    if not np.all(np.isfinite(res.x)) or (a == 0 and np.any(y == 0)):
        raise CalibrationError(
            f"the bead standard curve did not converge (peaks {x.tolist()}, MESF {y.tolist()}): {res.message}"
        )
    ly = np.log(y + a)
    r = ly - (m * lx + b)
    sst = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float(r @ r) / sst if sst > 0 else float("nan")
    return {"m": m, "b": b, "mesf_auto": a, "residuals": r, "r2": float(r2)}


def _std_curve(x, m, b):
    xp = array_module(x)
    return xp.sign(x) * math.exp(b) * xp.abs(x) ** m


def _inverse_curve(y, m, b):
    xp = array_module(y)
    return xp.sign(y) * (xp.abs(y) / math.exp(b)) ** (1.0 / m)


def _apply_elementwise(values, fn, *args):
    """Apply an elementwise function to numpy, cupy, dask or xarray input, keeping its type and laziness."""
    if hasattr(values, "dims") and hasattr(values, "data") and hasattr(values, "copy"):  # xarray
        return values.copy(data=_apply_elementwise(values.data, fn, *args))
    if type(values).__module__.split(".")[0] == "dask":
        meta = values._meta.astype(np.float64)
        return values.astype(np.float64).map_blocks(fn, *args, dtype=np.float64, meta=meta)
    if array_module(values) is np:
        values = np.asarray(values, dtype=np.float64)
    else:
        values = values.astype(np.float64, copy=False)
    return fn(values, *args)


@dataclass
class MESFCalibration:
    """A fitted fluorescence standard curve for one channel.

    Attributes
    ----------
    channel : str
        The calibrated channel ($PnN).
    units : str
        Calibrated unit name, e.g. ``"MEFL"`` or ``"MESF"``.
    mesf_values : ndarray (n_peaks,)
        The manufacturer's values, dimmest first (NaN = unknown).
    peaks : ndarray (n_peaks,)
        Median of each bead peak on the channel's linear scale; NaN for a peak
        not used in the fit (see ``peak_status``).
    peak_medians : ndarray (n_peaks,)
        Median of every peak found, used or not.
    peak_status : list of str
        ``"used"``, ``"saturated"`` (too close to the top of the range),
        ``"below range"``, or ``"no MESF value"``.
    peak_events : ndarray of int (n_peaks,)
        Events in each peak.
    params : dict
        ``m`` (slope), ``b`` (intercept), ``mesf_auto`` (bead
        autofluorescence, MESF) of ``m*log(x) + b = log(mesf_auto + mesf)``.
    r2 : float
        Coefficient of determination of the fit (log space, used peaks).
    residuals : ndarray (n_peaks,)
        Fit residuals in natural-log units (NaN for unused peaks).
    relative_error : ndarray (n_peaks,)
        Bead model vs manufacturer, ``(to_mesf(peak) - mesf_auto) / mesf - 1``,
        for used peaks with a positive value.
    resolution : ndarray (n_peaks - 1,)
        Valley depth between neighbouring peaks (1 = no valley).
    source : str
        The bead file.
    n_events, n_gated : int
        Events in the file and events in the singlet gate.
    """

    channel: str
    units: str
    mesf_values: np.ndarray
    peaks: np.ndarray
    peak_medians: np.ndarray
    peak_status: list
    peak_events: np.ndarray
    params: dict
    r2: float
    residuals: np.ndarray
    relative_error: np.ndarray
    resolution: np.ndarray
    source: str = ""
    n_events: int = 0
    n_gated: int = 0
    clustering_channels: list = field(default_factory=list)
    scatter_channels: list = field(default_factory=list)
    model: str = "m*log(x) + b = log(mesf_auto + mesf)"

    def to_mesf(self, values):
        """Channel values (linear scale) -> calibrated units (MESF), elementwise.

        ``mesf = sign(x) * exp(b) * |x|**m`` (the bead autofluorescence term
        is not part of the conversion).  NumPy, CuPy, dask (lazy, chunk type
        kept) and xarray inputs give the same type back.
        """
        return _apply_elementwise(values, _std_curve, self.params["m"], self.params["b"])

    def to_channel(self, mesf):
        """Calibrated units (MESF) -> channel values on the linear scale (the inverse of :meth:`to_mesf`)."""
        return _apply_elementwise(mesf, _inverse_curve, self.params["m"], self.params["b"])

    def summary(self) -> dict:
        """Plain-Python summary (for reports and provenance)."""
        return {
            "channel": self.channel,
            "units": self.units,
            "source": self.source,
            "model": self.model,
            "params": dict(self.params),
            "r2": self.r2,
            "mesf_values": [None if not np.isfinite(v) else float(v) for v in self.mesf_values],
            "peaks": [None if not np.isfinite(v) else float(v) for v in self.peaks],
            "peak_status": list(self.peak_status),
            "peak_events": [int(v) for v in self.peak_events],
            "relative_error": [None if not np.isfinite(v) else float(v) for v in self.relative_error],
            "n_events": self.n_events,
            "n_gated": self.n_gated,
            "clustering_channels": list(self.clustering_channels),
            "scatter_channels": list(self.scatter_channels),
        }


def _default_scatter_channels(names: Sequence[str]) -> list:
    def pick(prefix):
        cand = [c for c in names if c.upper() == prefix]
        cand += [c for c in names if c.upper().startswith(prefix + "-H")]
        cand += [c for c in names if c.upper().startswith(prefix + "-A")]
        cand += [c for c in names if c.upper().startswith(prefix) and c not in cand]
        return cand[0] if cand else None

    fsc, ssc = pick("FSC"), pick("SSC")
    return [fsc, ssc] if fsc and ssc else []


def _fluorescence_channels(names: Sequence[str]) -> list:
    """Channels that are neither scatter nor time (nor FSC/SSC width/area variants)."""
    out = []
    for c in names:
        u = c.upper()
        if u.startswith(("FSC", "SSC", "TIME", "HDR-T", "EVENT")) or u in ("FS", "SS", "SC"):
            continue
        out.append(c)
    return out


def _channel_names(beads) -> list:
    if isinstance(beads, (str, Path)):
        from ..io.fcs import read_fcs_metadata

        meta = read_fcs_metadata(beads)
        n = int(meta.get("$PAR", 0))
        return [str(meta.get(f"$P{i}N", "")).strip() for i in range(1, n + 1)]
    if hasattr(beads, "channels") and not hasattr(beads, "dims"):
        return list(beads.channels)
    if hasattr(beads, "columns"):
        return [str(c) for c in beads.columns]
    if hasattr(beads, "dims") and "channel" in beads.dims:
        return [str(c) for c in beads["channel"].values]
    return []


def _count_modes(s: np.ndarray, bin_width: float = 0.01, smooth_bins: float = 2.0, min_prominence: float = 0.02) -> int:
    """Number of peaks in the smoothed histogram of display-scale values ``s``."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    s = s[np.isfinite(s)]
    if s.size == 0:
        return 0
    lo, hi = float(s.min()) - 5 * bin_width, float(s.max()) + 5 * bin_width
    h, _ = np.histogram(s, bins=max(int((hi - lo) / bin_width), 3), range=(lo, hi))
    hs = gaussian_filter1d(h.astype(float), smooth_bins, mode="constant")
    if hs.max() <= 0:
        return 0
    peaks, _ = find_peaks(np.concatenate([[0.0], hs, [0.0]]), prominence=min_prominence * hs.max())
    return int(peaks.size)


def _find_bead_peaks(values, tops, k, min_valley):
    """Cluster, then list unresolved neighbour pairs (valley too shallow, empty peak, too few 1-D modes)."""
    n_modes = None
    if values.shape[1] == 1:
        n_modes = _count_modes(_display(values[:, 0], tops[0]))
    # too few modes: the answer is 'unresolved' whatever the mixture does, so do not iterate long
    labels, w, mu, cov, dip = bead_populations(values, k, tops, max_iter=50 if (n_modes or k) < k else 500)
    counts = np.bincount(labels, minlength=k)
    bad = [j for j in range(k - 1) if dip[j] >= min_valley or counts[j] == 0 or counts[j + 1] == 0]
    if n_modes is not None:
        if n_modes < k and not bad:
            # the mixture split a peak somewhere: flag the pair with the shallowest valley
            bad = [int(np.argmax(dip))]
    return labels, dip, bad, n_modes


def calibrate_mesf(
    beads,
    channel: str,
    mesf_values,
    clustering_channels: Sequence[str] | None = None,
    scatter_channels: Sequence[str] | None = None,
    *,
    units: str = "MESF",
    trim_events: tuple[int, int] = (250, 100),
    gate_fraction: float = 0.3,
    gate_sigma: float = 5.0,
    n_std: float = 2.5,
    min_valley: float = 0.95,
    min_r2: float = 0.99,
    on_unresolved: str = "raise",
) -> MESFCalibration:
    """Fit a MESF/MEFL standard curve from a multi-peak bead file.

    Steps (the procedure of FlowCal's ``analyze_mef`` example and
    ``mef.get_transform_fxn``): (0) the first and last events
    (``trim_events``) are dropped (fluidics transients); (1) events saturated
    on the scatter channels are dropped and the densest ``gate_fraction`` of
    the FSC/SSC plot is kept (singlet beads); (2) a Gaussian mixture with one
    component per entry of ``mesf_values`` is fitted to the clustering
    channels on a log-like scale; (3) the median of ``channel`` in each
    population is the peak position; peaks whose mean lies within ``n_std``
    standard deviations of the bottom or top 1.5 % of the channel's range
    (saturated) and peaks with a NaN MESF value are not used; (4)
    ``m*log(x) + b = log(mesf_auto + mesf)`` is fitted to the used peaks.

    Parameters
    ----------
    beads : path, FCSSample, pandas.DataFrame or xarray.DataArray
        The bead sample; FCS input is read on the linear scale (``scale=True``)
        and the detector range comes from ``$PnR``/``$PnE``/``$PnG``; for a
        DataFrame/DataArray it comes from ``.attrs["ranges"]`` (``{channel:
        (low, high)}``) or else spans 0 to the largest value.
    channel : str
        Channel to calibrate ($PnN or $PnS).
    mesf_values : sequence of float
        Manufacturer's value of every bead peak, dimmest (blank: 0) first;
        NaN for a peak with no value.
    clustering_channels : sequence of str, optional
        Channels the peaks are found in.  Default: ``[channel]``, and when
        its peaks are not all resolved there, ``channel`` plus the file's
        other fluorescence channels (multi-peak beads are bright in all of
        them; e.g. FL1 alone merges the blank and the dimmest peak of the
        FlowCal beads, FL1+FL3 separates them).  The channels used are in
        ``.clustering_channels``.
    scatter_channels : sequence of two str, optional
        FSC and SSC for the singlet gate.  Default: the channels named
        FSC/SSC (FSC-H/SSC-H, ...) when present; pass ``[]`` for no gate.
    units : str
        Name of the calibrated unit (``"MEFL"``, ``"MESF"``, ``"MEPE"``...).
    trim_events : (int, int)
        Events dropped at the start and the end of the acquisition (skipped
        when the file has fewer than 4 times as many events).
    gate_fraction, gate_sigma : float
        Fraction of events kept by the singlet density gate, and its
        smoothing in histogram bins.
    n_std : float
        Saturation margin in standard deviations (display scale).
    min_valley : float
        Neighbouring peaks whose fitted densities have a valley shallower
        than this (valley / lower peak >= ``min_valley``) are unresolved.
    min_r2 : float
        A fit with a lower R^2 (log space) is rejected.
    on_unresolved : {"raise", "drop"}
        Raise :class:`CalibrationError` for unresolved peaks (default), or
        leave both peaks of an unresolved pair out of the fit and mark them
        ``"unresolved"``.

    Returns
    -------
    MESFCalibration

    Raises
    ------
    CalibrationError
        Unresolvable peaks (e.g. fewer peaks in the data than MESF values),
        fewer than 3 usable peaks, peaks not increasing with their MESF
        values, a fit with a non-positive slope or an R^2 below ``min_r2``.
    """
    mesf = np.asarray(
        [np.nan if v is None else v for v in np.atleast_1d(np.asarray(mesf_values, dtype=object))], dtype=float
    )
    if mesf.ndim != 1 or mesf.size < 3:
        raise CalibrationError(f"mesf_values must list at least 3 bead peaks, got {mesf.size}")
    finite = mesf[np.isfinite(mesf)]
    if np.any(finite < 0):
        raise CalibrationError(f"mesf_values must be >= 0, got {mesf.tolist()}")
    if np.any(np.diff(finite) <= 0):
        raise CalibrationError(f"mesf_values must increase from the dimmest peak to the brightest, got {mesf.tolist()}")
    if on_unresolved not in ("raise", "drop"):
        raise CalibrationError(f"on_unresolved={on_unresolved!r}, expected 'raise' or 'drop'")
    k = mesf.size
    names = _channel_names(beads)
    if clustering_channels is None:
        candidates = [[channel]]
        extra = [c for c in _fluorescence_channels(names) if c != channel]
        if extra:
            candidates.append([channel] + extra)
    else:
        candidates = [list(clustering_channels)]
        if not candidates[0]:
            raise CalibrationError("clustering_channels is empty; give at least one channel")
    scatter = _default_scatter_channels(names) if scatter_channels is None else list(scatter_channels)
    if scatter and len(scatter) != 2:
        raise CalibrationError(f"scatter_channels must name two channels (FSC, SSC), got {scatter}")
    wanted = [channel]
    for c in [c for cand in candidates for c in cand] + scatter:
        if c not in wanted:
            wanted.append(c)
    table = _as_table(beads, wanted, what="beads")
    col = {c: i for i, c in enumerate(wanted)}
    data = table.data
    n_events = data.shape[0]
    ok = np.all(np.isfinite(data), axis=1)
    # (0) fluidics transients
    t0, t1 = (int(v) for v in trim_events)
    if t0 < 0 or t1 < 0:
        raise CalibrationError(f"trim_events must be two counts >= 0, got {trim_events}")
    if n_events >= 4 * (t0 + t1):
        ok[:t0] = False
        ok[n_events - t1 :] = False
    # (1) singlet gate
    if scatter:
        s_idx = [col[c] for c in scatter]
        lo, hi = table.ranges[s_idx, 0], table.ranges[s_idx, 1]
        sv = data[:, s_idx]
        ok &= np.all((sv > lo) & (sv < hi), axis=1)  # drop events saturated on scatter
        gate = np.zeros(n_events, bool)
        sub = np.nonzero(ok)[0]
        gate[sub] = density_gate(sv[sub, 0], sv[sub, 1], gate_fraction, sigma=gate_sigma, x_max=hi[0], y_max=hi[1])
    else:
        gate = ok
    n_gated = int(gate.sum())
    if n_gated < 10 * k:
        raise CalibrationError(
            f"{table.source}: only {n_gated} bead events left after the scatter gate on {scatter}, "
            f"too few to find {k} peaks"
        )
    # (2) clustering
    gated = data[gate]
    fl = gated[:, col[channel]]
    for clustering in candidates:
        c_idx = [col[c] for c in clustering]
        labels, dip, bad, n_modes = _find_bead_peaks(gated[:, c_idx], table.ranges[c_idx, 1], k, min_valley)
        if not bad:
            break
    # (3) peak statistics and selection
    rlo, rhi = table.ranges[col[channel]]
    s_lo = _display(rlo, rhi) + 0.015 * (_display(rhi, rhi) - _display(rlo, rhi))
    s_hi = _display(rlo, rhi) + 0.985 * (_display(rhi, rhi) - _display(rlo, rhi))
    medians = np.full(k, np.nan)
    counts = np.zeros(k, np.int64)
    status = []
    for j in range(k):
        pop = fl[labels == j]
        counts[j] = pop.size
        if pop.size == 0:
            status.append("empty")
            continue
        medians[j] = float(np.median(pop))
        s = _display(pop, rhi)
        m_, sd = float(s.mean()), max(float(s.std(ddof=0)), 0.005)
        if not np.isfinite(mesf[j]):
            status.append("no MESF value")
        elif m_ - n_std * sd <= s_lo:
            status.append("below range")
        elif m_ + n_std * sd >= s_hi:
            status.append("saturated")
        else:
            status.append("used")
    if bad:
        pairs = ", ".join(
            f"peaks {j} and {j + 1} (MESF {mesf[j]:g} and {mesf[j + 1]:g}; valley ratio {dip[j]:.2f}, "
            f"medians {medians[j]:.4g} and {medians[j + 1]:.4g})"
            for j in bad
        )
        modes = f"; the histogram of {channel} shows {n_modes} peaks" if n_modes is not None else ""
        if on_unresolved == "raise":
            raise CalibrationError(
                f"{table.source}: bead peaks in {clustering} cannot be resolved: {pairs}{modes}; expected {k} "
                f"separate populations (one per MESF value). Check the number of MESF values, the "
                f"clustering channels, or pass on_unresolved='drop'"
            )
        for j in bad:
            for jj in (j, j + 1):
                status[jj] = "unresolved"
    merged = [j for j in range(k) if counts[j] > 0 and _count_modes(_display(fl[labels == j], rhi), min_prominence=0.1) > 1]
    if merged:
        msg = (
            f"{table.source}: population(s) {merged} of {channel} hold more than one peak: the data show more "
            f"bead peaks than the {k} MESF values given ({mesf.tolist()}); give one value per peak "
            "(NaN for a peak without a value)"
        )
        if on_unresolved == "raise":
            raise CalibrationError(msg)
        for j in merged:
            if status[j] == "used":
                status[j] = "several peaks"
    used = np.array([s == "used" for s in status])
    if used.sum() < 3:
        raise CalibrationError(
            f"{table.source}: only {int(used.sum())} usable bead peaks in {channel} (status per peak: "
            f"{status}); the standard curve needs at least 3"
        )
    x_used, y_used = medians[used], mesf[used]
    if np.any(np.diff(x_used) <= 0):
        raise CalibrationError(
            f"{table.source}: bead peak medians in {channel} do not increase with their MESF values "
            f"(medians {x_used.tolist()} for MESF {y_used.tolist()}); the standard curve would not be monotonic"
        )
    # (4) fit
    fit = fit_mesf_curve(x_used, y_used)
    if not fit["m"] > 0:
        raise CalibrationError(
            f"{table.source}: the fitted standard curve for {channel} has slope m={fit['m']:.4g} <= 0; "
            "a calibration must increase with fluorescence"
        )
    if not fit["r2"] >= min_r2:
        raise CalibrationError(
            f"{table.source}: the standard curve for {channel} fits poorly (R^2 = {fit['r2']:.4f} < {min_r2}; "
            f"peaks {x_used.tolist()} for MESF {y_used.tolist()}); check the MESF values and the peaks found"
        )
    peaks = np.where(used, medians, np.nan)
    residuals = np.full(k, np.nan)
    residuals[used] = fit["residuals"]
    rel = np.full(k, np.nan)
    pos = used & (mesf > 0)
    rel[pos] = (_std_curve(medians[pos], fit["m"], fit["b"]) - fit["mesf_auto"]) / mesf[pos] - 1.0
    return MESFCalibration(
        channel=table.names[0],
        units=units,
        mesf_values=mesf,
        peaks=peaks,
        peak_medians=medians,
        peak_status=status,
        peak_events=counts,
        params={"m": fit["m"], "b": fit["b"], "mesf_auto": fit["mesf_auto"]},
        r2=fit["r2"],
        residuals=residuals,
        relative_error=rel,
        resolution=dip,
        source=table.source,
        n_events=n_events,
        n_gated=n_gated,
        clustering_channels=list(clustering),
        scatter_channels=scatter,
    )


# --------------------------------------------------------------------------- scatter -> diameter


def _interp_chunk(values, xp_grid, fp_grid, log_x):
    xp = array_module(values)
    g = xp.asarray(xp_grid)
    f = xp.asarray(fp_grid)
    v = values.astype(xp.float64)
    if log_x:
        with np.errstate(divide="ignore", invalid="ignore"):
            lv = xp.log(xp.where(v > 0, v, xp.nan))
        out = xp.exp(xp.interp(lv, g, f, left=xp.nan, right=xp.nan))
    else:
        out = xp.interp(v, g, f, left=xp.nan, right=xp.nan)
    return out


def _flag_chunk(values, lo, hi):
    xp = array_module(values)
    v = values.astype(xp.float64)
    out = xp.zeros(v.shape, dtype=xp.int8)
    out = xp.where(v < lo, xp.int8(-1), out)
    out = xp.where(v > hi, xp.int8(1), out)
    out = xp.where(xp.isnan(v), xp.int8(2), out)
    return out.astype(xp.int8)


@dataclass
class ScatterCalibration:
    """Scatter channel <-> particle diameter, through Mie theory and a fitted instrument gain.

    ``scatter = gain * C(d)``, with ``C(d)`` the cross-section (nm^2)
    collected by ``detector`` for the particle model.

    Attributes
    ----------
    channel : str
        The scatter channel.
    gain : float
        Scatter units per nm^2 of collected cross-section.
    particle : Sphere or CoatedSphere
        Model the diameters are computed for (e.g. :data:`evflow.flow.mie.VESICLE`).
    wavelength_nm, medium_index : float
    detector : Detector
    bead_model : Sphere or CoatedSphere
        Model of the size beads the gain was fitted on.
    bead_diameters_nm, bead_scatter, bead_cross_section : ndarray
        The beads: nominal diameters, measured peak medians, computed cross-sections (nm^2).
    residuals : ndarray
        ``log(measured / (gain * C))`` per bead (natural log).
    r2 : float
        Coefficient of determination of ``log(measured)`` vs ``log(gain * C)``.
    diameter_grid_nm, cross_section_grid : ndarray
        The particle's computed curve.
    unique_range_nm : (float, float)
        Diameters over which scatter determines the diameter uniquely (the
        rising part of the curve below any Mie oscillation).
    unique_scatter_range : (float, float)
        The same range in scatter units.
    """

    channel: str
    gain: float
    particle: object
    wavelength_nm: float
    medium_index: float
    detector: object
    bead_model: object
    bead_diameters_nm: np.ndarray
    bead_scatter: np.ndarray
    bead_cross_section: np.ndarray
    residuals: np.ndarray
    r2: float
    diameter_grid_nm: np.ndarray
    cross_section_grid: np.ndarray
    unique_range_nm: tuple
    unique_scatter_range: tuple
    source: str = ""

    def scatter_of(self, diameter_nm):
        """Expected scatter (channel units) of a particle of ``diameter_nm`` (nm)."""
        d = np.asarray(diameter_nm, float)
        lg = np.log(self.diameter_grid_nm)
        ls = np.log(self.cross_section_grid)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.gain * np.exp(np.interp(np.log(d), lg, ls, left=np.nan, right=np.nan))
        return out if out.ndim else float(out)

    def _inverse_grid(self):
        lo_d, hi_d = self.unique_range_nm
        sel = (self.diameter_grid_nm >= lo_d) & (self.diameter_grid_nm <= hi_d)
        return np.log(self.gain * self.cross_section_grid[sel]), np.log(self.diameter_grid_nm[sel])

    def to_diameter(self, values):
        """Scatter (channel units, linear scale) -> diameter (nm), elementwise.

        Values outside :attr:`unique_scatter_range` give NaN (see
        :meth:`diameter_flags`).  NumPy, CuPy, dask (lazy) and xarray inputs
        give the same type back.
        """
        xg, fg = self._inverse_grid()
        lo, hi = self.unique_scatter_range

        def fn(v, xg, fg):
            xp = array_module(v)
            out = _interp_chunk(v, xg, fg, True)
            return xp.where((v >= lo) & (v <= hi), out, xp.nan)

        return _apply_elementwise(values, fn, xg, fg)

    def diameter_flags(self, values):
        """Per event: 0 = diameter determined, -1 = below the range, 1 = above (not unique), 2 = NaN."""
        lo, hi = self.unique_scatter_range
        if hasattr(values, "dims") and hasattr(values, "data") and hasattr(values, "copy"):
            return values.copy(data=self.diameter_flags(values.data))
        if type(values).__module__.split(".")[0] == "dask":
            meta = values._meta.astype(np.int8)
            return values.map_blocks(_flag_chunk, lo, hi, dtype=np.int8, meta=meta)
        if array_module(values) is np:
            values = np.asarray(values, dtype=np.float64)
        return _flag_chunk(values, lo, hi)

    def for_particle(self, particle, diameter_range_nm=None) -> ScatterCalibration:
        """The same instrument gain applied to another particle model (e.g. silica beads, other EV indices)."""
        rng = diameter_range_nm or (float(self.diameter_grid_nm[0]), float(self.diameter_grid_nm[-1]))
        return _scatter_calibration(
            self.channel, self.gain, particle, self.wavelength_nm, self.medium_index, self.detector,
            self.bead_model, self.bead_diameters_nm, self.bead_scatter, self.bead_cross_section,
            self.residuals, self.r2, rng, self.source,
        )

    def summary(self) -> dict:
        """Plain-Python summary (for reports and provenance)."""
        return {
            "channel": self.channel,
            "gain_per_nm2": self.gain,
            "particle": repr(self.particle),
            "bead_model": repr(self.bead_model),
            "wavelength_nm": self.wavelength_nm,
            "medium_index": self.medium_index,
            "detector": repr(self.detector),
            "bead_diameters_nm": [float(v) for v in self.bead_diameters_nm],
            "bead_scatter": [float(v) for v in self.bead_scatter],
            "residuals": [float(v) for v in self.residuals],
            "r2": self.r2,
            "unique_range_nm": [float(v) for v in self.unique_range_nm],
            "unique_scatter_range": [float(v) for v in self.unique_scatter_range],
            "source": self.source,
        }


def _unique_range(d, c):
    """Rising part of the curve ``c(d)`` whose values no larger diameter repeats."""
    rising = np.diff(c) > 0
    if not rising[0]:
        raise CalibrationError(
            f"the scatter cross-section does not increase at the smallest diameter {d[0]:g} nm; "
            "no diameter range maps one-to-one to scatter"
        )
    stop = int(np.argmin(rising)) if not rising.all() else c.size - 1  # first local maximum
    if stop == c.size - 1:
        return 0, c.size - 1
    upper = float(c[stop:].min())  # below this value, only the first rising branch reaches
    last = int(np.nonzero(c[: stop + 1] <= upper)[0][-1])
    return 0, last


@functools.lru_cache(maxsize=64)
def _particle_curve(particle, wavelength_nm, medium_index, detector, d_lo, d_hi, n_grid=200):
    """Collected cross-section on a log-spaced diameter grid (cached: models and detectors are frozen)."""
    from .mie import collected_cross_section

    grid = np.geomspace(d_lo, d_hi, n_grid)
    cs = collected_cross_section(particle, grid, wavelength_nm, medium_index, detector)
    grid.setflags(write=False)
    cs.setflags(write=False)
    return grid, cs


def _scatter_calibration(channel, gain, particle, wavelength_nm, medium_index, detector, bead_model,
                         bead_d, bead_s, bead_c, residuals, r2, diameter_range_nm, source):
    d_lo, d_hi = (float(v) for v in diameter_range_nm)
    if not 0 < d_lo < d_hi:
        raise CalibrationError(f"diameter_range_nm must be (low, high) with 0 < low < high, got {diameter_range_nm}")
    grid, cs = _particle_curve(particle, float(wavelength_nm), float(medium_index), detector, d_lo, d_hi)
    i0, i1 = _unique_range(grid, cs)
    return ScatterCalibration(
        channel=channel,
        gain=float(gain),
        particle=particle,
        wavelength_nm=float(wavelength_nm),
        medium_index=float(medium_index),
        detector=detector,
        bead_model=bead_model,
        bead_diameters_nm=np.asarray(bead_d, float),
        bead_scatter=np.asarray(bead_s, float),
        bead_cross_section=np.asarray(bead_c, float),
        residuals=np.asarray(residuals, float),
        r2=float(r2),
        diameter_grid_nm=grid,
        cross_section_grid=cs,
        unique_range_nm=(float(grid[i0]), float(grid[i1])),
        unique_scatter_range=(float(gain * cs[i0]), float(gain * cs[i1])),
        source=source,
    )


def fit_scatter_gain(
    bead_scatter,
    bead_diameters_nm,
    *,
    bead_model=None,
    particle=None,
    channel: str = "SSC",
    wavelength_nm: float = 488.0,
    medium_index: float = 1.333,
    detector=None,
    diameter_range_nm=(30.0, 1000.0),
    source: str = "",
) -> ScatterCalibration:
    """Fit the instrument gain from size-bead peaks and build a scatter -> diameter calibration.

    ``gain = exp(mean(log(measured / C_bead(d))))`` (least squares in log
    space), with ``C_bead`` the Mie cross-section of the beads collected by
    ``detector``.

    Parameters
    ----------
    bead_scatter : array (n_beads,)
        Measured scatter of each bead population (median, linear scale).
    bead_diameters_nm : array (n_beads,)
        Their nominal diameters (nm).
    bead_model : Sphere, optional
        Bead material (default polystyrene, n = 1.59).
    particle : Sphere or CoatedSphere, optional
        Particles to size (default an EV: core 1.38, 5 nm shell 1.48).
    channel : str
        Name of the scatter channel.
    wavelength_nm, medium_index : float
        Laser vacuum wavelength (nm) and medium refractive index.
    detector : Detector, optional
        Collection geometry (default side scatter, 53 deg half-angle).
    diameter_range_nm : (float, float)
        Diameters the particle curve is computed over (nm).

    Returns
    -------
    ScatterCalibration
    """
    from .mie import POLYSTYRENE, VESICLE, Detector, collected_cross_section

    bead_model = POLYSTYRENE if bead_model is None else bead_model
    particle = VESICLE if particle is None else particle
    detector = Detector.side_scatter() if detector is None else detector
    s = np.asarray(bead_scatter, float)
    d = np.asarray(bead_diameters_nm, float)
    if s.shape != d.shape or s.ndim != 1 or s.size < 1:
        raise CalibrationError(f"bead scatter {s.shape} and bead diameters {d.shape} must be equal non-empty 1-D arrays")
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise CalibrationError(f"bead scatter values must be finite and > 0, got {s.tolist()}")
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise CalibrationError(f"bead diameters must be finite and > 0 nm, got {d.tolist()}")
    c = np.atleast_1d(collected_cross_section(bead_model, d, wavelength_nm, medium_index, detector))
    lr = np.log(s) - np.log(c)
    log_gain = float(lr.mean())
    residuals = lr - log_gain
    ls = np.log(s)
    sst = float(((ls - ls.mean()) ** 2).sum())
    r2 = 1.0 - float(residuals @ residuals) / sst if sst > 0 and s.size > 1 else float("nan")
    return _scatter_calibration(
        channel, math.exp(log_gain), particle, wavelength_nm, medium_index, detector, bead_model,
        d, s, c, residuals, r2, diameter_range_nm, source,
    )


def calibrate_scatter(
    beads,
    channel: str,
    diameters_nm,
    *,
    bead_model=None,
    particle=None,
    wavelength_nm: float = 488.0,
    medium_index: float = 1.333,
    detector=None,
    diameter_range_nm=(30.0, 1000.0),
    max_residual: float = 0.5,
) -> ScatterCalibration:
    """Scatter -> diameter calibration from a file of mixed size beads.

    The bead populations are found with a Gaussian mixture (one component per
    diameter) on the log-like scale of ``channel``; they are matched to the
    diameters in the order of their computed cross-sections (which is the
    order of size wherever the Mie curve rises), and the gain is fitted by
    :func:`fit_scatter_gain`.

    Parameters
    ----------
    beads : path, FCSSample, pandas.DataFrame or xarray.DataArray
    channel : str
        The scatter channel (e.g. ``"SSC-H"``).
    diameters_nm : sequence of float
        Nominal diameters of the bead populations in the file (nm).
    max_residual : float
        A bead whose measured scatter departs from the fitted curve by more
        than this (natural-log units; 0.5 = a factor 1.65) raises an error:
        wrong sizes, wrong refractive index or wrong optics.

    Other parameters are those of :func:`fit_scatter_gain`.
    """
    from .mie import POLYSTYRENE, Detector, collected_cross_section

    bead_model = POLYSTYRENE if bead_model is None else bead_model
    det = Detector.side_scatter() if detector is None else detector
    d = np.asarray(diameters_nm, float)
    if d.ndim != 1 or d.size < 1:
        raise CalibrationError(f"diameters_nm must list the bead sizes, got {diameters_nm!r}")
    table = _as_table(beads, [channel], what="size beads")
    v = table.data[:, 0]
    v = v[np.isfinite(v)]
    k = d.size
    c = np.atleast_1d(collected_cross_section(bead_model, d, wavelength_nm, medium_index, det))
    if k == 1:
        medians = np.array([np.median(v)])
    else:
        n_modes = _count_modes(_display(v, table.ranges[0, 1]))
        if n_modes < k:
            labels, dip, counts = None, np.full(k - 1, np.nan), None
        else:
            labels, w, mu, cov, dip = bead_populations(v[:, None], k, [table.ranges[0, 1]])
            counts = np.bincount(labels, minlength=k)
        if n_modes < k or np.any(counts == 0) or np.any(dip >= 0.95):
            raise CalibrationError(
                f"{table.source}: {k} size-bead populations expected in {channel} ({d.tolist()} nm) but they "
                f"cannot be resolved (histogram peaks: {n_modes}, valley ratios {np.round(dip, 2).tolist()})"
            )
        medians = np.array([np.median(v[labels == j]) for j in range(k)])
    order = np.argsort(c, kind="stable")
    if np.unique(np.round(c / c.max(), 6)).size < k:
        raise CalibrationError(f"bead sizes {d.tolist()} nm give equal computed scatter; they cannot be told apart")
    sorted_d = d[order]
    cal = fit_scatter_gain(
        medians, sorted_d, bead_model=bead_model, particle=particle, channel=table.names[0],
        wavelength_nm=wavelength_nm, medium_index=medium_index, detector=det,
        diameter_range_nm=diameter_range_nm, source=table.source,
    )
    worst = int(np.argmax(np.abs(cal.residuals)))
    if abs(cal.residuals[worst]) > max_residual:
        raise CalibrationError(
            f"{table.source}: the {sorted_d[worst]:g} nm beads scatter {math.exp(cal.residuals[worst]):.2f}x what the "
            f"Mie model predicts after fitting the gain (bead medians {medians.tolist()}); check the bead sizes, "
            "refractive index, wavelength and collection angles"
        )
    return cal


def size_gate_limits(calibration: ScatterCalibration, min_nm: float, max_nm: float) -> tuple[float, float]:
    """Scatter limits (channel units) of a diameter range, through the monotonic part of the Mie curve.

    Raises
    ------
    CalibrationError
        If the range is empty or leaves the range where scatter determines the diameter uniquely.
    """
    lo_d, hi_d = calibration.unique_range_nm
    if not min_nm < max_nm:
        raise CalibrationError(f"size gate: min_nm ({min_nm}) must be below max_nm ({max_nm})")
    if min_nm < lo_d * (1 - 1e-9) or max_nm > hi_d * (1 + 1e-9):
        raise CalibrationError(
            f"size gate {min_nm:g}-{max_nm:g} nm leaves the range where {calibration.channel} determines the "
            f"diameter uniquely ({lo_d:.1f}-{hi_d:.1f} nm)"
        )
    return float(calibration.scatter_of(min_nm)), float(calibration.scatter_of(max_nm))


def size_gate(calibration: ScatterCalibration, min_nm: float, max_nm: float, gate_id: str = "size", parent=None):
    """A rectangle gate on the scatter channel selecting diameters ``min_nm``..``max_nm`` (nm).

    The gate is a range on the scatter channel whose limits are the scatter
    of particles of those diameters (:func:`size_gate_limits`).  This is
    exact because scatter rises monotonically with diameter over the gate
    (checked), so it can be a parent gate in any gating strategy.  The
    scatter channel is used on its linear scale (no transform).

    Returns
    -------
    evflow.flow.gates.RectangleGate
    """
    lo, hi = size_gate_limits(calibration, min_nm, max_nm)
    from .gates import Dimension, RectangleGate

    return RectangleGate(gate_id, [Dimension(calibration.channel)], [lo], [hi], parent=parent)


# --------------------------------------------------------------------------- concentration


def analysed_volume_ul(sample=None, *, volume_ul=None, flow_rate_ul_per_min=None, time_channel=None) -> dict:
    """Volume of sample the events came from, in microlitres, and how it was obtained.

    In order of preference: ``volume_ul`` given by the user; the ``$VOL``
    keyword (nanolitres, FCS 3.1); ``flow_rate_ul_per_min`` times the
    acquisition time from the Time channel (span of its values, scaled by
    ``$TIMESTEP`` seconds) or, without a Time channel, ``$BTIM``/``$ETIM``.

    Returns
    -------
    dict with ``volume_ul``, ``method`` and the numbers behind it.

    Raises
    ------
    CalibrationError
        If none of these is available.
    """
    if volume_ul is not None:
        v = float(volume_ul)
        if not v > 0:
            raise CalibrationError(f"volume_ul must be > 0, got {volume_ul}")
        return {"volume_ul": v, "method": "user"}
    meta = getattr(sample, "meta", {}) or {}
    src = getattr(sample, "path", "sample")
    vol = str(meta.get("$VOL", "") or "").strip()
    if vol and flow_rate_ul_per_min is None:
        try:
            v = float(vol) / 1000.0
        except ValueError:
            raise CalibrationError(f"{src}: $VOL is {vol!r}, expected a number of nanolitres") from None
        if v > 0:
            return {"volume_ul": v, "method": "$VOL", "$VOL_nl": float(vol)}
    if flow_rate_ul_per_min is not None:
        rate = float(flow_rate_ul_per_min)
        if not rate > 0:
            raise CalibrationError(f"flow_rate_ul_per_min must be > 0, got {flow_rate_ul_per_min}")
        seconds, how = _acquisition_seconds(sample, time_channel)
        return {
            "volume_ul": rate * seconds / 60.0,
            "method": f"flow rate x acquisition time ({how})",
            "flow_rate_ul_per_min": rate,
            "acquisition_s": seconds,
        }
    raise CalibrationError(
        f"{src}: cannot tell the analysed volume: no $VOL keyword; give volume_ul= or flow_rate_ul_per_min= "
        "(with a Time channel or $BTIM/$ETIM)"
    )


def _acquisition_seconds(sample, time_channel=None):
    from ..backend import to_numpy

    meta = getattr(sample, "meta", {}) or {}
    src = getattr(sample, "path", "sample")
    name = time_channel or getattr(sample, "time_channel", None)
    if name is not None and hasattr(sample, "channel_index"):
        i = sample.channel_index(name)
        # linear_events applies $TIMESTEP to the time channel (FCSSample); other samples are taken as is
        events = sample.linear_events() if hasattr(sample, "linear_events") else sample.events
        t = to_numpy(events[:, i]).astype(float)
        if t.size > 1 and np.nanmax(t) > np.nanmin(t):
            return float(np.nanmax(t) - np.nanmin(t)), f"Time channel {name!r}"
    bt, et = str(meta.get("$BTIM", "") or ""), str(meta.get("$ETIM", "") or "")
    if bt and et:
        def secs(s):
            parts = s.strip().replace(".", ":").split(":")
            h, m, sec = (float(x) for x in parts[:3])
            frac = float("0." + parts[3]) if len(parts) > 3 and parts[3] else 0.0
            return h * 3600 + m * 60 + sec + frac

        try:
            dt = secs(et) - secs(bt)
        except ValueError:
            dt = -1
        if dt < 0:
            dt += 86400
        if dt > 0:
            return dt, "$BTIM/$ETIM"
    raise CalibrationError(f"{src}: no usable Time channel or $BTIM/$ETIM to measure the acquisition time")


def concentration_per_ml(n_events, volume_ul, dilution_factor: float = 1.0):
    """Particles per mL of the original sample: ``n_events / volume * dilution_factor``.

    Parameters
    ----------
    n_events : int or array
        Events counted (after gating / background subtraction).
    volume_ul : float
        Analysed volume (microlitres).
    dilution_factor : float
        How many times the sample was diluted before acquisition (>= 1).
    """
    v = float(volume_ul)
    f = float(dilution_factor)
    if not v > 0:
        raise CalibrationError(f"analysed volume must be > 0 uL, got {volume_ul}")
    if not f > 0:
        raise CalibrationError(f"dilution factor must be > 0, got {dilution_factor}")
    return np.asarray(n_events, float) / (v * 1e-3) * f
