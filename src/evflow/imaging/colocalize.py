"""Colocalisation by one-to-one matching of per-channel detections after registration."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ..errors import ConfigError

__all__ = ["colocalize"]


def colocalize(spots_by_channel, *, registration=None, radius_px=1.5):
    """Colocalised fractions between every pair of channels.

    Parameters
    ----------
    spots_by_channel : mapping channel -> DataFrame with ``y``, ``x`` (that channel's px)
        E.g. ``{m: evflow.detect_spots(field[c]) ...}``.
    registration : ChannelRegistration, optional
        Maps each channel to the reference before matching; default identity.
    radius_px : float
        Largest distance (reference px) between colocalised spots; pairs are
        assigned one-to-one (Hungarian, minimum total distance).

    Returns
    -------
    DataFrame, one row per channel pair: ``channel_a``, ``channel_b``,
    ``n_a``, ``n_b``, ``n_coloc``, ``fraction_a`` (of a's spots with a
    partner in b), ``fraction_b``, ``jaccard`` (n_coloc / union),
    ``mean_distance_px``.
    """
    from ..metrics import match_points

    if radius_px <= 0:
        raise ConfigError(f"radius_px must be > 0, got {radius_px}")
    names = list(spots_by_channel)
    if len(names) < 2:
        raise ConfigError(f"colocalisation needs at least 2 channels, got {names}")
    pts = {}
    for m in names:
        df = spots_by_channel[m]
        p = df[["y", "x"]].to_numpy(dtype=np.float64)
        pts[m] = registration.to_reference(m, p) if (registration is not None and len(p)) else p
    rows = []
    for a, b in itertools.combinations(names, 2):
        ia, ib, d = match_points(pts[a], pts[b], radius_px)
        na, nb, nc = len(pts[a]), len(pts[b]), len(ia)
        rows.append({
            "channel_a": a, "channel_b": b, "n_a": na, "n_b": nb, "n_coloc": nc,
            "fraction_a": nc / na if na else np.nan,
            "fraction_b": nc / nb if nb else np.nan,
            "jaccard": nc / (na + nb - nc) if (na + nb - nc) else np.nan,
            "mean_distance_px": float(d.mean()) if nc else np.nan,
        })
    return pd.DataFrame(rows)
