"""Per-field QC: metrics per field and channel against synthetic truth, flags with their limits, the chip map
layout, and the pipeline's dataset (fov x channel) and report."""

import numpy as np
import pytest

from evflow.imaging.count import count_vesicles
from evflow.imaging.field_qc import QC_LIMITS, field_metrics, qc_flags
from evflow.synth import tirf

MARKERS = ("CD9", "CD63")


def _metrics(images, saturation=None):
    ds, _ = count_vesicles(images, psf_sigma_px=1.3)
    px = images.attrs["pixel_size_nm"]
    rows = [field_metrics(np.asarray(images.values[f], np.float64), list(MARKERS), det, saturation=saturation,
                          psf_sigma_px=1.3, pixel_size_nm=px)
            for f, det in enumerate(ds.attrs["detection"])]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, ds


def test_metrics_match_the_synthetic_truth():
    syn = tirf((192, 192), n_fields=2, markers=MARKERS, phenotype_fractions={1: 1, 2: 1, 3: 1}, density_per_um2=0.2,
               background=20.0, camera="ideal", chromatic_shift=False, seed=4)
    m, _ = _metrics(syn.images)
    area = (192 * 0.108) ** 2
    for f in range(2):
        t = syn.truth[syn.truth["fov"] == f]
        for c in range(len(MARKERS)):
            n_true = int(((t["bitmask"].to_numpy() >> c) & 1).sum())
            assert m["density_per_um2"][f, c] == pytest.approx(m["n_spots"][f, c] / area)
            assert m["density_per_um2"][f, c] == pytest.approx(n_true / area, rel=0.2)  # detection recall
    assert np.allclose(m["background"], 20.0, rtol=0.08)  # median photons per pixel
    assert np.allclose(m["noise"], np.sqrt(20.0), rtol=0.15)  # shot noise of the background
    assert (m["threshold"] > 0).all() and np.isfinite(m["focus"]).all()
    assert np.isnan(m["registration_residual_px"][:, 0]).all()  # the reference channel has no earlier partner
    assert (m["registration_residual_px"][:, 1] < 0.3).all()  # no shift between the channels


def test_flags_find_the_defocused_saturated_and_misregistered_fields():
    kw = dict(markers=MARKERS, phenotype_fractions={3: 1}, density_per_um2=0.3, camera="ideal", background=10.0,
              chromatic_shift=False)
    good = tirf((160, 160), n_fields=4, seed=7, **kw).images
    blurred = tirf((160, 160), n_fields=1, seed=8, psf_sigma_px=3.0, **kw).images
    imgs = np.concatenate([good.values, blurred.values])
    imgs[1, :, 20:40, 20:40] = 5000.0  # a saturated block in field 1
    imgs[2, 1] = np.roll(imgs[2, 1], 1, axis=1)  # field 2: CD63 one pixel off
    import xarray as xr

    images = xr.DataArray(imgs, dims=good.dims, coords={"fov": np.arange(5), "channel": list(MARKERS)},
                          attrs=good.attrs)
    m, _ = _metrics(images, saturation=5000.0)
    flags = qc_flags(m, fov_axis=0)
    assert flags["defocused"][:, 0].tolist() == [False, False, False, False, True]
    assert flags["saturated"].any(axis=1).tolist() == [False, True, False, False, False]
    assert m["saturated_fraction"][1, 0] == pytest.approx(400 / 160 ** 2)
    # field 2's pixel shift; the defocused field localises poorly too (residual ~0.7 px), so it is flagged as well
    assert flags["registration"][:4, 1].tolist() == [False, False, True, False]
    assert m["registration_residual_px"][2, 1] == pytest.approx(1.0, abs=0.25)
    assert not flags["background"].any() and not flags["sparse"][:4].any()
    # the spots of the synthetic PSF fit at its sigma; those of the field blurred to 3 px at ~2.3x it
    assert np.all(np.abs(m["spot_width"][:4] - 1.0) < 0.15) and np.all(m["spot_width"][4] > 2.0)
    assert flags["wide_spots"][:, 0].tolist() == [False, False, False, False, True]
    assert QC_LIMITS["registration"] == 0.5 and QC_LIMITS["defocused"] == 0.5


def test_crowded_fields_are_flagged_as_undercounted():
    """At 600 vesicles per 256x256 px (placed at random) a quarter of them lie within 2 PSF sigmas of another
    and are found as one: the field is flagged; at 150 it is not."""
    from evflow import metrics

    out = {}
    for n in (150, 600):
        syn = tirf((256, 256), markers=["CD9"], n_vesicles=n, peak_snr=10, seed=3, camera="ideal",
                   chromatic_shift=False, min_separation_px=0)
        ds, _ = count_vesicles(syn.images, psf_sigma_px=1.3)
        det = ds.attrs["detection"][0]
        m = field_metrics(np.asarray(syn.images.values[0], np.float64), ["CD9"], det, psf_sigma_px=1.3)
        found, _, _ = metrics.match_points(syn.truth[["y", "x"]].to_numpy(), _spots(syn.images), 1.5)
        rho = det["CD9"]["n_spots"] / 256 ** 2
        assert m["crowding"][0] == pytest.approx(1 - np.exp(-rho * np.pi * 2.6 ** 2))
        out[n] = (m["crowding"][0], len(found) / n, qc_flags({k: v[None, :] for k, v in m.items()})["crowded"][0, 0])
    # measured: crowding 0.044 (136 of 150 found) and 0.135 (436 of 600 found)
    assert out[150][0] < 0.06 and out[150][1] > 0.88 and not out[150][2]
    assert out[600][0] > QC_LIMITS["crowded"] and out[600][1] < 0.8 and out[600][2]


def _spots(images):
    import evflow

    return evflow.detect_spots(np.asarray(images.values[0, 0], np.float32), psf_sigma_px=1.3)[["y", "x"]].to_numpy()


def test_field_layout_by_stage_position_else_index():
    from evflow.pipeline.report_imaging import field_layout

    x, y, unit = field_layout([10.0, 60.0, 10.0], [5.0, 5.0, 55.0])
    assert unit.startswith("stage") and list(x) == [10, 60, 10] and list(y) == [5, 5, 55]
    x, y, unit = field_layout([10.0, np.nan, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert unit.startswith("field index") and list(x) == [0, 1, 2, 0, 1] and list(y) == [0, 0, 0, 1, 1]


def test_pipeline_dataset_and_report_have_field_qc_and_chance(tmp_path):
    from test_imaging_read_ome import _positions

    from evflow.pipeline import run

    syn = tirf((128, 128), n_fields=3, markers=MARKERS, phenotype_fractions={1: 1, 2: 1, 3: 1},
               density_per_um2=0.6, chromatic_shift=False, seed=9)
    raw = syn.images.values.astype(np.uint16)
    raw[2, :, 10:30, 10:30] = 65535  # field 2 saturated in both channels
    _positions(tmp_path / "chip.ome.tif", raw, x0=1000.0)
    (tmp_path / "exp.toml").write_text(
        '[imaging]\nchannels = ["CD9", "CD63"]\npixel_size_nm = 108.0\ncamera_offset = 100.0\ncamera_gain = 2.0\n'
        'camera_em_gain = 100.0\nchance_correction = true\n\n[[samples]]\nname = "S1"\nimages = ["chip.ome.tif"]\n')
    ds = run(tmp_path / "exp.toml", output=tmp_path / "out", quiet=True)
    assert ds["image_qc_density_per_um2"].dims == ("image_sample", "fov", "image_channel")
    assert list(ds["image_channel"].values) == list(MARKERS)
    assert list(ds["image_stage_x_um"].values[0]) == [1000.0, 1050.0, 1100.0]
    sat = ds["image_qc_flag_saturated"].values[0]
    assert sat[:, 0].tolist() == [False, False, True] and not bool(ds["image_qc_field_ok"].values[0, 2])
    d = ds["image_qc_density_per_um2"].values[0]
    t = syn.truth
    for f in range(2):
        n_true = ((t[t["fov"] == f]["bitmask"].to_numpy()[:, None] >> np.arange(2)) & 1).sum(0)
        np.testing.assert_allclose(d[f], n_true / (128 * 0.108) ** 2, rtol=0.2)
    cf = ds["image_chance_fraction"].sel(image_sample="S1").values
    assert np.isnan(cf[:3]).all() and 0 < cf[3] < 0.1
    assert "image_fraction_corrected" in ds
    fc = float(ds["image_fraction_corrected"].values[0, 3])
    assert fc < float(ds["image_fraction_all_fov"].values[0, 3])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Chance colocalisation" in html and "chip map" in html and "Per-field QC" in html
    # results.zarr keeps them
    import xarray as xr

    z = xr.open_zarr(tmp_path / "out" / "results.zarr")
    assert "image_qc_focus" in z and "image_chance_fraction" in z


def test_large_planes_sample_their_background_and_noise():
    from evflow.imaging.field_qc import SAMPLE_ROWS_ABOVE, _median, _pixel_noise

    rng = np.random.default_rng(9)
    plane = rng.poisson(40.0, (2100, 1100)).astype(np.float32)
    plane[500:520, 300:320] += 400.0  # some structure
    assert plane.size > SAMPLE_ROWS_ABOVE
    m = field_metrics(plane[None], ["m"])
    full_bg = _median(plane)
    full_noise = _pixel_noise(np.diff(plane.astype(np.float64), axis=1).ravel())
    assert m["background"][0] == pytest.approx(full_bg, rel=0.01)  # the medians of integer counts: 40 both
    assert m["noise"][0] == pytest.approx(full_noise, rel=0.003)
    assert m["noise"][0] == pytest.approx(np.sqrt(40.0), rel=0.01)
    small = plane[:1000, :1000]  # below the limit: every row, as before
    assert field_metrics(small[None], ["m"])["background"][0] == _median(small)


def test_detect_spots_reports_its_crowding_whole_and_tiled():
    import evflow

    syn = tirf((256, 256), markers=["CD9"], n_vesicles=600, peak_snr=10, seed=3, camera="ideal",
               chromatic_shift=False, min_separation_px=0)
    img = np.asarray(syn.images.values[0, 0], np.float32)
    whole = evflow.detect_spots(img, psf_sigma_px=1.3)
    tiled = evflow.detect_spots(img, psf_sigma_px=1.3, tile=128)
    assert whole.attrs["crowding"] == pytest.approx(1 - np.exp(-len(whole) / 256 ** 2 * np.pi * 2.6 ** 2))
    assert tiled.attrs["crowding"] == whole.attrs["crowding"] > QC_LIMITS["crowded"]
    noise = np.random.default_rng(1).poisson(5.0, (32, 32)).astype(np.float32)
    assert evflow.detect_spots(noise, psf_sigma_px=1.3).attrs["crowding"] < 0.02


@pytest.mark.parametrize("camera", ["scmos", "emccd"])
def test_noise_excess_is_one_on_a_sparse_field_and_large_on_a_crowded_one(camera):
    """The detection filter's noise over photon statistics (with the camera model): 1.02-1.11 on sparse synthetic
    sCMOS and EMCCD fields (the EM register's excess factor counted), 2.3 at 1,500 vesicles per 256x256 px, where
    the spots raise the noise estimate, only 361 are found and crowding reads 0.11; NaN without a camera model;
    tiles agree with the whole field."""
    import evflow
    from evflow.imaging.camera import as_camera

    got = {}
    for n in (150, 1500):
        syn = tirf((256, 256), markers=["CD9"], n_vesicles=n, peak_snr=10, camera=camera, chromatic_shift=False,
                   min_separation_px=0, seed=3)
        cam = as_camera(syn.camera())
        raw = np.asarray(syn.images.values[0, 0], np.float32)
        whole = evflow.detect_spots(raw, psf_sigma_px=1.3, camera=cam)
        tiled = evflow.detect_spots(raw, psf_sigma_px=1.3, camera=cam, tile=128)
        assert tiled.attrs["noise_excess"] == whole.attrs["noise_excess"]
        got[n] = whole.attrs["noise_excess"]
        assert np.isnan(evflow.detect_spots(cam.to_photons(raw), psf_sigma_px=1.3).attrs["noise_excess"])
    assert 0.95 < got[150] < 1.15 and got[1500] > 2.0


def test_the_noisy_flag_of_field_qc():
    from evflow.imaging.camera import as_camera

    rows, bare = [], []
    for n in (150, 1500):
        syn = tirf((256, 256), markers=["CD9"], n_vesicles=n, peak_snr=10, chromatic_shift=False,
                   min_separation_px=0, seed=3)
        assert syn.images.attrs["units"] == "ADU"
        cam = as_camera(syn.camera())
        ds, _ = count_vesicles(syn.images, psf_sigma_px=1.3)
        ph = np.asarray(cam.to_photons(np.asarray(syn.images.values[0])))
        det = ds.attrs["detection"][0]
        rows.append(field_metrics(ph, ["CD9"], det, psf_sigma_px=1.3, camera=cam))
        bare.append(field_metrics(ph, ["CD9"], det, psf_sigma_px=1.3))
    m = {k: np.stack([r[k] for r in rows]) for k in rows[0]}  # (fov, channel)
    assert 0.95 < m["noise_excess"][0, 0] < 1.15 and m["noise_excess"][1, 0] > QC_LIMITS["noisy"]
    assert qc_flags(m)["noisy"][:, 0].tolist() == [False, True]
    assert not qc_flags(m)["crowded"][0, 0]  # the sparse field is neither
    b = {k: np.stack([r[k] for r in bare]) for k in bare[0]}
    assert np.isnan(b["noise_excess"]).all() and not qc_flags(b)["noisy"].any()
