"""Synthetic TIRF imaging data with known ground truth.

:func:`tirf`: multicolour fields of surface-captured vesicles (Poisson
point process, phenotype fractions, integrated-Gaussian PSF, photon noise,
sCMOS or EMCCD camera, uneven illumination, chromatic shift).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import erf

from ..errors import ConfigError

__all__ = ["tirf", "SyntheticTIRF", "integrated_gaussian", "peak_fraction"]


# ===========================================================================
# TIRF imaging
# ===========================================================================


def integrated_gaussian(centre, sigma, n_px):
    """Fraction of a 1-D Gaussian's mass in each of ``n_px`` pixels.

    Pixel ``j`` spans ``[j - 0.5, j + 0.5]`` (pixel-centre coordinates).
    ``centre`` and ``sigma`` broadcast; the pixel axis is appended last.
    """
    centre = np.asarray(centre, dtype=np.float64)[..., None]
    sigma = np.asarray(sigma, dtype=np.float64)[..., None]
    j = np.arange(n_px, dtype=np.float64)
    k = 1.0 / (np.sqrt(2.0) * sigma)
    return 0.5 * (erf((j - centre + 0.5) * k) - erf((j - centre - 0.5) * k))


def peak_fraction(sigma):
    """Fraction of a spot's photons in its brightest pixel when centred on a pixel."""
    return float(erf(0.5 / (np.sqrt(2.0) * sigma)) ** 2)


@dataclass
class SyntheticTIRF:
    """Synthetic TIRF fields and their ground truth.

    Attributes
    ----------
    images : xarray.DataArray (fov, channel, y, x)
        Camera counts (uint16 ADU; float64 photons for ``camera='ideal'``).
        ``attrs``: ``pixel_size_nm``, ``units``, ``camera`` (offset, gain,
        em_gain, read_noise_e), ``psf_sigma_px``.
    truth : pandas.DataFrame
        One row per vesicle: ``fov``, ``vesicle``, ``bitmask`` (phenotype),
        ``y``, ``x`` (reference-channel px), and per channel ``y_<m>``,
        ``x_<m>`` (position in that channel's image, px) and ``photons_<m>``
        (expected photons, 0 for a negative marker; illumination included).
    markers : list of str
    transforms : dict marker -> (2, 3) array
        Affine map from reference coordinates ``(y, x, 1)`` to the channel's.
    flat : ndarray (y, x)
        Relative illumination (1 at the centre).
    offset_map, variance_map : ndarray (channel, y, x)
        Per-pixel camera offset (ADU) and read-noise variance (ADU^2).
    background : ndarray (channel,)
        Background photons per pixel at the illumination maximum.
    """

    images: xr.DataArray
    truth: pd.DataFrame
    markers: list
    transforms: dict
    flat: np.ndarray
    offset_map: np.ndarray
    variance_map: np.ndarray
    background: np.ndarray
    params: dict = field(default_factory=dict)

    def camera(self):
        """The camera model as a dict (offset, gain, em_gain, read_noise_e)."""
        return dict(self.images.attrs["camera"])


def _per_channel(value, n, name):
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(n, float(v))
    if v.shape != (n,):
        raise ConfigError(f"{name} must be a scalar or one value per channel ({n}), got {value!r}")
    return v.copy()


def _phenotype_probs(markers, fractions):
    k = len(markers)
    n_ph = 1 << k
    if fractions is None:
        p = np.ones(n_ph)
        p[0] = 0.0  # a vesicle with no marker is invisible
        return p / p.sum()
    from ..schema import phenotype_labels

    labels = phenotype_labels(markers)
    p = np.zeros(n_ph)
    for key, val in dict(fractions).items():
        if isinstance(key, str):
            if key not in labels:
                raise ConfigError(f"phenotype_fractions: unknown phenotype {key!r}; expected one of {labels}")
            idx = labels.index(key)
        else:
            idx = int(key)
            if not 0 <= idx < n_ph:
                raise ConfigError(f"phenotype_fractions: bitmask {idx} out of range 0..{n_ph - 1}")
        p[idx] = float(val)
    if (p < 0).any() or p.sum() <= 0:
        raise ConfigError(f"phenotype_fractions must be >= 0 and not all 0, got {fractions!r}")
    return p / p.sum()


def _default_transforms(n_ch, shape):
    """Small chromatic shift: translation plus magnification about the field centre."""
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    out = []
    for c in range(n_ch):
        scale = 1.0 + 0.0015 * c
        rot = 0.001 * c  # rad
        A = scale * np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
        shift = np.array([0.6 * c, -0.45 * c])
        t = np.array([cy, cx]) - A @ np.array([cy, cx]) + shift
        out.append(np.hstack([A, t[:, None]]))
    return out


def _poisson_positions(rng, n, shape, min_sep, margin):
    """``n`` uniform positions (y, x); with ``min_sep`` > 0 a hard-core process."""
    lo = margin
    hi_y, hi_x = shape[0] - 1 - margin, shape[1] - 1 - margin
    if hi_y <= lo or hi_x <= lo:
        raise ConfigError(f"field {shape} is too small for an edge margin of {margin} px")
    if min_sep <= 0:
        return np.column_stack([rng.uniform(lo, hi_y, n), rng.uniform(lo, hi_x, n)])
    from scipy.spatial import cKDTree

    pts = np.empty((0, 2))
    tries = 0
    while len(pts) < n and tries < 50:
        cand = np.column_stack([rng.uniform(lo, hi_y, 2 * n), rng.uniform(lo, hi_x, 2 * n)])
        allp = np.vstack([pts, cand])
        keep = np.ones(len(allp), dtype=bool)
        tree = cKDTree(allp)
        for i, j in sorted(tree.query_pairs(min_sep)):
            if keep[i] and keep[j]:
                keep[max(i, j)] = False  # keep the earlier point (accepted ones come first)
        pts = allp[keep][:n]
        tries += 1
    if len(pts) < n:
        raise ConfigError(f"cannot place {n} vesicles {min_sep} px apart in a {shape} field")
    return pts


def _render(img, pos, photons, sigma):
    """Add integrated-Gaussian spots (photons each) to img (y, x) in place."""
    if len(pos) == 0:
        return
    H, W = img.shape
    r = int(np.ceil(5 * sigma)) + 1
    size = 2 * r + 1
    y0 = np.floor(pos[:, 0]).astype(int) - r
    x0 = np.floor(pos[:, 1]).astype(int) - r
    ey = integrated_gaussian(pos[:, 0] - y0, sigma, size)  # (n, size)
    ex = integrated_gaussian(pos[:, 1] - x0, sigma, size)
    vals = photons[:, None, None] * ey[:, :, None] * ex[:, None, :]
    yy = y0[:, None, None] + np.arange(size)[None, :, None]
    xx = x0[:, None, None] + np.arange(size)[None, None, :]
    yy, xx = np.broadcast_arrays(yy, xx)
    inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    np.add.at(img, (yy[inside], xx[inside]), vals[inside])


def tirf(
    shape=(256, 256),
    *,
    n_fields=1,
    markers: Sequence[str] = ("CD9", "CD63", "CD81"),
    n_vesicles=None,
    density_per_um2=0.05,
    phenotype_fractions: Mapping | None = None,
    pixel_size_nm=108.0,
    psf_sigma_px=1.3,
    photons=1000.0,
    photons_cv=0.25,
    peak_snr=None,
    background=10.0,
    camera="scmos",
    offset=100.0,
    gain=2.0,
    em_gain=100.0,
    read_noise_e=1.6,
    illumination=0.0,
    chromatic_shift=True,
    min_separation_px=0.0,
    edge_margin_px=0.0,
    seed=0,
) -> SyntheticTIRF:
    """Synthetic multicolour TIRF fields of single vesicles with known truth.

    Vesicles form a Poisson point process (optionally hard-core, at least
    ``min_separation_px`` apart); each is given a phenotype (bitmask over
    ``markers``) drawn from ``phenotype_fractions`` and, per positive marker,
    a log-normal brightness.  Each channel is rendered with an integrated
    Gaussian PSF at the chromatically shifted position, multiplied by the
    illumination profile, plus background, then photon (Poisson) noise and
    the camera model.

    Parameters
    ----------
    shape : (int, int)
        Field size in px.
    n_fields : int
        Number of fields of view.
    markers : sequence of str
        Channel/marker names; the first channel is the registration reference.
    n_vesicles : int, optional
        Vesicles per field; default from ``density_per_um2``.
    density_per_um2 : float
        Mean vesicles per square micrometre (when ``n_vesicles`` is None).
    phenotype_fractions : mapping, optional
        Phenotype label (e.g. ``"CD9+ CD63- CD81+"``) or bitmask -> fraction;
        default: all non-empty phenotypes equally likely.
    pixel_size_nm : float
        Pixel size in the sample plane (nm).
    psf_sigma_px : float or sequence
        PSF standard deviation per channel (px).
    photons : float or sequence
        Mean photons per vesicle and positive marker (at full illumination).
    photons_cv : float
        Coefficient of variation of the log-normal brightness (0: all equal).
    peak_snr : float or sequence, optional
        If given, overrides ``photons`` so that the mean spot's expected peak
        pixel over the background noise ``sqrt(background + read_noise_e**2)``
        equals this value (peak SNR as defined in the detection literature).
    background : float or sequence
        Background photons per pixel (at full illumination).
    camera : {'scmos', 'emccd', 'ideal'}
        sCMOS: per-pixel offset and read-noise maps; EMCCD: gamma-distributed
        electron multiplication (excess noise factor sqrt(2)) and ``em_gain``;
        ideal: photon counts only (float64, no offset or read noise).
    offset, gain, em_gain, read_noise_e : float
        Camera offset (ADU), conversion gain (ADU per electron), EM gain, read
        noise (electrons rms, the median over pixels for sCMOS).
    illumination : float
        Relative drop of the (Gaussian) illumination at the field corners,
        0 (flat) to <1.
    chromatic_shift : bool or sequence of (2, 3) arrays
        True: a small default shift/magnification/rotation per channel;
        False: none; or explicit affine maps reference (y, x, 1) -> channel.
    min_separation_px : float
        Minimum distance between vesicles (hard-core process); 0 = Poisson.
    edge_margin_px : float
        Keep vesicle centres this far from the field edges.
    seed : int

    Returns
    -------
    SyntheticTIRF
    """
    markers = list(markers)
    n_ch = len(markers)
    if n_ch < 1:
        raise ConfigError("tirf: at least one marker is needed")
    H, W = (int(shape[0]), int(shape[1]))
    if H < 8 or W < 8:
        raise ConfigError(f"tirf: shape must be at least 8x8 px, got {shape}")
    if pixel_size_nm <= 0:
        raise ConfigError(f"tirf: pixel_size_nm must be > 0, got {pixel_size_nm}")
    if camera not in ("scmos", "emccd", "ideal"):
        raise ConfigError(f"tirf: camera must be 'scmos', 'emccd' or 'ideal', got {camera!r}")
    if not 0 <= illumination < 1:
        raise ConfigError(f"tirf: illumination drop must be in [0, 1), got {illumination}")
    rng = np.random.default_rng(seed)
    sig = _per_channel(psf_sigma_px, n_ch, "psf_sigma_px")
    bg = _per_channel(background, n_ch, "background")
    rn = float(read_noise_e) if camera != "ideal" else 0.0
    if peak_snr is not None:
        snr = _per_channel(peak_snr, n_ch, "peak_snr")
        noise = np.sqrt(bg + rn**2)
        mean_ph = snr * noise / np.array([peak_fraction(s) for s in sig])
    else:
        mean_ph = _per_channel(photons, n_ch, "photons")
    probs = _phenotype_probs(markers, phenotype_fractions)
    if chromatic_shift is True:
        tfs = _default_transforms(n_ch, (H, W))
    elif chromatic_shift is False or chromatic_shift is None:
        tfs = [np.hstack([np.eye(2), np.zeros((2, 1))]) for _ in range(n_ch)]
    else:
        tfs = [np.asarray(t, dtype=np.float64).reshape(2, 3) for t in chromatic_shift]
        if len(tfs) != n_ch:
            raise ConfigError(f"tirf: {len(tfs)} chromatic transforms for {n_ch} markers")
    area_um2 = H * W * (pixel_size_nm * 1e-3) ** 2
    # illumination: Gaussian beam, 1 - illumination at the corners
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    r2 = ((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2) / (((H - 1) / 2) ** 2 + ((W - 1) / 2) ** 2)
    flat = np.exp(np.log(1.0 - illumination) * r2) if illumination > 0 else np.ones((H, W))
    # camera maps
    if camera == "scmos":
        offset_map = offset + rng.normal(0.0, 1.5, (n_ch, H, W))
        var_e = (rn**2) * rng.lognormal(0.0, 0.25, (n_ch, H, W))
        variance_map = var_e * gain**2
    else:
        offset_map = np.full((n_ch, H, W), offset if camera != "ideal" else 0.0)
        variance_map = np.full((n_ch, H, W), (rn * gain) ** 2 if camera != "ideal" else 0.0)
    sd_log = np.sqrt(np.log1p(photons_cv**2)) if photons_cv > 0 else 0.0
    margin = max(float(edge_margin_px), 0.0)

    frames = np.empty((n_fields, n_ch, H, W), dtype=np.float64 if camera == "ideal" else np.uint16)
    rows = []
    for f in range(n_fields):
        n = int(n_vesicles) if n_vesicles is not None else int(rng.poisson(density_per_um2 * area_um2))
        pos = _poisson_positions(rng, n, (H, W), min_separation_px, margin)
        bitmask = rng.choice(len(probs), size=n, p=probs)
        table = {"fov": np.full(n, f), "vesicle": np.arange(n), "bitmask": bitmask, "y": pos[:, 0], "x": pos[:, 1]}
        illum = flat[np.clip(np.rint(pos[:, 0]).astype(int), 0, H - 1), np.clip(np.rint(pos[:, 1]).astype(int), 0, W - 1)]
        for c, m in enumerate(markers):
            A = tfs[c]
            cpos = pos @ A[:, :2].T + A[:, 2]
            positive = ((bitmask >> c) & 1).astype(bool)
            bright = mean_ph[c] * np.exp(rng.normal(-0.5 * sd_log**2, sd_log, n)) if sd_log > 0 else np.full(n, mean_ph[c])
            ph = np.where(positive, bright * illum, 0.0)
            table[f"y_{m}"] = cpos[:, 0]
            table[f"x_{m}"] = cpos[:, 1]
            table[f"photons_{m}"] = ph
            expected = bg[c] * flat
            _render(expected, cpos[positive], ph[positive], sig[c])
            electrons = rng.poisson(expected).astype(np.float64)
            if camera == "ideal":
                frames[f, c] = electrons
                continue
            if camera == "emccd":
                amplified = np.where(electrons > 0, rng.gamma(np.maximum(electrons, 1e-12), em_gain), 0.0)
                adu = (amplified + rng.normal(0.0, rn, (H, W))) * gain + offset_map[c]
            else:
                adu = (electrons + rng.normal(0.0, 1.0, (H, W)) * np.sqrt(variance_map[c]) / gain) * gain + offset_map[c]
            frames[f, c] = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
        rows.append(pd.DataFrame(table))
    truth = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    cam = {
        "model": camera,
        "offset": float(offset) if camera != "ideal" else 0.0,
        "gain": float(gain) if camera != "ideal" else 1.0,
        "em_gain": float(em_gain) if camera == "emccd" else 1.0,
        "read_noise_e": rn,
    }
    images = xr.DataArray(
        frames,
        dims=("fov", "channel", "y", "x"),
        coords={"fov": np.arange(n_fields), "channel": markers},
        attrs={
            "pixel_size_nm": float(pixel_size_nm),
            "units": "photons" if camera == "ideal" else "ADU",
            "camera": cam,
            "psf_sigma_px": sig.tolist(),
        },
    )
    return SyntheticTIRF(
        images=images,
        truth=truth,
        markers=markers,
        transforms=dict(zip(markers, tfs)),
        flat=flat,
        offset_map=offset_map,
        variance_map=variance_map,
        background=bg,
        params={
            "mean_photons": mean_ph.tolist(),
            "psf_sigma_px": sig.tolist(),
            "area_um2": area_um2,
            "phenotype_probabilities": probs.tolist(),
            "seed": seed,
        },
    )
