"""Imaging stage of the pipeline, built on :mod:`evflow.imaging`.

* registration: :func:`evflow.imaging.register.register_channels` on the
  registration-bead field (one affine map per channel to the reference, the
  first channel);
* thresholds: positivity per marker is "detected in the channel" (rule
  ``detected``), a photon count set by hand (``fixed``), or a control rule
  (:mod:`evflow.flow.thresholds`: ``"percentile 99.5 of isotype"``..., or the
  alias ``control_quantile``) over the marker's photons in the vesicles of a
  negative-control chip (:func:`evflow.imaging.count.thresholds_from_control`);
* fields: read with :func:`evflow.read_images` (camera model: ADU to photons)
  and counted with :func:`evflow.imaging.count.count_vesicles`; each vesicle
  keeps its reference-channel position, photons per marker, the fitted PSF
  width and photons in its brightest channel, and its phenotype.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from ..errors import ImageError
from .config import default

__all__ = ["camera_of", "read_field", "field_array", "saturation_photons", "registration_from_beads", "control_spots",
           "analyse_field",
           "analyse_photons",
           "image_thresholds", "spots_table", "control_item", "field_item", "SPOT_ARRAYS", "detection_provenance"]

#: per-vesicle arrays stored with each field item (k = number of markers)
SPOT_ARRAYS = ("y", "x", "bitmask", "photons", "sigma", "photons_marker", "background_marker", "detected_marker")


def camera_of(img_s):
    """The :class:`~evflow.imaging.camera.Camera` of the ``[imaging]`` settings."""
    from ..imaging.camera import Camera

    return Camera(offset=float(img_s.get("camera_offset", 0.0)), gain=float(img_s.get("camera_gain", 1.0)),
                  em_gain=float(img_s.get("camera_em_gain", 1.0)),
                  read_noise_e=float(img_s.get("camera_read_noise_e", 0.0)))


#: files opened in this process: (path, size, mtime_ns, markers, pixel size, camera) -> (lazy fields, raw dtype)
_OPENED: dict = {}
_OPENED_MAX = 32
_OPEN_LOCK = threading.Lock()


def _opened(path, img_s):
    """The lazy fields of an image file (:func:`evflow.read_images`, in photons) and its raw dtype, opened once per
    process while the file is unchanged: the fields of a multi-field file share one open (its page table and
    OME-XML are parsed once, not once per field)."""
    from ..io.images import read_images

    chans = list(img_s["channels"])
    st = os.stat(path)
    cam = camera_of(img_s)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, tuple(chans), img_s.get("pixel_size_nm"),
           tuple(sorted(cam.to_dict().items())))
    with _OPEN_LOCK:
        hit = _OPENED.pop(key, None)
        if hit is not None:
            _OPENED[key] = hit  # most recently used last
            return hit
    kw = {"markers": chans, "pixel_size_nm": img_s.get("pixel_size_nm")}
    im = read_images([str(path)], camera=cam, **kw)
    dtype = np.dtype(read_images([str(path)], **kw).dtype)  # as stored (TIFF, ND2, CZI, LIF), before the photons
    with _OPEN_LOCK:
        _OPENED[key] = (im, dtype)
        while len(_OPENED) > _OPENED_MAX:
            _OPENED.pop(next(iter(_OPENED)))
    return im, dtype


def read_field(path, img_s):
    """One field as an in-memory ``xarray.DataArray`` (fov=1, channel, y, x) in photons; ``path`` is a file of one
    field or a :class:`~evflow.pipeline.image_inputs.FieldPath` (one field of a multi-field file)."""
    im, _dtype = _opened(path, img_s)
    k = getattr(path, "field", None)  # a FieldPath: one field of a multi-field file (only its pages are read)
    if k is not None:
        if not 0 <= k < im.sizes["fov"]:
            raise ImageError(f"{path}: holds {im.sizes['fov']} fields, field {k} was asked for (the file changed?)")
        im = im.isel(fov=slice(k, k + 1)).assign_coords(fov=[0])
    elif im.sizes["fov"] != 1:
        raise ImageError(f"{path}: holds {im.sizes['fov']} fields; the experiment expects one field per file")
    return im.load()


def field_array(photons, img_s, *, where="field"):
    """A (channel, y, x) photon array as the one-field ``xarray.DataArray`` that :func:`read_field` returns."""
    import xarray as xr

    ph = np.asarray(photons)
    chans = list(img_s["channels"])
    if ph.ndim != 3 or ph.shape[0] != len(chans):
        raise ImageError(f"{where}: field must be (channel, y, x) with {len(chans)} channels {chans}, "
                         f"got shape {ph.shape}")
    px = img_s.get("pixel_size_nm")
    return xr.DataArray(ph[None], dims=("fov", "channel", "y", "x"),
                        coords={"fov": [0], "channel": chans, "file": ("fov", [str(where)])},
                        attrs={"pixel_size_nm": None if px is None else float(px), "units": "photons",
                               "camera": camera_of(img_s).to_dict(), "failed": []})


def _detect_kwargs(img_s, backend):
    def _value(v):  # one value, or a table marker -> value (phenotype_field takes it per channel)
        return {str(m): float(x) for m, x in v.items()} if isinstance(v, dict) else float(v)

    kw = {"false_positives": _value(img_s.get("false_positives", 0.1)), "exclude_border_px": 2}
    if img_s.get("detection_threshold_photons") is not None:
        kw["threshold"] = _value(img_s["detection_threshold_photons"])
    if backend == "cupy":
        kw["backend"] = "cupy"
    for key, kwarg in (("hot_pixels", "hot_pixels"), ("noise_model", "noise"), ("threshold_rule", "threshold_rule")):
        if img_s.get(key) is not None:
            kw[kwarg] = img_s[key]
    if kw.get("noise") == "photon":  # the fields are photons already; photon statistics need the camera's noise
        kw["camera"] = camera_of(img_s).in_photons()
    br = img_s.get("background_radius_px")
    if br is not None:
        kw["background_radius_px"] = None if br == "none" else br
    return kw


def _saturation_photons(path, img_s):
    """Saturation level in photons: ``saturation_adu`` or the TIFF's integer dtype maximum (None for floats)."""
    dt = _opened(path, img_s)[1] if img_s.get("saturation_adu") is None else None
    return saturation_photons(img_s, dt)


def saturation_photons(img_s, dtype=None):
    """Saturation level in photons of raw fields of ``dtype``: ``saturation_adu`` or the integer dtype's
    maximum (None for floats or no dtype)."""
    level = img_s.get("saturation_adu")
    if level is None:
        dt = None if dtype is None else np.dtype(dtype)
        if dt is None or dt.kind not in "ui":
            return None
        level = np.iinfo(dt).max
    return float(camera_of(img_s).to_photons(np.array([float(level)]))[0])


def detection_provenance(img_s, backend) -> dict:
    """Every parameter :func:`~evflow.imaging.detect.detect_spots` runs with in the pipeline, with where its
    value came from: ``{name: {"value": ..., "source": "experiment file" | "pipeline" | "default"}}``, plus
    the camera model, pixel size, flat field, matching radius and chance correction of the ``[imaging]``
    settings.  The saturation level is per file (``saturation_adu``, else the TIFF's integer maximum)."""
    import inspect

    from ..imaging.detect import detect_spots

    given = _detect_kwargs(img_s, backend)
    given.pop("backend", None)
    from_file = {"detection_threshold_photons": "threshold", "false_positives": "false_positives",
                 "hot_pixels": "hot_pixels", "noise_model": "noise", "threshold_rule": "threshold_rule",
                 "background_radius_px": "background_radius_px", "psf_sigma_px": "psf_sigma_px"}
    set_in_file = {kw for key, kw in from_file.items() if img_s.get(key) is not None}
    given["psf_sigma_px"] = float(img_s.get("psf_sigma_px", 1.3))
    out = {}
    skip = {"image", "backend", "camera", "flat", "impl", "saturation"}
    for name, par in inspect.signature(detect_spots).parameters.items():
        if name in skip:
            continue
        if name in given:
            out[name] = {"value": given[name], "source": "experiment file" if name in set_in_file else "pipeline"}
        else:
            out[name] = {"value": par.default, "source": "default"}
    sat = img_s.get("saturation_adu")
    out["saturation"] = {"value": f"{sat} ADU" if sat is not None else "the TIFF's integer maximum",
                         "source": "experiment file" if sat is not None else "pipeline"}
    out["camera"] = {"value": camera_of(img_s).to_dict(), "source": "experiment file"}
    for key, fallback in (("pixel_size_nm", None), ("flat_field", None), ("match_radius_px", 1.5),
                          ("chance_correction", False)):
        v = img_s.get(key)
        out[key] = {"value": fallback if v is None else v, "source": "default" if v is None else "experiment file"}
    out["backend"] = {"value": backend, "source": "run"}
    return out


def _flats(img_s):
    """``flats=`` of :func:`~evflow.imaging.count.count_vesicles` from ``flat_field``."""
    ff = img_s.get("flat_field")
    if ff is None or ff == "estimate":
        return ff
    import tifffile

    return np.asarray(tifffile.imread(ff), np.float64)


def registration_from_beads(path, img_s) -> dict:
    """Channel registration (as :meth:`ChannelRegistration.to_dict`) from a registration-bead field."""
    from ..imaging.register import register_channels

    im = read_field(path, img_s)
    reg = register_channels(im.isel(fov=0), markers=list(img_s["channels"]),
                            psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3)))
    return reg.to_dict()


def _registration(reg_dict, chans):
    from ..imaging.register import ChannelRegistration

    return ChannelRegistration.from_dict(reg_dict) if reg_dict else ChannelRegistration.identity(chans)


def _count(path, img_s, registration, thresholds, backend, sample):
    return _count_image(read_field(path, img_s), img_s, registration, thresholds, backend, sample,
                        saturation=_saturation_photons(path, img_s))


def _count_image(im, img_s, registration, thresholds, backend, sample, saturation=None):
    from ..imaging.count import count_vesicles

    chans = list(img_s["channels"])
    ds, spots = count_vesicles(im, markers=chans, sample=sample, registration=_registration(registration, chans),
                               thresholds=thresholds, psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3)),
                               merge_radius_px=float(img_s.get("match_radius_px", 1.5)),
                               detect_kwargs=dict(_detect_kwargs(img_s, backend),
                                                  saturation=saturation),
                               flats=_flats(img_s))
    if ds.attrs.get("failed_fields"):
        raise ImageError("; ".join(ds.attrs["failed_fields"]))
    return im, ds, spots


def control_spots(path, img_s, registration, backend="numpy") -> dict:
    """Photons per marker of the vesicles of one negative-control field (no thresholds)."""
    chans = list(img_s["channels"])
    _im, _ds, spots = _count(path, img_s, registration, None, backend, "control")
    return {"photons_marker": np.stack([spots[f"photons_{m}"].to_numpy(np.float64) for m in chans], axis=1)
            if len(spots) else np.zeros((0, len(chans)))}


def image_thresholds(img_s, control_items) -> tuple[dict | None, str]:
    """Per-marker photon thresholds from the ``[imaging.thresholds]`` rule (None: detection)."""
    import pandas as pd

    from ..flow.thresholds import experiment_rule
    from ..imaging.count import thresholds_from_control

    chans = list(img_s["channels"])
    t = img_s.get("thresholds", {})
    rule = t.get("rule", default("imaging.thresholds", "rule"))
    values = {m: float(v) for m, v in t.get("values", {}).items()}
    if rule == "detected":
        return None, "detected in the marker's channel"
    if rule == "fixed":
        return {m: values[m] for m in chans}, "fixed: " + ", ".join(f"{m} >= {values[m]:g} photons" for m in chans)
    trule = experiment_rule(t, "imaging.thresholds", default="detected", keywords=("detected", "fixed"))
    ph = np.vstack([it["photons_marker"] for it in control_items.values()]) if control_items else np.zeros((0, len(chans)))
    df = pd.DataFrame({f"photons_{m}": ph[:, c] for c, m in enumerate(chans)})
    from_control = [m for m in chans if m not in values]
    thr = thresholds_from_control(df, from_control, rule=trule) if from_control else {}
    thr.update(values)
    desc = (f"{trule.statistic_name} of photons over {len(ph)} vesicles of the {trule.control} chip "
            f"({', '.join(from_control)})")
    if values:
        desc += "; fixed: " + ", ".join(f"{m} >= {v:g} photons" for m, v in values.items())
    return {m: float(thr[m]) for m in chans}, desc


def control_item(path, *, img_s, registration, backend) -> dict:
    """Stored item of one control field: :func:`control_spots` and the file's SHA-256."""
    from .store import file_sha256_once

    item = control_spots(path, img_s, registration, backend=backend)
    item["sha256"] = file_sha256_once(path)
    return item


def field_item(path, *, img_s, registration, thresholds, backend) -> dict:
    """Stored item of one image field: :func:`analyse_field` and the file's SHA-256."""
    from .store import file_sha256_once

    t0 = time.perf_counter()
    field = read_field(path, img_s)
    saturation = _saturation_photons(path, img_s)
    t_read = time.perf_counter() - t0
    item = analyse_photons(field, img_s, registration, thresholds=thresholds, backend=backend, saturation=saturation)
    t0 = time.perf_counter()
    item["sha256"] = file_sha256_once(path)  # once per file, not per field of a multi-field file
    item["stage_s"].update(read=t_read, hash=time.perf_counter() - t0)
    return item


def _thumbnail(ph, size=256):
    """RGB thumbnail (uint8) of a (channel, y, x) photon image, max-pooled to about ``size`` px."""
    ph = np.asarray(ph)
    ph = ph if ph.dtype in (np.float32, np.float64) else ph.astype(np.float64)
    step = max(1, int(np.ceil(max(ph.shape[1:]) / size)))
    if step > 1:  # max-pooled in the field's own float type (exact), then widened: 1/step^2 of the copy
        H, W = (ph.shape[1] // step) * step, (ph.shape[2] // step) * step
        ph = ph[:, :H, :W].reshape(ph.shape[0], H // step, step, W // step, step).max(axis=(2, 4))
    ph = ph.astype(np.float64)
    rgb = np.zeros(ph.shape[1:] + (3,), np.float64)
    from ..palette import channel_rgb

    for c in range(ph.shape[0]):
        lo, hi = np.percentile(ph[c], [50, 99.8])
        v = np.clip((ph[c] - lo) / max(hi - lo, 1e-9), 0, 1)
        rgb += v[..., None] * np.asarray(channel_rgb(c))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), step


def analyse_field(path, img_s, registration=None, thresholds=None, backend="numpy") -> dict:
    """Detect, register and phenotype the vesicles of one field.

    Parameters
    ----------
    path : TIFF file of one field (channel, y, x), in ADU
    img_s : dict
        The ``[imaging]`` settings.
    registration : dict, optional
        :meth:`ChannelRegistration.to_dict` (default: identity).
    thresholds : dict marker -> photons, optional
        Positivity thresholds (default: detected in the channel).

    Returns
    -------
    dict with ``counts`` (vesicles per bitmask, int64), ``n_spots`` (detections
    per channel), the per-vesicle arrays of :data:`SPOT_ARRAYS` (``y``, ``x``
    in reference px; ``photons`` and ``sigma`` (px) fitted in the vesicle's
    brightest channel; ``photons_marker`` etc. (n, k)), a thumbnail, the
    field shape, ``qc`` (the metrics of :func:`evflow.imaging.field_qc.field_metrics`,
    per channel), ``stage_um`` (the field's stage x, y from OME metadata, or NaN) and ``stage_s`` (seconds per
    step: ``detect``, ``register`` (positions between channels), ``colocalise`` (merge, photons per marker,
    phenotype), ``check`` (field checks, flats), ``refit`` (width in the brightest channel), ``qc`` (metrics and
    thumbnail); :func:`field_item` adds ``read`` and ``hash``).
    """
    return analyse_photons(read_field(path, img_s), img_s, registration, thresholds=thresholds, backend=backend,
                           saturation=_saturation_photons(path, img_s))


def analyse_photons(field, img_s, registration=None, thresholds=None, backend="numpy", saturation=None) -> dict:
    """:func:`analyse_field` of a field already in memory: the computation of the pipeline's field stage.

    ``field`` is the one-field DataArray of :func:`read_field` or a (channel, y, x)
    array in photons (see :func:`field_array`); the napari plugin calls this too.
    ``saturation``: the saturation level in photons (:func:`saturation_photons` of the raw dtype).
    """
    from ..imaging.localize import AT_BOUND, fit_spots

    chans = list(img_s["channels"])
    im = field if hasattr(field, "dims") else field_array(field, img_s)
    t0 = time.perf_counter()
    im, ds, spots = _count_image(im, img_s, registration, thresholds, backend, "field", saturation=saturation)
    t_count = time.perf_counter() - t0
    steps = {k: float(v) for k, v in (ds.attrs.get("seconds") or {}).items()}
    t0 = time.perf_counter()
    ph = np.asarray(im.values[0])
    n, k = len(spots), len(chans)
    pm = np.stack([spots[f"photons_{m}"].to_numpy(np.float64) for m in chans], axis=1) if n else np.zeros((0, k))
    bm = np.stack([spots[f"background_{m}"].to_numpy(np.float64) for m in chans], axis=1) if n else np.zeros((0, k))
    dm = np.stack([spots[f"detected_{m}"].to_numpy(bool) for m in chans], axis=1) if n else np.zeros((0, k), bool)
    yx = spots[["y", "x"]].to_numpy(np.float64) if n else np.zeros((0, 2))
    photons = np.full(n, np.nan)
    sigma = np.full(n, np.nan)
    if n:
        # width and brightness of each vesicle, fitted in its brightest channel
        reg = _registration(registration, chans)
        best = np.argmax(np.nan_to_num(pm, nan=-np.inf), axis=1)
        H, W = ph.shape[1:]
        for c, m in enumerate(chans):
            sel = np.flatnonzero(best == c)
            if not len(sel):
                continue
            pos = reg.to_channel(m, yx[sel])
            yc = np.clip(np.rint(pos[:, 0]), 0, H - 1).astype(np.int64)
            xc = np.clip(np.rint(pos[:, 1]), 0, W - 1).astype(np.int64)
            fit = fit_spots(ph[c], yc, xc, psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3)))
            placed = fit["fit_status"].to_numpy() != AT_BOUND  # a fit on a bound measured nothing: NaN
            photons[sel] = np.where(placed, fit["photons"].to_numpy(), np.nan)
            sigma[sel] = np.where(placed, fit["sigma"].to_numpy(), np.nan)
    t_refit = time.perf_counter() - t0
    t0 = time.perf_counter()
    thumb, step = _thumbnail(ph)
    from ..imaging.field_qc import field_metrics

    det = (ds.attrs.get("detection") or [{}])[0]
    qc = field_metrics(ph, chans, det, saturation=saturation, psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3)),
                       pixel_size_nm=img_s.get("pixel_size_nm") or im.attrs.get("pixel_size_nm"),
                       camera=camera_of(img_s) if "camera_gain" in img_s else None)  # photon statistics: gain stated
    stage = [float(im.coords[f"stage_{a}_um"].values[0]) if f"stage_{a}_um" in im.coords else float("nan")
             for a in "xy"]
    steps.update(check=max(t_count - sum(steps.values()), 0.0), refit=t_refit, qc=time.perf_counter() - t0)
    return {"stage_s": steps, "qc": {k: [float(x) for x in v] for k, v in qc.items()}, "stage_um": stage,
            "counts": np.asarray(ds["count"].values[0, 0], np.int64),
            "n_spots": dm.sum(axis=0).astype(np.int64),
            "y": yx[:, 0], "x": yx[:, 1], "bitmask": spots["bitmask"].to_numpy(np.int64) if n else np.zeros(0, np.int64),
            "photons": photons, "sigma": sigma, "photons_marker": pm, "background_marker": bm, "detected_marker": dm,
            "thumbnail": thumb, "thumbnail_step": step, "shape": list(ph.shape[1:]),
            "thresholds": None if thresholds is None else [float(thresholds[m]) for m in chans]}


def spots_table(image_items, chans, sample_order=None):
    """Tidy per-vesicle table: ``sample``, ``fov``, ``y``, ``x`` (reference px), ``photons``, ``sigma`` (px),
    ``phenotype``, ``bitmask``, then ``photons_<m>``, ``background_<m>``, ``detected_<m>`` per marker."""
    import pandas as pd

    from ..schema import phenotype_labels

    labels = np.asarray(phenotype_labels(chans), dtype=object)
    keys = sorted(image_items, key=lambda k: ((sample_order or []).index(k[0]) if k[0] in (sample_order or []) else 1 << 30,
                                              k[0], k[1]))
    parts = []
    for s, f in keys:
        it = image_items[(s, f)]
        n = len(np.asarray(it["y"]))
        d = {"sample": np.full(n, s, dtype=object), "fov": np.full(n, int(f), np.int64),
             "y": np.asarray(it["y"], np.float64), "x": np.asarray(it["x"], np.float64),
             "photons": np.asarray(it["photons"], np.float64), "sigma": np.asarray(it["sigma"], np.float64),
             "phenotype": labels[np.asarray(it["bitmask"], np.int64)], "bitmask": np.asarray(it["bitmask"], np.int64)}
        pm = np.asarray(it["photons_marker"], np.float64).reshape(n, len(chans))
        bm = np.asarray(it["background_marker"], np.float64).reshape(n, len(chans))
        dm = np.asarray(it["detected_marker"], bool).reshape(n, len(chans))
        for c, m in enumerate(chans):
            d[f"photons_{m}"] = pm[:, c]
            d[f"background_{m}"] = bm[:, c]
            d[f"detected_{m}"] = dm[:, c]
        parts.append(pd.DataFrame(d))
    if not parts:
        cols = ["sample", "fov", "y", "x", "photons", "sigma", "phenotype", "bitmask"]
        cols += [f"{p}_{m}" for m in chans for p in ("photons", "background", "detected")]
        return pd.DataFrame({c: [] for c in cols})
    return pd.concat(parts, ignore_index=True)
