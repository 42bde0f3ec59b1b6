"""CUDA version of the fused phenotype kernel (``phenotype.cu``), launched on CuPy chunks.

The source is compiled with the ``#define`` preamble of
:func:`~evflow.kernels.phenotype_plan.cuda_preamble` (the plan layout and the
fine-histogram constants, from the Python that owns them) and
``--fmad=false``.  :func:`launch_cupy` launches what
:func:`evflow.kernels.launch.phenotype_launch` builds.
"""

from __future__ import annotations

from ._cuda import BoundedCache
from .launch import CUDA_TYPES as _CUDA_TYPES, phenotype_launch, run_cupy
from .phenotype_plan import (
    MAX_DIMS,
    MAX_SLOTS,
    FusedPlan,
    Partial,
    _check_events,
)


def cuda_source() -> str:
    """The full CUDA source as compiled: the generated ``#define`` preamble, then ``phenotype.cu``."""
    from ._cuda import module_source

    return module_source("phenotype.cu")


#: packed plans uploaded to a device, by (plan, device); the most recent 64
_DEVICE_PLANS = BoundedCache(maxsize=64)


def _device_plan(plan: FusedPlan):
    import cupy

    key = (id(plan), cupy.cuda.runtime.getDevice())
    got = _DEVICE_PLANS.get(key)
    if got is None or got[0] is not plan:
        ip, dp = plan.packed()
        from evflow.backend import to_device

        got = (plan, to_device(ip, "cupy", what="plan"), to_device(dp, "cupy", what="plan"))
        _DEVICE_PLANS.put(key, got)
    return got[1], got[2]


def launch_cupy(events, plan: FusedPlan, mask=None):
    """Launch the CUDA kernel on a CuPy chunk; returns the device arrays (asynchronously).

    ``(counts uint64 (2**k,), pos_hist uint32 (max(k,1), FINE_NBINS), pos_sum
    float64 (max(k,1),), density uint32 (max(nx*ny,1),))``.
    """
    import cupy

    from evflow.backend import to_device

    ev = to_device(events, "cupy", what="events chunk")  # a CuPy chunk stays as it is
    _check_events(ev, plan)
    if ev.dtype not in _CUDA_TYPES:
        ev = ev.astype(cupy.float64)
    n = int(ev.shape[0])
    if n >= 2**31:
        raise ValueError("a chunk must hold fewer than 2**31 events; rechunk the events")
    if len(plan.slots) > MAX_SLOTS or len(plan.dims) > MAX_DIMS:
        raise ValueError(f"the CUDA kernel handles at most {MAX_SLOTS} channels and {MAX_DIMS} dimensions")
    if mask is not None:
        mask = to_device(mask, "cupy", what="mask").astype(cupy.bool_, copy=False)
        if mask.shape != (n,):
            raise ValueError(f"mask has shape {mask.shape}, expected ({n},)")
    ip, dp = _device_plan(plan)
    # grid, block, shared memory and typed arguments come from kernels/launch.py,
    # the same Launch the CPU execution of phenotype.cu runs in the cuda_cpu
    # tests.  That run cannot prove: inter-block races (its blocks run one after
    # another), occupancy, registers and speed (ci/nvrtc-check prints registers
    # and spills), or the GPU's order of float atomic additions into pos_sum.
    n_sm = cupy.cuda.Device().attributes["MultiProcessorCount"]
    launch = phenotype_launch(cupy, ev, plan, mask, ip, dp, n_sm=n_sm)
    if n:
        run_cupy(launch)
    counts, pos_hist, pos_sum, density = (launch.arg(a) for a in ("counts", "pos_hist", "pos_sum", "density"))
    return counts, pos_hist, pos_sum, density


def partial_cupy(events, plan: FusedPlan, mask=None) -> Partial:
    """The fused kernel's partial of a CuPy chunk, left on the device (int64 CuPy arrays; partials add up
    there, and :meth:`Partial.to_host` brings a sum back in one copy)."""
    import cupy

    counts, pos_hist, pos_sum, density = launch_cupy(events, plan, mask)
    k = plan.n_markers
    nx, ny = plan.density_shape()
    return Partial(
        int(events.shape[0]),
        counts.astype(cupy.int64),
        pos_hist[:k].astype(cupy.int64),
        pos_sum[:k].copy(),
        density[: nx * ny].astype(cupy.int64).reshape(nx, ny),
    )


def fused_cupy(events, plan: FusedPlan, mask=None) -> Partial:
    """CUDA version of the fused kernel on a CuPy chunk (``phenotype.cu``); the partial on the host (one copy)."""
    return partial_cupy(events, plan, mask).to_host(what="partial")
