"""Numba (fast CPU) version of the batched Gaussian fits: one spot per loop iteration, parallel over spots."""

from __future__ import annotations

import math

import numpy as np

from ._numba import LAUNCH_LOCK, get_num_threads, njit, numba as _numba, prange as _prange
from .gaussfit_model import (
    _INV_SQRT2PI,
    _LAMBDA0,
    _LAMBDA_MAX,
    _LAMBDA_MIN,
    _MIN_BACKGROUND,
    _MIN_PHOTONS,
    _SQRT2,
)

#
# Same algorithm and constants as the reference, arranged for speed:
#
# - the model and the four non-trivial Jacobian columns are written per pixel
#   into flat arrays from the separable factors (mu[i, j] = b + N ex[j] ey[i]),
#   and the objective, gradient and 5x5 normal matrix are then summed in one
#   flat loop that the compiler vectorises (no division checks: the kernels
#   use Numba's numpy error model; no divisor can be zero);
# - the 2 (w + 1) erf/exp values of the pixel edges are computed once per
#   evaluation (not per pixel), by vectorisable versions of exp (Taylor series
#   after range reduction, <= 1 ulp) and erf (table of erf at 1/64 steps plus
#   a Taylor series, absolute error < 4e-16); the log of the likelihood by a
#   vectorisable version of the fdlibm log (< 1 ulp) instead of libm calls;
# - the starting values are computed inside the parallel loop, with no
#   per-spot allocation: one 2-D work array per block of spots, whose rows
#   are addressed by index (array views inside the loop would cost atomic
#   reference counting on every call);
# - one Cholesky factorisation gives all five CRLBs.
#
# Sums are reassociated by the compiler (fast-math "reassoc"/"contract" only,
# never "nnan"/"ninf"), which changes results at the 1e-16 level only.

def _njit(*args, **kwargs):
    # error_model="numpy": no zero-division checks (they stop vectorisation); no divisor here can be 0
    return njit(*args, cache=True, error_model="numpy", **kwargs)


_FM = {"reassoc", "contract"}

# fdlibm e_log.c
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


if _numba is not None:
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _f2i(typingctx, x):
        """Bits of a float64 as an int64."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(64))

        return _types.int64(_types.float64), codegen

    @_intrinsic
    def _i2f(typingctx, x):
        """An int64's bits as a float64."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.DoubleType())

        return _types.float64(_types.int64), codegen

else:  # pragma: no cover
    _f2i = _i2f = None

_TWO52_BIAS = 4503599627370496.0 + 1023.0


@_njit()
def _nb_log(X, src, Y, dst, n):
    """Y[dst, :n] = log(X[src, :n]) for positive finite values (fdlibm algorithm, < 1 ulp), vectorisable.

    Rows of 2-D work arrays are passed by index: views would cost reference counting.
    """
    for k in range(n):
        bits = _f2i(X[src, k])
        e = _i2f((bits >> 52) | 0x4330000000000000) - _TWO52_BIAS  # unbiased exponent as a float
        mk = _i2f((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)  # mantissa in [1, 2)
        big = mk > _SQRT2
        mk = 0.5 * mk if big else mk
        e = e + 1.0 if big else e
        f = mk - 1.0
        s = f / (2.0 + f)
        z = s * s
        ww = z * z
        t1 = ww * (_LG2 + ww * (_LG4 + ww * _LG6))
        t2 = z * (_LG1 + ww * (_LG3 + ww * (_LG5 + ww * _LG7)))
        r = t2 + t1
        hfsq = 0.5 * f * f
        Y[dst, k] = e * _LN2_HI - ((hfsq - (s * (hfsq + r) + e * _LN2_LO)) - f)


_INVLN2 = 1.0 / math.log(2.0)
_RND = 6755399441055744.0  # 1.5 * 2**52: x + _RND rounds x to an integer held in the low mantissa bits
_RND_BITS = 0x4338000000000000
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13 = (1.0 / math.factorial(k) for k in range(2, 14))


@_njit()
def _nb_exp(X, src, Y, dst, n):
    """Y[dst, :n] = exp(X[src, :n]) for values <= 0 (error <= 1 ulp; 0 below -708), vectorisable.

    exp(x) = 2**k exp(r), k = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by its
    Taylor series to degree 13 (truncation error below 1e-17).
    """
    for k in range(n):
        v = X[src, k]
        under = v < -708.0
        v = -708.0 if under else v
        t = v * _INVLN2 + _RND
        kf = t - _RND
        ki = _f2i(t) - _RND_BITS
        r = (v - kf * _LN2_HI) - kf * _LN2_LO
        p = _E12 + r * _E13
        p = _E11 + r * p
        p = _E10 + r * p
        p = _E9 + r * p
        p = _E8 + r * p
        p = _E7 + r * p
        p = _E6 + r * p
        p = _E5 + r * p
        p = _E4 + r * p
        p = _E3 + r * p
        p = _E2 + r * p
        p = 1.0 + r * p
        p = 1.0 + r * p
        res = p * _i2f((ki + 1023) << 52)
        Y[dst, k] = 0.0 if under else res


# erf(z) = erf(z_i) + 2/sqrt(pi) exp(-z_i^2) sum_k (-1)^(k-1) H_(k-1)(z_i) d^k / k!  (Taylor series
# about the nearest node z_i = i / 64 of a table, |d| <= 1/128, H the Hermite polynomials;
# 8 terms leave a truncation error below 1e-19); erf(z) = 1 to double precision for z >= 6
_ERF_STEP = 64.0
_ERF_MAX = 6.0
_ERF_NODES = np.arange(int(_ERF_MAX * _ERF_STEP) + 1) / _ERF_STEP
_ERF_TAB = np.array([math.erf(z) for z in _ERF_NODES])
_ERF_DTAB = 2.0 / math.sqrt(math.pi) * np.exp(-(_ERF_NODES**2))
_F2, _F3, _F4, _F5, _F6, _F7, _F8 = (1.0 / math.factorial(k) for k in range(2, 9))


@_njit()
def _nb_erf(X, src, Y, dst, n):
    """Y[dst, :n] = erf(X[src, :n]) (absolute error below 4e-16), vectorisable (table + Taylor series)."""
    for k in range(n):
        v = X[src, k]
        a = abs(v)
        a = a if a < _ERF_MAX else _ERF_MAX  # also maps NaN into the table
        t = a * _ERF_STEP + _RND
        i = _f2i(t) - _RND_BITS
        z = (t - _RND) * (1.0 / _ERF_STEP)
        d = a - z
        z2 = 2.0 * z
        h1 = z2
        h2 = z2 * h1 - 2.0
        h3 = z2 * h2 - 4.0 * h1
        h4 = z2 * h3 - 6.0 * h2
        h5 = z2 * h4 - 8.0 * h3
        h6 = z2 * h5 - 10.0 * h4
        h7 = z2 * h6 - 12.0 * h5
        s = h6 * _F7 - d * (h7 * _F8)
        s = h5 * _F6 - d * s
        s = h4 * _F5 - d * s
        s = h3 * _F4 - d * s
        s = h2 * _F3 - d * s
        s = h1 * _F2 - d * s
        s = 1.0 - d * s
        r = _ERF_TAB[i] + _ERF_DTAB[i] * (d * s)
        Y[dst, k] = -r if v < 0.0 else r


# rows of the per-thread work array S (see _nb_scratch)
_U, _G, _F, _T = 0, 1, 2, 3  # pixel-edge offsets, their Gaussian and erf values, scratch (2 (w + 1))
_EX, _DEX, _DSX, _EY, _DEY, _DSY = 4, 5, 6, 7, 8, 9  # per-pixel PSF integrals and derivatives (w)
_MUP, _LG, _P0, _P1, _P2, _P4 = 10, 11, 12, 13, 14, 15  # model, its log, Jacobian columns (w * w)
_W, _R = 16, 17  # weight (1 / model, or 1) and residual per pixel (w * w)
_NROWS = 18


@_njit()
def _nb_axes(cx, cy, s, w, S):
    """Per-pixel integrals of the PSF and their derivatives along x and y (rows _EX.._DSY of S)."""
    m = w + 1
    S[_U, 0] = -cx - 0.5
    S[_U, m] = -cy - 0.5
    for k in range(1, m):
        S[_U, k] = (k - 1) - cx + 0.5
        S[_U, m + k] = (k - 1) - cy + 0.5
    nn = 2 * m
    for k in range(nn):
        q = S[_U, k] / s
        S[_T, k] = -0.5 * q * q
    _nb_exp(S, _T, S, _G, nn)
    inv = 1.0 / (_SQRT2 * s)
    for k in range(nn):
        S[_T, k] = S[_U, k] * inv
    _nb_erf(S, _T, S, _F, nn)
    norm = _INV_SQRT2PI / s
    ns = -norm / s
    for a in range(2):
        o = a * m
        re = _EX + 3 * a
        for j in range(w):
            S[re, j] = 0.5 * (S[_F, o + j + 1] - S[_F, o + j])
            S[re + 1, j] = norm * (S[_G, o + j] - S[_G, o + j + 1])
            S[re + 2, j] = ns * (S[_U, o + j + 1] * S[_G, o + j + 1] - S[_U, o + j] * S[_G, o + j])


@_njit(fastmath=_FM)
def _nb_stats(dat, w, t, rv, lsq, fit_sigma, S, out):
    """out[0] objective, out[1:6] gradient, out[6:21] packed upper normal matrix at t.

    ``dat`` is the flat window: max(d + rv, 0) for the likelihood, d for least
    squares; ``S`` the work array of :func:`_nb_scratch`.
    """
    _nb_axes(t[0], t[1], t[4], w, S)
    N = t[2]
    base = t[3] if lsq else t[3] + rv
    # model and Jacobian per pixel (flat, row-major)
    for i in range(w):
        y = S[_EY, i]
        ny = N * y
        ndy = N * S[_DEY, i]
        nsy = N * S[_DSY, i]
        o = i * w
        for j in range(w):
            ex = S[_EX, j]
            psf = ex * y
            S[_MUP, o + j] = base + N * psf
            S[_P0, o + j] = ny * S[_DEX, j]
            S[_P1, o + j] = ndy * ex
            S[_P2, o + j] = psf
            S[_P4, o + j] = ny * S[_DSX, j] + nsy * ex
    n = w * w
    obj = 0.0
    g0 = g1 = g2 = g3 = g4 = 0.0
    a00 = a01 = a02 = a03 = a04 = a11 = a12 = a13 = a14 = 0.0
    a22 = a23 = a24 = a33 = a34 = a44 = 0.0
    if not lsq:
        _nb_log(S, _MUP, S, _LG, n)
    if lsq:
        for k in range(n):
            r = dat[k] - S[_MUP, k]
            S[_W, k] = 1.0
            S[_R, k] = r
            obj -= r * r
    else:
        for k in range(n):
            m = S[_MUP, k]
            iv = 1.0 / m
            S[_W, k] = iv
            S[_R, k] = dat[k] * iv - 1.0
            obj += dat[k] * S[_LG, k] - m
    for k in range(n):
        iv = S[_W, k]
        r = S[_R, k]
        p0 = S[_P0, k]
        p1 = S[_P1, k]
        p2 = S[_P2, k]
        p4 = S[_P4, k]
        g0 += r * p0
        g1 += r * p1
        g2 += r * p2
        g3 += r
        g4 += r * p4
        w0 = iv * p0
        w1 = iv * p1
        w2 = iv * p2
        w4 = iv * p4
        a00 += w0 * p0
        a01 += w0 * p1
        a02 += w0 * p2
        a03 += w0
        a04 += w0 * p4
        a11 += w1 * p1
        a12 += w1 * p2
        a13 += w1
        a14 += w1 * p4
        a22 += w2 * p2
        a23 += w2
        a24 += w2 * p4
        a33 += iv
        a34 += w4
        a44 += w4 * p4
    if not fit_sigma:
        g4 = 0.0
        a04 = a14 = a24 = a34 = 0.0
        a44 = 1.0
    out[0] = obj
    out[1] = g0
    out[2] = g1
    out[3] = g2
    out[4] = g3
    out[5] = g4
    out[6] = a00
    out[7] = a01
    out[8] = a02
    out[9] = a03
    out[10] = a04
    out[11] = a11
    out[12] = a12
    out[13] = a13
    out[14] = a14
    out[15] = a22
    out[16] = a23
    out[17] = a24
    out[18] = a33
    out[19] = a34
    out[20] = a44


@_njit(inline="always")
def _nb_pidx(r, c):
    i = min(r, c)
    j = max(r, c)
    return 6 + i * 5 - (i * (i - 1)) // 2 + (j - i)


@_njit()
def _nb_chol_factor(st, lam, L):
    """Cholesky factor L of (A + lam diag A), A packed in st[6:21]; False if not positive definite."""
    for k in range(5):
        s = st[_nb_pidx(k, k)] * (1.0 + lam)
        for m in range(k):
            s -= L[k, m] * L[k, m]
        if not (s > 0.0):
            return False
        L[k, k] = math.sqrt(s)
        for i in range(k + 1, 5):
            v = st[_nb_pidx(i, k)]
            for m in range(k):
                v -= L[i, m] * L[k, m]
            L[i, k] = v / L[k, k]
    return True


@_njit()
def _nb_chol_subst(L, rhs, z, out):
    """Solve L L^T out = rhs."""
    for i in range(5):
        v = rhs[i]
        for m in range(i):
            v -= L[i, m] * z[m]
        z[i] = v / L[i, i]
    for i in range(4, -1, -1):
        v = z[i]
        for m in range(i + 1, 5):
            v -= L[m, i] * out[m]
        out[i] = v / L[i, i]


@_njit()
def _nb_chol_solve(st, lam, rhs, L, z, out):
    """Solve (A + lam diag A) out = rhs, A packed in st[6:21]; False if not positive definite."""
    if not _nb_chol_factor(st, lam, L):
        return False
    _nb_chol_subst(L, rhs, z, out)
    return True


@_njit()
def _nb_init(draw, w, sigma, t):
    """Starting values, as :func:`initial_guess`."""
    bs = 0.0
    for j in range(w):
        bs += draw[j] + draw[(w - 1) * w + j]
    for i in range(1, w - 1):
        bs += draw[i * w] + draw[i * w + w - 1]
    b0 = max(bs / (4 * w - 4), 1.0e-3)
    tot = 0.0
    sx = 0.0
    sy = 0.0
    sd = 0.0
    for i in range(w):
        for j in range(w):
            v = draw[i * w + j] - b0
            sd += v
            if v > 0.0:
                tot += v
                sx += v * j
                sy += v * i
    c = 0.5 * (w - 1)
    x0 = sx / tot if tot > 0.0 else c
    y0 = sy / tot if tot > 0.0 else c
    t[0] = min(max(x0, c - 1.0), c + 1.0)
    t[1] = min(max(y0, c - 1.0), c + 1.0)
    t[2] = max(sd, 1.0)
    t[3] = b0
    t[4] = sigma


@_njit()
def _nb_fit_one(draw, dat, w, t, rv, lsq, fit_sigma, sigma, max_iter, tol, S, st, stc, L, z, delta, cand, out_crlb):
    """Fit one window (``S``: see :func:`_nb_scratch`)."""
    s_min = 0.25 * sigma
    s_max = 4.0 * sigma
    _nb_stats(dat, w, t, rv, lsq, fit_sigma, S, st)
    lam = _LAMBDA0
    status = 1
    iters = 0
    for it in range(max_iter):
        iters = it + 1
        ok = _nb_chol_solve(st, lam, st[1:6], L, z, delta)
        for k in range(5):
            cand[k] = t[k] + delta[k] if ok else t[k]
        cand[0] = min(max(cand[0], -0.5), w - 0.5)
        cand[1] = min(max(cand[1], -0.5), w - 0.5)
        cand[2] = max(cand[2], _MIN_PHOTONS)
        cand[3] = max(cand[3], _MIN_BACKGROUND)
        cand[4] = min(max(cand[4], s_min), s_max)
        _nb_stats(dat, w, cand, rv, lsq, fit_sigma, S, stc)
        if ok and math.isfinite(stc[0]) and stc[0] >= st[0]:
            conv = (
                abs(cand[0] - t[0]) < tol
                and abs(cand[1] - t[1]) < tol
                and abs(cand[4] - t[4]) < tol
                and abs(cand[2] - t[2]) < tol * max(t[2], 1.0)
                and abs(cand[3] - t[3]) < tol * max(t[3], 1.0)
            )
            for k in range(5):
                t[k] = cand[k]
            for k in range(21):
                st[k] = stc[k]
            lam = max(lam * 0.1, _LAMBDA_MIN)
            if conv:
                status = 0
                break
        else:
            lam = lam * 10.0
            if lam > _LAMBDA_MAX:
                status = 2
                break
    n = w * w
    # Poisson objective and Fisher information at the solution
    if lsq:
        for k in range(n):
            v = draw[k] + rv
            dat[k] = v if v > 0.0 else 0.0
        _nb_stats(dat, w, t, rv, False, fit_sigma, S, st)
    if _nb_chol_factor(st, 0.0, L):  # CRLB: diagonal of the inverse Fisher information
        for k in range(5):
            for m in range(5):
                delta[m] = 1.0 if m == k else 0.0
            _nb_chol_subst(L, delta, z, cand)
            out_crlb[k] = math.sqrt(max(cand[k], 0.0))
    else:
        for k in range(5):
            out_crlb[k] = np.nan
    if not fit_sigma:
        out_crlb[4] = 0.0
    # log-likelihood ratio = 2 * (sum_d>0 d ln d - sum d - objective); dat = max(d + rv, 0) here
    for k in range(n):
        S[_MUP, k] = dat[k] if dat[k] > 0.0 else 1.0
    _nb_log(S, _MUP, S, _LG, n)
    sat = 0.0
    for k in range(n):
        sat += dat[k] * S[_LG, k] - dat[k]
    return iters, status, 2.0 * (sat - st[0])


@_njit(parallel=True)
def _nb_fit_all(data, theta, guess, rv, lsq, fit_sigma, sigma, max_iter, tol, crlb, llr, iters, status, nblk):
    n, w, _ = data.shape
    nw = w * w
    size = (n + nblk - 1) // nblk
    for blk in _prange(nblk):
        S = np.empty((_NROWS, max(nw, 2 * (w + 1))))  # work rows, see _U.._R
        z = np.empty(5)
        delta = np.empty(5)
        cand = np.empty(5)
        draw = np.empty(nw)
        dat = np.empty(nw)
        st = np.empty(21)
        stc = np.empty(21)
        L = np.empty((5, 5))
        for p in range(blk * size, min(n, (blk + 1) * size)):
            for i in range(w):
                for j in range(w):
                    draw[i * w + j] = np.float64(data[p, i, j])
            for k in range(nw):
                if lsq:
                    dat[k] = draw[k]
                else:
                    v = draw[k] + rv
                    dat[k] = v if v > 0.0 else 0.0
            if guess:
                _nb_init(draw, w, sigma, theta[p])
            it, stt, lr = _nb_fit_one(
                draw, dat, w, theta[p], rv, lsq, fit_sigma, sigma, max_iter, tol, S, st, stc, L, z, delta, cand, crlb[p]
            )
            iters[p] = it
            status[p] = stt
            llr[p] = lr


def fit_numba(windows, init=None, *, sigma, fit_sigma=True, method="mle", max_iter=30, tol=1e-5, readout_var=0.0):
    """Numba (parallel CPU) version of the batched fit; see :func:`fit_gaussians`.

    ``init=None`` computes the :func:`initial_guess` starting values inside the
    parallel loop.
    """
    data = np.ascontiguousarray(windows, dtype=np.float32)
    n = data.shape[0]
    if init is None:
        theta = np.empty((n, 5))
    else:
        theta = np.array(init, dtype=np.float64, copy=True, order="C")
    crlb = np.empty((n, 5))
    llr = np.empty(n)
    iters = np.empty(n, dtype=np.int32)
    status = np.empty(n, dtype=np.int8)
    if n:
        nblk = min(n, get_num_threads() * 8)
        with LAUNCH_LOCK:  # parallel Numba launches are serialised
            _nb_fit_all(
                data, theta, init is None, float(readout_var), method == "lsq", bool(fit_sigma), float(sigma),
                int(max_iter), float(tol), crlb, llr, iters, status, nblk,
            )
    return theta, crlb, llr, iters, status


