"""Tiled spot detection: the field's numbers from passes over the tile cores, then detection per tile.

Pass 0 collects the pixel samples of the fill value and of the pixel noise
(hot-pixel rule), pass 1 the filter-noise samples (field noise and its local
map), pass 2 the extrema of the adaptive threshold, pass 3 detects and fits;
every sample is taken on the global sub-grid of the core that holds it, so the
numbers (and spots) are those of the whole field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ImageError
from ._core import (
    DOG_RATIO,
    _as_array,
    _background_level,
    _detection_image,
    _extrema_region,
    _field_threshold,
    _finish_attrs,
    _measured,
    _min_distance,
    _noise_info,
    _noise_sample_scale,
    _photon_noise,
    _refine_threshold,
    _responses,
    _sigmas,
    _skew,
    _stride,
    _structured,
    auto_background_radius,
)
from ._field import _detect_region, _estimate_sigma
from .artefacts import MIN_NOISE_SHARE, _field_scalars, _noise_masks, _pass0, _prepare
from .dog import dog_reach

__all__ = ["detect_tiled"]


def detect_tiled(image, tile, kind, name, psf_sigma_px, o):
    from .localize import fit_window_size

    H, W = (int(v) for v in image.shape)
    if H < 8 or W < 8:
        raise ImageError(f"image of {(H, W)} px is too small for spot detection (at least 8x8)")
    stride = _stride(H * W)
    cores = [(y0, min(y0 + tile, H), x0, min(x0 + tile, W)) for y0 in range(0, H, tile) for x0 in range(0, W, tile)]

    def raw(y0, y1, x0, x1):
        return _as_array(image[y0:y1, x0:x1], kind, name)

    # pass 0: fill value and pixel noise
    fill, pnoise = _field_scalars(
        [_pass0(raw(*c), o["camera"], name, o["level"], (c[0], c[2]), stride) for c in cores], (H, W))
    hot_sigma = 1.0 if psf_sigma_px is None else float(_sigmas(psf_sigma_px).min())

    def prepared(e):
        return _prepare(raw(*e), o["camera"], name, o["level"], fill, pnoise, hot_sigma, o["hot_pixels"])

    if psf_sigma_px is None:  # estimated on the central tile
        cy, cx, h = H // 2, W // 2, tile // 2
        e = (max(cy - h, 0), min(cy + h, H), max(cx - h, 0), min(cx + h, W))
        psf_sigma_px = _estimate_sigma(prepared(e)[0], name, o["camera"], o["impl"], o)
    sig = _sigmas(psf_sigma_px)
    md = _min_distance(o["min_distance_px"], sig)
    win = int(o["window"]) if o["window"] is not None else max(fit_window_size(float(s)) for s in sig)
    from .background import background_halo
    from .noise import mask_radius

    halo = max(dog_reach(float(s)) for s in sig) + 2 * md + win // 2 + 1
    from .noise import background_radius

    halo += int(np.ceil(2 * DOG_RATIO * float(sig.max()))) + 2 * mask_radius(float(sig.max())) + 4
    halo += background_halo(background_radius(float(sig.min())))
    radius = o["background_radius_px"]
    if radius == "auto":
        radius = auto_background_radius(sig)
    if radius is not None:
        halo += background_halo(radius)

    def extent(c):
        return max(c[0] - halo, 0), min(c[1] + halo, H), max(c[2] - halo, 0), min(c[3] + halo, W)

    def local(c, e):
        return (c[0] - e[0], c[1] - e[0], c[2] - e[2], c[3] - e[2])

    def tile_data(c):
        e = extent(c)
        ph, sat, invalid, hot = prepared(e)
        resp = _responses(_detection_image(ph, o["background_radius_px"], name), sig, name)
        return e, ph, sat, invalid, hot, resp, _background_level(ph, sig, o, name)

    # pass 1: noise samples of every core (twice when 'auto' finds a structured field)
    o = dict(o)
    for auto in ([True, False] if o["background_radius_px"] == "auto" else [False]):
        o["background_radius_px"] = None if auto else radius
        samples, samples_wide, n_sat, n_hot, n_wide = [], [], 0, 0, 0
        for c in cores:
            e, ph, sat, invalid, hot, resp, bg = tile_data(c)
            lc = local(c, e)
            core = (slice(lc[0], lc[1]), slice(lc[2], lc[3]))
            narrow, wide = _noise_masks(sat, invalid, float(sig.min()))
            samples.append([_noise_sample_scale(r, s, name, (e[0], e[2]), stride, lc, narrow, bg)
                            for r, s in zip(resp, sig)])
            samples_wide.append(samples[-1] if wide is None else
                                [_noise_sample_scale(r, s, name, (e[0], e[2]), stride, lc, wide, bg)
                                 for r, s in zip(resp, sig)])
            kept = wide if wide is not None else narrow  # the whole field's choice of _valid_for_noise
            n_wide += int(kept[core].sum()) if kept is not None else (lc[1] - lc[0]) * (lc[3] - lc[2])
            n_sat += int(sat[core].sum())
            n_hot += int(hot[core].sum())
        if n_wide >= MIN_NOISE_SHARE * H * W:
            samples = samples_wide
        ninfo = measured = _noise_info(samples, sig, (H, W), _measured(o["noise"]), o["block"], pnoise)
        if auto and not _structured(ninfo):
            break
    if o["noise"] == "photon":  # as the whole field: measured for the subtraction, photon statistics for the noise
        ninfo = _photon_noise(sig, fill, o["camera"])
    # pass 2: extrema for the adaptive threshold
    parts = []
    if o["threshold"] is None and o["threshold_rule"] == "adaptive":
        for c in cores:
            e, ph, sat, invalid, hot, resp, bg = tile_data(c)
            parts.append(_extrema_region(resp, ninfo, sig, name, bg, local(c, e), o, origin=(e[0], e[2]),
                                         field_shape=(H, W)))
    o = dict(o, skew=_skew(sig, pnoise, fill, o))
    thr_snr = _field_threshold(parts, H * W, o, sig)
    # pass 3: detection and fits per tile, spots of the core only
    out_parts = []
    for c in cores:
        e, ph, sat, invalid, hot, resp, bg = tile_data(c)
        out_parts.append(_detect_region(ph, resp, sat, invalid, name, sig, ninfo, thr_snr, o,
                                          origin=(e[0], e[2]), field_shape=(H, W), core=local(c, e), bg=bg))
    wide_snr = sum((p.attrs.pop("_wide_snr") for p in out_parts), ())  # before concat compares the attrs
    attrs = dict(out_parts[0].attrs, _wide_snr=wide_snr)
    for key in ("n_rejected_narrow", "n_rejected_wide", "n_rejected_photons"):
        attrs[key] = int(sum(p.attrs.get(key, 0) for p in out_parts))
    nonempty = [p for p in out_parts if len(p)]
    out = pd.concat(nonempty or out_parts[:1], ignore_index=True)
    out = out.sort_values(["y_peak", "x_peak"], kind="stable").reset_index(drop=True)  # row-major, as a whole field
    out.attrs.update(attrs)
    out = _refine_threshold(out, parts, thr_snr, H * W, o, sig)
    _finish_attrs(out, None, None, H * W, n_sat=n_sat, n_hot=n_hot, ninfo=measured, sig=sig, fill=fill,
                  camera=o["camera"])
    out.attrs.update({"tile": tile, "halo": halo, "n_tiles": len(cores)})
    return out
