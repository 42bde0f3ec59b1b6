"""Sub-pixel localisation: batched integrated-Gaussian fits at detected maxima."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..backend import to_host, to_host_all
from ..kernels._registry import renamed_impl

__all__ = ["fit_window_size", "extract_windows", "fit_spots", "FIT_COLUMNS", "AT_BOUND"]

FIT_COLUMNS = (
    "y", "x", "photons", "background", "sigma",
    "crlb_y", "crlb_x", "crlb_photons", "crlb_background", "crlb_sigma",
    "llr", "iterations", "fit_status",
)


#: ``fit_status`` of a fit that ended on a bound of its parameters: its position on an edge of the fit window
#: inside the image, or its photons at the floor.  The window held no spot the model could place (it ran off to a neighbour or
#: to the field's edge): not a localisation.  (0 converged, 1 iteration limit, 2 stalled: the kernels' codes.)
AT_BOUND = 3


def fit_window_size(sigma_px: float) -> int:
    """Odd fit-window size (px) for a PSF of ``sigma_px``: 2*ceil(2.5 sigma)+1, 7 to 15."""
    from ..kernels.gaussfit import MAX_WINDOW

    w = 2 * int(np.ceil(2.5 * float(sigma_px))) + 1
    return int(min(max(w, 7), MAX_WINDOW - 1))


def extract_windows(image, yc, xc, size, xp=np):
    """Cut ``size x size`` windows centred on integer pixels ``(yc, xc)``.

    Windows are shifted to stay inside the image.  Returns the windows
    (n, size, size) float32 and their top-left corners (y0, x0).
    """
    H, W = image.shape
    r = size // 2
    yc = xp.asarray(yc, dtype=xp.int64)
    xc = xp.asarray(xc, dtype=xp.int64)
    y0 = xp.clip(yc - r, 0, max(H - size, 0))
    x0 = xp.clip(xc - r, 0, max(W - size, 0))
    from ..kernels import _registry

    impl = _registry.windows.resolve("auto", image)
    if impl == "numba" and not (xp is np and isinstance(image, np.ndarray) and image.dtype.kind in "fiu"):
        impl = "numpy" if xp is np else "cupy"
    return _registry.windows.get(impl)(image, y0, x0, size), y0, x0


@renamed_impl("fit_backend")
def fit_spots(
    image,
    yc,
    xc,
    *,
    psf_sigma_px=1.3,
    window=None,
    method="mle",
    fit_sigma=True,
    readout_var=0.0,
    backend="numpy",
    impl="auto",
    max_iter=30,
    tol=1e-4,
    origin=(0, 0),
) -> pd.DataFrame:
    """Fit an integrated Gaussian around each integer position of a 2-D image.

    Parameters
    ----------
    image : 2-D array (photons), NumPy or CuPy
    yc, xc : int arrays
        Pixel of each spot's maximum.
    psf_sigma_px : float
        PSF standard deviation (px), start value (or fixed value).
    window : int, optional
        Fit window size (px, odd); default :func:`fit_window_size`.
    method : {'mle', 'lsq'}
    fit_sigma : bool
    readout_var : float
        Read-noise variance (photons^2).
    backend : {'numpy', 'cupy'}
        Array backend of ``image``.
    impl : {'auto', 'numpy', 'numba', 'cupy'}
        Fit implementation (``evflow.kernels`` registry, family ``gaussfit``);
        'auto': cupy on the GPU backend, numba on the CPU.  Formerly ``fit_backend=``.
    origin : (int, int)
        Global (y, x) of ``image[0, 0]`` (a tile of a larger field), added to
        the output positions.

    Returns
    -------
    DataFrame with :data:`FIT_COLUMNS` (positions in image px, pixel-centre
    convention; photons; background in photons/px; sigma and CRLBs in px).
    ``fit_status``: 0 converged, 1 iteration limit, 2 stalled, :data:`AT_BOUND`
    (3) the fit ended on an edge of its window inside the image or at the
    photon floor (its values are the bound's, not a localisation).
    """
    from ..kernels.gaussfit import fit_gaussians

    if backend == "cupy":
        import cupy as xp
    else:
        xp = np
    from ..kernels._registry import gaussfit as _fits

    impl = "cupy" if backend == "cupy" and impl in ("auto", None) else _fits.resolve(impl)
    size = int(window) if window is not None else fit_window_size(psf_sigma_px)
    if image.shape[0] < size or image.shape[1] < size:
        from ..errors import ImageError

        raise ImageError(f"image of {image.shape} px is smaller than the {size}x{size} px fit window")
    win, y0, x0 = extract_windows(image, yc, xc, size, xp=xp)
    if impl != "cupy" and backend == "cupy":
        win = to_host(win, what="fit windows")  # a CPU fit of device windows (impl= asked for it)
        y0, x0 = to_host(xp.stack([y0, x0]), what="fit windows")
    res = fit_gaussians(
        win, sigma=psf_sigma_px, fit_sigma=fit_sigma, method=method, readout_var=readout_var,
        impl=impl, max_iter=max_iter, tol=tol, init=_edge_start(win, yc, xc, y0, x0, size, psf_sigma_px, impl),
    )
    # one crossing: parameters, CRLBs, llr, iterations, status and window corners
    p, c, llr, iters, status, y0, x0 = to_host_all(
        [res[k] for k in ("params", "crlb", "llr", "iterations", "status")] + [y0, x0], what="fit results")
    y0, x0 = y0.reshape(-1), x0.reshape(-1)
    llr, iters, status = llr.reshape(-1), iters.reshape(-1), status.reshape(-1)
    status = np.where(_at_bound(p, size, y0, x0, image.shape), AT_BOUND, status)
    y0 = y0 + int(origin[0])
    x0 = x0 + int(origin[1])
    return pd.DataFrame(
        {
            "y": y0 + p[:, 1],
            "x": x0 + p[:, 0],
            "photons": p[:, 2],
            "background": p[:, 3],
            "sigma": p[:, 4],
            "crlb_y": c[:, 1],
            "crlb_x": c[:, 0],
            "crlb_photons": c[:, 2],
            "crlb_background": c[:, 3],
            "crlb_sigma": c[:, 4],
            "llr": llr.copy(),
            "iterations": iters.astype(np.int32),
            "fit_status": status.astype(np.int8),
        }
    )


def _at_bound(p, size, y0, x0, shape):
    """Fits (rows of ``p``: x, y, N, b, s in window px; windows at ``y0``, ``x0`` of an image of ``shape``)
    that ended on an edge of their window inside the image, or at the photon floor.  A window's edge on the
    image's edge is not counted: a spot centred at or beyond the image's edge fits there (flag ``border``)."""
    from ..kernels.gaussfit_model import _MIN_PHOTONS

    eps = 1e-6
    lo, hi = -0.5 + eps, size - 0.5 - eps
    out = p[:, 2] <= _MIN_PHOTONS * (1.0 + eps)
    for k, (corner, n) in enumerate(((x0, shape[1]), (y0, shape[0]))):
        out |= ((p[:, k] <= lo) & (corner > 0)) | ((p[:, k] >= hi) & (corner + size < n))
    return out


def _edge_start(win, yc, xc, y0, x0, size, sigma, impl):
    """Start values for windows shifted to stay inside the image (their maximum off the window's centre):
    the centroid clamped around the maximum instead of the centre (from the centre, the fit of a spot on the
    field's edge ran off to the far side of its window).  None where every window is centred and the kernel
    computes the same start values itself (Numba); otherwise all of them (the same values for centred ones)."""
    from ..backend import array_module
    from ..kernels.gaussfit_model import initial_guess

    xp = array_module(win)
    off = xp.stack([xp.asarray(xc, dtype=xp.int64) - x0, xp.asarray(yc, dtype=xp.int64) - y0], axis=1)
    if xp is np and impl == "numba" and not (off != size // 2).any():
        return None
    return initial_guess(xp.asarray(win, dtype=xp.float32), sigma, xp=xp, centre=off)
