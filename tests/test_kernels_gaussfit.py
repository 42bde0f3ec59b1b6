"""Batched integrated-Gaussian fits: NumPy reference vs Numba vs CUDA, accuracy vs CRLB."""

import numpy as np
import pytest
from general_checks import assert_same_across_impls, impl_params, run_impl

from evflow.kernels import gaussfit as gf
from evflow.synth.tirf import integrated_gaussian

#: tolerances per implementation: (params, crlb, llr) as (rtol, atol)
TOL = {
    "numba": ((1e-9, 1e-9), (1e-8, 1e-12), (1e-8, 1e-8)),
    "cupy": ((1e-8, 1e-8), (1e-7, 1e-10), (1e-7, 1e-7)),
}


def _fit(**kw):
    return lambda d, **selector: gf.fit_gaussians(d, sigma=1.3, **kw, **selector)


def _same_fits(ref, got, impl):
    (pr, pa), (cr, ca), (lr, la) = TOL[impl.name]
    np.testing.assert_allclose(got["params"], ref["params"], rtol=pr, atol=pa)
    np.testing.assert_allclose(got["crlb"], ref["crlb"], rtol=cr, atol=ca)
    np.testing.assert_allclose(got["llr"], ref["llr"], rtol=lr, atol=la)
    assert (ref["iterations"] == got["iterations"]).mean() > 0.99
    assert (ref["status"] == got["status"]).mean() > 0.99


def _windows(n, w=7, sigma=1.3, photons=(300, 3000), bg=(5, 20), seed=0):
    rng = np.random.default_rng(seed)
    c = (w - 1) / 2
    x = c + rng.uniform(-0.5, 0.5, n)
    y = c + rng.uniform(-0.5, 0.5, n)
    N = rng.uniform(*photons, n)
    b = rng.uniform(*bg, n)
    mu = b[:, None, None] + N[:, None, None] * integrated_gaussian(y, sigma, w)[:, :, None] * integrated_gaussian(x, sigma, w)[:, None, :]
    return rng.poisson(mu).astype(np.float32), np.column_stack([x, y, N, b])


@pytest.mark.parametrize("impl", impl_params("numba", "cupy"))
@pytest.mark.parametrize("method", ["mle", "lsq"])
@pytest.mark.parametrize("fit_sigma", [True, False])
@pytest.mark.parametrize("w", [7, 9])
def test_matches_numpy_reference(method, fit_sigma, w, impl):
    d, _ = _windows(400 if not impl.gpu else 2000, w=w, seed=1 if not impl.gpu else 5)
    a, _ = assert_same_across_impls(_fit(method=method, fit_sigma=fit_sigma), [d], impl,
                                    compare=_same_fits)
    if not fit_sigma:
        assert np.all(a["params"][:, 4] == 1.3) and np.all(a["crlb"][:, 4] == 0)


def test_mle_accuracy_reaches_crlb():
    d, truth = _windows(4000, seed=2)
    r = gf.fit_gaussians(d, sigma=1.3, impl="numba")
    p = r["params"]
    assert (r["status"] == 0).mean() > 0.99
    for k in (0, 1):  # x, y
        err = p[:, k] - truth[:, k]
        assert abs(err.mean()) < 0.01
        rmse = np.sqrt((err**2).mean())
        crlb = np.sqrt((r["crlb"][:, k] ** 2).mean())
        assert 0.8 * crlb < rmse < 1.2 * crlb, (rmse, crlb)
    rel = (p[:, 2] - truth[:, 2]) / truth[:, 2]
    assert abs(np.median(rel)) < 0.03
    assert abs(np.median(p[:, 4]) - 1.3) < 0.02
    # log-likelihood ratio ~ chi^2 with w*w - 5 degrees of freedom for a correct model
    assert 40 < np.mean(r["llr"]) < 49


def test_crlb_matches_analytic_limit():
    # no background, fixed sigma: var(x) = (sigma^2 + 1/12) / N (Mortensen et al. 2010, large pixels excluded)
    N = 1e4
    w = 15
    c = 7.0
    d = (N * np.outer(integrated_gaussian(c, 1.3, w), integrated_gaussian(c, 1.3, w)))[None].astype(np.float32)
    init = np.array([[c, c, N, 1e-6, 1.3]])
    r = gf.fit_gaussians(d, sigma=1.3, fit_sigma=False, init=init, max_iter=1, impl="numpy")
    expected = np.sqrt((1.3**2 + 1 / 12) / N)
    assert r["crlb"][0, 0] == pytest.approx(expected, rel=0.03)


def test_lsq_and_mle_agree_on_bright_spots():
    d, truth = _windows(300, photons=(5000, 8000), seed=3)
    a = gf.fit_gaussians(d, sigma=1.3, method="mle", impl="numba")["params"]
    b = gf.fit_gaussians(d, sigma=1.3, method="lsq", impl="numba")["params"]
    assert np.sqrt(((a[:, 0] - b[:, 0]) ** 2).mean()) < 0.03


@pytest.mark.parametrize("impl", impl_params("numba", "cupy"))
def test_readout_variance_changes_fit_and_matches_reference(impl):
    d, _ = _windows(100, seed=4)
    d = d - 3.0  # offset-subtracted data can go below zero
    _, got = assert_same_across_impls(_fit(readout_var=4.0), [d], impl, compare=_same_fits)
    without = run_impl(_fit(readout_var=0.0), [d], impl)
    assert not np.allclose(without["crlb"], got[impl.name]["crlb"])


def test_bad_window_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        gf.fit_gaussians(np.zeros((3, 7, 5), np.float32))
    with pytest.raises(ValueError, match="window size"):
        gf.fit_gaussians(np.zeros((3, 17, 17), np.float32))
    with pytest.raises(ValueError, match="impl"):
        gf.fit_gaussians(np.zeros((3, 7, 7), np.float32), impl="gpu")


def test_empty_batch():
    r = gf.fit_gaussians(np.zeros((0, 7, 7), np.float32))
    assert r["params"].shape == (0, 5)


def test_vectorised_elementary_functions_match_libm():
    from scipy.special import erf

    rng = np.random.default_rng(6)
    x = np.exp(rng.uniform(-30, 30, 20000))
    out = np.empty_like(x)
    gf._nb_log(x[None], 0, out[None], 0, x.size)
    assert np.max(np.abs(out - np.log(x)) / np.spacing(np.abs(np.log(x)))) <= 1.0
    x = -rng.uniform(0, 700, 20000)
    gf._nb_exp(x[None], 0, out[None], 0, x.size)
    assert np.max(np.abs(out - np.exp(x)) / np.spacing(np.exp(x))) <= 1.0
    x = np.array([-800.0, -708.5])
    gf._nb_exp(x[None], 0, out[None], 0, 2)
    assert np.all(out[:2] == 0.0)
    x = np.concatenate([rng.uniform(-8, 8, 20000), [0.0, 6.0, -6.0, 1e-300, 40.0]])
    out = np.empty_like(x)
    gf._nb_erf(x[None], 0, out[None], 0, x.size)
    assert np.max(np.abs(out - erf(x))) < 4e-16


@pytest.mark.parametrize("w", [7, 9])
def test_numba_start_values_match_initial_guess(w):
    d, _ = _windows(300, w=w, seed=7)
    a = gf.fit_gaussians(d, sigma=1.3, impl="numba")  # start values computed in the kernel
    b = gf.fit_gaussians(d, sigma=1.3, init=gf.initial_guess(d, 1.3), impl="numba")
    np.testing.assert_allclose(a["params"], b["params"], rtol=1e-12, atol=1e-12)
    c, _ = assert_same_across_impls(_fit(), [d], "numba", compare=_same_fits)
    np.testing.assert_allclose(a["params"], c["params"], rtol=1e-9, atol=1e-9)
    assert (a["iterations"] == c["iterations"]).mean() > 0.99


def test_negative_readout_variance_and_nonfinite_windows():
    d, _ = _windows(5, seed=8)
    with pytest.raises(ValueError, match="readout_var"):
        gf.fit_gaussians(d, readout_var=-1.0)
    d[0, 3, 3] = np.nan
    d[1, 2, 2] = np.inf
    r = gf.fit_gaussians(d, impl="numba")  # no crash; the clean windows still fit
    assert np.all(r["status"][2:] == 0)
    assert not np.isfinite(r["llr"][0])
