"""evflow.synth.tirf: synthetic TIRF fields with known truth."""

import numpy as np
import pytest

from evflow import synth
from evflow.errors import ConfigError


def test_shapes_truth_and_attrs():
    s = synth.tirf((64, 80), n_fields=2, markers=["CD9", "CD63"], n_vesicles=30, seed=1)
    assert s.images.dims == ("fov", "channel", "y", "x")
    assert s.images.shape == (2, 2, 64, 80) and s.images.dtype == np.uint16
    assert list(s.images.channel.values) == ["CD9", "CD63"]
    assert s.images.attrs["pixel_size_nm"] == 108.0
    assert len(s.truth) == 60 and set(s.truth.fov) == {0, 1}
    assert {"y", "x", "bitmask", "y_CD63", "x_CD63", "photons_CD9"} <= set(s.truth.columns)
    assert (s.truth.bitmask > 0).all()  # default excludes the all-negative phenotype
    neg = (s.truth.bitmask & 1) == 0
    assert (s.truth.loc[neg, "photons_CD9"] == 0).all()


def test_same_seed_same_data():
    a = synth.tirf((32, 32), n_vesicles=5, seed=3)
    b = synth.tirf((32, 32), n_vesicles=5, seed=3)
    c = synth.tirf((32, 32), n_vesicles=5, seed=4)
    assert np.array_equal(a.images.values, b.images.values)
    assert not np.array_equal(a.images.values, c.images.values)


def test_photon_budget_and_camera_conversion():
    # ideal camera: total counts = background + spot photons (Poisson), mean over a big field
    s = synth.tirf((128, 128), markers=["A"], n_vesicles=40, photons=2000, photons_cv=0, background=5,
                   camera="ideal", chromatic_shift=False, edge_margin_px=8, seed=2)
    img = s.images.values[0, 0]
    expected = 5 * img.size + s.truth.photons_A.sum()
    assert img.sum() == pytest.approx(expected, rel=0.01)
    # sCMOS: converting ADU back with the camera model gives photons
    s2 = synth.tirf((128, 128), markers=["A"], n_vesicles=0, background=20, camera="scmos", gain=2.5,
                    offset=100, seed=2)
    cam = s2.camera()
    ph = (s2.images.values[0, 0].astype(float) - cam["offset"]) / cam["gain"]
    assert ph.mean() == pytest.approx(20, rel=0.02)
    # EMCCD: excess noise doubles the variance (F^2 = 2)
    s3 = synth.tirf((128, 128), markers=["A"], n_vesicles=0, background=20, camera="emccd", gain=0.05,
                    em_gain=200, read_noise_e=0, offset=100, seed=2)
    ph3 = (s3.images.values[0, 0].astype(float) - 100) / (0.05 * 200)
    assert ph3.mean() == pytest.approx(20, rel=0.03)
    assert ph3.var() == pytest.approx(40, rel=0.1)


def test_peak_snr_sets_brightness():
    s = synth.tirf((64, 64), markers=["A", "B"], n_vesicles=3, peak_snr=[5, 10], background=9,
                   camera="ideal", psf_sigma_px=1.0, seed=0)
    pf = synth.peak_fraction(1.0)
    assert s.params["mean_photons"][0] * pf / 3.0 == pytest.approx(5)
    assert s.params["mean_photons"][1] == pytest.approx(2 * s.params["mean_photons"][0])


def test_phenotype_fractions_and_chromatic_shift():
    s = synth.tirf((256, 256), markers=["A", "B"], n_vesicles=2000, phenotype_fractions={"A+ B-": 0.25, 3: 0.75},
                   min_separation_px=0, seed=5)
    frac = np.bincount(s.truth.bitmask, minlength=4) / len(s.truth)
    assert frac[0] == 0 and frac[2] == 0
    assert frac[1] == pytest.approx(0.25, abs=0.03)
    A = s.transforms["B"]
    pred = s.truth[["y", "x"]].to_numpy() @ A[:, :2].T + A[:, 2]
    np.testing.assert_allclose(pred, s.truth[["y_B", "x_B"]].to_numpy())
    assert np.abs(pred - s.truth[["y", "x"]].to_numpy()).max() > 0.3  # channels really are shifted


def test_hard_core_and_illumination():
    s = synth.tirf((128, 128), markers=["A"], n_vesicles=100, min_separation_px=6, illumination=0.5, seed=1)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(s.truth[["y", "x"]].to_numpy()).query(s.truth[["y", "x"]].to_numpy(), k=2)
    assert d[:, 1].min() >= 6
    assert s.flat.max() == pytest.approx(1, abs=1e-3) and s.flat[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"shape": (4, 4)}, "at least 8x8"),
        ({"pixel_size_nm": 0}, "pixel_size_nm"),
        ({"camera": "cmos"}, "camera"),
        ({"phenotype_fractions": {"X+": 1}}, "unknown phenotype"),
        ({"psf_sigma_px": [1, 2, 3, 4]}, "psf_sigma_px"),
    ],
)
def test_bad_parameters(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        synth.tirf(**{"n_vesicles": 1, **kw})
