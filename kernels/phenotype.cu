// Fused gating + marker-phenotype counting (CUDA version of kernels/phenotype.py).
//
// One thread per event (grid-stride loop).  The plan is packed by
// FusedPlan.packed() into an int64 array `ip` (header + sections) and a double
// array `dp`; the layout constants below must match kernels/phenotype.py.
// Compile with --fmad=false: every floating-point operation is then rounded
// exactly as in the NumPy reference and the Numba kernel, so all backends put
// every event on the same side of every gate edge.

#define FINE_SUB 1024
#define FINE_EMIN (-23)
#define FINE_OCT 64
#define FINE_NBINS (FINE_SUB * FINE_OCT + 2)
#define MAX_SLOTS 32
#define MAX_DIMS 16

// header
#define H_S 0
#define H_M 1
#define H_R 2
#define H_D 3
#define H_P 4
#define H_E 5
#define H_K 6
#define H_NX 7
#define H_NY 8
#define H_DX 9
#define H_DY 10
// section offsets
#define O_SLOT_KIND 11
#define O_SLOT_INDEX 12
#define O_COMP_COLS 13
#define O_RNG_SLOT 14
#define O_DIM_SLOT 15
#define O_DIM_KIND 16
#define O_TAB 17
#define O_POLY_DIMS 18
#define O_POLY_OFF 19
#define O_ELL_OFF 20
#define O_ELL_DIMS 21
#define O_ELL_ICOV_OFF 22
#define O_MK_SLOT 23
#define D_COMP 24
#define D_RNG_LO 25
#define D_RNG_HI 26
#define D_DIM_PARAM 27
#define D_POLY 28
#define D_ELL_MEAN 29
#define D_ELL_D2 30
#define D_MK_THR 31
#define D_H2 32
#define H_NOUT 33

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
    const double lo = 5.9604644775390625e-08;   // 2**(FINE_EMIN-1) = 2**-24
    const double hi = 1099511627776.0;          // 2**(FINE_EMIN-1+FINE_OCT) = 2**40
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
