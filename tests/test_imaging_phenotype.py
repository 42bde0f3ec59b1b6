"""Registration, multicolour phenotyping, counts dataset, colocalisation, failed fields."""

import numpy as np
import pytest
import tifffile
from conftest import shared_path

import evflow
from evflow import synth
from evflow.errors import ImageError
from evflow.imaging.colocalize import colocalize
from evflow.imaging.count import count_vesicles, thresholds_from_control
from evflow.imaging.register import ChannelRegistration, fit_affine, register_channels

MARKERS = ["CD9", "CD63", "CD81"]


@pytest.fixture(scope="module")
def registration():
    beads = synth.tirf((256, 256), markers=MARKERS, n_vesicles=80, phenotype_fractions={7: 1}, photons=3000,
                       photons_cv=0.1, min_separation_px=8, seed=11)
    reg = register_channels(beads.images.isel(fov=0), psf_sigma_px=1.3, camera=beads.camera())
    return beads, reg


def test_affine_fit_exact():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (20, 2))
    A = np.array([[1.01, 0.02, 3.0], [-0.015, 0.99, -2.0]])
    np.testing.assert_allclose(fit_affine(src, src @ A[:, :2].T + A[:, 2]), A, atol=1e-10)
    with pytest.raises(ImageError, match="at least 3"):
        fit_affine(src[:2], src[:2])


def test_registration_recovers_chromatic_shift(registration):
    beads, reg = registration
    assert reg.reference == "CD9"
    for m in MARKERS[1:]:
        assert reg.residual_rms_px[m] < 0.1
        assert reg.n_matched[m] >= 75
        back = reg.to_reference(m, beads.truth[[f"y_{m}", f"x_{m}"]].to_numpy())
        assert np.abs(back - beads.truth[["y", "x"]].to_numpy()).max() < 0.05
        fwd = reg.to_channel(m, beads.truth[["y", "x"]].to_numpy())
        assert np.abs(fwd - beads.truth[[f"y_{m}", f"x_{m}"]].to_numpy()).max() < 0.05
    again = ChannelRegistration.from_dict(reg.to_dict())
    np.testing.assert_allclose(again.transforms["CD81"], reg.transforms["CD81"])


def test_phenotype_fractions_within_2_points_and_counts_schema(registration):
    _, reg = registration
    fr = {1: 0.2, 3: 0.3, 7: 0.3, 5: 0.2}
    s = synth.tirf((256, 256), n_fields=2, markers=MARKERS, n_vesicles=200, photons=800, photons_cv=0.25,
                   min_separation_px=5, seed=12, phenotype_fractions=fr)
    ds, spots = count_vesicles(s.images, registration=reg, sample="chip1")
    assert ds["count"].dims == ("sample", "fov", "phenotype")
    assert ds["count"].shape == (1, 2, 8)
    assert list(ds.phenotype.values)[7] == "CD9+ CD63+ CD81+"
    est = (ds["count"].sum("fov") / ds["count"].sum()).values[0]
    truth = np.bincount(s.truth.bitmask, minlength=8) / len(s.truth)
    assert np.abs(est - truth).max() < 0.02
    assert ds["count"].sum() == pytest.approx(len(s.truth), rel=0.03)
    area = 256 * 256 * 0.108**2
    np.testing.assert_allclose(ds["area_um2"].values, area)
    np.testing.assert_allclose(ds["density"].sum("phenotype").values, ds["count"].sum("phenotype").values / area)
    assert {"sample", "fov", "y", "x", "photons_CD63", "bitmask"} <= set(spots.columns)
    assert (spots["sample"] == "chip1").all()


def test_without_registration_phenotypes_are_worse(registration):
    # the same field counted with an identity registration splits shifted spots
    s = synth.tirf((256, 256), markers=MARKERS, n_vesicles=150, phenotype_fractions={7: 1}, photons=800,
                   min_separation_px=6, seed=13, chromatic_shift=[np.array([[1, 0, 0], [0, 1, 0.0]]),
                                                                 np.array([[1, 0, 2.5], [0, 1, 0.0]]),
                                                                 np.array([[1, 0, 0], [0, 1, -2.5]])])
    ident = count_vesicles(s.images, merge_radius_px=1.5)[0]
    assert ident["fraction_of_total"].values[0, 0, 7] < 0.5
    reg = ChannelRegistration.identity(MARKERS)
    reg.transforms["CD63"] = np.array([[1, 0, -2.5], [0, 1, 0.0]])
    reg.transforms["CD81"] = np.array([[1, 0, 0], [0, 1, 2.5]])
    good = count_vesicles(s.images, registration=reg)[0]
    assert good["fraction_of_total"].values[0, 0, 7] > 0.93  # vesicles within 2.5 px of an edge lose a channel


def test_photon_thresholds_from_negative_control():
    fr = {1: 1.0}  # control chip: only CD9 is present
    ctrl = synth.tirf((256, 256), markers=MARKERS, n_vesicles=150, photons=1000, phenotype_fractions=fr,
                      chromatic_shift=False, min_separation_px=5, seed=14)
    _, cspots = count_vesicles(ctrl.images)
    thr = thresholds_from_control(cspots, MARKERS[1:], quantile=0.99)
    thr["CD9"] = 300.0
    s = synth.tirf((256, 256), markers=MARKERS, n_vesicles=150, photons=1000, chromatic_shift=False,
                   phenotype_fractions={1: 0.5, 3: 0.5}, min_separation_px=5, seed=15)
    ds, spots = count_vesicles(s.images, thresholds=thr)
    est = ds["fraction_of_total"].values[0, 0]
    truth = np.bincount(s.truth.bitmask, minlength=8) / len(s.truth)
    assert np.abs(est - truth).max() < 0.03
    assert ds["threshold"].values[0, 1] == pytest.approx(thr["CD63"])
    assert 0 < thr["CD63"] < 300


def test_failed_fields_are_reported_and_the_rest_counted(tmp_path):
    s = synth.tirf((64, 64), n_fields=1, markers=["A", "B"], n_vesicles=10, seed=3)
    good = s.images.values[0]
    tifffile.imwrite(tmp_path / "f0.tif", good, photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "f1.tif", np.zeros_like(good), photometric="minisblack", metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "f2.tif", np.full_like(good, 65535), photometric="minisblack", metadata={"axes": "CYX"})
    im = evflow.read_images(str(tmp_path / "f*.tif"), markers=["A", "B"], pixel_size_nm=100)
    ds, spots = count_vesicles(im, camera=s.camera())
    assert list(ds.fov.values) == [0]
    failed = ds.attrs["failed_fields"]
    assert len(failed) == 2
    assert "f1.tif" in failed[0] and "all zero" in failed[0]
    assert "f2.tif" in failed[1] and "saturated" in failed[1]
    assert ds["count"].sum() > 0


def test_colocalisation_fractions(registration):
    _, reg = registration
    s = synth.tirf((256, 256), markers=MARKERS, n_vesicles=200, photons=1500, min_separation_px=6, seed=16,
                   phenotype_fractions={1: 0.25, 3: 0.25, 2: 0.25, 7: 0.25})
    cam = s.camera()
    per = {m: evflow.detect_spots(s.images.values[0, c], psf_sigma_px=1.3, camera=cam) for c, m in enumerate(MARKERS)}
    res = colocalize(per, registration=reg, radius_px=1.5).set_index(["channel_a", "channel_b"])
    t = s.truth.bitmask.to_numpy()
    both = lambda a, b: np.sum(((t >> a) & 1) & ((t >> b) & 1))  # noqa: E731
    assert res.loc[("CD9", "CD63"), "n_coloc"] == pytest.approx(both(0, 1), abs=4)
    assert res.loc[("CD9", "CD81"), "n_coloc"] == pytest.approx(both(0, 2), abs=4)
    frac = res.loc[("CD9", "CD63"), "fraction_a"]
    assert frac == pytest.approx(both(0, 1) / np.sum(t & 1), abs=0.03)


def test_deepblink_pair_colocalises_against_peer_free_detection():
    c1 = tifffile.imread(shared_path("images", "deepblink", "image_c1.tif"))
    c2 = tifffile.imread(shared_path("images", "deepblink", "image_c2.tif"))
    a = evflow.detect_spots(c1, psf_sigma_px=1.0)
    b = evflow.detect_spots(c2, psf_sigma_px=1.0)
    assert len(a) > 20 and len(b) > 20
    res = colocalize({"c1": a, "c2": b}, radius_px=1.5)
    # the same image pair swapped gives the mirrored fractions
    rev = colocalize({"c2": b, "c1": a}, radius_px=1.5)
    assert res.n_coloc[0] == rev.n_coloc[0]
    assert res.fraction_a[0] == pytest.approx(rev.fraction_b[0])
    assert 0 <= res.fraction_a[0] <= 1
