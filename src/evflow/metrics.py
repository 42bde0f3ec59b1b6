"""Accuracy metrics: one-to-one matching of detections to ground truth.

Matching is a minimum-total-distance assignment (Hungarian,
:func:`scipy.optimize.linear_sum_assignment`) restricted to pairs closer than
``radius``; it is solved per connected group of candidate pairs, so thousands
of points per field match quickly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .errors import ConfigError

__all__ = ["match_points", "detection_metrics", "localization_rmse"]



def _as_points(p, name, columns=("y", "x")):
    if isinstance(p, pd.DataFrame):
        missing = [c for c in columns if c not in p.columns]
        if missing:
            raise ConfigError(f"{name}: missing column(s) {missing}; has {list(p.columns)}")
        return p[list(columns)].to_numpy(dtype=np.float64)
    a = np.asarray(p, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 2)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ConfigError(f"{name}: expected an (n, 2) array of (y, x), got shape {a.shape}")
    return a


def match_points(truth, detected, radius=1.0):
    """One-to-one matching of detected points to true points within ``radius``.

    Parameters
    ----------
    truth, detected : (n, 2) arrays of (y, x) or DataFrames with ``y``, ``x``
        Positions in px (or any common unit).
    radius : float
        Largest distance of a match, same unit.

    Returns
    -------
    i_truth, i_detected : int arrays
        Indices of matched pairs (minimum total distance among maximum-size
        matchings within ``radius``; ties resolved by distance).
    distance : float array
    """
    t = _as_points(truth, "truth")
    d = _as_points(detected, "detected")
    if radius <= 0:
        raise ConfigError(f"match radius must be > 0, got {radius}")
    if len(t) == 0 or len(d) == 0:
        e = np.empty(0, dtype=np.int64)
        return e, e.copy(), np.empty(0)
    pairs = cKDTree(t).sparse_distance_matrix(cKDTree(d), radius, output_type="ndarray")
    if len(pairs) == 0:
        e = np.empty(0, dtype=np.int64)
        return e, e.copy(), np.empty(0)
    ii = pairs["i"].astype(np.int64)
    jj = pairs["j"].astype(np.int64)
    dist = pairs["v"].astype(np.float64)
    nt = len(t)
    # connected groups over the bipartite graph (truth nodes 0..nt-1, detected nt..)
    g = coo_matrix((np.ones(len(ii)), (ii, jj + nt)), shape=(nt + len(d), nt + len(d)))
    _, lab = connected_components(g, directed=False)
    comp = lab[ii]
    order = np.argsort(comp, kind="stable")
    ii, jj, dist, comp = ii[order], jj[order], dist[order], comp[order]
    bounds = np.flatnonzero(np.diff(comp)) + 1
    out_i, out_j, out_d = [], [], []
    big = 1e6 * radius + 1.0
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(ii)]):
        ci, cj, cd = ii[s:e], jj[s:e], dist[s:e]
        if e - s == 1:
            out_i.append(ci)
            out_j.append(cj)
            out_d.append(cd)
            continue
        ui, ri = np.unique(ci, return_inverse=True)
        uj, rj = np.unique(cj, return_inverse=True)
        cost = np.full((len(ui), len(uj)), big)
        cost[ri, rj] = cd
        # a non-edge costs more than any set of edges: maximise matches, then minimise distance
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < big
        out_i.append(ui[r[ok]])
        out_j.append(uj[c[ok]])
        out_d.append(cost[r[ok], c[ok]])
    i_t = np.concatenate(out_i)
    i_d = np.concatenate(out_j)
    dd = np.concatenate(out_d)
    order = np.argsort(i_t, kind="stable")
    return i_t[order], i_d[order], dd[order]


def localization_rmse(truth, detected, i_truth, i_detected):
    """Root-mean-square localisation error of matched pairs, per axis and radial.

    Returns (rmse_y, rmse_x, rmse_radial); NaN when nothing is matched.
    """
    t = _as_points(truth, "truth")[i_truth]
    d = _as_points(detected, "detected")[i_detected]
    if len(t) == 0:
        return np.nan, np.nan, np.nan
    err = d - t
    ry, rx = np.sqrt((err**2).mean(axis=0))
    return float(ry), float(rx), float(np.sqrt((err**2).sum(axis=1).mean()))


def detection_metrics(truth, detected, radius=1.0, *, by=None):
    """Precision, recall, F1, Jaccard index and localisation RMSE of a detection.

    Parameters
    ----------
    truth, detected : DataFrame with ``y``, ``x`` (and the ``by`` column) or (n, 2) arrays
    radius : float
        Match radius (px).
    by : str, optional
        Column (e.g. ``"fov"``) to match within; the counts are pooled.

    Returns
    -------
    dict with ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
    ``jaccard``, ``rmse_y``, ``rmse_x``, ``rmse`` (radial, px) and
    ``mean_dy``, ``mean_dx`` (bias, detected - truth).
    """
    if by is not None:
        if not (isinstance(truth, pd.DataFrame) and isinstance(detected, pd.DataFrame)):
            raise ConfigError("detection_metrics: by= needs DataFrames")
        groups = sorted(set(truth[by]).union(set(detected[by])))
        tp = fp = fn = 0
        errs = []
        for gval in groups:
            t = truth[truth[by] == gval]
            d = detected[detected[by] == gval]
            it, idt, _ = match_points(t, d, radius)
            tp += len(it)
            fp += len(d) - len(idt)
            fn += len(t) - len(it)
            errs.append(_as_points(d, "detected")[idt] - _as_points(t, "truth")[it])
        err = np.concatenate(errs) if errs else np.empty((0, 2))
    else:
        t = _as_points(truth, "truth")
        d = _as_points(detected, "detected")
        it, idt, _ = match_points(t, d, radius)
        tp = len(it)
        fp = len(d) - tp
        fn = len(t) - tp
        err = d[idt] - t[it]
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    jaccard = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    if len(err):
        rmse_y, rmse_x = np.sqrt((err**2).mean(axis=0))
        rmse = float(np.sqrt((err**2).sum(axis=1).mean()))
        bias = err.mean(axis=0)
    else:
        rmse_y = rmse_x = rmse = np.nan
        bias = (np.nan, np.nan)
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "jaccard": float(jaccard),
        "rmse_y": float(rmse_y),
        "rmse_x": float(rmse_x),
        "rmse": float(rmse),
        "mean_dy": float(bias[0]),
        "mean_dx": float(bias[1]),
    }
