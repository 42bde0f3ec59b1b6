"""Detection accuracy with defaults: synthetic SNR sweep against trackpy (minmass tuned on the truth), the
data-driven threshold's null, and the real images with truth (spotmax labels, deepstorm emitters)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path

import evflow
from evflow import metrics, synth
from evflow.imaging.noise import choose_threshold, null_counts, null_peak_density

SEEDS = (100, 101, 102)
#: trackpy.locate(diameter=7) F1 on the fields of _sweep_fields, minmass tuned on the truth over MINMASS
#: (benchmarks/bench_detection_real.py; recomputed by test_trackpy_reference_is_current when trackpy is installed)
TRACKPY_TUNED_F1 = {1.6: 0.608, 3: 0.859, 5: 0.909, 10: 0.913}
MINMASS = (0, 5, 10, 15, 20, 25, 30, 35, 50, 75, 100, 150, 200)
#: evflow must reach trackpy's tuned F1 less this: the tuned number is the best of 23 minmass values on the
#: same 450 spots (an optimistic selection), and one standard error of an F1 of 0.6 on 450 spots is 0.02
TOLERANCE = 0.01


def _sweep_fields(snr):
    return [synth.tirf((256, 256), markers=["A"], n_vesicles=150, peak_snr=snr, photons_cv=0.2, camera="ideal",
                       chromatic_shift=False, min_separation_px=5, seed=s) for s in SEEDS]


def _pooled_f1(fields, dets):
    tp = fp = fn = 0
    for s, d in zip(fields, dets):
        m = metrics.detection_metrics(s.truth, d, radius=1.5)
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
    return 2 * tp / max(2 * tp + fp + fn, 1)


@pytest.mark.parametrize("snr", [1.6, 3, 5, 10])
def test_snr_sweep_reaches_tuned_trackpy(snr):
    fields = _sweep_fields(snr)
    dets = [evflow.detect_spots(s.images.values[0, 0].astype(np.float32), psf_sigma_px=1.3) for s in fields]
    f1 = _pooled_f1(fields, dets)
    assert f1 >= TRACKPY_TUNED_F1[snr] - TOLERANCE, (snr, f1)
    if snr >= 5:
        assert f1 >= 0.98, (snr, f1)
    # the threshold comes from the data: lower where dim spots are many (SNR 1.6), never below T_MIN
    thr = [d.attrs["threshold_snr"] for d in dets]
    assert all(3.0 <= t <= 5.0 for t in thr)
    if snr == 1.6:
        assert max(thr) < 4.0


@pytest.mark.parametrize("snr", [1.6, 3])
def test_trackpy_reference_is_current(snr):
    pytest.importorskip("trackpy", reason="trackpy (the bench extra) is not installed: reference not recomputed")
    import trackpy as tp

    tp.quiet()
    fields = _sweep_fields(snr)
    imgs = [s.images.values[0, 0].astype(np.float32) for s in fields]
    best = max(_pooled_f1(fields, [tp.locate(im, 7, minmass=mm, engine="python")[["y", "x"]] for im in imgs])
               for mm in MINMASS)
    assert best == pytest.approx(TRACKPY_TUNED_F1[snr], abs=0.005)


def test_null_counts_match_maxima_of_filtered_noise():
    """The Gaussian-field floor of the null: local maxima of the filtered pure noise above t."""
    import scipy.ndimage as ndi

    from evflow.imaging.dog import dog_filter

    rng = np.random.default_rng(3)
    n, obs = 0, {3.0: 0, 3.5: 0}
    for _ in range(4):
        r = dog_filter(rng.normal(0, 1, (512, 512)).astype(np.float32), 1.3)
        r = r / (1.4826 * np.median(np.abs(r - np.median(r))))
        mx = ndi.maximum_filter(r, size=5, mode="nearest")
        for t in obs:
            obs[t] += int(((r == mx) & (r >= t))[8:-8, 8:-8].sum())
        n += 496 * 496
    exp = null_counts(list(obs), [], n_pixels=n, null_pixels=n, peak_density=null_peak_density(1.3))
    for (t, o), e in zip(obs.items(), exp):
        assert 0.75 * e <= o <= 1.25 * e, (t, o, e)


def test_choose_threshold_caps_the_false_discovery_rate():
    rng = np.random.default_rng(1)
    for n_null in (500, 2000, 8000):
        minima = np.abs(rng.normal(size=n_null)) + 2.0  # null minima deeper than 2 sigmas
        maxima = np.r_[np.abs(rng.normal(size=n_null)) + 2.0, np.full(100, 4.2)]
        t = choose_threshold(maxima, minima, t_max=5.0, n_pixels=65536, null_pixels=65536)
        if t < 5.0:  # lowered: the estimated share of false spots among those kept is within the bound
            assert (minima >= t).sum() <= 0.3 * (maxima >= t).sum(), (n_null, t)
        if n_null == 500:
            assert t <= 4.2  # the 100 spots are kept
        if n_null == 8000:
            assert t == 5.0  # a null this heavy: no threshold below t_max keeps the false share down


def _spotmax():
    import tifffile

    img = tifffile.imread(shared_path("images", "spotmax", "single_image.tiff"))
    lab = tifffile.imread(shared_path("images", "spotmax", "single_label.tiff"))
    return img, lab


def test_spotmax_labels_with_defaults():
    img, lab = _spotmax()
    df = evflow.detect_spots(img)
    # the fit windows take in the cells around the spots: the width estimate is not trusted, and says so
    assert df.attrs["psf_sigma_source"] == "default: estimate too wide" and df.attrs["psf_sigma_estimate"] >= 3
    assert df.attrs["psf_sigma_px"] == [1.5]
    iy = np.clip(np.rint(df.y.to_numpy()), 0, lab.shape[0] - 1).astype(int)
    ix = np.clip(np.rint(df.x.to_numpy()), 0, lab.shape[1] - 1).astype(int)
    hit = lab[iy, ix]
    found = len(np.unique(hit[hit > 0]))
    n_lab = len(np.unique(lab[lab > 0]))
    assert n_lab == 81
    # measured: recall 0.556, precision 0.616 (73 detections); the cells' texture gives maxima that fit wider than
    # twice the PSF, left out of the adaptive threshold's discoveries (before: precision 0.542, 83 detections),
    # and the photon test drops a second detection of one label
    assert df.attrs["threshold_wide_maxima"] > 50
    assert found / n_lab >= 0.52 and found / max(len(df), 1) >= 0.58


@pytest.mark.parametrize("path, most", [(("airlocalize", "2DsmFISH_humCells.tif"), 0),
                                        (("spotiflow", "img_hybiss_2d.tif"), 0), (("spotiflow", "img_terra_2d.tif"), 0),
                                        (("deepblink", "image_c1.tif"), 0), (("spotmax", "single_image.tiff"), 1)])
def test_the_photon_test_on_real_spots(path, most):
    """Real spots fit 0.65-3.1x the photons of the filter's response (1st-100th percentile over these images); the
    photon test (over 3x by 3 CRLBs) drops none of them, and on spotmax one second detection of a label."""
    import tifffile

    img = tifffile.imread(shared_path("images", *path)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = evflow.detect_spots(img)
    assert t.attrs["n_rejected_photons"] <= most and len(t) > 50


def test_deepstorm_emitters():
    import tifffile

    stack = tifffile.imread(shared_path("images", "deepstorm", "ArtificialDataset_demo1.tif")).astype(np.float32)
    pos = pd.read_csv(shared_path("images", "deepstorm", "positions_demo1.csv"))
    truths = [np.column_stack([g["y [nm]"] / 100 - 0.5, g["x [nm]"] / 100 - 0.5]) for _f, g in
              sorted(pos.groupby("frame"))]
    tp = fp = fn = 0
    err = []
    for frame, t in zip(stack[:5], truths[:5]):
        d = evflow.detect_spots(frame, psf_sigma_px=1.1)  # the truth's width (107-115 nm at 100 nm/px)
        it, idt, dist = metrics.match_points(t, d[["y", "x"]].to_numpy(), 1.5)
        tp, fp, fn = tp + len(it), fp + len(d) - len(it), fn + len(t) - len(it)
        err.append(dist)
    precision, recall = tp / max(tp + fp, 1), tp / (tp + fn)
    assert precision >= PRECISION_FLOOR_DEEPSTORM and recall >= RECALL_FLOOR_DEEPSTORM, (precision, recall)
    assert np.sqrt(np.mean(np.concatenate(err) ** 2)) < 0.8  # px


#: measured over the first 5 frames: precision 1.0, recall 0.02.  248 emitters per 64x64 frame leave no
#: spot-free pixel: the noise estimate is inflated by the spots (about 30x) and only the brightest
#: isolated emitters pass.  The floors pin what is found to be right; recall is a known limitation.
PRECISION_FLOOR_DEEPSTORM = 0.9
RECALL_FLOOR_DEEPSTORM = 0.01
