// A small CPU implementation of the CUDA execution model, enough to compile
// evflow's kernels/*.cu unmodified with g++ (-std=c++20) and run them with the
// launch configuration the CuPy path uses.
//
// - Blocks run one after another; the threads of a block run concurrently, each
//   CUDA thread a real std::thread, so ThreadSanitizer sees the races a missing
//   __syncthreads() leaves inside a block.
// - __syncthreads() is a std::barrier over the block's threads; a thread that
//   returns from the kernel drops out of it (exited threads do not block a
//   barrier on the GPU either).
// - Dynamic shared memory (`extern __shared__ T name[];`) is one buffer of
//   EVF_CPU_MAX_SHARED bytes (CUDA's default 48 KiB limit for dynamic shared
//   memory without opt-in).  Before each block it is filled with 0xff (so a
//   read of memory a kernel did not initialise gives NaN or huge integers),
//   the bytes past the launch's shared-memory size are poisoned under
//   AddressSanitizer and checked for writes afterwards otherwise.
// - Atomics are CUDA's overloads implemented with std::atomic_ref.
// - Maths are glibc's, not CUDA's libdevice.
//
// The driver (tests/cuda_cpu/runner.py) defines the shared buffer under the
// name the kernel source declares and one exported entry point per kernel.
#pragma once

#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EVF_CPU_ASAN 1
#else
#define EVF_CPU_ASAN 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__
#define __launch_bounds__(...)

#ifndef EVF_CPU_MAX_SHARED
#define EVF_CPU_MAX_SHARED 49152
#endif

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
using uint3 = dim3;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace evf_cpu {
inline thread_local std::barrier<>* block_barrier = nullptr;
}

inline void __syncthreads() { evf_cpu::block_barrier->arrive_and_wait(); }

// maths: glibc (CUDA's device functions of the same names are libdevice's)
using std::isfinite;
using std::isinf;
using std::isnan;

inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }

// atomics (the overloads CUDA provides; each returns the old value)
template <typename T>
inline T evf_atomic_add(T* address, T val) {
    return std::atomic_ref<T>(*address).fetch_add(val, std::memory_order_relaxed);
}
inline int atomicAdd(int* a, int v) { return evf_atomic_add(a, v); }
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) { return evf_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return evf_atomic_add(a, v); }
inline float atomicAdd(float* a, float v) { return evf_atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return evf_atomic_add(a, v); }
template <typename T>
inline T evf_atomic_minmax(T* address, T val, bool want_min) {
    std::atomic_ref<T> r(*address);
    T old = r.load(std::memory_order_relaxed);
    while ((want_min ? val < old : val > old) && !r.compare_exchange_weak(old, val, std::memory_order_relaxed)) {
    }
    return old;
}
inline int atomicMin(int* a, int v) { return evf_atomic_minmax(a, v, true); }
inline int atomicMax(int* a, int v) { return evf_atomic_minmax(a, v, false); }
inline unsigned int atomicMin(unsigned int* a, unsigned int v) { return evf_atomic_minmax(a, v, true); }
inline unsigned int atomicMax(unsigned int* a, unsigned int v) { return evf_atomic_minmax(a, v, false); }
inline int atomicCAS(int* a, int compare, int val) {
    std::atomic_ref<int>(*a).compare_exchange_strong(compare, val, std::memory_order_relaxed);
    return compare;
}
inline unsigned int atomicExch(unsigned int* a, unsigned int v) {
    return std::atomic_ref<unsigned int>(*a).exchange(v, std::memory_order_relaxed);
}

namespace evf_cpu {

struct Error {
    std::mutex lock;
    std::string text;
    void set(const std::string& t) {
        std::lock_guard<std::mutex> g(lock);
        if (text.empty()) text = t;
    }
};

template <typename T>
inline T arg_value(void* p) {
    return *static_cast<std::remove_cv_t<std::remove_reference_t<T>>*>(p);
}

// Run `kernel` over the grid: blocks in order, the threads of each block
// concurrently.  `args[i]` points to the value of parameter i (as for
// cudaLaunchKernel).  Returns 0, or non-zero with a message in `err`.
template <typename... A, std::size_t... I>
int launch_impl(void (*kernel)(A...), const unsigned int* grid, const unsigned int* block, std::size_t shared,
                unsigned char* smem, void** args, char* err, std::size_t err_len, std::index_sequence<I...>) {
    auto fail = [&](const std::string& msg) {
        std::snprintf(err, err_len, "%s", msg.c_str());
        return 1;
    };
    if (shared > EVF_CPU_MAX_SHARED)
        return fail("dynamic shared memory of " + std::to_string(shared) + " bytes exceeds the 48 KiB default limit");
    const dim3 g{grid[0], grid[1], grid[2]};
    const dim3 b{block[0], block[1], block[2]};
    const unsigned long long nthreads = (unsigned long long)b.x * b.y * b.z;
    if (nthreads == 0 || nthreads > 1024 || g.x == 0 || g.y == 0 || g.z == 0)
        return fail("invalid launch configuration");
    // the arguments are copied once, as the GPU copies them into constant memory
    auto values = std::make_tuple(arg_value<A>(args[I])...);
    Error error;
    for (unsigned int bz = 0; bz < g.z; ++bz)
        for (unsigned int by = 0; by < g.y; ++by)
            for (unsigned int bx = 0; bx < g.x; ++bx) {
                if (smem) {
#if EVF_CPU_ASAN
                    ASAN_UNPOISON_MEMORY_REGION(smem, EVF_CPU_MAX_SHARED);
#endif
                    std::memset(smem, 0xff, EVF_CPU_MAX_SHARED);
#if EVF_CPU_ASAN
                    ASAN_POISON_MEMORY_REGION(smem + shared, EVF_CPU_MAX_SHARED - shared);
#endif
                }
                std::barrier<> bar((std::ptrdiff_t)nthreads);
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned int tz = 0; tz < b.z; ++tz)
                    for (unsigned int ty = 0; ty < b.y; ++ty)
                        for (unsigned int tx = 0; tx < b.x; ++tx)
                            threads.emplace_back([&, tx, ty, tz, bx, by, bz]() {
                                threadIdx = {tx, ty, tz};
                                blockIdx = {bx, by, bz};
                                blockDim = b;
                                gridDim = g;
                                block_barrier = &bar;
                                try {
                                    std::apply(kernel, values);
                                } catch (const std::exception& e) {
                                    error.set(e.what());
                                }
                                bar.arrive_and_drop();
                            });
                for (auto& t : threads) t.join();
                if (!error.text.empty()) return fail(error.text);
                if (smem) {
#if EVF_CPU_ASAN
                    ASAN_UNPOISON_MEMORY_REGION(smem, EVF_CPU_MAX_SHARED);
#endif
                    for (std::size_t k = shared; k < EVF_CPU_MAX_SHARED; ++k)
                        if (smem[k] != 0xff)
                            return fail("the kernel wrote past its " + std::to_string(shared) +
                                        " bytes of dynamic shared memory (byte " + std::to_string(k) + ")");
                }
            }
    return 0;
}

template <typename... A>
int launch(void (*kernel)(A...), const unsigned int* grid, const unsigned int* block, std::size_t shared,
           unsigned char* smem, void** args, char* err, std::size_t err_len) {
    return launch_impl(kernel, grid, block, shared, smem, args, err, err_len, std::index_sequence_for<A...>{});
}

}  // namespace evf_cpu
