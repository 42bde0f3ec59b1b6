"""CUDA version of the fused phenotype kernel (``phenotype.cu``), launched on CuPy chunks.

The source is compiled with the ``#define`` preamble of
:func:`~evflow.kernels.phenotype_plan.cuda_preamble` (the plan layout and the
fine-histogram constants, from the Python that owns them) and
``--fmad=false``.  :func:`launch_cupy` is the one function that builds a
launch.
"""

from __future__ import annotations

import numpy as np

from ._cuda import BoundedCache
from .phenotype_plan import (
    FINE_NBINS,
    MAX_DIMS,
    MAX_SLOTS,
    FusedPlan,
    Partial,
    _check_events,
    cuda_preamble,
)

_CUDA_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint64): "unsigned long long",
}


def cuda_source() -> str:
    """The full CUDA source as compiled: the generated ``#define`` preamble, then ``phenotype.cu``."""
    from ._cuda import read_source

    return cuda_preamble() + read_source("phenotype.cu")


def _cuda_function(dtype):
    from ._cuda import load_module

    name = f"fused_phenotype<{_CUDA_TYPES[np.dtype(dtype)]}>"  # one instantiation per dtype, compiled on first use
    mod = load_module("phenotype.cu", options=("--fmad=false",), name_expressions=(name,), preamble=cuda_preamble())
    return mod.get_function(name)


#: packed plans uploaded to a device, by (plan, device); the most recent 64
_DEVICE_PLANS = BoundedCache(maxsize=64)


def _device_plan(plan: FusedPlan):
    import cupy

    key = (id(plan), cupy.cuda.runtime.getDevice())
    got = _DEVICE_PLANS.get(key)
    if got is None or got[0] is not plan:
        ip, dp = plan.packed()
        got = (plan, cupy.asarray(ip), cupy.asarray(dp))
        _DEVICE_PLANS.put(key, got)
    return got[1], got[2]


def launch_cupy(events, plan: FusedPlan, mask=None):
    """Launch the CUDA kernel on a CuPy chunk; returns the device arrays (asynchronously).

    ``(counts uint64 (2**k,), pos_hist uint32 (max(k,1), FINE_NBINS), pos_sum
    float64 (max(k,1),), density uint32 (max(nx*ny,1),))``.
    """
    import cupy

    ev = cupy.asarray(events)
    _check_events(ev, plan)
    if ev.dtype not in _CUDA_TYPES:
        ev = ev.astype(cupy.float64)
    n = int(ev.shape[0])
    if n >= 2**31:
        raise ValueError("a chunk must hold fewer than 2**31 events; rechunk the events")
    if len(plan.slots) > MAX_SLOTS or len(plan.dims) > MAX_DIMS:
        raise ValueError(f"the CUDA kernel handles at most {MAX_SLOTS} channels and {MAX_DIMS} dimensions")
    item = ev.dtype.itemsize
    rs, cs = ev.strides[0] // item, ev.strides[1] // item
    if mask is not None:
        pm = cupy.asarray(mask, dtype=cupy.bool_).view(cupy.uint8)
        if pm.shape != (n,):
            raise ValueError(f"mask has shape {pm.shape}, expected ({n},)")
        has_mask = 1
    else:
        pm = cupy.zeros(1, dtype=cupy.uint8)
        has_mask = 0
    ip, dp = _device_plan(plan)
    k = plan.n_markers
    nx, ny = plan.density_shape()
    counts = cupy.zeros(plan.n_phenotypes, dtype=cupy.uint64)
    pos_hist = cupy.zeros((max(k, 1), FINE_NBINS), dtype=cupy.uint32)
    pos_sum = cupy.zeros(max(k, 1), dtype=cupy.float64)
    density = cupy.zeros(max(nx * ny, 1), dtype=cupy.uint32)
    if n == 0:
        return counts, pos_hist, pos_sum, density
    fn = _cuda_function(ev.dtype)
    block = 256
    n_sm = cupy.cuda.Device().attributes["MultiProcessorCount"]
    grid = max(1, min((n + block - 1) // block, n_sm * 8))
    nph = plan.n_phenotypes
    shared = (((nph * 4 + 7) // 8) * 8 if nph <= 4096 else 0) + 8 * max(k, 1)
    fn(
        (grid,),
        (block,),
        (ev, np.int64(n), np.int64(rs), np.int64(cs), pm, np.int32(has_mask), ip, dp,
         counts, pos_hist, pos_sum, density),
        shared_mem=shared,
    )
    return counts, pos_hist, pos_sum, density


def fused_cupy(events, plan: FusedPlan, mask=None) -> Partial:
    """CUDA version of the fused kernel on a CuPy chunk (``phenotype.cu``)."""
    counts, pos_hist, pos_sum, density = launch_cupy(events, plan, mask)
    k = plan.n_markers
    nx, ny = plan.density_shape()
    return Partial(
        int(events.shape[0]),
        counts.get().astype(np.int64),
        pos_hist.get().astype(np.int64)[:k],
        pos_sum.get()[:k],
        density.get().astype(np.int64)[: nx * ny].reshape(nx, ny),
    )

