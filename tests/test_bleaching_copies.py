"""Bleaching movies: trace extraction with drift, unit brightness, copies per vesicle, time-lapse reading."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile

import evflow
from evflow.errors import ConfigError, ImageError
from evflow.imaging.traces import aperture_photons, phase_correlation_shift
from evflow.synth import bleaching_movie


@pytest.fixture(scope="module")
def movie():
    return bleaching_movie((64, 64), [1, 2, 3, 2, 1, 3], n_frames=300, unit_photons=400.0,
                           drift_px_per_frame=(0.01, -0.006), n_beads=2, seed=1)


def test_phase_correlation_finds_a_known_shift():
    rng = np.random.default_rng(0)
    ref = rng.poisson(5.0, (64, 64)).astype(float)
    ref[20:23, 30:33] += 200
    ref[40:43, 10:13] += 200
    moved = np.roll(ref, (2, -3), axis=(0, 1))
    shift, strength = phase_correlation_shift(ref, moved)
    np.testing.assert_allclose(shift, [2, -3], atol=0.2)
    assert strength > 8
    _, weak = phase_correlation_shift(ref, rng.poisson(5.0, (64, 64)).astype(float))
    assert weak < strength / 3


def test_traces_follow_drift_and_truth(movie):
    mov, yx, truth = movie
    tr = evflow.extract_traces(mov, yx)
    assert tr.traces.shape == (300, 6)
    np.testing.assert_allclose(tr.drift[-1], np.array([0.01, -0.006]) * 299, atol=0.35)
    err = tr.traces - truth.traces
    assert np.abs(err.mean(0)).max() < 15  # background-corrected, aperture-corrected: unbiased
    r = evflow.count_bleaching_steps(tr.traces)
    ok = r.counted
    assert ok.sum() >= 5
    np.testing.assert_array_equal(r.n_steps[ok], truth.n_fluorophores[ok])


def test_traces_without_registration_lose_drifting_spots(movie):
    mov, yx, truth = movie
    fixed = evflow.extract_traces(mov, yx, drift=None)
    reg = evflow.extract_traces(mov, yx)
    late = slice(50, 150)  # 0.6-1.7 px of drift
    on = truth.traces[late] > 0
    lost = (fixed.traces[late] - truth.traces[late])[on].sum() / truth.traces[late][on].sum()
    kept = (reg.traces[late] - truth.traces[late])[on].sum() / truth.traces[late][on].sum()
    assert lost < -0.04 and abs(kept) < 0.02


def test_traces_detect_and_dask_chunks_agree(movie):
    mov, yx, _ = movie
    a = evflow.extract_traces(mov)  # positions detected on the first frames: vesicles and beads
    assert len(a.yx) == len(yx) + 2
    b = evflow.extract_traces(da.from_array(mov, chunks=(64, 64, 64)), a.yx)
    np.testing.assert_allclose(a.traces, b.traces, rtol=1e-9, atol=1e-6)
    with pytest.raises(ImageError, match="frames, y, x"):
        evflow.extract_traces(mov[0])
    with pytest.raises(ImageError, match="radii"):
        evflow.extract_traces(mov, yx, r_peak_px=5, r_bg_inner_px=4)


def _aperture_one(frame, y, x, r_peak, r_in, r_out):
    """One vesicle in one frame, pixel by pixel: disc photons minus disc area x annulus median."""
    H, W = frame.shape
    cy, cx = int(np.rint(y)), int(np.rint(x))
    R = int(np.ceil(r_out))
    disc, ann = [], []
    for py in range(cy - R, cy + R + 1):
        for px in range(cx - R, cx + R + 1):
            if not (0 <= py < H and 0 <= px < W):
                continue
            d2 = (py - y) ** 2 + (px - x) ** 2
            if d2 <= r_peak**2:
                disc.append(frame[py, px])
            if r_in**2 <= d2 <= r_out**2:
                ann.append(frame[py, px])
    return sum(disc) - len(disc) * np.median(ann)


def test_batched_aperture_photons_match_frame_by_frame_and_pixel_by_pixel(movie):
    mov, yx, _ = movie
    frames = mov[:40].astype(np.float64)
    # vesicles of the movie plus ones on and past the image edges (windows clipped), drift of a few px
    pts = np.vstack([yx, [[0.4, 10.0], [63.6, 63.2], [2.0, 61.5], [31.5, 31.5]]])
    shifts = np.column_stack([np.linspace(0, 2.6, 40), np.linspace(0, -1.7, 40)])
    ref = aperture_photons(frames, pts, shifts, 3.0, 4.0, 6.0, frame_batch=1)
    for batch in (7, 40, None):
        np.testing.assert_array_equal(aperture_photons(frames, pts, shifts, 3.0, 4.0, 6.0, frame_batch=batch), ref)
    for t in (0, 17, 39):
        for i in range(len(pts)):
            want = _aperture_one(frames[t], *(pts[i] + shifts[t]), 3.0, 4.0, 6.0)
            np.testing.assert_allclose(ref[t, i], want, rtol=1e-12, atol=1e-9)
    assert np.abs(ref[:, : len(yx)]).max() > 300  # the vesicles are bright; the checks compare photons, not zeros


def test_copies_per_vesicle_from_spots_and_unit():
    spots = pd.DataFrame({"photons_EpCAM": [400.0, 1200.0, 2000.0], "photons_HER2": [0.0, 600.0, 900.0],
                          "bitmask": [1, 3, 3]})
    out = evflow.copies_per_vesicle(spots, {"EpCAM": 400.0, "HER2": 300.0}, dye_per_antibody={"EpCAM": 2.0,
                                                                                              "HER2": 1.5})
    np.testing.assert_allclose(out["fluorophores_EpCAM"], [1, 3, 5])
    np.testing.assert_allclose(out["antibodies_HER2"], [0, 2 / 1.5, 2])
    assert "fluorophores_EpCAM" not in spots  # the input is not modified
    u = evflow.UnitBrightness(200.0, 190.0, 210.0, 50, 20, "EpCAM")
    half = evflow.copies_per_vesicle(spots, u, markers=["EpCAM"], exposure_ratio=2.0)
    np.testing.assert_allclose(half["fluorophores_EpCAM"], [1, 3, 5])
    summary = evflow.copies_summary(out)
    assert summary.loc[3, "EpCAM_copies_median"] == pytest.approx(4.0) and summary.loc[3, "n"] == 2
    with pytest.raises(ConfigError, match="no entry for marker"):
        evflow.copies_per_vesicle(spots, {"EpCAM": 400.0})
    with pytest.raises(ConfigError, match="must be > 0"):
        evflow.copies_per_vesicle(spots, 0.0)
    with pytest.raises(ConfigError, match="no photons"):
        evflow.copies_per_vesicle(spots.drop(columns=["photons_EpCAM", "photons_HER2"]), 1.0)


def test_flow_mesf_on_the_same_scale():
    fl, ab = evflow.fluorophores_from_mesf([300.0, 900.0], 1.5, dye_per_antibody=4.0)
    np.testing.assert_allclose(fl, [200, 600])
    np.testing.assert_allclose(ab, [50, 150])
    ev = pd.DataFrame({"mesf_CD63": [120.0, 240.0], "FSC-A": [1.0, 2.0]})
    out = evflow.fluorophores_from_mesf(ev, {"CD63": 1.2})
    np.testing.assert_allclose(out["fluorophores_CD63"], [100, 200])
    with pytest.raises(ConfigError, match="must be > 0"):
        evflow.fluorophores_from_mesf([1.0], 0.0)
    with pytest.raises(ConfigError, match="no mesf_"):
        evflow.fluorophores_from_mesf(ev.drop(columns="mesf_CD63"), 1.0)


def test_copies_from_synthetic_tirf_fields_match_truth():
    from evflow import synth

    s = synth.tirf((96, 96), markers=["A"], n_vesicles=25, photons=2400, photons_cv=0, background=5,
                   camera="ideal", chromatic_shift=False, edge_margin_px=8, seed=4)
    _, spots = evflow.count_vesicles(s.images, markers=["A"])
    assert len(spots) >= 20
    out = evflow.copies_per_vesicle(spots, 400.0)  # 2400 photons per vesicle, 400 per dye
    assert np.median(out["fluorophores_A"]) == pytest.approx(6.0, rel=0.1)


def test_read_images_keeps_t_for_time_lapse_files(tmp_path):
    a = np.random.default_rng(0).integers(100, 4000, (5, 2, 16, 16), dtype=np.uint16)  # T C Y X
    tifffile.imwrite(tmp_path / "movie.tif", a, imagej=True, metadata={"axes": "TCYX", "finterval": 0.05})
    im = evflow.read_images(tmp_path / "movie.tif", markers=["A", "B"])
    assert im.dims == ("fov", "t", "channel", "y", "x") and im.shape == (1, 5, 2, 16, 16)
    assert im.attrs["frame_interval_s"] == pytest.approx(0.05)
    np.testing.assert_array_equal(im.values[0], a)
    old = evflow.read_images(tmp_path / "movie.tif", markers=["A", "B"], t=False)
    assert old.dims == ("fov", "channel", "y", "x") and old.shape == (5, 2, 16, 16)
    tifffile.imwrite(tmp_path / "m.ome.tif", a, ome=True, metadata={"axes": "TCYX", "TimeIncrement": 0.1})
    ome = evflow.read_images(tmp_path / "m.ome.tif")
    assert ome.shape == (1, 5, 2, 16, 16) and ome.attrs["frame_interval_s"] == pytest.approx(0.1)
    # a hyperstack without a frame interval keeps the old layout unless t=True
    b = np.zeros((3, 2, 16, 16), dtype=np.uint16)  # T Z Y X
    tifffile.imwrite(tmp_path / "hs.tif", b, imagej=True, metadata={"axes": "TZYX"})
    assert evflow.read_images(tmp_path / "hs.tif").shape == (6, 1, 16, 16)
    forced = evflow.read_images(tmp_path / "hs.tif", t=True)
    assert forced.dims[1] == "t" and forced.shape == (2, 3, 1, 16, 16)
    with pytest.raises(ImageError, match="t must be"):
        evflow.read_images(tmp_path / "hs.tif", t="yes")
    with pytest.raises(ImageError, match="differs from the first field"):
        evflow.read_images([tmp_path / "movie.tif", tmp_path / "hs.tif"])


def test_time_lapse_file_to_counts(tmp_path, movie):
    mov, yx, truth = movie
    tifffile.imwrite(tmp_path / "bleach.tif", mov.astype(np.uint16), imagej=True,
                     metadata={"axes": "TYX", "finterval": 0.1})
    im = evflow.read_images(tmp_path / "bleach.tif")
    tr = evflow.extract_traces(im.isel(fov=0, channel=0), yx)
    r = evflow.count_bleaching_steps(tr.traces)
    ok = r.counted
    np.testing.assert_array_equal(r.n_steps[ok], truth.n_fluorophores[ok])
