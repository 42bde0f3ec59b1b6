"""Bead populations: the singlet density gate, the Gaussian mixture and peak finding.

All of it works on the log-like display scale :func:`_display` (logicle with
W=0, FlowCal's default of 4.5 decades).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import CalibrationError

__all__ = ["density_gate", "BeadPopulations", "bead_populations"]


# number of display decades of the log-like (logicle, W=0) scale used for
# gating and clustering; FlowCal's default for channels of any range
_DECADES = 4.5


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


def _kmeanspp(X: np.ndarray, k: int, rng) -> np.ndarray:
    """k-means++ seeds (D^2 sampling) refined by a few Lloyd steps; returns labels."""
    n = X.shape[0]
    centres = [X[int(rng.integers(n))]]
    d2 = ((X - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(X[int(rng.choice(n, p=p))])
        d2 = np.minimum(d2, ((X - centres[-1]) ** 2).sum(axis=1))
    C = np.array(centres)
    for _ in range(20):
        lab = np.argmin(((X[:, None, :] - C[None]) ** 2).sum(axis=2), axis=1)
        newC = np.array([X[lab == j].mean(axis=0) if np.any(lab == j) else C[j] for j in range(k)])
        if np.allclose(newC, C):
            break
        C = newC
    return lab


def _gmm(X: np.ndarray, k: int, *, tol: float = 1e-7, max_iter: int = 500, reg: float = 1e-6,
         max_fit_events: int = 10_000, init: str = "flowcal"):
    """Full-covariance Gaussian mixture by EM, initialised as FlowCal's ``clustering_gmm``.

    Initialisation (``init="flowcal"``): events sorted by distance to the
    per-axis minimum are cut into ``k`` equal groups; the central half of each
    gives the initial mean and covariance.  ``init="kmeans++"``: the groups of
    a k-means++ clustering.  The mixture is fitted on at most
    ``max_fit_events`` events (an evenly spaced, deterministic subsample) for
    at most ``max_iter`` EM steps; every event is then labelled with its most
    probable component.  Deterministic.

    Returns (labels, weights, means, covariances, responsibilities).
    """
    from scipy.linalg import cho_factor, solve_triangular
    from scipy.special import logsumexp

    X_all = X
    if X.shape[0] > max_fit_events:
        X = X[np.linspace(0, X.shape[0] - 1, max_fit_events).astype(np.int64)]
    n, d = X.shape
    means = np.empty((k, d))
    covs = np.empty((k, d, d))
    if init == "kmeans++":
        lab = _kmeanspp(X, k, np.random.default_rng(0))
        for i in range(k):
            part = X[lab == i]
            if part.shape[0] < 2:
                part = X[np.random.default_rng(i).choice(n, 2)]
            means[i] = part.mean(axis=0)
            covs[i] = np.atleast_2d(np.cov(part.T)) + np.eye(d) * 1e-3
    else:
        dist = ((X - X.min(axis=0)) ** 2).sum(axis=1)
        order = np.argsort(dist, kind="stable")
        per = n / float(k)
        for i in range(k):
            lo, hi = int((i + 0.25) * per), int((i + 0.75) * per)
            part = X[order[lo:max(hi, lo + 2)]]
            means[i] = part.mean(axis=0)
            covs[i] = np.atleast_2d(np.cov(part.T)) + np.eye(d) * 1e-3
    weights = np.full(k, 1.0 / k)

    def log_prob(Y, norm=True):
        lp = np.empty((Y.shape[0], k))
        for j in range(k):
            c, _low = cho_factor(covs[j], lower=True)
            L = np.tril(c)
            z = solve_triangular(L, (Y - means[j]).T, lower=True)
            lp[:, j] = np.log(max(weights[j], 1e-300)) - 0.5 * (z * z).sum(axis=0) - np.log(np.diag(L)).sum()
        if norm:
            lp -= 0.5 * d * np.log(2 * np.pi)
        return lp

    prev = -np.inf
    for _ in range(max_iter):
        logp = log_prob(X)
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
    # final responsibilities of every event with the final parameters
    logp = log_prob(X_all, norm=False)
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


def bead_populations(table_values, n_populations, tops, *, max_iter=500, order_values=None,
                     max_fit_events=10_000, init="flowcal"):
    """Cluster bead events into ``n_populations`` peaks (Gaussian mixture, log-like scale).

    Parameters
    ----------
    table_values : array (n_events, n_channels)
        Linear-scale values of the clustering channels.
    n_populations : int
    tops : sequence of float
        Top of each channel's range (sets the display scale).
    order_values : array (n_events,), optional
        Values of the calibrated channel: populations are ordered by their
        median in it (dimmest first).  Default: by the distance of the
        linear-scale population mean to the origin (FlowCal's order).
    max_fit_events, init :
        See :func:`_gmm`.

    Returns
    -------
    labels, weights, means, covariances, dip
        Sorted so that population 0 is the dimmest.
    """
    X = _display(np.asarray(table_values, float), np.asarray(tops, float)[None, :])
    labels, w, mu, cov, _resp = _gmm(X, n_populations, max_iter=max_iter, max_fit_events=max_fit_events, init=init)
    if order_values is not None:
        ov = np.asarray(order_values, float)
        dist = np.array([np.median(ov[labels == j]) if np.any(labels == j) else np.inf for j in range(n_populations)])
    else:
        lin = np.asarray(table_values, float)
        dist = np.array(
            [((lin[labels == j].mean(axis=0)) ** 2).sum() if np.any(labels == j) else np.inf
             for j in range(n_populations)]
        )
    order = np.argsort(dist, kind="stable")
    remap = np.empty(n_populations, int)
    remap[order] = np.arange(n_populations)
    labels = remap[labels]
    w, mu, cov = w[order], mu[order], cov[order]
    dip = np.array([_mixture_dip(w, mu, cov, i, i + 1) for i in range(n_populations - 1)])
    return labels, w, mu, cov, dip


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


def _find_bead_peaks(values, tops, k, min_valley, order_values=None):
    """Cluster, then list unresolved neighbour pairs (valley too shallow, empty peak, too few 1-D modes)."""
    n_modes = None
    if values.shape[1] == 1:
        n_modes = _count_modes(_display(values[:, 0], tops[0]))
    # too few modes: the answer is 'unresolved' whatever the mixture does, so do not iterate long
    labels, w, mu, cov, dip = bead_populations(values, k, tops, max_iter=50 if (n_modes or k) < k else 500,
                                               order_values=order_values)
    counts = np.bincount(labels, minlength=k)
    bad = [j for j in range(k - 1) if dip[j] >= min_valley or counts[j] == 0 or counts[j + 1] == 0]
    if n_modes is not None:
        if n_modes < k and not bad:
            # the mixture split a peak somewhere: flag the pair with the shallowest valley
            bad = [int(np.argmax(dip))]
    return labels, dip, bad, n_modes


def count_populations(values, tops) -> int:
    """Number of bead populations seen in the data: the most 1-D histogram peaks over the given channels.

    ``values`` (n_events, n_channels) on the linear scale, ``tops`` the top of
    each channel's range.  Events piled up at or below zero or at the top of
    the range (clipped by the detector) are left out of each channel's count,
    so a clipping spike is not counted as a population.
    """
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[:, None]
    out = 0
    for j in range(values.shape[1]):
        x = values[:, j]
        x = x[(x > 0) & (x < 0.999 * tops[j])]
        out = max(out, _count_modes(_display(x, tops[j]), min_prominence=0.05))
    return out
