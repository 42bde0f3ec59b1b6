"""CPU detection kernels (Numba) against the scipy.ndimage definitions used on the GPU path."""

import numpy as np
import pytest
import scipy.ndimage as ndi
from general_checks import assert_same_across_impls, impl_params

from evflow.imaging import _filters as F
from evflow.imaging.detect import DOG_RATIO, _dog, _dog_gain, dog_filter, local_maxima
from evflow.imaging.localize import extract_windows


@pytest.mark.parametrize("impl", impl_params("numba", "cupy"))
@pytest.mark.parametrize("shape", [(64, 80), (37, 53), (8, 8), (9, 300), (300, 9)])
@pytest.mark.parametrize("sigma", [0.8, 1.3, 2.2])
def test_dog_matches_scipy_gaussian_filters(shape, sigma, impl):
    rng = np.random.default_rng(0)
    img = rng.poisson(20.0, shape).astype(np.float32)
    img[shape[0] // 2, shape[1] // 2] += 3000  # a spot
    ref = _dog(img.astype(np.float64), sigma, ndi, np.float64) / _dog_gain(sigma)

    def check(expected, out, _impl):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6 * np.abs(expected).max() + 1e-5)

    # dog_filter dispatches on the array type: Numba for NumPy images, cupyx.scipy.ndimage for CuPy
    assert_same_across_impls(lambda im: dog_filter(im, sigma), [img], impl, keyword=None, expected=ref, compare=check)
    if impl.gpu:
        return
    # integer input gives the same as its float32 copy
    np.testing.assert_array_equal(F.dog_numba(img.astype(np.uint16), sigma, DOG_RATIO * sigma, 1.0),
                                  F.dog_numba(img, sigma, DOG_RATIO * sigma, 1.0))


def test_gaussian_kernel_matches_scipy():
    for s in (0.7, 1.3, 3.9):
        w = F.gaussian_kernel(s)
        x = np.zeros(101)
        x[50] = 1
        np.testing.assert_allclose(w, ndi.gaussian_filter1d(x, s)[50 - len(w) // 2: 50 + len(w) // 2 + 1], atol=1e-15)


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("factor", [1.0, 0.37])
def test_maxima_match_maximum_filter_including_ties_and_edges(radius, factor):
    rng = np.random.default_rng(radius)
    score = rng.integers(0, 6, (41, 57)).astype(np.float32)  # many equal values (ties)
    thr = 2.0 * factor
    yy, xx = F.maxima_numba(score, thr, radius, factor=factor)
    s = score * np.float32(factor)
    mx = ndi.maximum_filter(s, size=2 * radius + 1, mode="nearest")
    ry, rx = np.nonzero((s == mx) & (s >= np.float32(thr)))
    np.testing.assert_array_equal(yy, ry)
    np.testing.assert_array_equal(xx, rx)
    assert len(yy) > 10


def test_local_maxima_factor_equals_scaled_score():
    rng = np.random.default_rng(3)
    resp = ndi.gaussian_filter(rng.normal(size=(128, 128)), 1.5).astype(np.float32)
    f = np.float32(1 / 0.0731)
    a = local_maxima(resp, 2.0, 2, factor=f)
    b = local_maxima(resp * f, 2.0, 2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert len(a[0]) > 5


def test_windows_match_fancy_indexing():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 1000, (50, 60)).astype(np.uint16)
    yc = np.array([0, 10, 49, 25])
    xc = np.array([0, 59, 30, 3])
    win, y0, x0 = extract_windows(img, yc, xc, 9)
    k = np.arange(9)
    ref = img[y0[:, None, None] + k[None, :, None], x0[:, None, None] + k[None, None, :]].astype(np.float32)
    np.testing.assert_array_equal(win, ref)
    assert win.dtype == np.float32 and list(y0) == [0, 6, 41, 21] and list(x0) == [0, 51, 26, 0]
