"""CUDA version of the batched Gaussian fits (``gaussfit.cu``, one thread per spot)."""

from __future__ import annotations

from .gaussfit_model import cuda_options  # noqa: F401  (the NVRTC options of gaussfit.cu, kept importable here)


def fit_cupy(windows, init, *, sigma, fit_sigma=True, method="mle", max_iter=30, tol=1e-5, readout_var=0.0):
    """CUDA version of the batched fit (inputs/outputs are CuPy arrays); see :func:`~evflow.kernels.gaussfit.fit_gaussians`."""
    import cupy as cp

    data = cp.ascontiguousarray(cp.asarray(windows, dtype=cp.float32))
    n, w, _ = data.shape
    theta = cp.array(init, dtype=cp.float64, copy=True, order="C")
    crlb = cp.empty((n, 5), dtype=cp.float64)
    llr = cp.empty(n, dtype=cp.float64)
    iters = cp.empty(n, dtype=cp.int32)
    status = cp.empty(n, dtype=cp.int8)
    if n:
        launch_cupy(data, theta, crlb, llr, iters, status, sigma=sigma, fit_sigma=fit_sigma, method=method,
                    max_iter=max_iter, tol=tol, readout_var=readout_var)
    return theta, crlb, llr, iters, status


def launch_cupy(data, theta, crlb, llr, iters, status, *, sigma, fit_sigma, method, max_iter, tol, readout_var):
    """Launch ``evf_gaussfit`` (``gaussfit.cu``) on device arrays: ``data`` float32 (n, w, w) C order,
    ``theta`` float64 (n, 5) start values, fitted in place; outputs ``crlb`` (n, 5), ``llr`` (n),
    ``iters`` int32 (n), ``status`` int8 (n).  Asynchronous (the current stream)."""
    from .launch import gaussfit_launch, run_cupy

    # grid, block and typed arguments come from kernels/launch.py, the same
    # Launch the CPU execution of gaussfit.cu runs in the cuda_cpu tests.  That
    # run cannot prove: libdevice exp/erf/log against glibc's, the FMA
    # contraction nvcc may apply (no --fmad=false here), occupancy and speed.
    launch = gaussfit_launch(
        data, theta, crlb, llr, iters, status, sigma=sigma, fit_sigma=fit_sigma, method=method,
        max_iter=max_iter, tol=tol, readout_var=readout_var,
    )
    run_cupy(launch)
