"""Batched 2-D integrated-Gaussian fits of spots (single-molecule / single-vesicle).

Model of the expected photon count in pixel ``(i, j)`` of a ``w x w`` window
(pixel centres at integer coordinates, the centre of pixel ``[0, 0]`` is
``(0.0, 0.0)``)::

    mu[i, j] = b + N * Ex[j] * Ey[i]
    Ex[j] = 0.5 * (erf((j - x + 0.5) / (sqrt(2) s)) - erf((j - x - 0.5) / (sqrt(2) s)))

with parameters ``theta = (x, y, N, b, s)``: position (px), total photons,
background (photons/px) and PSF standard deviation (px).  The fit is a
Levenberg-Marquardt iteration on either the Poisson log-likelihood
(``method="mle"``, Fisher-scoring normal equations, as in Smith et al. 2010 /
Gpufit's MLE estimator) or the sum of squares (``method="lsq"``).  For sCMOS
data the read-noise variance (photons^2) can be added to data and model
(Huang et al. 2013).  The Cramer-Rao lower bound is ``diag(I^-1)`` of the
Poisson Fisher information at the solution.

Three implementations give the same numbers (to rounding):

- :func:`fit_numpy` (``gaussfit_numpy.py``): the NumPy reference (vectorised
  over spots), the oracle;
- :func:`fit_numba` (``gaussfit_numba.py``): the fast CPU version (one spot
  per loop iteration, parallel over spots);
- :func:`fit_cupy` (``gaussfit_cupy.py``): the CUDA version from
  ``gaussfit.cu``, one thread per spot.

The model, its constants and the start values are in ``gaussfit_model.py``.
Use :func:`fit_gaussians`, which picks one by ``impl`` through the kernel
registry (family ``gaussfit``).
"""

from __future__ import annotations

import numpy as np

from . import _registry
from ._registry import renamed_impl
from .gaussfit_cupy import fit_cupy, launch_cupy
from .gaussfit_model import (
    _INV_SQRT2PI,
    _LAMBDA0,
    _LAMBDA_MAX,
    _LAMBDA_MIN,
    _MIN_BACKGROUND,
    _MIN_PHOTONS,
    _SQRT2,
    MAX_WINDOW,
    PARAMS,
    STATUS,
    _check,
    cuda_options,
    initial_guess,
)
from .gaussfit_numba import _nb_erf, _nb_exp, _nb_fit_all, _nb_log, fit_numba
from .gaussfit_numpy import fit_numpy

__all__ = [
    "PARAMS",
    "STATUS",
    "fit_gaussians",
    "fit_numpy",
    "fit_numba",
    "fit_cupy",
    "launch_cupy",
    "cuda_options",
    "initial_guess",
    "MAX_WINDOW",
]

_ = (_INV_SQRT2PI, _LAMBDA0, _LAMBDA_MAX, _LAMBDA_MIN, _MIN_BACKGROUND, _MIN_PHOTONS, _SQRT2, _nb_erf, _nb_exp,
     _nb_fit_all, _nb_log)  # re-exported for tests and benchmarks


@renamed_impl("backend")
def fit_gaussians(
    windows,
    *,
    sigma=1.3,
    fit_sigma=True,
    method="mle",
    init=None,
    max_iter=30,
    tol=1e-5,
    readout_var=0.0,
    impl="auto",
):
    """Fit an integrated 2-D Gaussian to every window of a batch.

    Parameters
    ----------
    windows : array (n, w, w)
        Pixel values in photons (float32 precision is used), ``3 <= w <= 16``.
        NumPy for the 'numpy'/'numba' implementations, CuPy for 'cupy'.
    sigma : float
        PSF standard deviation (px): the starting value, or the fixed value
        when ``fit_sigma`` is False.
    fit_sigma : bool
        Fit the PSF width (5 parameters) or keep it fixed (4 parameters).
    method : {'mle', 'lsq'}
        Poisson maximum likelihood or least squares.
    init : array (n, 5), optional
        Starting ``(x, y, photons, background, sigma)``; default :func:`initial_guess`.
    max_iter, tol : int, float
        Iteration limit; convergence when an accepted step moves x, y and
        sigma by less than ``tol`` px and photons/background by less than
        ``tol`` relative.
    readout_var : float
        Read-noise variance in photons^2, added to data and model (sCMOS).
    impl : {'auto', 'numpy', 'numba', 'cupy'}
        Implementation (``evflow.kernels`` registry, family ``gaussfit``):
        'auto' is CuPy for CuPy windows, Numba otherwise.  Formerly ``backend=``.

    Returns
    -------
    dict with ``params`` (n, 5: x, y in window px; photons; background in
    photons/px; sigma in px), ``crlb`` (n, 5: square roots of the Cramer-Rao
    bounds, same units), ``llr`` (n: Poisson log-likelihood ratio, ~chi^2 with
    w*w-5 degrees of freedom for a good fit), ``iterations`` (n) and
    ``status`` (n: 0 converged, 1 iteration limit, 2 stalled).
    """
    _check(windows, sigma, max_iter, method, readout_var)
    name = _registry.gaussfit.resolve(impl, windows)
    xp = np
    if name == "cupy":
        import cupy as xp
    if init is None and name != "numba":  # the Numba kernel computes the same start values itself
        init = initial_guess(xp.asarray(windows, dtype=xp.float32), sigma, xp=xp)
    theta, crlb, llr, iters, status = _registry.gaussfit.get(name)(
        windows, init, sigma=float(sigma), fit_sigma=fit_sigma, method=method,
        max_iter=max_iter, tol=tol, readout_var=readout_var,
    )
    return {"params": theta, "crlb": crlb, "llr": llr, "iterations": iters, "status": status}
