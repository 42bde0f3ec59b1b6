"""Multicolour phenotyping of vesicles and counts in the shared result schema.

Per field: spots are detected in every channel, mapped to the reference
channel (registration), merged one-to-one within a radius, and measured in
every channel at the registered position (photons and background from a
fixed-position, fixed-sigma integrated-Gaussian least-squares fit).  A
marker is positive when its photons reach the marker's threshold (photons,
set by hand or from a negative-control chip with
:func:`thresholds_from_control`), or, without thresholds, when the vesicle
was detected in that channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ConfigError, EvflowError, ImageError
from ..flow.thresholds import (
    DEFAULT_QUANTILE,
    RULE_FORMS,
    ThresholdRule,
    parse_threshold_rule,
)

#: detections with these flags are left out of counts by default (see :func:`phenotype_field`)
FLAGS_EXCLUDED = ("saturated", "masked")
#: detect_spots options that phenotype_field also takes per channel (a mapping marker -> value)
PER_CHANNEL = ("threshold", "false_positives")

__all__ = ["measure_photons", "phenotype_field", "count_vesicles", "thresholds_from_control", "check_field"]


def measure_photons(image, yx, psf_sigma_px, *, window=7):
    """Photons and background (per px) at fixed sub-pixel positions of a 2-D photon image.

    Linear least squares of ``b + N * PSF`` in a ``window x window`` box with
    the integrated-Gaussian PSF at the given position and width.  Positions
    outside the image give NaN.
    """
    from ..synth.tirf import integrated_gaussian
    from .localize import extract_windows

    img = np.asarray(image, dtype=np.float32)
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    n = len(yx)
    if n == 0:
        return np.empty(0), np.empty(0)
    H, W = img.shape
    inside = (yx[:, 0] >= -0.5) & (yx[:, 0] <= H - 0.5) & (yx[:, 1] >= -0.5) & (yx[:, 1] <= W - 0.5)
    yc = np.clip(np.rint(yx[:, 0]), 0, H - 1).astype(np.int64)
    xc = np.clip(np.rint(yx[:, 1]), 0, W - 1).astype(np.int64)
    win, y0, x0 = extract_windows(img, yc, xc, window)
    ey = integrated_gaussian(yx[:, 0] - y0, psf_sigma_px, window)
    ex = integrated_gaussian(yx[:, 1] - x0, psf_sigma_px, window)
    psf = (ey[:, :, None] * ex[:, None, :]).reshape(n, -1)
    d = win.reshape(n, -1).astype(np.float64)
    m = window * window
    sp, spp, sd, spd = psf.sum(1), (psf * psf).sum(1), d.sum(1), (psf * d).sum(1)
    det = m * spp - sp * sp
    N = (m * spd - sp * sd) / det
    b = (sd - N * sp) / m
    N[~inside] = np.nan
    b[~inside] = np.nan
    return N, b


def check_field(field, *, where="field", saturation=None):
    """Raise ImageError when a raw field (channel, y, x) is all zero, constant or mostly saturated."""
    a = np.asarray(field)
    for c in range(a.shape[0]):
        plane = a[c]
        if not np.isfinite(plane).all():
            raise ImageError(f"{where}, channel {c}: contains NaN or infinite values")
        if np.all(plane == 0):
            raise ImageError(f"{where}, channel {c}: image is all zero")
        top = saturation if saturation is not None else (np.iinfo(a.dtype).max if a.dtype.kind in "ui" else None)
        if top is not None and np.mean(plane >= top) > 0.5:
            raise ImageError(f"{where}, channel {c}: {np.mean(plane >= top):.0%} of pixels are saturated (>= {top})")
        if plane.min() == plane.max():
            raise ImageError(f"{where}, channel {c}: image is constant ({plane.min()})")


def _merge(tables, markers, radius):
    """Union of per-channel detections (reference frame), merged one-to-one within radius."""
    from ..metrics import match_points

    merged = None
    dist = {}  # marker -> median distance (reference px) to its partners in the earlier channels
    for c, m in enumerate(markers):
        t = tables[m]
        pts = t[["y_ref", "x_ref"]].to_numpy()
        if merged is None:
            merged = pd.DataFrame({"y": pts[:, 0], "x": pts[:, 1], "n": 1})
            det = np.zeros((len(pts), len(markers)), dtype=bool)
            det[:, c] = True
            continue
        i_a, i_b, d = match_points(merged[["y", "x"]].to_numpy(), pts, radius)
        dist[m] = float(np.median(d)) if len(d) else float("nan")
        n = merged["n"].to_numpy().astype(np.float64)
        yy = merged["y"].to_numpy().copy()
        xx = merged["x"].to_numpy().copy()
        yy[i_a] = (yy[i_a] * n[i_a] + pts[i_b, 0]) / (n[i_a] + 1)
        xx[i_a] = (xx[i_a] * n[i_a] + pts[i_b, 1]) / (n[i_a] + 1)
        n[i_a] += 1
        det[i_a, c] = True
        rest = np.setdiff1d(np.arange(len(pts)), i_b)
        merged = pd.DataFrame({"y": np.r_[yy, pts[rest, 0]], "x": np.r_[xx, pts[rest, 1]], "n": np.r_[n, np.ones(len(rest))]})
        extra = np.zeros((len(rest), len(markers)), dtype=bool)
        extra[:, c] = True
        det = np.vstack([det, extra])
    return merged, det, dist


def _channel_flats(flats, markers, shape):
    """Per-marker normalised flats (or None) from None, 'estimate', a (channel, y, x) array or a mapping."""
    from collections.abc import Mapping

    from .background import normalise_flat

    if flats is None:
        return [None] * len(markers)
    if isinstance(flats, str):
        if flats != "estimate":
            raise ConfigError(f"flats must be 'estimate', an array (channel, y, x) or a mapping marker -> flat, got {flats!r}")
        return ["estimate"] * len(markers)
    if isinstance(flats, Mapping):
        unknown = set(flats) - set(markers)
        if unknown:
            raise ConfigError(f"flats: unknown marker(s) {sorted(unknown)}; markers are {list(markers)}")
        return [None if flats.get(m) is None else
                (flats[m] if isinstance(flats[m], str) else normalise_flat(flats[m], shape=shape)) for m in markers]
    a = np.asarray(flats)
    if a.ndim == 2:
        f = normalise_flat(a, shape=shape)
        return [f] * len(markers)
    if a.ndim != 3 or a.shape[0] != len(markers):
        raise ImageError(f"flats must be (channel, y, x) with {len(markers)} channels, got shape {a.shape}")
    return [normalise_flat(x, shape=shape) for x in a]


#: the spot-width ratio of a field is measured only from at least this many converged fits
MIN_WIDTH_SPOTS = 10


def spot_width_ratio(spots) -> float:
    """Median over the converged fits of a spot table of the fitted sigma over the PSF sigma it was detected
    with (``sigma / scale_sigma``): about 1 in focus with the right ``psf_sigma_px``, larger out of focus (or
    with a PSF sigma too small for the microscope).  NaN without fits or with fewer than
    :data:`MIN_WIDTH_SPOTS` of them."""
    if not {"sigma", "fit_status", "scale_sigma"} <= set(spots.columns):
        return float("nan")
    ok = (spots["fit_status"].to_numpy() == 0) & np.isfinite(spots["sigma"].to_numpy())
    if ok.sum() < MIN_WIDTH_SPOTS:
        return float("nan")
    return float(np.median(spots["sigma"].to_numpy()[ok] / spots["scale_sigma"].to_numpy()[ok]))


def phenotype_field(field, markers, *, registration=None, thresholds=None, psf_sigma_px=1.3, camera=None,
                    merge_radius_px=1.5, detect_kwargs=None, flats=None, exclude_flagged=True):
    """Spots of one multicolour field with per-marker photons and a phenotype bitmask.

    Parameters
    ----------
    field : array (channel, y, x)
        Photons (or ADU with ``camera``).
    markers : sequence of str
        Channel names in order (bit i = marker i).
    registration : ChannelRegistration, optional
        Channel -> reference maps; default identity.
    thresholds : mapping marker -> photons, optional
        Positivity thresholds; default: positive when detected in the channel.
    psf_sigma_px : float or sequence (per channel)
    merge_radius_px : float
        Detections of different channels closer than this are one vesicle.
    flats : optional
        Flat-field correction per channel: ``"estimate"`` (from each
        channel's background), a flat image for all channels, an array
        (channel, y, x) or a mapping marker -> flat.  Photons are then those
        at the brightest illumination (thresholds too).
    detect_kwargs : dict, optional
        More :func:`evflow.detect_spots` options, e.g. ``background_radius_px``.  ``threshold`` and
        ``false_positives`` may be given per channel as a mapping marker -> value (a marker not in it
        gets detect_spots' default: the automatic threshold, 0.1 false positives).
    exclude_flagged : bool
        Leave out detections flagged ``saturated`` or ``masked`` (touching
        saturated or non-finite pixels) before merging: they are not counted.
        Their number per marker is ``attrs['n_flagged']``.  ``attrs['detection']`` holds per marker the
        detections kept (``n_spots``), the ``threshold`` and ``saturated_fraction`` of the detection, the
        median distance to partners in earlier channels (``match_distance_px``) and the spots' median
        fitted width over the PSF sigma (``spot_width``, :func:`spot_width_ratio`); ``attrs['seconds']`` the
        seconds spent detecting, mapping positions between channels (``register``) and merging and measuring
        (``colocalise``).

    Returns
    -------
    DataFrame: ``y``, ``x`` (reference px), ``photons_<m>``, ``background_<m>``,
    ``detected_<m>``, ``bitmask``.
    """
    from .camera import as_camera
    from .detect import detect_spots
    from .register import ChannelRegistration

    markers = list(markers)
    camera = as_camera(camera)
    a = np.asarray(field)
    if a.ndim != 3 or a.shape[0] != len(markers):
        raise ImageError(f"field must be (channel, y, x) with {len(markers)} channels, got shape {a.shape}")
    photons = camera.to_photons(a) if camera is not None else a.astype(np.float32, copy=False)
    reg = registration or ChannelRegistration.identity(markers)
    sig = np.broadcast_to(np.asarray(psf_sigma_px, dtype=np.float64), (len(markers),))
    flat_c = _channel_flats(flats, markers, photons.shape[1:])
    if any(isinstance(f, str) for f in flat_c):
        from .background import estimate_flat

        flat_c = [estimate_flat(photons[c]) if isinstance(f, str) else f for c, f in enumerate(flat_c)]
    detect_kwargs = dict(detect_kwargs or {})
    if a.dtype.kind in "ui" and detect_kwargs.get("saturation", "auto") == "auto":
        # the photons are float: carry the raw dtype's saturation level over, in photons
        top = np.array([np.iinfo(a.dtype).max], np.float64)
        detect_kwargs["saturation"] = float(camera.to_photons(top)[0]) if camera is not None else float(top[0])
    tables, n_flagged, info = {}, {}, {}
    secs = {"detect": 0.0, "register": 0.0, "colocalise": 0.0}  # time per step (s), in attrs['seconds']
    for c, m in enumerate(markers):
        t0 = perf_counter()
        kw = {k: v for k, v in detect_kwargs.items() if not (k in PER_CHANNEL and isinstance(v, Mapping))}
        kw.update({k: v[m] for k, v in detect_kwargs.items() if k in PER_CHANNEL and isinstance(v, Mapping) and m in v})
        df = detect_spots(photons[c], psf_sigma_px=float(sig[c]), flat=flat_c[c], **kw)
        info[m] = {"threshold": df.attrs.get("threshold"), "saturated_fraction": df.attrs.get("saturated_fraction"),
                   "psf_sigma_px": df.attrs.get("psf_sigma_px"), "noise": df.attrs.get("noise")}
        bad = np.zeros(len(df), bool)
        for col in FLAGS_EXCLUDED:
            if col in df:
                bad |= df[col].to_numpy(bool)
        n_flagged[m] = int(bad.sum())
        if exclude_flagged and bad.any():
            df = df[~bad].reset_index(drop=True)
        t1 = perf_counter()
        secs["detect"] += t1 - t0
        ref = reg.to_reference(m, df[["y", "x"]].to_numpy()) if len(df) else np.empty((0, 2))
        df["y_ref"], df["x_ref"] = ref[:, 0], ref[:, 1]
        tables[m] = df
        info[m]["n_spots"] = len(df)
        info[m]["spot_width"] = spot_width_ratio(df)
        secs["register"] += perf_counter() - t1
    t0 = perf_counter()
    merged, det, dist = _merge(tables, markers, merge_radius_px)
    for m in markers:
        info[m]["match_distance_px"] = dist.get(m, float("nan"))
    out = pd.DataFrame({"y": merged["y"].to_numpy(), "x": merged["x"].to_numpy()})
    bitmask = np.zeros(len(out), dtype=np.int64)
    for c, m in enumerate(markers):
        t1 = perf_counter()
        pos = reg.to_channel(m, out[["y", "x"]].to_numpy()) if len(out) else np.empty((0, 2))
        t_reg = perf_counter() - t1
        secs["register"] += t_reg
        t0 += t_reg  # the mapping back to each channel is registration, not colocalisation
        N, b = measure_photons(photons[c], pos, float(sig[c]))
        if flat_c[c] is not None and len(out):
            from .background import flat_at

            f = flat_at(flat_c[c], pos[:, 0], pos[:, 1])
            N, b = N / f, b / f
        out[f"photons_{m}"] = N
        out[f"background_{m}"] = b
        out[f"detected_{m}"] = det[:, c]
        if thresholds is None:
            positive = det[:, c]
        else:
            if m not in thresholds:
                raise ConfigError(f"thresholds has no entry for marker {m!r}; has {list(thresholds)}")
            positive = np.nan_to_num(N, nan=-np.inf) >= float(thresholds[m])
        bitmask |= positive.astype(np.int64) << c
    out["bitmask"] = bitmask
    secs["colocalise"] = perf_counter() - t0
    out.attrs["n_flagged"] = n_flagged
    out.attrs["seconds"] = secs
    out.attrs["detection"] = info  # per marker: n_spots, threshold, saturated_fraction, psf_sigma_px, noise,
    # match_distance_px, spot_width
    return out


def thresholds_from_control(spots: pd.DataFrame, markers, *, quantile=DEFAULT_QUANTILE, rule=None):
    """Per-marker photon thresholds from spots of a negative-control chip.

    The threshold of marker ``m`` is the ``quantile`` (0..1, default 0.995)
    of ``photons_<m>`` over the control's vesicles: at most ``1 - quantile``
    of negatives are called positive.  ``rule`` instead takes any rule of
    :mod:`evflow.flow.thresholds` (``"percentile 99.5 of isotype"``,
    ``"mean+3sd of isotype"``, ``"median+3mad of isotype"``; the control name
    is ignored: the spots are the control).
    """
    if rule is None:
        if not 0 < quantile < 1:
            raise ConfigError(f"quantile must be in (0, 1), got {quantile}")
        r = ThresholdRule.from_quantile(quantile, "control")
    else:
        r = parse_threshold_rule(rule, error=ConfigError, where="control spots")
        if not isinstance(r, ThresholdRule):
            raise ConfigError(f"control spots: rule {rule!r} is a number, not a rule; expected {RULE_FORMS}")
    out = {}
    for m in markers:
        col = f"photons_{m}"
        if col not in spots:
            raise ConfigError(f"control spots have no column {col!r}")
        v = spots[col].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 10:
            raise ConfigError(f"control has only {len(v)} measured vesicles for {m!r}; need at least 10")
        out[m] = r.statistic(v)
    return out


def count_vesicles(images: xr.DataArray, *, markers=None, sample="sample", registration=None, thresholds=None,
                   psf_sigma_px=1.3, camera=None, merge_radius_px=1.5, detect_kwargs=None, flats=None):
    """Phenotype counts and densities per field, plus the per-vesicle table.

    Parameters
    ----------
    images : xarray.DataArray (fov, channel, y, x)
        From :func:`evflow.read_images` (or :func:`evflow.synth.tirf`).
    markers : sequence of str, optional
        Default: the ``channel`` coordinate.
    sample : str
        Sample name.
    registration, thresholds, psf_sigma_px, camera, merge_radius_px, detect_kwargs, flats
        See :func:`phenotype_field` (``flats="estimate"`` estimates each
        field's flats from that field).  The camera defaults to
        ``images.attrs['camera']`` when the images are in ADU.

    Returns
    -------
    counts : xarray.Dataset
        The shared schema (sample, fov, phenotype) with ``density`` (vesicles
        per um^2, when the pixel size is known) and ``area_um2`` (per fov).
        Fields that fail (unreadable, all zero, saturated, ...) are left out
        and listed in ``attrs['failed_fields']``.
    spots : pandas.DataFrame
        One row per vesicle: ``sample``, ``fov`` plus the columns of
        :func:`phenotype_field`.
    """
    from ..schema import counts_dataset

    if tuple(images.dims) != ("fov", "channel", "y", "x"):
        raise ImageError(f"images must have dims (fov, channel, y, x), got {images.dims}")
    markers = list(markers) if markers is not None else [str(c) for c in images.channel.values]
    if len(markers) != images.sizes["channel"]:
        raise ImageError(f"{images.sizes['channel']} channels but {len(markers)} markers {markers}")
    if camera is None and images.attrs.get("units") == "ADU" and images.attrs.get("camera"):
        camera = images.attrs["camera"]
    px = images.attrs.get("pixel_size_nm")
    area = images.sizes["y"] * images.sizes["x"] * (px * 1e-3) ** 2 if px else np.nan
    rows, ok_fovs, failed, detection, seconds = [], [], [], [], {}
    files = images.coords["file"].values if "file" in images.coords else None
    for i in range(images.sizes["fov"]):
        fov = images.fov.values[i]
        where = f"fov {fov}" + (f" ({files[i]})" if files is not None else "")
        try:
            field = np.asarray(images.isel(fov=i).values)
            check_field(field, where=where)
            sp = phenotype_field(field, markers, registration=registration, thresholds=thresholds,
                                 psf_sigma_px=psf_sigma_px, camera=camera, merge_radius_px=merge_radius_px,
                                 detect_kwargs=detect_kwargs, flats=flats)
        except EvflowError as exc:
            msg = str(exc)
            failed.append(msg if where in msg else f"{where}: {msg}")
            continue
        sp.insert(0, "fov", fov)
        sp.insert(0, "sample", sample)
        detection.append(sp.attrs.get("detection", {}))
        for k, v in sp.attrs.get("seconds", {}).items():
            seconds[k] = seconds.get(k, 0.0) + v
        rows.append(sp)
        ok_fovs.append(fov)
    n_ph = 1 << len(markers)
    counts = np.zeros((1, len(ok_fovs), n_ph), dtype=np.int64)
    for j, sp in enumerate(rows):
        counts[0, j] = np.bincount(sp["bitmask"].to_numpy(), minlength=n_ph)
    ds = counts_dataset(counts, markers, [sample], fovs=ok_fovs,
                        thresholds=None if thresholds is None else np.array([[thresholds[m] for m in markers]]),
                        attrs={"modality": "imaging", "pixel_size_nm": px if px else np.nan,
                               "failed_fields": failed, "detection": detection, "seconds": seconds,
                               "threshold_rule": "photons" if thresholds is not None else "detected"})
    ds["area_um2"] = (("sample", "fov"), np.full((1, len(ok_fovs)), area), {"units": "um2"})
    ds["density"] = (ds["count"] / ds["area_um2"]).assign_attrs(units="1/um2", long_name="vesicles per um^2")
    spots = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return ds, spots
