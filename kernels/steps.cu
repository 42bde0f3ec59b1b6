// Binary segmentation of many photobleaching traces in one launch (CUDA version
// of binseg_numpy / binseg_numba in kernels/steps.py).
//
// One block per trace (grid-stride loop over traces).  Thread 0 computes the
// centred prefix sums sequentially, in the order of the NumPy reference; the
// best split of a segment is searched by every thread of the block (thread t
// takes the split frames s + ms + t, s + ms + t + blockDim.x, ...) and reduced
// to the earliest frame of lowest cost, the rule of np.argmin; the greedy loop
// (split the segment of largest gain while the gain exceeds the penalty; ties:
// the earliest segment, as np.argmax) is run by all threads on shared values.
// Compile with --fmad=false: +, -, *, / then round as in NumPy; log() is the
// one library function (libdevice on the GPU, glibc on the CPU).
//
// Cost of a segment [s, t): SSE / v + (t - s) log v with v = max(a + g max(mean, 0), 1e-12).
// Outputs per trace i: cps[i, :n_cp[i]] the change points (ascending), the rest
// of the row -1; n_cp[i] = -1 (row all -1) when more than max_cp were found.
// Dynamic shared memory: double[blockDim.x], long long[blockDim.x], then
// double gain[max_cp + 2], long long seg_s, seg_e, split[max_cp + 2], then double c.
// Scratch: s1, s2 (gridDim.x, n + 1) doubles, one row per block.

typedef long long i64;
#define EV_INF __longlong_as_double(0x7ff0000000000000LL)
#define EV_VAR_FLOOR 1e-12

__device__ __forceinline__ double seg_cost(const double* __restrict__ s1, const double* __restrict__ s2, double c,
                                           double a, double g, i64 s, i64 t) {
    const double ln = (double)(t - s);
    const double sm = s1[t] - s1[s];
    const double m = sm / ln;
    double sse = s2[t] - s2[s] - sm * m;
    if (sse < 0.0) sse = 0.0;
    double mu = m + c;
    if (mu < 0.0) mu = 0.0;
    double v = a + g * mu;
    if (v < EV_VAR_FLOOR) v = EV_VAR_FLOOR;
    return sse / v + ln * log(v);
}

// Best single split of [s, e) by the whole block; thread 0 writes the gain
// (-inf when the segment is shorter than 2 ms) and the split frame (-1: none).
// Every thread of the block must call it; it ends with __syncthreads().
__device__ void block_best_split(const double* __restrict__ s1, const double* __restrict__ s2, double c, double a,
                                 double g, i64 s, i64 e, int ms, double* red_v, i64* red_i, double* gain_out,
                                 i64* split_out) {
    const int tid = threadIdx.x;
    const bool splittable = e - s >= 2 * (i64)ms;
    double best = EV_INF;
    i64 bt = -1;
    if (splittable)
        for (i64 tau = s + ms + tid; tau <= e - ms; tau += blockDim.x) {
            const double tot = seg_cost(s1, s2, c, a, g, s, tau) + seg_cost(s1, s2, c, a, g, tau, e);
            if (tot < best) {
                best = tot;
                bt = tau;
            }
        }
    red_v[tid] = best;
    red_i[tid] = bt;
    __syncthreads();
    for (int stride = blockDim.x >> 1; stride > 0; stride >>= 1) {
        if (tid < stride) {
            const double ov = red_v[tid + stride];
            const i64 oi = red_i[tid + stride];
            const double mv = red_v[tid];
            const i64 mi = red_i[tid];
            if (ov < mv || (ov == mv && oi >= 0 && (mi < 0 || oi < mi))) {
                red_v[tid] = ov;
                red_i[tid] = oi;
            }
        }
        __syncthreads();
    }
    if (tid == 0) {
        if (splittable) {
            *gain_out = seg_cost(s1, s2, c, a, g, s, e) - red_v[0];
            *split_out = red_i[0];
        } else {
            *gain_out = -EV_INF;
            *split_out = -1;
        }
    }
    __syncthreads();
}

template <typename T>
__global__ void binseg_steps(const T* __restrict__ x, i64 n_tr, i64 n, i64 rs, i64 cs,
                             const double* __restrict__ a_tr, const double* __restrict__ g_tr, double pen, int ms,
                             int max_cp, double* s1_all, double* s2_all, i64* cps, i64* n_cp) {
    extern __shared__ unsigned char smem[];
    const int nb = blockDim.x;
    const i64 M = (i64)max_cp + 2;
    double* red_v = reinterpret_cast<double*>(smem);
    i64* red_i = reinterpret_cast<i64*>(smem + 8 * (i64)nb);
    double* gain = reinterpret_cast<double*>(smem + 16 * (i64)nb);
    i64* seg_s = reinterpret_cast<i64*>(smem + 16 * (i64)nb + 8 * M);
    i64* seg_e = seg_s + M;
    i64* split = seg_e + M;
    double* centre = reinterpret_cast<double*>(split + M);
    double* s1 = s1_all + (i64)blockIdx.x * (n + 1);
    double* s2 = s2_all + (i64)blockIdx.x * (n + 1);
    const int tid = threadIdx.x;

    for (i64 i = blockIdx.x; i < n_tr; i += gridDim.x) {
        const T* row = x + i * rs;
        const double a = a_tr[i], g = g_tr[i];
        if (tid == 0) {
            // the centre and the prefix sums, sequential as np.cumsum
            double c = 0.0;
            for (i64 j = 0; j < n; ++j) c += (double)row[j * cs];
            c = c / (double)n;
            s1[0] = 0.0;
            s2[0] = 0.0;
            double acc1 = 0.0, acc2 = 0.0;
            for (i64 j = 0; j < n; ++j) {
                const double d = (double)row[j * cs] - c;
                acc1 += d;
                acc2 += d * d;
                s1[j + 1] = acc1;
                s2[j + 1] = acc2;
            }
            *centre = c;
            seg_s[0] = 0;
            seg_e[0] = n;
        }
        __syncthreads();
        const double c = *centre;
        block_best_split(s1, s2, c, a, g, 0, n, ms, red_v, red_i, &gain[0], &split[0]);
        i64 n_seg = 1, n_found = 0;
        bool overflow = false;
        while (true) {
            i64 j = 0;
            for (i64 k = 1; k < n_seg; ++k)
                if (gain[k] > gain[j]) j = k;
            if (!(gain[j] > pen)) break;
            if (n_found == max_cp) {
                overflow = true;
                break;
            }
            const i64 s = seg_s[j], e = seg_e[j], tau = split[j];
            __syncthreads();  // every thread has read the segment table before thread 0 changes it
            if (tid == 0) {
                cps[i * max_cp + n_found] = tau;
                seg_e[j] = tau;
                seg_s[n_seg] = tau;
                seg_e[n_seg] = e;
            }
            ++n_found;
            block_best_split(s1, s2, c, a, g, s, tau, ms, red_v, red_i, &gain[j], &split[j]);
            block_best_split(s1, s2, c, a, g, tau, e, ms, red_v, red_i, &gain[n_seg], &split[n_seg]);
            ++n_seg;
        }
        if (tid == 0) {
            i64* out = cps + i * max_cp;
            if (overflow) {
                for (i64 k = 0; k < max_cp; ++k) out[k] = -1;
                n_cp[i] = -1;
            } else {
                for (i64 k = 1; k < n_found; ++k) {  // insertion sort (distinct frames)
                    const i64 v = out[k];
                    i64 q = k - 1;
                    while (q >= 0 && out[q] > v) {
                        out[q + 1] = out[q];
                        --q;
                    }
                    out[q + 1] = v;
                }
                for (i64 k = n_found; k < max_cp; ++k) out[k] = -1;
                n_cp[i] = n_found;
            }
        }
        __syncthreads();  // s1, s2 and the shared tables are reused by the next trace
    }
}
