"""Flat-field correction and background subtraction of TIRF fields.

- :func:`estimate_flat` estimates the illumination profile from the fields
  themselves (the background fluorescence follows the illumination): a
  smooth surface fitted to a robust local median of binned images; :func:`normalise_flat`
  prepares a measured flat (image of a uniform dye layer).  Flats are
  normalised to a maximum of 1, so corrected photons are those the vesicle
  would give at the brightest illumination.
- :func:`flat_field_correct` divides an image by the flat (for display or
  pixel-level measurements).  :func:`evflow.detect_spots` (``flat=``)
  instead fits the raw photons, whose Poisson statistics the likelihood
  needs, and divides each spot's fitted photons and background by the flat
  at its position (the same correction, without distorting the noise).
- :func:`background_map` / :func:`subtract_image_background` (deprecated
  name: ``subtract_background``): a white top-hat
  (rolling-ball equivalent) with a square element of ``2 radius + 1`` px on
  the lightly smoothed image, followed by a box mean that removes the
  element's blocks.  Structures wider than the element (cells, debris,
  illumination gradients) are removed, spots are kept.  The map is biased
  low by a few noise sigmas (an opening takes minima), a constant that the
  DoG detection filter ignores.
"""

from __future__ import annotations

import numpy as np

from ..backend import array_backend, get_ndi, to_numpy
from ..errors import ConfigError, ImageError

__all__ = [
    "background_map",
    "subtract_image_background",
    "subtract_background",
    "background_halo",
    "estimate_flat",
    "normalise_flat",
    "flat_field_correct",
    "flat_at",
]


def _check_radius(radius_px):
    if isinstance(radius_px, bool) or not isinstance(radius_px, (int, np.integer)) or radius_px < 1:
        raise ConfigError(f"background radius must be an integer >= 1 px, got {radius_px!r}")
    return int(radius_px)


def background_halo(radius_px, smooth_px=1.0) -> int:
    """Pixels on each side that :func:`background_map` at a pixel depends on."""
    r = _check_radius(radius_px)
    return 3 * r + int(4.0 * float(smooth_px) + 0.5)


def background_map(image, radius_px, *, smooth_px=1.0, backend=None):
    """Background estimate (photons/px) of a 2-D image: opening of the smoothed image, then a box mean.

    Parameters
    ----------
    image : 2-D array (photons), NumPy or CuPy
    radius_px : int
        Half-size of the square structuring element (px); larger than a
        spot's radius (e.g. 3-4 PSF sigmas), smaller than the structures to
        remove.
    smooth_px : float
        Gaussian smoothing (px) before the opening, which reduces its noise bias.

    Returns
    -------
    float32 array of the image's shape (same backend).
    """
    r = _check_radius(radius_px)
    name = backend or array_backend(image)
    ndi = get_ndi(name)
    size = 2 * r + 1
    img = image.astype(np.float32, copy=False)
    s = ndi.gaussian_filter(img, float(smooth_px), mode="reflect", output=np.float32) if smooth_px > 0 else img
    opened = ndi.maximum_filter(ndi.minimum_filter(s, size=size, mode="reflect"), size=size, mode="reflect")
    return ndi.uniform_filter(opened, size=size, mode="reflect", output=np.float32)


def subtract_image_background(image, radius_px, *, smooth_px=1.0, backend=None):
    """``image - background_map(image, radius_px)`` (white top-hat, rolling-ball equivalent), float32."""
    img = image.astype(np.float32, copy=False)
    return img - background_map(img, radius_px, smooth_px=smooth_px, backend=backend)


def subtract_background(image, radius_px, *, smooth_px=1.0, backend=None):
    """Deprecated name of :func:`subtract_image_background` (same arguments and result)."""
    import warnings

    warnings.warn("evflow.imaging.background.subtract_background is deprecated; use subtract_image_background",
                  DeprecationWarning, stacklevel=2)
    return subtract_image_background(image, radius_px, smooth_px=smooth_px, backend=backend)


def normalise_flat(flat, *, smooth_px=2.0, shape=None) -> np.ndarray:
    """A measured flat (image of a uniform sample), smoothed and scaled to a maximum of 1 (float32).

    Raises ImageError when it is not 2-D, does not match ``shape``, or is not
    positive and finite everywhere.
    """
    import scipy.ndimage as ndi

    f = np.asarray(to_numpy(flat), dtype=np.float64)
    if f.ndim != 2:
        raise ImageError(f"flat must be a 2-D image (y, x), got shape {f.shape}")
    if shape is not None and tuple(f.shape) != tuple(shape):
        raise ImageError(f"flat has shape {f.shape}, the image {tuple(shape)}")
    if not np.all(np.isfinite(f)) or not np.all(f > 0):
        raise ImageError("flat must be positive and finite everywhere "
                         f"(min {np.nanmin(f) if f.size else 'n/a'}, non-finite {int((~np.isfinite(f)).sum())})")
    if smooth_px and smooth_px > 0:
        f = ndi.gaussian_filter(f, float(smooth_px), mode="nearest")
    return (f / f.max()).astype(np.float32)


def estimate_flat(images, *, bin_px=None, median_bins=5, degree=4) -> np.ndarray:
    """Illumination profile estimated from one or more fields of the same channel (photons).

    Each field is cut in ``bin_px`` x ``bin_px`` bins; a rough background
    (median filter of ``median_bins`` bins over the per-bin pixel medians)
    finds the spots (pixels 3 Poisson sigmas above it, dilated by 2 px),
    which are left out of the per-bin means; the fields are averaged, and a
    2-D polynomial of total ``degree`` is fitted to the log of the result (a
    Gaussian beam is exactly quadratic in the log), then evaluated at every
    pixel and scaled to a maximum of 1.  Assumes images in photons, a
    background fluorescence that follows the illumination (as in TIRF), and
    spots covering well under half of the field.

    Parameters
    ----------
    images : array (y, x) or (n, y, x)
    bin_px : int, optional
        Default: about 1/64 of the smaller side (at least 1).
    """
    import scipy.ndimage as ndi

    a = np.asarray(to_numpy(images), dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ImageError(f"estimate_flat expects (y, x) or (n, y, x) images, got shape {a.shape}")
    n, H, W = a.shape
    b = int(bin_px) if bin_px is not None else max(1, min(H, W) // 64)
    hb, wb = H // b, W // b
    if hb < 8 or wb < 8:
        raise ImageError(f"field of {(H, W)} px is too small to estimate a flat with {b} px bins")
    blocks = a[:, : hb * b, : wb * b].reshape(n, hb, b, wb, b)
    # rough background: median filter of per-bin pixel medians (robust to spots)
    rough = np.median(blocks, axis=(2, 4))
    rough = np.stack([ndi.median_filter(x, size=int(median_bins), mode="nearest") for x in rough])
    # mask spots (pixels 3 Poisson sigmas above the rough background, dilated by 2 px), then bin means
    lim = rough + 3.0 * np.sqrt(np.maximum(rough, 1.0))
    bright = blocks > lim[:, :, None, :, None]
    bright = np.stack([ndi.binary_dilation(x.reshape(hb * b, wb * b), iterations=2) for x in bright])
    keep = ~bright.reshape(blocks.shape)
    cnt = keep.sum(axis=(2, 4))
    mean = np.where(keep, blocks, 0.0).sum(axis=(2, 4)) / np.maximum(cnt, 1)
    mean = np.where(cnt >= 0.25 * b * b, mean, rough)
    med = np.stack([ndi.median_filter(x, size=3, mode="nearest") for x in mean]).mean(axis=0)
    if not np.all(med > 0):
        raise ImageError("estimate_flat: the background is not positive everywhere (offset not subtracted?)")
    # bin centres in pixel coordinates, scaled to [-1, 1]
    cy = ((np.arange(hb) + 0.5) * b - 0.5 - (H - 1) / 2) / ((H - 1) / 2)
    cx = ((np.arange(wb) + 0.5) * b - 0.5 - (W - 1) / 2) / ((W - 1) / 2)
    Y, X = np.meshgrid(cy, cx, indexing="ij")
    terms = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    A = np.column_stack([Y.ravel() ** i * X.ravel() ** j for i, j in terms])
    coef, *_ = np.linalg.lstsq(A, np.log(med.astype(np.float64)).ravel(), rcond=None)
    py = np.linspace(-1.0, 1.0, H)
    px = np.linspace(-1.0, 1.0, W)
    logf = np.zeros((H, W))
    for (i, j), c in zip(terms, coef):
        logf += c * np.outer(py**i, px**j)
    full = np.exp(logf - logf.max())
    return full.astype(np.float32)


def flat_field_correct(image, flat, *, dark=0.0):
    """``(image - dark) / flat`` with the flat normalised to a maximum of 1 (float32)."""
    f = normalise_flat(flat, smooth_px=0, shape=np.shape(image))
    return (np.asarray(image, dtype=np.float32) - np.float32(dark)) / f


def flat_at(flat, y, x) -> np.ndarray:
    """Flat value at the pixels nearest to positions (y, x) (clipped to the image)."""
    f = np.asarray(flat)
    H, W = f.shape
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(x)
    out = np.full(y.shape, np.nan)
    iy = np.clip(np.rint(y[ok]), 0, H - 1).astype(np.int64)
    ix = np.clip(np.rint(x[ok]), 0, W - 1).astype(np.int64)
    out[ok] = f[iy, ix]
    return out
