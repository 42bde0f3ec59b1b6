"""Flat-field correction and background subtraction on synthetic uneven illumination and structured backgrounds."""

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi

import evflow
from evflow import metrics, synth
from evflow.errors import ConfigError, ImageError
from evflow.imaging.background import background_map, estimate_flat, flat_at, flat_field_correct, normalise_flat
from evflow.imaging.count import phenotype_field

RADIAL_BINS = ((0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.01))


@pytest.fixture(scope="module")
def uneven():
    # Gaussian beam: 40% of the central illumination in the corners; equal vesicles (3000 photons at full light)
    return synth.tirf((448, 448), markers=["A", "B"], n_vesicles=700, photons=3000, photons_cv=0.0, background=30,
                      illumination=0.6, camera="ideal", chromatic_shift=False, min_separation_px=6,
                      phenotype_fractions={3: 1.0}, seed=3)


def _radial_medians(s, y, x, photons):
    t = s.truth
    it, idet, _ = metrics.match_points(t[["y", "x"]], pd.DataFrame({"y": y, "x": x}), 1.5)
    assert len(it) > 0.95 * len(t)
    full = (t.photons_A / flat_at(s.flat, t.y, t.x)).to_numpy()[it]  # photons at full illumination (3000)
    ratio = np.asarray(photons)[idet] / full
    c = (np.array(s.flat.shape) - 1) / 2
    r2 = (((t.y - c[0]) ** 2 + (t.x - c[1]) ** 2) / (2 * c[0] ** 2)).to_numpy()[it]
    return np.array([np.nanmedian(ratio[(r2 >= a) & (r2 < b)]) for a, b in RADIAL_BINS])  # NaN: fit at a bound


def test_flat_field_makes_recovered_photons_uniform(uneven):
    s = uneven
    img = s.images.values[0, 0]
    raw = evflow.detect_spots(img, psf_sigma_px=1.3)
    med = _radial_medians(s, raw.y, raw.x, raw.photons)
    assert med[0] > 0.9 and med[-1] < 0.7  # the uncorrected field is uneven
    for flat, tol in ((s.flat, 0.04), ("estimate", 0.04)):
        df = evflow.detect_spots(img, psf_sigma_px=1.3, flat=flat)
        med = _radial_medians(s, df.y, df.x, df.photons)
        assert np.all(np.abs(med - 1) <= tol), (flat if isinstance(flat, str) else "flat", med)
        assert np.allclose(df.photons * df.flat, raw.photons, equal_nan=True) and df.flat.between(0.35, 1.0).all()
        assert np.allclose(df.background * df.flat, raw.background, equal_nan=True)  # NaN: fits at a bound


def test_estimated_flat_matches_the_illumination(uneven):
    f = estimate_flat(uneven.images.values[0, 0])
    assert f.shape == uneven.flat.shape and f.max() == pytest.approx(1.0)
    err = np.abs(f - uneven.flat)
    assert np.quantile(err, 0.95) < 0.01 and err.max() < 0.02
    g = estimate_flat(uneven.images.values[0])  # two channels of the same illumination
    assert np.quantile(np.abs(g - uneven.flat), 0.95) < 0.01


def test_phenotype_photons_flat_corrected(uneven):
    s = uneven
    sp = phenotype_field(s.images.values[0], s.markers, psf_sigma_px=1.3, flats={"A": s.flat, "B": s.flat})
    for m in s.markers:
        med = _radial_medians(s, sp.y, sp.x, sp[f"photons_{m}"])
        assert np.all(np.abs(med - 1) <= 0.05), (m, med)
    raw = phenotype_field(s.images.values[0], s.markers, psf_sigma_px=1.3)
    assert _radial_medians(s, raw.y, raw.x, raw["photons_A"])[-1] < 0.7


def test_flat_field_correct_image():
    img = np.full((16, 16), 50.0)
    flat = np.full((16, 16), 2.0)
    flat[:, 8:] = 1.0
    out = flat_field_correct(img * flat / 2.0 + 100.0, flat, dark=100.0)  # flat normalised to max 1
    np.testing.assert_allclose(out, 50.0, rtol=1e-6)


@pytest.fixture(scope="module")
def structured():
    s = synth.tirf((256, 256), markers=["A"], n_vesicles=150, peak_snr=8, photons_cv=0.2, background=100,
                   camera="ideal", chromatic_shift=False, min_separation_px=5, seed=5)
    yy, xx = np.mgrid[0:256, 0:256]
    cell = ((yy - 100) ** 2 + ((xx - 140) / 1.5) ** 2 < 45**2).astype(float)
    extra = 40 * ndi.gaussian_filter(cell, 1.5) + 30 * ((np.abs(yy - 210) < 6) & (xx > 20) & (xx < 230))
    img = s.images.values[0, 0] + np.random.default_rng(1).poisson(extra)
    return s, img, 100 + extra


def test_background_map_follows_structures(structured):
    s, img, true_bg = structured
    for r in (5, 8):
        d = background_map(img, r) - true_bg
        q25, q50, q75 = np.quantile(d, [0.25, 0.5, 0.75])
        assert -8 < q50 < 0  # the opening's noise bias (a constant for the detection filter)
        assert q75 - q25 < 3.0  # structures of 30-40 photons/px followed
    flat_only = background_map(np.full((64, 64), 7.0, np.float32), 4)
    np.testing.assert_allclose(flat_only, 7.0, rtol=1e-6)


def test_detection_with_background_subtraction(structured):
    s, img, _ = structured
    a = evflow.detect_spots(img, psf_sigma_px=1.3)
    b = evflow.detect_spots(img, psf_sigma_px=1.3, background_radius_px=5)
    for df in (a, b):
        assert metrics.detection_metrics(s.truth, df, radius=1.5)["f1"] >= 0.98
    it, ia, _ = metrics.match_points(a[["y", "x"]], b[["y", "x"]], 0.01)
    assert len(it) > 0.97 * len(a)  # same spots, fitted on the same (unsubtracted) photons
    assert np.median(b.photons.to_numpy()[ia] / a.photons.to_numpy()[it]) == pytest.approx(1.0, abs=0.01)
    # tiles give the same result with the background option
    c = evflow.detect_spots(img, psf_sigma_px=1.3, background_radius_px=5, tile=96)
    pd.testing.assert_frame_equal(b, c)


def test_bad_flat_and_background_options(uneven):
    img = uneven.images.values[0, 0]
    with pytest.raises(ImageError, match="shape"):
        evflow.detect_spots(img, psf_sigma_px=1.3, flat=np.ones((10, 10)))
    bad = np.ones_like(img)
    bad[3, 3] = 0
    with pytest.raises(ImageError, match="positive"):
        normalise_flat(bad)
    with pytest.raises(ConfigError, match="flat"):
        evflow.detect_spots(img, psf_sigma_px=1.3, flat="measured")
    with pytest.raises(ConfigError, match="estimate"):
        evflow.detect_spots(img, psf_sigma_px=1.3, flat="estimate", tile=128)
    with pytest.raises(ConfigError, match="radius"):
        evflow.detect_spots(img, psf_sigma_px=1.3, background_radius_px=0)
    with pytest.raises(ConfigError, match="marker"):
        phenotype_field(uneven.images.values[0], uneven.markers, flats={"C": uneven.flat})


def _uneven_chip_run(tmp_path, flat_key):
    """Two unevenly lit 3-colour fields (40 % of the light in the corners) written as TIFF, run through the
    pipeline with fixed photon thresholds; ``flat_key``: the [imaging] flat_field line (or '')."""
    import tifffile

    import evflow

    fr = {7: 0.45, 1: 0.2, 3: 0.15, 5: 0.1, 6: 0.1}
    s = synth.tirf((320, 320), n_fields=2, markers=["CD9", "CD63", "CD81"], n_vesicles=260, photons=1000,
                   photons_cv=0.1, background=20, illumination=0.6, camera="scmos", chromatic_shift=False,
                   min_separation_px=7, edge_margin_px=6, phenotype_fractions=fr, seed=21)
    for f in range(2):
        tifffile.imwrite(tmp_path / f"f{f}.tif", np.clip(np.rint(s.images.values[f]), 0, 65535).astype(np.uint16),
                         photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "flat.tif", np.asarray(s.flat, np.float32))
    exp = tmp_path / "uneven.toml"
    exp.write_text(f"""[experiment]
name = "uneven"
[imaging]
channels = ["CD9", "CD63", "CD81"]
pixel_size_nm = 108.0
psf_sigma_px = 1.3
camera_offset = 100.0
camera_gain = 2.0
camera_read_noise_e = 1.6
{flat_key}
[imaging.thresholds]
rule = "fixed"
values = {{ CD9 = 600.0, CD63 = 600.0, CD81 = 600.0 }}
[[samples]]
name = "chip"
role = "sample"
images = ["f0.tif", "f1.tif"]
""")
    ds = evflow.run(exp, output=tmp_path / f"res{len(flat_key)}", quiet=True)
    truth = np.bincount(s.truth["bitmask"].to_numpy(np.int64), minlength=8) / len(s.truth)
    return ds["image_fraction_all_fov"].values[0], truth


def test_chip_fractions_with_the_flat_field_set_in_the_experiment_file(tmp_path):
    """Phenotype fractions over the whole of an unevenly lit chip are within 2 points of the truth with the
    measured flat field set in the experiment file (``flat_field = "flat.tif"``) and with the flat estimated
    from the chip (``"estimate"``); without it the dim corners lose positives (a fraction off by more)."""
    flat, truth = _uneven_chip_run(tmp_path, 'flat_field = "flat.tif"')
    assert np.abs(flat - truth).max() <= 0.02, (flat.round(3), truth.round(3))
    est, _ = _uneven_chip_run(tmp_path, 'flat_field = "estimate"')
    assert np.abs(est - truth).max() <= 0.02, (est.round(3), truth.round(3))
    raw, _ = _uneven_chip_run(tmp_path, "")
    assert np.abs(raw - truth).max() > 0.05, (raw.round(3), truth.round(3))
