"""NumPy reference of the batched Gaussian fits (vectorised over spots): the oracle of the parity tests."""

from __future__ import annotations

import numpy as np

from .gaussfit_model import (
    _INV_SQRT2PI,
    _LAMBDA0,
    _LAMBDA_MAX,
    _LAMBDA_MIN,
    _MIN_BACKGROUND,
    _MIN_PHOTONS,
    _SQRT2,
)


def _np_terms(theta, w):
    from scipy.special import erf

    x, y, N, b, s = (theta[:, k : k + 1] for k in range(5))
    j = np.arange(w, dtype=np.float64)[None, :]
    inv = 1.0 / (_SQRT2 * s)
    norm = _INV_SQRT2PI / s

    def axis(c):
        up = j - c + 0.5
        um = j - c - 0.5
        eup = np.exp(-0.5 * (up / s) ** 2)
        eum = np.exp(-0.5 * (um / s) ** 2)
        e = 0.5 * (erf(up * inv) - erf(um * inv))
        de = norm * (eum - eup)
        ds = -norm / s * (up * eup - um * eum)
        return e, de, ds

    ex, dex, dsx = axis(x)
    ey, dey, dsy = axis(y)
    Nn = N[:, :, None]
    psf = ey[:, :, None] * ex[:, None, :]
    mu = b[:, :, None] + Nn * psf
    jac = np.stack(
        [
            Nn * ey[:, :, None] * dex[:, None, :],
            Nn * dey[:, :, None] * ex[:, None, :],
            psf,
            np.ones_like(psf),
            Nn * (ey[:, :, None] * dsx[:, None, :] + dsy[:, :, None] * ex[:, None, :]),
        ],
        axis=1,
    )  # (n, 5, w, w)
    return mu, jac


def _np_stats(d, theta, rv, lsq, fit_sigma):
    """Objective, gradient (n,5) and normal matrix (n,5,5) at theta."""
    w = d.shape[1]
    mu, jac = _np_terms(theta, w)
    if lsq:
        res = d - mu
        obj = -(res * res).sum(axis=(1, 2))
        wgt = np.ones_like(mu)
    else:
        mup = mu + rv
        dp = np.maximum(d + rv, 0.0)
        wgt = 1.0 / mup
        res = dp * wgt - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            obj = np.where(dp > 0, dp * np.log(mup), 0.0).sum(axis=(1, 2)) - mup.sum(axis=(1, 2))
    g = (jac * res[:, None]).sum(axis=(2, 3))
    A = np.einsum("nkij,nlij,nij->nkl", jac, jac, wgt)
    if not fit_sigma:
        g[:, 4] = 0.0
        A[:, 4, :] = 0.0
        A[:, :, 4] = 0.0
        A[:, 4, 4] = 1.0
    return obj, g, A


def _np_cholesky_solve(A, g):
    """Batched 5x5 Cholesky solve; ok[n] False where A is not positive definite."""
    n = A.shape[0]
    L = np.zeros_like(A)
    ok = np.ones(n, dtype=bool)
    for k in range(5):
        s = A[:, k, k] - (L[:, k, :k] ** 2).sum(axis=1)
        ok &= s > 0
        L[:, k, k] = np.sqrt(np.where(s > 0, s, 1.0))
        for i in range(k + 1, 5):
            L[:, i, k] = (A[:, i, k] - (L[:, i, :k] * L[:, k, :k]).sum(axis=1)) / L[:, k, k]
    z = np.zeros_like(g)
    for i in range(5):
        z[:, i] = (g[:, i] - (L[:, i, :i] * z[:, :i]).sum(axis=1)) / L[:, i, i]
    x = np.zeros_like(g)
    for i in range(4, -1, -1):
        x[:, i] = (z[:, i] - (L[:, i + 1 :, i] * x[:, i + 1 :]).sum(axis=1)) / L[:, i, i]
    return x, ok


def _np_constrain(t, w, s_min, s_max):
    t = t.copy()
    t[:, 0] = np.clip(t[:, 0], -0.5, w - 0.5)
    t[:, 1] = np.clip(t[:, 1], -0.5, w - 0.5)
    t[:, 2] = np.maximum(t[:, 2], _MIN_PHOTONS)
    t[:, 3] = np.maximum(t[:, 3], _MIN_BACKGROUND)
    t[:, 4] = np.clip(t[:, 4], s_min, s_max)
    return t


def _np_finish(d, theta, obj, A, rv, lsq, fit_sigma):
    """CRLB (n,5) and log-likelihood ratio (n,) at the solution."""
    if lsq:  # Poisson objective and Fisher information at the least-squares solution
        obj, _, A = _np_stats(d, theta, rv, False, fit_sigma)
    n = d.shape[0]
    crlb = np.empty((n, 5))
    for k in range(5):
        e = np.zeros((n, 5))
        e[:, k] = 1.0
        sol, ok = _np_cholesky_solve(A, e)
        crlb[:, k] = np.where(ok, np.sqrt(np.maximum(sol[:, k], 0.0)), np.nan)
    if not fit_sigma:
        crlb[:, 4] = 0.0
    dp = d + rv
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(dp > 0, dp * np.log(dp) - dp, 0.0).sum(axis=(1, 2))
    return crlb, 2.0 * (sat - obj)


def fit_numpy(windows, init, *, sigma, fit_sigma=True, method="mle", max_iter=30, tol=1e-5, readout_var=0.0):
    """NumPy reference of the batched fit; see :func:`fit_gaussians`."""
    d = np.asarray(windows, dtype=np.float32).astype(np.float64)
    n, w, _ = d.shape
    lsq = method == "lsq"
    rv = float(readout_var)
    s_min, s_max = 0.25 * sigma, 4.0 * sigma
    theta = np.array(init, dtype=np.float64, copy=True)
    obj, g, A = _np_stats(d, theta, rv, lsq, fit_sigma)
    lam = np.full(n, _LAMBDA0)
    active = np.ones(n, dtype=bool)
    iters = np.zeros(n, dtype=np.int32)
    status = np.ones(n, dtype=np.int8)
    for it in range(max_iter):
        if not active.any():
            break
        iters[active] = it + 1
        Ad = A.copy()
        diag = np.arange(5)
        Ad[:, diag, diag] = A[:, diag, diag] * (1.0 + lam[:, None])
        delta, ok = _np_cholesky_solve(Ad, g)
        cand = _np_constrain(theta + np.where(ok[:, None], delta, 0.0), w, s_min, s_max)
        obj_c, g_c, A_c = _np_stats(d, cand, rv, lsq, fit_sigma)
        accept = active & ok & np.isfinite(obj_c) & (obj_c >= obj)
        step = np.abs(cand - theta)
        conv = (
            accept
            & (step[:, 0] < tol)
            & (step[:, 1] < tol)
            & (step[:, 4] < tol)
            & (step[:, 2] < tol * np.maximum(theta[:, 2], 1.0))
            & (step[:, 3] < tol * np.maximum(theta[:, 3], 1.0))
        )
        theta = np.where(accept[:, None], cand, theta)
        obj = np.where(accept, obj_c, obj)
        g = np.where(accept[:, None], g_c, g)
        A = np.where(accept[:, None, None], A_c, A)
        reject = active & ~accept
        lam = np.where(accept & active, np.maximum(lam * 0.1, _LAMBDA_MIN), lam)
        lam = np.where(reject, lam * 10.0, lam)
        stalled = reject & (lam > _LAMBDA_MAX)
        status[conv] = 0
        status[stalled] = 2
        active &= ~(conv | stalled)
    crlb, llr = _np_finish(d, theta, obj, A, rv, lsq, fit_sigma)
    return theta, crlb, llr, iters, status


