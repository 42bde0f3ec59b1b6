"""Chance colocalisation: how many multi-marker vesicles are two (or more) vesicles that happen to lie within
the matching radius of one another.

Spots of channel ``c`` at density ``rho_c`` (per px^2) cover a fraction ``p_c = 1 - exp(-rho_c * pi r^2)`` of
the field with discs of the matching radius ``r``: the probability that a random point (a spot of another
channel) has a ``c`` spot within ``r``.  For channels that are independent of one another, the expected number
of vesicles whose marker set is exactly ``S`` (two markers or more) by coincidence alone is

    E_S = (A / (pi r^2)) * prod_{c in S} p_c * prod_{c not in S} (1 - p_c)

over a field of area ``A`` px^2 (for two markers and low densities ``A rho_a rho_b pi r^2 = n_a p_b``, the
number of ``a`` spots with a ``b`` spot within ``r``).  The densities are those observed: ``n_c`` is the
number of vesicles positive for ``c``.  Its uncertainty follows from the Poisson counts ``n_c`` (delta method:
``var E_S = E_S^2 * sum_{c in S} 1 / n_c``).

The empirical check (:func:`shifted_recount`) moves every channel but the first by far more than the PSF
(cyclically, so densities stay) and recounts: what colocalises then is chance.

With ``correct=True`` (:func:`add_chance_fractions`, ``imaging.chance_correction`` in the experiment file) the
expected coincidences of each multi-marker phenotype are taken out of it and given back to its markers as
single-positive vesicles (a coincidence of ``|S|`` markers is ``|S|`` vesicles); the interval of the corrected
fraction is the Wilson interval of the observed fraction shifted by the expected coincidences and widened by
their uncertainty.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["chance_coincidences", "add_chance_fractions", "shifted_recount"]


def _n_markers(n_ph):
    k = int(round(np.log2(n_ph)))
    if 1 << k != n_ph:
        raise ConfigError(f"the phenotype axis must have 2**k entries (bitmasks), got {n_ph}")
    return k


def _partitions(bits):
    """Set partitions of the marker bits ``bits`` (a list) into blocks (bitmasks), two blocks or more."""
    def rec(rest):
        if not rest:
            yield []
            return
        first, others = rest[0], rest[1:]
        for sub in rec(others):
            for i in range(len(sub)):  # first joins an existing block
                yield sub[:i] + [sub[i] | first] + sub[i + 1:]
            yield sub + [first]
    return [p for p in rec(list(bits)) if len(p) >= 2]


def _terms(counts, area_px, radius_px):
    """Expected coincidences, their variance and what each phenotype gains back when they are resolved."""
    if not radius_px > 0:
        raise ConfigError(f"radius_px must be > 0, got {radius_px}")
    counts = np.asarray(counts, np.float64)
    n_ph = counts.shape[-1]
    k = _n_markers(n_ph)
    area = np.asarray(area_px, np.float64)[..., None]
    disc = np.pi * float(radius_px) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        cover = 1.0 - np.exp(-(counts / area) * disc)  # (..., P): a phenotype's discs cover this fraction
        inv_n = np.where(counts > 0, 1.0 / counts, 0.0)
    shape = np.broadcast_shapes(counts.shape, area.shape)
    expected = np.full(shape, np.nan)
    variance = np.full(shape, np.nan)
    gain = np.zeros(shape)
    for S in range(n_ph):
        bits = [1 << i for i in range(k) if (S >> i) & 1]
        if len(bits) < 2:
            continue
        e_s = np.zeros(shape[:-1])
        v_s = np.zeros(shape[:-1])
        for part in _partitions(bits):
            with np.errstate(invalid="ignore", divide="ignore"):
                term = (area[..., 0] / disc) * np.prod([cover[..., T] for T in part], axis=0)
                term = np.nan_to_num(term)
                v = term ** 2 * np.sum([inv_n[..., T] for T in part], axis=0)
            e_s += term
            v_s += v
            for T in part:
                gain[..., T] += term
        expected[..., S] = e_s
        variance[..., S] = v_s
        gain[..., S] -= e_s
    bad = ~(np.broadcast_to(area[..., 0], shape[:-1]) > 0)
    expected[bad] = np.nan
    variance[bad] = np.nan
    gain[bad] = 0.0
    return expected, variance, gain


def chance_coincidences(counts, area_px, radius_px):
    """Expected chance coincidences per phenotype and their variance.

    A vesicle of marker set ``S`` (two markers or more) is seen by chance when vesicles whose marker sets
    partition ``S`` lie within the matching radius of one another: for each partition of ``S`` into blocks
    ``T1, T2, ...`` (observed phenotypes, exact marker sets), ``(A / (pi r^2)) * prod_j p_Tj`` with
    ``p_T = 1 - exp(-rho_T * pi r^2)`` (for two blocks and low densities ``n_T1 * n_T2 * pi r^2 / A``).
    Vesicles that are truly double positive are matched already, so they make no new coincidence of their
    own markers.

    Parameters
    ----------
    counts : array (..., 2**k)
        Vesicles per phenotype bitmask of each field.
    area_px : array (...)
        Area of each field (px^2).
    radius_px : float
        Matching radius (px): detections of different channels closer than this are one vesicle.

    Returns
    -------
    expected, variance : arrays (..., 2**k)
        Expected coincidences ``E_S`` of each multi-marker phenotype and ``var E_S`` (delta method over the
        Poisson counts of the blocks); NaN for phenotypes of fewer than two markers and fields of no area.
    """
    expected, variance, _gain = _terms(counts, area_px, radius_px)
    return expected, variance


def add_chance_fractions(ds, area_px, radius_px, *, correct=False, conf=0.95, fov_dim="fov"):
    """Add the chance colocalisation to a counts Dataset (``count`` over (sample, fov, phenotype)).

    Adds ``chance_count`` (sample, fov, phenotype): expected coincidences per field; ``chance_fraction``
    (sample, phenotype): expected coincidences over all fields per vesicle, beside the observed
    ``fraction_all_fov``, with ``chance_fraction_lo``/``_hi``: the ``conf`` interval in which the fraction of
    a phenotype that is chance alone falls (Poisson noise of the coincidences and the uncertainty of the
    densities).  With ``correct``: ``fraction_corrected`` (sample, phenotype) and its ``_lo``/``_hi``.
    NaN for phenotypes of fewer than two markers.  Returns ``ds``.
    """
    from scipy.stats import norm

    from ..flow.intervals import wilson_interval

    c = ds["count"]
    dims = c.dims
    if fov_dim not in dims:
        raise ConfigError(f"counts must have a {fov_dim!r} dimension, got {dims}")
    counts = c.transpose(..., fov_dim, dims[-1]).values.astype(np.float64)  # (sample, fov, P)
    area = np.broadcast_to(np.asarray(area_px, np.float64), counts.shape[:-1])
    e, v, g = _terms(counts, area, radius_px)
    e_f = np.where(np.isfinite(area)[..., None] & (area[..., None] > 0), e, np.nan)
    sdims = tuple(d for d in dims if d != fov_dim)
    ds["chance_count"] = (c.transpose(..., fov_dim, dims[-1]).dims, e_f,
                          {"units": "1", "long_name": "expected chance coincidences (analytical)",
                           "radius_px": float(radius_px)})
    E = np.nansum(e_f, axis=-2)
    V = np.nansum(np.where(np.isnan(v), 0.0, v), axis=-2)
    multi = ~np.isnan(e_f).all(axis=-2)
    E = np.where(multi, E, np.nan)
    N = counts.sum(axis=(-2, -1))[..., None]
    z = float(norm.ppf(0.5 + conf / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(E + V)
        ds["chance_fraction"] = (sdims, E / N, {"units": "1", "long_name": "expected fraction of vesicles in "
                                                "this phenotype by chance coincidence (analytical)"})
        ds["chance_fraction_lo"] = (sdims, np.clip((E - z * sd) / N, 0, 1),
                                    {"units": "1", "long_name": f"chance fraction, lower {conf:.0%} limit"})
        ds["chance_fraction_hi"] = (sdims, np.clip((E + z * sd) / N, 0, 1),
                                    {"units": "1", "long_name": f"chance fraction, upper {conf:.0%} limit"})
    ds["chance_fraction"].attrs["method"] = (f"analytical, for independent channels: matching radius {radius_px:g} "
                                             "px, densities observed per field (evflow.imaging.chance)")
    if correct:
        k_obs = counts.sum(axis=-2)  # (sample, P)
        gain = np.nansum(g, axis=-2)  # in - out: -E_S for a coincidence phenotype, + what its blocks regain
        out = np.nan_to_num(E)
        corr = k_obs + gain
        n_true = corr.sum(-1, keepdims=True)
        lo, hi = wilson_interval(k_obs, n_true)
        with np.errstate(invalid="ignore", divide="ignore"):
            e_tot = out.sum(-1, keepdims=True)
            rel = np.where(e_tot > 0, np.sqrt(V.sum(-1, keepdims=True)) / e_tot, 0.0)  # relative sd of E
            sd = (2 * out + gain) * rel / n_true  # what moves out of and into each phenotype
            shift = gain / n_true
            f = np.clip(corr / n_true, 0, 1)
            flo = np.clip(lo + shift - z * sd, 0, 1)
            fhi = np.clip(hi + shift + z * sd, 0, 1)
        ds["fraction_corrected"] = (sdims, f, {"units": "1", "long_name": "fraction of vesicles, chance "
                                               "coincidences removed"})
        ds["fraction_corrected_lo"] = (sdims, np.minimum(flo, f), {"units": "1"})
        ds["fraction_corrected_hi"] = (sdims, np.maximum(fhi, f), {"units": "1"})
    return ds


def shifted_recount(field, markers, *, shift_px=None, psf_sigma_px=1.3, **phenotype_kwargs):
    """Empirical chance colocalisation of one field: every channel but the first moved cyclically by far more
    than the PSF (channel ``c`` by ``c * shift_px`` in y and x; default ``max(16, 10 * psf_sigma_px)`` px),
    then phenotyped again (:func:`~evflow.imaging.count.phenotype_field`).

    Returns
    -------
    counts : int array (2**k,)
        Vesicles per phenotype bitmask of the shifted field: its multi-marker counts are chance coincidences.
    """
    from .count import phenotype_field

    a = np.asarray(field)
    if a.ndim != 3 or a.shape[0] != len(markers):
        raise ConfigError(f"field must be (channel, y, x) with {len(markers)} channels, got shape {a.shape}")
    s = int(round(shift_px if shift_px is not None else max(16.0, 10.0 * float(psf_sigma_px))))
    if s < 4 * psf_sigma_px:
        raise ConfigError(f"shift_px {s} is not far more than the PSF (sigma {psf_sigma_px} px): give >= "
                          f"{4 * psf_sigma_px:g}")
    shifted = np.stack([np.roll(a[c], (c * s, c * s), axis=(0, 1)) for c in range(a.shape[0])])
    sp = phenotype_field(shifted, markers, psf_sigma_px=psf_sigma_px, **phenotype_kwargs)
    return np.bincount(sp["bitmask"].to_numpy(np.int64), minlength=1 << len(markers))
