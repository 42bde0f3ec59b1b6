"""CUDA version of binary segmentation (``steps.cu``): many traces in one launch, one block per trace.

:func:`binseg_cupy` takes the arguments of :func:`evflow.kernels.steps.binseg_numpy`
(NumPy or CuPy arrays) and returns NumPy ``(cps, n_cp)``.  The traces keep
their dtype on the device (any of :data:`evflow.kernels.launch.CUDA_TYPES`,
e.g. uint16 camera counts; others become float64) and their strides (a
(frames, traces) movie transposed is read in place); the kernel converts each
value to float64 as the reference does.

Equality contract: the same change points as the NumPy reference wherever
no two candidate splits of a segment have costs within a few ulp of each
other.  Every operation but ``log`` is exactly rounded in the same order
(``--fmad=false``, the prefix sums sequential in one thread, the split search
reduced to the earliest frame of lowest cost as ``np.argmin``); CUDA's
``log`` is libdevice's, within 1 ulp of glibc's, so an exact tie broken by
the last bit can go the other way.  Executed on the CPU with glibc's ``log``
(the ``cuda_cpu`` tests), the results are identical.
"""

from __future__ import annotations

import numpy as np

from .launch import CUDA_TYPES, run_cupy, steps_launch

__all__ = ["binseg_cupy", "steps_inputs"]


def steps_inputs(xp, traces, noise_var, noise_gain):
    """``(x, a, g)`` as the kernel takes them, on ``xp`` (numpy or cupy): the traces (traces, frames) in a
    CUDA dtype with positive strides, the noise model float64 (traces,) contiguous."""
    x = xp.asarray(traces)
    if x.ndim != 2:
        raise ValueError(f"traces must be 2-D (traces, frames), got shape {x.shape}")
    if np.dtype(x.dtype) not in CUDA_TYPES:
        x = x.astype(xp.float64)
    if any(s <= 0 or s % x.dtype.itemsize for s in x.strides):
        x = xp.ascontiguousarray(x)
    n_tr = x.shape[0]
    a = xp.ascontiguousarray(xp.broadcast_to(xp.asarray(noise_var, dtype=xp.float64), (n_tr,)))
    g = xp.ascontiguousarray(xp.broadcast_to(xp.asarray(noise_gain, dtype=xp.float64), (n_tr,)))
    return x, a, g


def binseg_cupy(traces, noise_var, noise_gain, penalty, min_size=2, max_cp=64):
    """GPU binary segmentation; same arguments and results as :func:`~evflow.kernels.steps.binseg_numpy`."""
    import cupy

    x, a, g = steps_inputs(cupy, traces, noise_var, noise_gain)
    n_sm = cupy.cuda.Device().attributes["MultiProcessorCount"]
    # grid, block, shared memory and typed arguments come from kernels/launch.py,
    # the same Launch the CPU execution of steps.cu runs in the cuda_cpu tests.
    # That run cannot prove: libdevice's log() against glibc's (near-ties between
    # split costs; see the module docstring), races between blocks (its blocks run
    # one after another; each block writes only its own scratch row and its
    # traces' output rows), occupancy, registers and speed (ci/nvrtc-check).
    launch = steps_launch(cupy, x, a, g, penalty, min_size, max_cp, n_sm=n_sm)
    if x.shape[0]:
        run_cupy(launch)
    from evflow.backend import to_host

    return to_host(launch.arg("cps"), what="change points"), to_host(launch.arg("n_cp"), what="change points")
