"""Chance colocalisation: the analytical expectation of coincidences at the observed densities, checked against
truly independent synthetic populations (evflow.synth.tirf) and against the empirical shifted recount; the
correction in the experiment file."""

import numpy as np
import pytest

from evflow.errors import ConfigError
from evflow.imaging.chance import add_chance_fractions, chance_coincidences, shifted_recount
from evflow.imaging.count import count_vesicles
from evflow.synth import tirf

SHAPE = (256, 256)


def _chip(fractions, markers, n_fields, density, seed):
    return tirf(SHAPE, n_fields=n_fields, markers=markers, phenotype_fractions=fractions, density_per_um2=density,
                chromatic_shift=False, seed=seed)


def test_analytical_expectation_closed_form():
    counts = np.array([0, 300, 500, 20], float)  # CD9 only, CD63 only, both
    area, r = 256.0 * 256.0, 1.5
    e, v = chance_coincidences(counts, area, r)
    assert np.isnan(e[:3]).all() and np.isnan(v[:3]).all()  # fewer than two markers: no coincidence
    disc = np.pi * r * r
    # the coincidences come from vesicles whose marker sets partition CD9+ CD63+: CD9-only with CD63-only
    pa, pb = 1 - np.exp(-300 / area * disc), 1 - np.exp(-500 / area * disc)
    assert e[3] == pytest.approx(area / disc * pa * pb)
    assert e[3] == pytest.approx(300 * 500 * disc / area, rel=0.06)  # low density: n_a n_b pi r^2 / A
    assert v[3] == pytest.approx(e[3] ** 2 * (1 / 300 + 1 / 500))
    # three markers: a triple from three single-positive vesicles, or a double and a single
    c3 = np.zeros(8)
    c3[[1, 2, 4]] = 400
    e3, _ = chance_coincidences(c3, area, r)
    p = 1 - np.exp(-400 / area * disc)
    assert e3[3] == pytest.approx(area / disc * p * p)
    assert e3[7] == pytest.approx(area / disc * p ** 3)
    c3[3] = 200  # CD9+ CD63+ vesicles near CD81 ones add CD9+ CD63+ CD81+ coincidences
    e4, _ = chance_coincidences(c3, area, r)
    p3 = 1 - np.exp(-200 / area * disc)
    assert e4[7] == pytest.approx(area / disc * (p ** 3 + p3 * p))
    # it grows as the square of the density
    e2, _ = chance_coincidences(2 * counts, area, r)
    assert e2[3] == pytest.approx(4 * e[3], rel=0.08)
    with pytest.raises(ConfigError, match="radius_px must be > 0"):
        chance_coincidences(counts, area, 0)
    with pytest.raises(ConfigError, match="2\\*\\*k"):
        chance_coincidences(np.ones(3), area, r)


def _observed_in_interval(ds, bit):
    n = float(ds["count"].values.sum())
    obs = float(ds["count"].values[..., bit].sum())
    lo, hi = float(ds["chance_fraction_lo"].values[0, bit]) * n, float(ds["chance_fraction_hi"].values[0, bit]) * n
    return obs, float(ds["chance_fraction"].values[0, bit]) * n, lo, hi


def test_chance_rate_matches_independent_populations():
    """Two markers on different vesicles (no true double positives): every CD9+ CD63+ call is chance."""
    syn = _chip({1: 0.5, 2: 0.5}, ("CD9", "CD63"), 16, 0.6, 11)
    ds, _spots = count_vesicles(syn.images, psf_sigma_px=1.3)
    add_chance_fractions(ds, SHAPE[0] * SHAPE[1], 1.5)
    obs, exp, lo, hi = _observed_in_interval(ds, 3)
    assert 50 < exp < 100  # enough coincidences to test, at 0.6 vesicles per um^2
    assert lo <= obs <= hi, (obs, exp, lo, hi)
    # the empirical check on 8 of the fields: CD63 moved by far more than the PSF, recounted
    sub = add_chance_fractions(ds.isel(fov=slice(0, 8)).copy(), SHAPE[0] * SHAPE[1], 1.5)
    _obs, exp8, lo8, hi8 = _observed_in_interval(sub, 3)
    sh = sum(shifted_recount(np.asarray(syn.images.values[f]), ["CD9", "CD63"], camera=syn.images.attrs["camera"])
             for f in range(8))
    assert lo8 <= sh[3] <= hi8, (sh[3], exp8, lo8, hi8)


def test_chance_rate_three_independent_markers():
    syn = _chip({1: 1, 2: 1, 4: 1}, ("CD9", "CD63", "CD81"), 6, 0.8, 21)
    ds, _spots = count_vesicles(syn.images, psf_sigma_px=1.3)
    add_chance_fractions(ds, SHAPE[0] * SHAPE[1], 1.5)
    for bit in (3, 5, 6, 7):  # the three pairs and the triple
        obs, exp, lo, hi = _observed_in_interval(ds, bit)
        assert lo <= obs <= hi, (bit, obs, exp, lo, hi)
    assert np.isnan(ds["chance_fraction"].values[0, [0, 1, 2, 4]]).all()


def test_correction_takes_out_the_actual_chance_coincidences():
    """30% true double positives at high density: the truth says which CD9+ CD63+ calls are two single-positive
    vesicles by chance; the expected number matches them, and the corrected fraction is the one without them."""
    from scipy.spatial import cKDTree

    fr = {1: 0.35, 2: 0.35, 3: 0.3}
    syn = _chip(fr, ("CD9", "CD63"), 6, 1.2, 31)
    ds, spots = count_vesicles(syn.images, psf_sigma_px=1.3)
    add_chance_fractions(ds, SHAPE[0] * SHAPE[1], 1.5, correct=True)
    c = ds["count"].values.sum(axis=(0, 1)).astype(float)
    actual = 0
    for f in range(syn.images.sizes["fov"]):
        t = syn.truth[(syn.truth["fov"] == f) & (syn.truth["bitmask"] == 3)]
        d = spots[(spots["fov"] == f) & (spots["bitmask"] == 3)]
        if len(d):
            dist, _ = cKDTree(t[["y", "x"]].to_numpy()).query(d[["y", "x"]].to_numpy())
            actual += int((dist > 1.5).sum())  # no true double positive there: two vesicles by chance
    n = c.sum()
    e = float(ds["chance_fraction"].values[0, 3]) * n
    lo, hi = float(ds["chance_fraction_lo"].values[0, 3]) * n, float(ds["chance_fraction_hi"].values[0, 3]) * n
    assert 30 < actual and lo <= actual <= hi, (actual, e, lo, hi)
    # the fraction with the actual coincidences resolved into their two vesicles
    resolved = (c[3] - actual) / (n + actual)
    corrected = float(ds["fraction_corrected"].values[0, 3])
    flo, fhi = float(ds["fraction_corrected_lo"].values[0, 3]), float(ds["fraction_corrected_hi"].values[0, 3])
    assert flo <= resolved <= fhi, (flo, corrected, fhi, resolved)
    assert abs(corrected - resolved) < abs(c[3] / n - resolved) / 2
    # wider than the plain Wilson interval of the observed fraction; fractions still sum to 1
    from evflow.flow.intervals import wilson_interval

    wlo, whi = wilson_interval(c[3], n)
    assert fhi - flo > whi - wlo
    assert float(np.nansum(ds["fraction_corrected"].values[0])) == pytest.approx(1.0)
    assert float(ds["fraction_corrected"].values[0, 1]) > c[1] / n  # the singles gain the coincidences back
