// Batched 2-D integrated-Gaussian fit, one thread per spot.
//
// Same algorithm, constants and operation order as fit_numba in gaussfit.py
// (Levenberg-Marquardt on the Poisson log-likelihood or the sum of squares,
// parameters x, y, N, b, s; Cholesky 5x5 solves; CRLB from the Poisson Fisher
// information at the solution).  Compiled by evflow.kernels.load_module with
//   -DEVF_W=<window size> and the EVF_* constants from gaussfit.py.

#ifndef EVF_W
#define EVF_W 7
#endif
#ifndef EVF_LAMBDA0
#define EVF_LAMBDA0 1e-3
#endif
#ifndef EVF_LAMBDA_MIN
#define EVF_LAMBDA_MIN 1e-7
#endif
#ifndef EVF_LAMBDA_MAX
#define EVF_LAMBDA_MAX 1e7
#endif
#ifndef EVF_MIN_PHOTONS
#define EVF_MIN_PHOTONS 1e-3
#endif
#ifndef EVF_MIN_BACKGROUND
#define EVF_MIN_BACKGROUND 1e-6
#endif

#define EVF_SQRT2 1.4142135623730951
#define EVF_INV_SQRT2PI 0.3989422804014327

__device__ __forceinline__ void evf_axis(double c, double s, double* e, double* de, double* ds)
{
    const double inv = 1.0 / (EVF_SQRT2 * s);
    const double norm = EVF_INV_SQRT2PI / s;
    double up = -c - 0.5;
    double eup = exp(-0.5 * (up / s) * (up / s));
    double fup = erf(up * inv);
#pragma unroll
    for (int j = 0; j < EVF_W; ++j) {
        const double um = up, eum = eup, fum = fup;
        up = j - c + 0.5;
        eup = exp(-0.5 * (up / s) * (up / s));
        fup = erf(up * inv);
        e[j] = 0.5 * (fup - fum);
        de[j] = norm * (eum - eup);
        ds[j] = -norm / s * (up * eup - um * eum);
    }
}

// objective at t; gradient g[5]; upper triangle of the normal matrix in A[15]
// (row-major packed: 00 01 02 03 04 11 12 13 14 22 23 24 33 34 44)
__device__ double evf_stats(const float* d, const double* t, double rv, bool lsq, bool fit_sigma,
                            double* ex, double* ey, double* g, double* A)
{
    double dex[EVF_W], dsx[EVF_W], dey[EVF_W], dsy[EVF_W];
    evf_axis(t[0], t[4], ex, dex, dsx);
    evf_axis(t[1], t[4], ey, dey, dsy);
    const double N = t[2], b = t[3];
#pragma unroll
    for (int k = 0; k < 5; ++k) g[k] = 0.0;
#pragma unroll
    for (int k = 0; k < 15; ++k) A[k] = 0.0;
    double obj = 0.0;
    for (int i = 0; i < EVF_W; ++i) {
        const double eyi = ey[i], deyi = dey[i], dsyi = dsy[i];
#pragma unroll
        for (int j = 0; j < EVF_W; ++j) {
            const double psf = ex[j] * eyi;
            const double mu = b + N * psf;
            const double p0 = N * dex[j] * eyi;
            const double p1 = N * ex[j] * deyi;
            const double p2 = psf;
            const double p4 = N * (dsx[j] * eyi + ex[j] * dsyi);
            const double dv = (double)d[i * EVF_W + j];
            double res, wgt;
            if (lsq) {
                res = dv - mu;
                obj -= res * res;
                wgt = 1.0;
            } else {
                const double mup = mu + rv;
                double dp = dv + rv;
                if (dp < 0.0) dp = 0.0;
                wgt = 1.0 / mup;
                res = dp * wgt - 1.0;
                if (dp > 0.0) obj += dp * log(mup);
                obj -= mup;
            }
            g[0] += res * p0;
            g[1] += res * p1;
            g[2] += res * p2;
            g[3] += res;
            g[4] += res * p4;
            const double w0 = wgt * p0, w1 = wgt * p1, w2 = wgt * p2, w4 = wgt * p4;
            A[0] += w0 * p0; A[1] += w0 * p1; A[2] += w0 * p2; A[3] += w0; A[4] += w0 * p4;
            A[5] += w1 * p1; A[6] += w1 * p2; A[7] += w1; A[8] += w1 * p4;
            A[9] += w2 * p2; A[10] += w2; A[11] += w2 * p4;
            A[12] += wgt; A[13] += w4;
            A[14] += w4 * p4;
        }
    }
    if (!fit_sigma) {
        g[4] = 0.0;
        A[4] = 0.0; A[8] = 0.0; A[11] = 0.0; A[13] = 0.0;
        A[14] = 1.0;
    }
    return obj;
}

__device__ __forceinline__ int evf_idx(int r, int c)
{
    // packed upper-triangle index of (min(r,c), max(r,c))
    const int i = r < c ? r : c, j = r < c ? c : r;
    return i * 5 - (i * (i - 1)) / 2 + (j - i);
}

// Solve (A + lam*diag(A)) x = g by Cholesky; false when not positive definite.
__device__ bool evf_chol_solve(const double* A, double lam, const double* g, double* x)
{
    double L[5][5];
    double z[5];
#pragma unroll
    for (int k = 0; k < 5; ++k) {
        double s = A[evf_idx(k, k)] * (1.0 + lam);
        for (int m = 0; m < k; ++m) s -= L[k][m] * L[k][m];
        if (!(s > 0.0)) return false;
        L[k][k] = sqrt(s);
        for (int i = k + 1; i < 5; ++i) {
            double v = A[evf_idx(i, k)];
            for (int m = 0; m < k; ++m) v -= L[i][m] * L[k][m];
            L[i][k] = v / L[k][k];
        }
    }
#pragma unroll
    for (int i = 0; i < 5; ++i) {
        double v = g[i];
        for (int m = 0; m < i; ++m) v -= L[i][m] * z[m];
        z[i] = v / L[i][i];
    }
#pragma unroll
    for (int i = 4; i >= 0; --i) {
        double v = z[i];
        for (int m = i + 1; m < 5; ++m) v -= L[m][i] * x[m];
        x[i] = v / L[i][i];
    }
    return true;
}

extern "C" __global__ void evf_gaussfit(const float* __restrict__ data, double* __restrict__ theta,
                                        double* __restrict__ crlb, double* __restrict__ llr_out,
                                        int* __restrict__ iters_out, signed char* __restrict__ status_out,
                                        int n, double rv, int lsq_i, int fit_sigma_i, double sigma,
                                        int max_iter, double tol)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n) return;
    const bool lsq = lsq_i != 0;
    const bool fit_sigma = fit_sigma_i != 0;
    const float* d = data + (size_t)p * EVF_W * EVF_W;
    double t[5], cand[5], g[5], gc[5], A[15], Ac[15], delta[5];
    double ex[EVF_W], ey[EVF_W];
#pragma unroll
    for (int k = 0; k < 5; ++k) t[k] = theta[(size_t)p * 5 + k];
    const double s_min = 0.25 * sigma, s_max = 4.0 * sigma;
    const double wmax = EVF_W - 0.5;

    double obj = evf_stats(d, t, rv, lsq, fit_sigma, ex, ey, g, A);
    double lam = EVF_LAMBDA0;
    int status = 1, iters = 0;
    for (int it = 0; it < max_iter; ++it) {
        iters = it + 1;
        const bool ok = evf_chol_solve(A, lam, g, delta);
#pragma unroll
        for (int k = 0; k < 5; ++k) cand[k] = ok ? t[k] + delta[k] : t[k];
        cand[0] = fmin(fmax(cand[0], -0.5), wmax);
        cand[1] = fmin(fmax(cand[1], -0.5), wmax);
        cand[2] = fmax(cand[2], EVF_MIN_PHOTONS);
        cand[3] = fmax(cand[3], EVF_MIN_BACKGROUND);
        cand[4] = fmin(fmax(cand[4], s_min), s_max);
        const double objc = evf_stats(d, cand, rv, lsq, fit_sigma, ex, ey, gc, Ac);
        if (ok && isfinite(objc) && objc >= obj) {
            const bool conv = fabs(cand[0] - t[0]) < tol && fabs(cand[1] - t[1]) < tol &&
                              fabs(cand[4] - t[4]) < tol &&
                              fabs(cand[2] - t[2]) < tol * fmax(t[2], 1.0) &&
                              fabs(cand[3] - t[3]) < tol * fmax(t[3], 1.0);
#pragma unroll
            for (int k = 0; k < 5; ++k) { t[k] = cand[k]; g[k] = gc[k]; }
#pragma unroll
            for (int k = 0; k < 15; ++k) A[k] = Ac[k];
            obj = objc;
            lam = fmax(lam * 0.1, EVF_LAMBDA_MIN);
            if (conv) { status = 0; break; }
        } else {
            lam = lam * 10.0;
            if (lam > EVF_LAMBDA_MAX) { status = 2; break; }
        }
    }
    // Poisson objective and Fisher information at the solution -> CRLB
    if (lsq) obj = evf_stats(d, t, rv, false, fit_sigma, ex, ey, g, A);
#pragma unroll
    for (int k = 0; k < 5; ++k) {
        double e[5];
#pragma unroll
        for (int m = 0; m < 5; ++m) e[m] = (m == k) ? 1.0 : 0.0;
        if (evf_chol_solve(A, 0.0, e, cand)) {
            crlb[(size_t)p * 5 + k] = sqrt(fmax(cand[k], 0.0));
        } else {
            crlb[(size_t)p * 5 + k] = nan("");
        }
    }
    if (!fit_sigma) crlb[(size_t)p * 5 + 4] = 0.0;
    // log-likelihood ratio = 2 * (sum_{d>0} (d ln d - d) - objective)
    double sat = 0.0;
    for (int i = 0; i < EVF_W * EVF_W; ++i) {
        const double dp = (double)d[i] + rv;
        if (dp > 0.0) sat += dp * log(dp) - dp;
    }
    const double llr = 2.0 * (sat - obj);
#pragma unroll
    for (int k = 0; k < 5; ++k) theta[(size_t)p * 5 + k] = t[k];
    llr_out[p] = llr;
    iters_out[p] = iters;
    status_out[p] = (signed char)status;
}
