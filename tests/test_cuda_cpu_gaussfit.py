"""gaussfit.cu executed on the CPU (tests/cuda_cpu) against the NumPy reference.

Compiled from the source evflow.kernels hands to NVRTC (with the same -D
options) and launched with the Launch kernels/launch.py builds for the CuPy
path.  glibc's exp/erf/log stand in for CUDA's libdevice, so results agree to
the tolerances of the GPU parity test, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_cpu import runner
from test_kernels_gaussfit import _windows

from evflow.kernels import gaussfit as gf, launch as L

pytestmark = pytest.mark.cuda_cpu


@pytest.fixture(scope="module", autouse=True)
def _gxx():
    runner.require_gxx()


def fit_cpu(windows, *, sigma=1.3, fit_sigma=True, method="mle", init=None, max_iter=30, tol=1e-5,
            readout_var=0.0, sanitize=None):
    """fit_gaussians(backend='cupy') with gaussfit.cu executed on the CPU."""
    data = np.ascontiguousarray(np.asarray(windows, dtype=np.float32))  # as fit_cupy
    if init is None:
        init = gf.initial_guess(data, sigma, xp=np)
    xp = runner.GuardedNumpy()  # the outputs fit_cupy allocates, with guard bytes around them
    n = data.shape[0]
    theta = xp.array(init, dtype=np.float64, copy=True, order="C")
    outs = xp.empty((n, 5), np.float64), xp.empty(n, np.float64), xp.empty(n, np.int32), xp.empty(n, np.int8)
    launch = L.gaussfit_launch(
        data, theta, *outs, sigma=float(sigma), fit_sigma=fit_sigma, method=method, max_iter=max_iter, tol=tol,
        readout_var=readout_var,
    )
    if data.shape[0]:
        runner.run(launch, sanitize=sanitize)
    xp.check()
    names = ("theta", "crlb", "llr_out", "iters_out", "status_out")
    return dict(zip(("params", "crlb", "llr", "iterations", "status"), (launch.arg(a) for a in names)))


def _assert_close(a, b, iters_frac=0.99):
    np.testing.assert_allclose(b["params"], a["params"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b["crlb"], a["crlb"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(b["llr"], a["llr"], rtol=1e-7, atol=1e-7)
    assert (b["iterations"] == a["iterations"]).mean() >= iters_frac
    assert (b["status"] == a["status"]).mean() >= iters_frac


@pytest.mark.parametrize("method", ["mle", "lsq"])
@pytest.mark.parametrize("w", [7, 9])
def test_matches_numpy_reference(method, w):
    d, _ = _windows(300, w=w, seed=5)  # 300 spots: 3 blocks of 128, the last one partial
    a = gf.fit_gaussians(d, sigma=1.3, method=method, backend="numpy")
    b = fit_cpu(d, method=method)
    _assert_close(a, b)
    assert (a["status"] == 0).mean() > 0.95
    # the log-likelihood ratio is ~chi^2 with w*w - 5 degrees of freedom (not twice that)
    if method == "mle":
        assert 0.8 * (w * w - 5) < np.median(b["llr"]) < 1.2 * (w * w - 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16], ids=str)
def test_input_dtypes_fixed_sigma_and_readout_noise(dtype):
    d, _ = _windows(130, seed=6)
    d = d.astype(dtype)
    a = gf.fit_gaussians(d, sigma=1.2, fit_sigma=False, readout_var=2.5, backend="numpy")
    b = fit_cpu(d, sigma=1.2, fit_sigma=False, readout_var=2.5)
    _assert_close(a, b)
    assert np.all(b["params"][:, 4] == 1.2) and np.all(b["crlb"][:, 4] == 0.0)


def test_edge_windows_and_iteration_limits():
    # flat, empty, negative, saturated, non-finite windows; one and zero iterations
    d, _ = _windows(12, seed=7)
    d[0] = 0.0
    d[1] = 10.0
    d[2] = -3.0
    d[3, 3, 3] = np.nan
    d[4, 1, 1] = np.inf
    d[5] = 1e30
    d[6] = 2.0
    d[6, 3, 3] = 5000.0  # one hot pixel: sigma ends on its lower bound 0.25 sigma
    r2 = (np.arange(7)[:, None] - 3.0) ** 2 + (np.arange(7)[None] - 3.0) ** 2
    d[7] = 2.0 + 300.0 * np.exp(-0.5 * r2 / 25.0)  # wider than the window
    init = gf.initial_guess(d, 1.3)
    for max_iter in (0, 1, 30):
        a = gf.fit_numpy(d, init, sigma=1.3, max_iter=max_iter)
        b = fit_cpu(d, init=init, max_iter=max_iter)
        names = ("params", "crlb", "llr", "iterations", "status")
        a = dict(zip(names, a))
        ok = np.all(np.isfinite(a["params"]), axis=1) & np.isfinite(a["llr"])
        for key in names:
            np.testing.assert_array_equal(np.isfinite(b[key]), np.isfinite(a[key]))
        np.testing.assert_array_equal(b["status"], a["status"])
        np.testing.assert_array_equal(b["iterations"], a["iterations"])
        np.testing.assert_allclose(b["params"][ok], a["params"][ok], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(b["llr"][ok], a["llr"][ok], rtol=1e-7, atol=1e-7)
        if max_iter == 1:
            assert (a["status"] == 1).sum() >= 6
        if max_iter == 30:
            assert b["params"][6, 4] == 0.25 * 1.3 and list(b["status"][3:5]) == [2, 2]


def test_launch_shape():
    d, _ = _windows(129, seed=8)
    n = len(d)
    launch = L.gaussfit_launch(d, gf.initial_guess(d, 1.3), np.empty((n, 5)), np.empty(n), np.empty(n, np.int32),
                               np.empty(n, np.int8), sigma=1.3, fit_sigma=True, method="lsq", max_iter=30, tol=1e-5,
                               readout_var=0.0)
    assert launch.grid == (2, 1, 1) and launch.block == (128, 1, 1) and launch.shared_bytes == 0
    assert launch.options == gf.cuda_options(7) and launch.cupy_args()[8] == np.int32(1)


@pytest.mark.parametrize("sanitize", ["thread", "address"])
def test_under_sanitizer(sanitize):
    d, _ = _windows(24, seed=9)
    a = gf.fit_gaussians(d, sigma=1.3, backend="numpy")
    _assert_close(a, fit_cpu(d, sanitize=sanitize))
