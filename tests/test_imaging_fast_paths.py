"""The fast paths of field preparation and the local noise model give the bits of their definitions.

- Hot/cold pixels: the ring median is computed only where a pixel departs from its 5x5 box minimum
  (maximum) by more than the threshold, a bound the ring median cannot pass; the mask and the repaired
  image must equal the rule evaluated everywhere with ``scipy.ndimage`` (mode 'nearest' for the ring and
  the repair, 'mirror' for the 4-neighbours), ties and edges included, on synthetic fields and on the real images of ``../shared/data/images``.
- Block noise: the ``block_noise`` kernels (NumPy reference and Numba) equal the per-block iterated MAD of
  :func:`evflow.imaging.noise.robust_noise`, with the block's kept samples and median background.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from conftest import shared_path

from evflow.imaging.artefacts import HOT_RATIO, HOT_SNR, _neighbour_share, hot_pixel_mask, repair_pixels
from evflow.imaging.noise import NOISE_CLIP, NOISE_ITERATIONS, robust_noise
from evflow.kernels import _registry as R


def _hot_rule_everywhere(p, sigma, pixel_noise):
    """The hot/cold rule as first written: full-image median and neighbour filters."""
    p = p.astype(np.float32)
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    base = ndi.median_filter(p, footprint=ring, mode="nearest")
    cross = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    nb_max = ndi.maximum_filter(p, footprint=cross, mode="mirror")  # an edge pixel is not its own neighbour
    nb_min = ndi.minimum_filter(p, footprint=cross, mode="mirror")
    e0 = p - base
    share = HOT_RATIO * _neighbour_share(sigma)
    hot = (e0 > HOT_SNR * pixel_noise) & ((nb_max - base) < share * e0)
    cold = (e0 < -HOT_SNR * pixel_noise) & ((nb_min - base) > share * e0)
    return hot | cold


def _repair_everywhere(p, mask):
    fp = np.ones((3, 3), bool)
    fp[1, 1] = False
    out = np.array(p, np.float32, copy=True)
    med = ndi.median_filter(out, footprint=fp, mode="nearest")
    out[mask] = med[mask]
    return out


def _check(p, sigma, noise):
    want = _hot_rule_everywhere(p, sigma, noise)
    got = hot_pixel_mask(p, sigma, noise)
    np.testing.assert_array_equal(got, want)
    assert repair_pixels(p, got).tobytes() == _repair_everywhere(p, want).tobytes()
    return int(want.sum())


def test_hot_pixel_rule_is_that_of_the_full_filters_on_synthetic_fields():
    rng = np.random.default_rng(0)
    found = 0
    for i in range(40):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        p = rng.poisson(rng.uniform(1, 60), (h, w)).astype(np.float32)
        if i % 3 == 0:
            p = np.round(p / 5) * 5  # many ties: the ring median's rank decides
        n = int(rng.integers(0, 25))
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        p[ys, xs] += rng.uniform(-80, 400, n).astype(np.float32)  # hot and cold pixels, some at the edges
        p[0, 0] += 500.0
        found += _check(p, float(rng.choice([0.9, 1.3, 2.0])), float(np.sqrt(max(p.mean(), 1.0))))
    assert found > 100  # the cases hold hot and cold pixels, not only clean fields
    # exactly at the threshold: the strict rule keeps the pixel unflagged in both
    p = np.full((9, 9), 10.0, np.float32)
    p[4, 4] = 10.0 + HOT_SNR * 2.0
    assert _check(p, 1.3, 2.0) == 0
    p[4, 4] = np.nextafter(np.float32(10.0 + HOT_SNR * 2.0), np.float32(np.inf))
    assert _check(p, 1.3, 2.0) == 1


@pytest.mark.parametrize("name", ["spotiflow/img_terra_2d.tif", "spotiflow/img_hybiss_2d.tif",
                                  "deepblink/image_c1.tif", "spotmax/single_image.tiff",
                                  "airlocalize/2DsmFISH_humCells.tif"])
def test_hot_pixel_rule_on_real_images(name):
    import tifffile

    img = np.asarray(tifffile.imread(shared_path("images", name)), np.float32)
    while img.ndim > 2:
        img = img[img.shape[0] // 2]
    img = img[:512, :512]
    # the pixel noise of row differences, as detection measures it, and half of it: more pixels qualify
    noise = float(1.4826 * np.median(np.abs(np.diff(img, axis=0)))) / np.sqrt(2)
    for k in (1.0, 0.5):
        _check(img, 1.3, k * noise)


def _blocks(rng, n_blocks):
    sizes = rng.integers(0, 400, n_blocks)
    sizes[:3] = (0, 50, 64)
    v, m, b = [], [], []
    for n in sizes:
        s = rng.uniform(0.5, 5.0)
        vv = rng.normal(0, s, n)
        spots = rng.random(n) < rng.uniform(0, 0.6)  # samples near candidates: large local maxima
        vv[spots] += rng.exponential(8 * s, spots.sum())
        mm = np.abs(vv) + np.where(spots, rng.exponential(10 * s, n), rng.exponential(s, n))
        if rng.random() < 0.2:
            vv = np.round(vv)  # ties
        v.append(vv), m.append(mm), b.append(rng.normal(100, 10, n))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return np.concatenate(v), np.concatenate(m), np.concatenate(b), starts


def _per_block_reference(v, m, b, starts):
    out = []
    for lo, hi in zip(starts[:-1], starts[1:]):
        if hi == lo:
            out.append((np.nan, 0, np.nan))
            continue
        s = robust_noise(v[lo:hi], m[lo:hi])
        keep = m[lo:hi] < NOISE_CLIP * s
        out.append((s, int(keep.sum()), float(np.median(b[lo:hi][keep])) if keep.any() else np.nan))
    return [np.array(c) for c in zip(*out)]


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_block_noise_kernels_equal_the_per_block_estimate(impl):
    rng = np.random.default_rng(5)
    v, m, b, starts = _blocks(rng, 300)
    s, n, bm = R.block_noise.get(impl)(v, m, b, starts, NOISE_CLIP, NOISE_ITERATIONS)
    rs, rn, rb = _per_block_reference(v, m, b, starts)
    assert s.tobytes() == rs.tobytes() and bm.tobytes() == rb.tobytes()
    np.testing.assert_array_equal(n, rn)
    assert np.isfinite(s[1:]).sum() > 250 and np.isnan(s[0])  # the empty block has no estimate


def test_block_noise_implementations_agree_on_a_real_field():
    """The local noise model's samples of a real smFISH field (spotiflow terra: a bright nucleus and
    texture), grouped by 32 px block, give the same bits on both implementations."""
    import tifffile

    from evflow.imaging.dog import dog_filter
    from evflow.imaging.noise import noise_samples

    img = np.asarray(tifffile.imread(shared_path("images", "spotiflow", "img_terra_2d.tif")), np.float32)
    r = np.asarray(dog_filter(img, 1.3))
    gy, gx, v, m, b = noise_samples(r, 1.3, ndi, background=np.asarray(ndi.uniform_filter(img, 9), np.float64))
    key = (gy // 32) * (1 << 20) + gx // 32
    order = np.argsort(key, kind="stable")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(key[order])) + 1, [len(key)]]).astype(np.int64)
    args = (v[order], m[order], b[order], starts, NOISE_CLIP, NOISE_ITERATIONS)
    a, z = R.block_noise.get("numpy")(*args), R.block_noise.get("numba")(*args)
    for x, y in zip(a, z):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert len(starts) - 1 == 32 * 32 and np.isfinite(a[0]).all()


# =========================================================================== box maximum / minimum filters


def test_box_extreme_equals_scipy_for_every_size_mode_and_dtype():
    from evflow.kernels.minmax import box_extreme_numba

    rng = np.random.default_rng(2)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        a = rng.normal(size=(h, w)).astype(np.float32 if t % 2 else np.float64)
        if t % 4 == 0:
            a = np.round(a * 2)  # ties
        if t % 7 == 0:
            a = rng.integers(0, 50, (h, w)).astype(np.uint16)
        size = int(rng.integers(1, 40)) if t % 3 else (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        for mode in ("nearest", "reflect"):  # windows wider than the array included: edges fold repeatedly
            for op, f in (("max", ndi.maximum_filter), ("min", ndi.minimum_filter)):
                ref, got = f(a, size=size, mode=mode), box_extreme_numba(a, size, op, mode)
                assert got.dtype == ref.dtype and np.array_equal(got, ref), (t, a.shape, size, mode, op)
    with pytest.raises(ValueError, match="mode"):
        box_extreme_numba(np.zeros((4, 4)), 3, "max", "wrap")


def test_host_ndimage_serves_the_box_filters_and_falls_back_to_scipy():
    from evflow.backend import get_ndi
    from evflow.kernels import minmax

    h = get_ndi("numpy")
    assert h is minmax.HOST_NDIMAGE and h.gaussian_filter is ndi.gaussian_filter
    rng = np.random.default_rng(3)
    a = rng.normal(size=(64, 80)).astype(np.float32)
    calls = []
    orig = minmax.box_extreme_numba
    try:
        minmax.box_extreme_numba = lambda *args: calls.append(args[1:]) or orig(*args)
        np.testing.assert_array_equal(h.maximum_filter(a, size=7, mode="nearest"),
                                      ndi.maximum_filter(a, size=7, mode="nearest"))
        np.testing.assert_array_equal(h.minimum_filter(a, size=(3, 5)), ndi.minimum_filter(a, size=(3, 5)))
        assert calls == [(7, "max", "nearest"), ((3, 5), "min", "reflect")]
        # what the passes do not cover goes to scipy: footprints, other modes, NaN, 3-D, output=
        b = a.copy()
        b[3, 4] = np.nan
        fp = np.ones((3, 3), bool)
        for args, kw in (((a,), {"footprint": fp}), ((a,), {"size": 3, "mode": "constant"}), ((b,), {"size": 3}),
                         ((a[None],), {"size": 3}), ((a,), {"size": 3, "origin": 1})):
            np.testing.assert_array_equal(h.maximum_filter(*args, **kw), ndi.maximum_filter(*args, **kw))
        assert len(calls) == 2
    finally:
        minmax.box_extreme_numba = orig


# =========================================================================== the focus filter


def test_log_filter_numba_agrees_with_scipy_and_the_focus_with_its_definition():
    from evflow.imaging.field_qc import field_metrics

    rng = np.random.default_rng(4)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        a = rng.poisson(50, (h, w)).astype(np.float64)
        s = float(rng.choice([0.3, 0.65, 1.0, 2.5]))
        ref = ndi.laplace(ndi.gaussian_filter(a, s))
        got = R.log_filter.get("numba")(a, s)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * max(np.abs(ref).max(), 1e-300))
        np.testing.assert_array_equal(R.log_filter.get("numpy")(a, s), ref)
    import tifffile

    img = np.asarray(tifffile.imread(shared_path("images", "spotiflow", "img_hybiss_2d.tif")), np.float32)
    m = field_metrics(img[None], ["A"], psf_sigma_px=1.3)
    p = img.astype(np.float64)
    want = np.var(ndi.laplace(ndi.gaussian_filter(p, 0.65))) / np.mean(p) ** 2
    assert m["focus"][0] == pytest.approx(want, rel=1e-12)


@pytest.mark.gpu
def test_device_box_and_log_filters_equal_the_host_ones():
    import cupy

    rng = np.random.default_rng(6)
    a = rng.normal(size=(300, 257)).astype(np.float32)
    d = cupy.asarray(a)
    for mode in ("nearest", "reflect"):
        for op in ("max", "min"):
            for size in (3, 11, (5, 31)):
                host = R.box_extreme.get("numba")(a, size, op, mode)
                dev = R.box_extreme.get(R.box_extreme.resolve("auto", d))(d, size, op, mode)
                assert isinstance(dev, cupy.ndarray)
                np.testing.assert_array_equal(cupy.asnumpy(dev), host)
    ref = R.log_filter.get("numpy")(a.astype(np.float64), 0.65)
    dev = R.log_filter.get("cupy")(d, 0.65)
    np.testing.assert_allclose(cupy.asnumpy(dev), ref, rtol=0, atol=1e-9 * np.abs(ref).max())


def test_host_ndimage_pickles_to_the_one_instance():
    import pickle

    from evflow.backend import get_ndi

    h = get_ndi("numpy")
    assert pickle.loads(pickle.dumps(h)) is h  # dask process workers receive it as it is
