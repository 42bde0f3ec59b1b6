"""Counting statistics: Poisson intervals on counts, Wilson intervals on fractions.

- :func:`poisson_interval`: the exact (Garwood) central interval of a Poisson
  mean given an observed count ``k``: ``chi2.ppf(a/2, 2k)/2`` to
  ``chi2.ppf(1 - a/2, 2k + 2)/2`` (lower limit 0 for ``k = 0``).
- :func:`wilson_interval`: the Wilson score interval of a binomial fraction
  ``k / n`` (NaN where ``n = 0``).
- :func:`add_count_intervals`: ``count_lo``/``count_hi`` and
  ``fraction_of_parent_lo``/``_hi`` (and ``fraction_of_total_lo``/``_hi``) of a
  counts Dataset (:func:`evflow.schema.counts_dataset`).

Concentrations scale linearly with the count, so their interval is the
count's Poisson interval times the same factor (volume, dilution).
"""

from __future__ import annotations

import numpy as np

__all__ = ["poisson_interval", "wilson_interval", "add_count_intervals"]


def poisson_interval(k, conf: float = 0.95):
    """Exact two-sided ``conf`` interval (lo, hi) of the Poisson mean for observed counts ``k`` (array)."""
    from scipy.stats import chi2

    k = np.asarray(k, float)
    a = 1.0 - conf
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, chi2.ppf(a / 2, 2 * np.maximum(k, 1)) / 2, 0.0)
        hi = chi2.ppf(1 - a / 2, 2 * k + 2) / 2
    bad = ~np.isfinite(k) | (k < 0)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def wilson_interval(k, n, conf: float = 0.95):
    """Wilson score ``conf`` interval (lo, hi) of the fraction ``k / n`` (arrays broadcast; NaN where n <= 0)."""
    from scipy.stats import norm

    k = np.asarray(k, float)
    n = np.asarray(n, float)
    z = float(norm.ppf(0.5 + conf / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
        lo = np.clip(centre - half, 0.0, 1.0)
        hi = np.clip(centre + half, 0.0, 1.0)
    bad = ~(n > 0)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def add_count_intervals(ds, conf: float = 0.95, prefix: str = ""):
    """Add ``{prefix}count_lo/_hi`` (Poisson) and ``{prefix}fraction_of_parent_lo/_hi``,
    ``{prefix}fraction_of_total_lo/_hi`` (Wilson) to a counts Dataset; returns it."""
    c = ds[f"{prefix}count"]
    lo, hi = poisson_interval(c.values, conf)
    note = f"{conf:.0%} interval"
    ds[f"{prefix}count_lo"] = (c.dims, lo, {"units": "1", "long_name": f"count, lower {note} (Poisson, exact)"})
    ds[f"{prefix}count_hi"] = (c.dims, hi, {"units": "1", "long_name": f"count, upper {note} (Poisson, exact)"})
    for frac, tot in (("fraction_of_parent", "n_parent"), ("fraction_of_total", "n_total")):
        if f"{prefix}{frac}" not in ds or f"{prefix}{tot}" not in ds:
            continue
        n = ds[f"{prefix}{tot}"].values[..., None]
        flo, fhi = wilson_interval(c.values, n, conf)
        ds[f"{prefix}{frac}_lo"] = (c.dims, flo, {"units": "1", "long_name": f"{frac}, lower {note} (Wilson)"})
        ds[f"{prefix}{frac}_hi"] = (c.dims, fhi, {"units": "1", "long_name": f"{frac}, upper {note} (Wilson)"})
    ds.attrs["intervals"] = f"{note}: counts exact Poisson (Garwood), fractions Wilson score"
    return ds
