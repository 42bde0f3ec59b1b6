// Fused gating + marker-phenotype counting (CUDA version of kernels/phenotype.py).
//
// One thread per event (grid-stride loop).  The plan is packed by
// FusedPlan.packed() into an int64 array `ip` (header + sections) and a double
// array `dp`; its layout constants come from kernels/phenotype_plan.py.
// Compile with --fmad=false: every floating-point operation is then rounded
// exactly as in the NumPy reference and the Numba kernel, so all backends put
// every event on the same side of every gate edge.

// The constants (FINE_SUB, FINE_EMIN, FINE_OCT, FINE_NBINS, FINE_LO, FINE_HI,
// MAX_SLOTS, MAX_DIMS, DIM_*, and the packed-plan header H_* / section offsets
// O_* and D_*) are not written here: evflow.kernels.phenotype_plan.cuda_preamble()
// generates their #define lines from the Python that owns them and prepends
// them to this source (evflow.kernels.phenotype_cupy).

typedef long long i64;
#define EV_INF __longlong_as_double(0x7ff0000000000000LL)

__device__ __forceinline__ double table_eval(double x, const double* __restrict__ dp, i64 start, i64 nk,
                                             double y0, double h) {
    const i64 n = nk - 1;
    if (!(x >= dp[start])) return -EV_INF;
    if (x > dp[start + n]) return EV_INF;
    i64 lo = 0, hi = n;
    while (hi - lo > 1) {
        const i64 mid = (lo + hi) >> 1;
        if (dp[start + mid] <= x) lo = mid; else hi = mid;
    }
    const double xk = dp[start + lo];
    const double frac = (x - xk) / (dp[start + lo + 1] - xk);
    return y0 + h * ((double)lo + frac);
}

__device__ __forceinline__ int fine_bin(double d) {
    const double lo = FINE_LO;   // 2**(FINE_EMIN-1) = 2**-24
    const double hi = FINE_HI;   // 2**(FINE_EMIN-1+FINE_OCT) = 2**40
    if (d < lo) return 0;
    if (d >= hi) return FINE_NBINS - 1;
    int e;
    const double m = frexp(d, &e);
    return 1 + (e - FINE_EMIN) * FINE_SUB + (int)((m * 2.0 - 1.0) * (double)FINE_SUB);
}

template <typename T>
__device__ __forceinline__ bool event_in_parent(const T* __restrict__ ev, i64 i, i64 rs, i64 cs,
                                                const i64* __restrict__ ip, const double* __restrict__ dp,
                                                double* v, double* y) {
    const i64 S = ip[H_S], M = ip[H_M], NOUT = ip[H_NOUT];
    const i64 o_kind = ip[O_SLOT_KIND], o_index = ip[O_SLOT_INDEX], o_cc = ip[O_COMP_COLS];
    const i64 d_comp = ip[D_COMP];
    const T* row = ev + i * rs;
    for (i64 s = 0; s < S; ++s) {
        const i64 idx = ip[o_index + s];
        if (ip[o_kind + s] == 0) {
            v[s] = (double)row[idx * cs];
        } else {
            double acc = 0.0;
            for (i64 q = 0; q < M; ++q) acc = acc + (double)row[ip[o_cc + q] * cs] * dp[d_comp + q * NOUT + idx];
            v[s] = acc;
        }
    }
    const i64 R = ip[H_R], o_rs = ip[O_RNG_SLOT], d_lo = ip[D_RNG_LO], d_hi = ip[D_RNG_HI];
    for (i64 r = 0; r < R; ++r) {
        const double x = v[ip[o_rs + r]];
        if (!(x >= dp[d_lo + r] && x < dp[d_hi + r])) return false;
    }
    const i64 D = ip[H_D], o_ds = ip[O_DIM_SLOT], o_dk = ip[O_DIM_KIND], d_par = ip[D_DIM_PARAM], o_tab = ip[O_TAB];
    for (i64 d = 0; d < D; ++d) {
        const double x = v[ip[o_ds + d]];
        const i64 kind = ip[o_dk + d];
        const double p0 = dp[d_par + 2 * d], p1 = dp[d_par + 2 * d + 1];
        if (kind == 0) y[d] = x;
        else if (kind == 1) y[d] = (x + p0) / p1;
        else y[d] = table_eval(x, dp, ip[o_tab + d], ip[o_tab + D + d], p0, p1);
    }
    const i64 P = ip[H_P], o_pd = ip[O_POLY_DIMS], o_po = ip[O_POLY_OFF], d_poly = ip[D_POLY];
    for (i64 p = 0; p < P; ++p) {
        const double px = y[ip[o_pd + 2 * p]], py = y[ip[o_pd + 2 * p + 1]];
        if (!(isfinite(px) && isfinite(py))) return false;
        const i64 v0 = ip[o_po + p], nv = ip[o_po + p + 1] - v0;
        bool inside = false;
        i64 j = nv - 1;
        for (i64 k = 0; k < nv; ++k) {
            const double xi = dp[d_poly + 2 * (v0 + k)], yi = dp[d_poly + 2 * (v0 + k) + 1];
            const double xj = dp[d_poly + 2 * (v0 + j)], yj = dp[d_poly + 2 * (v0 + j) + 1];
            if ((yi > py) != (yj > py)) {
                const double xc = (xj - xi) * (py - yi) / (yj - yi) + xi;
                if (px < xc) inside = !inside;
            }
            j = k;
        }
        if (!inside) return false;
    }
    const i64 E = ip[H_E], o_eo = ip[O_ELL_OFF], o_ed = ip[O_ELL_DIMS], o_ei = ip[O_ELL_ICOV_OFF];
    const i64 d_em = ip[D_ELL_MEAN], d_e2 = ip[D_ELL_D2];
    for (i64 e = 0; e < E; ++e) {
        const i64 a0 = ip[o_eo + e], ne = ip[o_eo + e + 1] - a0, ic = ip[o_ei + e];
        double q = 0.0;
        for (i64 a = 0; a < ne; ++a) {
            double t = 0.0;
            for (i64 b = 0; b < ne; ++b)
                t = t + dp[ic + a * ne + b] * (y[ip[o_ed + a0 + b]] - dp[d_em + a0 + b]);
            q = q + (y[ip[o_ed + a0 + a]] - dp[d_em + a0 + a]) * t;
        }
        if (!(q <= dp[d_e2 + e])) return false;
    }
    return true;
}

// counts: uint64 (2**K); pos_hist: uint32 (K, FINE_NBINS); pos_sum: double (K);
// density: uint32 (NX * NY).  Dynamic shared memory: uint32[2**K] when 2**K <= 4096,
// then double[K].
template <typename T>
__global__ void fused_phenotype(const T* __restrict__ ev, i64 n, i64 rs, i64 cs,
                                const unsigned char* __restrict__ pmask, int has_mask,
                                const i64* __restrict__ ip, const double* __restrict__ dp,
                                unsigned long long* counts, unsigned int* pos_hist, double* pos_sum,
                                unsigned int* density) {
    extern __shared__ unsigned char smem[];
    const i64 K = ip[H_K];
    const int nph = 1 << K;
    const bool sh_counts = nph <= 4096;
    unsigned int* s_counts = reinterpret_cast<unsigned int*>(smem);
    double* s_sum = reinterpret_cast<double*>(smem + (sh_counts ? ((nph * 4 + 7) / 8) * 8 : 0));
    if (sh_counts)
        for (int b = threadIdx.x; b < nph; b += blockDim.x) s_counts[b] = 0u;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s_sum[k] = 0.0;
    __syncthreads();

    const i64 o_mk = ip[O_MK_SLOT], d_thr = ip[D_MK_THR], d_h2 = ip[D_H2];
    const i64 NX = ip[H_NX], NY = ip[H_NY], DX = ip[H_DX], DY = ip[H_DY];
    double v[MAX_SLOTS];
    double y[MAX_DIMS];
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        if (has_mask && !pmask[i]) continue;
        if (!event_in_parent<T>(ev, i, rs, cs, ip, dp, v, y)) continue;
        int code = 0;
        for (i64 k = 0; k < K; ++k) {
            const double x = v[ip[o_mk + k]];
            const double thr = dp[d_thr + k];
            if (x > thr) {
                code |= 1 << k;
                atomicAdd(&s_sum[k], x);
                atomicAdd(&pos_hist[k * FINE_NBINS + fine_bin(x - thr)], 1u);
            }
        }
        if (sh_counts) atomicAdd(&s_counts[code], 1u);
        else atomicAdd(&counts[code], 1ull);
        if (NX > 0) {
            const double fx = (y[DX] - dp[d_h2]) * dp[d_h2 + 1];
            const double fy = (y[DY] - dp[d_h2 + 2]) * dp[d_h2 + 3];
            if (fx >= 0.0 && fx < (double)NX && fy >= 0.0 && fy < (double)NY)
                atomicAdd(&density[(i64)fx * NY + (i64)fy], 1u);
        }
    }
    __syncthreads();
    if (sh_counts)
        for (int b = threadIdx.x; b < nph; b += blockDim.x)
            if (s_counts[b]) atomicAdd(&counts[b], (unsigned long long)s_counts[b]);
    for (int k = threadIdx.x; k < K; k += blockDim.x) atomicAdd(&pos_sum[k], s_sum[k]);
}
