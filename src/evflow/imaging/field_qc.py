"""Per-field quality control: for each field and channel, what the detection saw and whether it can be trusted.

Metrics (:func:`field_metrics`, one value per channel of a field):

``n_spots``                detections counted (flagged ones left out)
``density_per_um2``        ``n_spots`` per um^2 of field (NaN without a pixel size)
``background``             median photons per pixel
``noise``                  pixel noise (photons): sd of neighbouring-pixel differences within 4 robust sigmas, / sqrt 2
                           (planes above :data:`SAMPLE_ROWS_ABOVE` pixels: the background over every other row
                           and column, the noise over disjoint pairs of neighbours along every other row, in
                           alternating phase)
``threshold``              the detection threshold used (photons of the detection filter)
``saturated_fraction``     fraction of pixels at or above the saturation level
``focus``                  normalised variance of the Laplacian: ``var(laplace(G * I)) / mean(I)^2`` with
                           ``G`` a Gaussian of half the PSF sigma (drops as spots blur)
``registration_residual_px`` median distance (reference px) from a channel's detections to their partners in
                           the channels before it, after registration (NaN for the first channel)
``spot_width``             median fitted sigma of the detections over the PSF sigma they were detected with
                           (:func:`~evflow.imaging.count.spot_width_ratio`; NaN with fewer than 10 fits)
``crowding``               share of vesicles expected within the resolution distance ``2 sigma`` of another at the
                           detected density, were they placed at random: ``1 - exp(-rho pi (2 sigma)^2)``, ``rho``
                           the detections per px^2 and sigma the PSF's.  Vesicles that close are found as one,
                           so where this is large the count is a lower bound (and the detected density an
                           underestimate: the true crowding is larger still)
``noise_excess``           the detection filter's noise over what photon statistics give at ``background``
                           (:func:`~evflow.imaging.noise.photon_noise_excess`; NaN unless the camera model is given:
                           ``field_metrics(camera=...)``, in a run ``imaging.camera_gain`` stated).  1.02-1.11 on sparse
                           synthetic sCMOS and EMCCD fields; crowded fields hide their spots behind a noise estimate
                           the spots themselves raise, and ``crowding`` then reads low too (1,500 vesicles per
                           256x256 px: excess 2.3, 3,000: 7.4 with crowding 0.055)

Flags (:func:`qc_flags`; limits in :data:`QC_LIMITS`; "median" is the median over the fields of the same
sample and channel; ``wide_spots`` is absolute, so a chip that is out of focus throughout is flagged too):

``saturated``     ``saturated_fraction > 1e-4``
``defocused``     ``focus < 0.5 x median``
``registration``  ``registration_residual_px > 0.5`` px
``background``    ``background > 3 x median``
``sparse``        ``density < 0.25 x median`` (where the median is above 0)
``wide_spots``    ``spot_width > 1.6``: spots much wider than the stated PSF (out of focus, or ``psf_sigma_px``
                  too small for the microscope; in focus the real images of the test data give 0.75 - 1.5, a
                  Gaussian blur of 2 px gives 1.9 - 3.0)
``crowded``       ``crowding > 0.1``: too dense to count single vesicles; dilute the sample or capture fewer (on
                  a synthetic field of 600 vesicles per 256x256 px, crowding 0.135, 27 % of them are missed);
                  absolute
``noisy``         ``noise_excess > 1.5``: noisier than photon statistics: crowded beyond what ``crowding`` sees
                  (the count is a lower bound), a structured background, or a wrong camera model; absolute
"""

from __future__ import annotations

import numpy as np

__all__ = ["QC_LIMITS", "QC_METRICS", "field_metrics", "qc_flags", "crowding"]

#: planes of more pixels than this take their ``background`` from every other row and column and their
#: ``noise`` from disjoint pairs of neighbours along every other row, in alternating phase (:func:`_disjoint_pairs`;
#: a 2048x2048 channel: 1 M pixels and 1 M
#: independent differences, which leave the estimates a relative sd of about 0.1 %; the order statistics over
#: every pixel were the largest cost of the field's QC: 0.66 s of a 3-channel 2048x2048 field, now 0.45 s)
SAMPLE_ROWS_ABOVE = 1 << 21

#: limits of the per-field flags (see the module docstring)
QC_LIMITS = {"saturated": 1e-4, "defocused": 0.5, "registration": 0.5, "background": 3.0, "sparse": 0.25,
             "wide_spots": 1.6, "crowded": 0.1, "noisy": 1.5}

#: metric -> (units, description)
QC_METRICS = {
    "n_spots": ("1", "detections counted"),
    "density_per_um2": ("1/um2", "detections per um^2"),
    "background": ("photons/px", "median photons per pixel"),
    "noise": ("photons/px", "robust pixel noise"),
    "threshold": ("photons", "detection threshold used"),
    "saturated_fraction": ("1", "fraction of pixels at saturation"),
    "focus": ("1", "normalised variance of the Laplacian"),
    "registration_residual_px": ("px", "median distance to partners in earlier channels after registration"),
    "spot_width": ("1", "median fitted spot sigma over the PSF sigma"),
    "crowding": ("1", "share of vesicles expected within 2 PSF sigmas of another at the detected density"),
    "noise_excess": ("1", "detection noise over photon statistics at the median background (camera model given)"),
}


def _first(v):
    if v is None:
        return np.nan
    if isinstance(v, (list, tuple, np.ndarray)):
        return float(v[0]) if len(v) else np.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def _pixel_noise(d):
    """Noise per pixel from neighbouring-pixel differences ``d``: their standard deviation within 4 robust
    sigmas of the median (spots left out; unlike the MAD alone not quantised on integer photon counts) / sqrt 2."""
    if not d.size:
        return np.nan
    med = np.median(d)
    dev = np.abs(d - med)
    s0 = float(1.4826 * np.median(dev))  # the MAD sigma (evflow.imaging.noise.mad_sigma)
    s0 = s0 if s0 > 0 else float(np.std(d))
    kept = d[dev <= 4.0 * s0] if s0 > 0 else d
    return float(np.std(kept)) / np.sqrt(2.0)


def _disjoint_pairs(p):
    """Differences of disjoint pairs of neighbours along every other row, the pairs' phase alternating between
    those rows ((0, 1), (2, 3), ... then (1, 2), (3, 4), ...): independent differences, and both kinds of
    neighbour pair of a camera whose even and odd columns differ (on the real airlocalize field one phase alone
    gives a noise 1.2 % low, the other 0.7 % high; the two together 0.3 % low)."""
    w0 = p.shape[1] // 2 * 2
    w1 = (p.shape[1] - 1) // 2 * 2 + 1
    a, b = p[0::4], p[2::4]
    return np.concatenate([(a[:, 1:w0:2] - a[:, 0:w0:2]).ravel(), (b[:, 2:w1:2] - b[:, 1:w1 - 1:2]).ravel()])


def _median(plane):
    """``np.median`` of a plane, partitioned in its own dtype when that is float32 (the order statistics are
    the same values; their mean is taken in float64, as np.median of the float64 plane takes it)."""
    if plane.dtype != np.float32:
        return float(np.median(plane))
    flat = plane.ravel()
    n = flat.size
    part = np.partition(flat, [(n - 1) // 2, n // 2])
    lo, hi = np.float64(part[(n - 1) // 2]), np.float64(part[n // 2])
    return float(np.mean(np.array([lo, hi]))) if n % 2 == 0 else float(lo)


def crowding(n_spots, n_pixels, psf_sigma_px):
    """Share of vesicles expected within ``2 psf_sigma_px`` of another when ``n_spots`` lie at random over
    ``n_pixels``: ``1 - exp(-rho pi (2 sigma)^2)`` (the ``crowding`` metric; NaN without pixels)."""
    if not n_pixels > 0:
        return float("nan")
    return float(-np.expm1(-float(n_spots) / float(n_pixels) * np.pi * (2.0 * float(psf_sigma_px)) ** 2))


def field_metrics(photons, markers, detection=None, *, saturation=None, psf_sigma_px=1.3, pixel_size_nm=None,
                  camera=None):
    """The QC metrics of one field (channel, y, x) in photons: a dict metric -> float array (channel,).

    ``detection``: ``attrs['detection']`` of :func:`~evflow.imaging.count.phenotype_field` (per marker:
    ``n_spots``, ``threshold``, ``noise``, ``match_distance_px``); without it those metrics are NaN.
    ``camera``: the camera model the photons came from (:class:`~evflow.imaging.camera.Camera` or a dict),
    for ``noise_excess`` (NaN without it).
    """
    from ..kernels import _registry
    from .camera import as_camera
    from .noise import photon_noise_excess

    camera = as_camera(camera)

    log_filter = _registry.log_filter.get(_registry.log_filter.resolve("auto"))
    a = np.asarray(photons)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    k = len(markers)
    out = {m: np.full(k, np.nan) for m in QC_METRICS}
    detection = detection or {}
    area_um2 = a.shape[1] * a.shape[2] * (pixel_size_nm * 1e-3) ** 2 if pixel_size_nm else np.nan
    for c, m in enumerate(markers):
        plane = a[c]
        finite = np.isfinite(plane)
        if not finite.any():
            continue
        if not finite.all():
            plane = np.where(finite, plane, np.nanmedian(plane.astype(np.float64)))
        info = detection.get(m, {})
        out["n_spots"][c] = _first(info.get("n_spots"))
        out["density_per_um2"][c] = out["n_spots"][c] / area_um2 if area_um2 == area_um2 else np.nan
        p64 = plane.astype(np.float64)  # differences, filters and moments in float64 (exact for float32 input)
        if plane.size > SAMPLE_ROWS_ABOVE and plane.shape[1] > 1:
            out["background"][c] = _median(plane[::2, ::2])
            d = _disjoint_pairs(p64)
        else:
            out["background"][c] = _median(plane)
            d = np.diff(p64, axis=1).ravel() if plane.shape[1] > 1 else np.diff(p64, axis=0).ravel()
        out["noise"][c] = _pixel_noise(d)
        out["threshold"][c] = _first(info.get("threshold"))
        if saturation is not None:
            out["saturated_fraction"][c] = float(np.mean(p64 >= saturation))
        lap = log_filter(p64, 0.5 * float(psf_sigma_px))  # laplace(gaussian_filter(...)) of scipy.ndimage
        mean = float(np.mean(p64))
        out["focus"][c] = float(np.var(lap)) / mean ** 2 if mean > 0 else np.nan
        out["registration_residual_px"][c] = _first(info.get("match_distance_px"))
        out["spot_width"][c] = _first(info.get("spot_width"))
        sig = _first(info.get("psf_sigma_px"))
        sig = sig if sig > 0 else float(psf_sigma_px)
        out["crowding"][c] = crowding(out["n_spots"][c], plane.size, sig)
        out["noise_excess"][c] = photon_noise_excess(_first(info.get("noise")), sig, out["background"][c], camera)
    return out


def qc_flags(metrics, *, fov_axis=-2, limits=None):
    """Flags from metric arrays shaped (..., fov, channel): a dict flag -> bool array of that shape.

    Relative limits compare a field with the median over the ``fov_axis`` (the fields of one sample)."""
    lim = dict(QC_LIMITS, **(limits or {}))

    def arr(name):
        return np.asarray(metrics[name], np.float64)

    def median(v):
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmedian(v, axis=fov_axis, keepdims=True)

    with np.errstate(invalid="ignore"):
        dens = arr("density_per_um2")
        dens = np.where(np.isfinite(dens), dens, arr("n_spots"))
        med_d = median(dens)
        return {
            "saturated": np.nan_to_num(arr("saturated_fraction")) > lim["saturated"],
            "defocused": arr("focus") < lim["defocused"] * median(arr("focus")),
            "registration": np.nan_to_num(arr("registration_residual_px")) > lim["registration"],
            "background": arr("background") > lim["background"] * median(arr("background")),
            "sparse": (med_d > 0) & (dens < lim["sparse"] * med_d),
            "wide_spots": np.nan_to_num(arr("spot_width")) > lim["wide_spots"],
            "crowded": np.nan_to_num(arr("crowding")) > lim["crowded"],
            "noisy": np.nan_to_num(arr("noise_excess")) > lim["noisy"],
        }
