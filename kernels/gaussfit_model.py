"""The model of the batched Gaussian fits: parameters, status codes, constants, checks, start values.

Shared by every implementation (see :mod:`evflow.kernels.gaussfit`); the fit
constants also reach ``gaussfit.cu`` as ``-D`` options
(:func:`evflow.kernels.gaussfit_cupy.cuda_options`).
"""

from __future__ import annotations

import math

import numpy as np

PARAMS = ("x", "y", "photons", "background", "sigma")
#: status codes per fit
STATUS = {0: "converged", 1: "max_iterations", 2: "stalled"}
MAX_WINDOW = 16

_LAMBDA0 = 1e-3
_LAMBDA_MIN = 1e-7
_LAMBDA_MAX = 1e7
_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_MIN_PHOTONS = 1e-3
_MIN_BACKGROUND = 1e-6


def _check(windows, sigma, max_iter, method, readout_var=0.0):
    if windows.ndim != 3 or windows.shape[1] != windows.shape[2]:
        raise ValueError(f"windows must have shape (n, w, w), got {windows.shape}")
    w = windows.shape[1]
    if not 3 <= w <= MAX_WINDOW:
        raise ValueError(f"window size must be 3..{MAX_WINDOW} px, got {w}")
    if not (sigma > 0):
        raise ValueError(f"sigma must be > 0 px, got {sigma}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not (readout_var >= 0):
        raise ValueError(f"readout_var must be >= 0 photons^2, got {readout_var}")
    if method not in ("mle", "lsq"):
        raise ValueError(f"method must be 'mle' or 'lsq', got {method!r}")


# ---------------------------------------------------------------------------
# initial guess (shared by all backends: computed with NumPy / CuPy array ops)
# ---------------------------------------------------------------------------


def initial_guess(windows, sigma, xp=np, centre=None):
    """Starting values (n, 5): centroid position, summed photons, border-mean background.

    The background is the mean of the window's border pixels, the photon
    count the background-subtracted sum (at least 1), the position the
    centroid of the positive background-subtracted values clamped to within
    1 px of the window centre, or of ``centre`` (n, 2: x, y in window px; the
    spot's maximum in a window shifted to stay inside the image).
    """
    d = windows.astype(xp.float64)
    n, w, _ = d.shape
    border = xp.concatenate([d[:, 0, :], d[:, -1, :], d[:, 1:-1, 0], d[:, 1:-1, -1]], axis=1)
    b0 = xp.maximum(border.mean(axis=1), 1.0e-3)
    r = xp.maximum(d - b0[:, None, None], 0.0)
    tot = r.sum(axis=(1, 2))
    idx = xp.arange(w, dtype=xp.float64)
    c = 0.5 * (w - 1)
    safe = xp.where(tot > 0, tot, 1.0)
    cx = c if centre is None else centre[:, 0].astype(xp.float64)
    cy = c if centre is None else centre[:, 1].astype(xp.float64)
    x0 = xp.where(tot > 0, (r.sum(axis=1) * idx).sum(axis=1) / safe, cx)
    y0 = xp.where(tot > 0, (r.sum(axis=2) * idx).sum(axis=1) / safe, cy)
    x0 = xp.clip(x0, cx - 1.0, cx + 1.0)
    y0 = xp.clip(y0, cy - 1.0, cy + 1.0)
    n0 = xp.maximum((d - b0[:, None, None]).sum(axis=(1, 2)), 1.0)
    s0 = xp.full(n, float(sigma))
    return xp.stack([x0, y0, n0, b0, s0], axis=1)




_CUDA_CONSTANTS = {
    "EVF_LAMBDA0": _LAMBDA0,
    "EVF_LAMBDA_MIN": _LAMBDA_MIN,
    "EVF_LAMBDA_MAX": _LAMBDA_MAX,
    "EVF_MIN_PHOTONS": _MIN_PHOTONS,
    "EVF_MIN_BACKGROUND": _MIN_BACKGROUND,
}


def cuda_options(w):
    """NVRTC options of ``gaussfit.cu``: window size and the fit constants shared with the Python versions."""
    opts = [f"-DEVF_W={int(w)}"]
    opts += [f"-D{k}={v!r}" for k, v in _CUDA_CONSTANTS.items()]
    return tuple(opts)
