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

- :func:`rate_difference_interval`: the normal-approximation interval of a
  difference of two Poisson rates ``k_s / v_s - k_b / v_b``, with relative
  volume uncertainties added in quadrature when known.
- :func:`add_buffer_subtracted`: ``buffer_subtracted_concentration_per_ml``
  (and ``_lo``/``_hi``) of a flow Dataset with a buffer-only control.
- :func:`binomial_dispersion`: whether a fraction pooled over replicates (the
  fields of a chip) varies between them more than counting explains: Pearson's
  chi-square of the replicate fractions about the pooled one, its dispersion
  factor (chi-square / degrees of freedom; about 1 for pure counting noise)
  and p value.
"""

from __future__ import annotations

import numpy as np

__all__ = ["poisson_interval", "wilson_interval", "add_count_intervals", "rate_difference_interval",
           "add_buffer_subtracted", "binomial_dispersion"]


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


#: below this many events in the sample or the buffer a buffer-subtracted value is flagged (normal approximation)
MIN_NORMAL_COUNT = 20


def rate_difference_interval(k_s, v_s, k_b, v_b, conf: float = 0.95, *, v_s_rel_sd=0.0, v_b_rel_sd=0.0):
    """Estimate and two-sided ``conf`` interval of ``k_s / v_s - k_b / v_b`` (arrays broadcast).

    ``k_s``, ``k_b`` are Poisson counts observed in volumes ``v_s``, ``v_b``.
    The variance is ``k_s / v_s**2 + k_b / v_b**2`` (Poisson) plus
    ``(rate * rel_sd)**2`` for each volume whose relative standard deviation
    is known; the interval is estimate +- z sd (not clipped at 0: a sample
    indistinguishable from its buffer has an interval containing 0). The
    normal approximation covers close to nominally once both counts exceed
    about 20; below that the interval is approximate. Returns (estimate, lo, hi).
    """
    from scipy.stats import norm

    k_s, v_s, k_b, v_b = (np.asarray(a, float) for a in (k_s, v_s, k_b, v_b))
    z = float(norm.ppf(0.5 + conf / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        r_s, r_b = k_s / v_s, k_b / v_b
        var = k_s / v_s**2 + k_b / v_b**2 + (r_s * v_s_rel_sd) ** 2 + (r_b * v_b_rel_sd) ** 2
        est = r_s - r_b
        half = z * np.sqrt(var)
    return est, est - half, est + half


def add_buffer_subtracted(ds, conf: float = 0.95):
    """Add ``buffer_subtracted_concentration_per_ml`` (+ ``_lo``/``_hi``) per sample and phenotype.

    The buffer-only control(s) (``role == "buffer"``, pooled: their counts and
    analysed volumes summed) measure the background events per uL of diluent;
    each sample's events per uL minus that rate, times the sample's dilution,
    is its particles per mL with the buffer's background removed, with the
    interval of :func:`rate_difference_interval` (counting only: volume
    uncertainty is not known to the pipeline). Buffer samples themselves and
    samples without an analysed volume get NaN. ``buffer_subtracted_doubtful``
    flags the values to read with care: the sample's or the buffer's count
    under :data:`MIN_NORMAL_COUNT` (the normal approximation is rough there),
    or an interval that contains 0 (the sample cannot be told from its
    buffer). Without a buffer control nothing is added. Returns ``ds``.
    """
    role = np.asarray(ds["role"].values).astype(str)
    vol = np.asarray(ds["volume_ul"].values, float)
    buf = (role == "buffer") & np.isfinite(vol) & (vol > 0)
    if not buf.any():
        return ds
    counts = np.asarray(ds["count"].values, float)
    k_b, v_b = counts[buf].sum(axis=0)[None, :], float(vol[buf].sum())
    dil = np.asarray(ds["dilution"].values, float)[:, None]
    use = ((role != "buffer") & np.isfinite(vol) & (vol > 0))[:, None]
    est, lo, hi = rate_difference_interval(counts, np.where(use, vol[:, None], np.nan), k_b, v_b, conf)
    scale = np.where(use, 1e3 * dil, np.nan)  # events per uL -> particles per mL of the undiluted sample
    names = ", ".join(str(n) for n in np.asarray(ds["sample"].values)[buf])
    what = f"buffer-subtracted particles per mL (undiluted; background from {names}"
    ds["buffer_subtracted_concentration_per_ml"] = (("sample", "phenotype"), est * scale,
                                                    {"units": "1/mL", "long_name": what + ")"})
    for side, v in (("lo", lo), ("hi", hi)):
        ds[f"buffer_subtracted_concentration_per_ml_{side}"] = (
            ("sample", "phenotype"), v * scale,
            {"units": "1/mL", "long_name": f"{what}), {side} {conf:.0%} limit (normal approximation, "
                                           "Poisson on both counts)"})
    few = (counts < MIN_NORMAL_COUNT) | (k_b < MIN_NORMAL_COUNT)
    ds["buffer_subtracted_doubtful"] = (("sample", "phenotype"), use & (few | ((lo <= 0) & (hi >= 0))),
                                        {"units": "1", "long_name": f"count under {MIN_NORMAL_COUNT} in the sample "
                                         "or the buffer, or the interval contains 0"})
    return ds


def binomial_dispersion(k, n, axis: int = -1):
    """Between-replicate dispersion of a pooled fraction: ``(phi, p, df)`` along ``axis``.

    ``k`` (counts of the class) and ``n`` (totals) are per replicate; replicates with ``n = 0`` are left
    out.  Pearson's statistic ``X2 = sum (k - n p)^2 / (n p (1 - p))`` about the pooled ``p = sum k / sum n``
    has ``df = m - 1`` degrees of freedom for ``m`` replicates when only counting noise acts; ``phi = X2 / df``
    (the quasi-binomial dispersion factor: a counting interval is about ``sqrt(phi)`` times too narrow) and
    ``p`` its chi-square tail probability.  NaN where fewer than 2 replicates have events or ``p`` is 0 or 1
    (no spread to test)."""
    from scipy.stats import chi2

    k = np.moveaxis(np.asarray(k, np.float64), axis, -1)
    n = np.moveaxis(np.asarray(n, np.float64), axis, -1)
    k, n = np.broadcast_arrays(k, n)
    used = n > 0
    m = used.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(used, k, 0).sum(-1) / np.where(used, n, 0).sum(-1)
        var = n * p[..., None] * (1 - p[..., None])
        x2 = np.where(used, (k - n * p[..., None]) ** 2 / np.where(used, var, 1.0), 0.0).sum(-1)
        df = (m - 1).astype(np.float64)
        ok = (m >= 2) & (p > 0) & (p < 1)
        phi = np.where(ok, x2 / np.maximum(df, 1), np.nan)
        pval = np.where(ok, chi2.sf(x2, np.maximum(df, 1)), np.nan)
    return phi, pval, np.where(m >= 2, df, np.nan)
