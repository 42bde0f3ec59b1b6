"""Detection in one in-memory region (a field or a tile with its halo): maxima, fits, flags, shape test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..backend import to_device, to_host_all
from ..errors import ImageError
from ._core import (
    NOISE_BLOCK_PX,
    _min_distance,
    _noise_info,
    _noise_sample_scale,
    _responses,
    _sigmas,
    _snr,
    _stride,
    auto_threshold_factor,
    local_maxima,
)
from .artefacts import _near


def _empty_fit():
    from .localize import FIT_COLUMNS

    cols = {c: np.empty(0, np.float64) for c in FIT_COLUMNS}
    cols["iterations"] = np.empty(0, np.int32)
    cols["fit_status"] = np.empty(0, np.int8)
    df = pd.DataFrame(cols)
    df["sigma_fixed"] = np.empty(0, bool)
    return df


def _detect_region(photons, responses, sat, invalid, name, sig, ninfo, thr_snr, o, *, origin=(0, 0),
                   field_shape=None, core=None, unfixed=False, bg=None):
    """Maxima above the threshold in one in-memory region, fitted and flagged.

    ``responses``: the detection filter per scale of this region; ``ninfo``
    the field's noise per scale; ``thr_snr`` the threshold in noise sigmas
    (nan: the manual ``o['threshold']`` in photons).  For a tile: ``origin``
    is the global (y, x) of ``photons[0, 0]``, ``field_shape`` the whole
    field's shape, ``core`` (tile coordinates) the region whose spots are kept.
    """
    from .artefacts import flag_radius
    from .localize import fit_window_size

    md = _min_distance(o["min_distance_px"], sig)
    H, W = field_shape
    oy, ox = int(origin[0]), int(origin[1])
    h, w = photons.shape
    snr, response, scale_idx = _snr(responses, ninfo, name, bg, origin, o["block"], sig=sig, field_shape=(H, W))
    if o["threshold"] is None:
        yy, xx, _ = local_maxima(snr, thr_snr, md, backend=name)
        thr_photons = float(thr_snr * ninfo[0][0]) if len(sig) == 1 else float("nan")
    else:
        yy, xx, _ = local_maxima(response, float(o["threshold"]), md, backend=name)
        thr_photons = float(o["threshold"])
    if core is not None:
        ok = (yy >= core[0]) & (yy < core[1]) & (xx >= core[2]) & (xx < core[3])
        yy, xx = yy[ok], xx[ok]
    if o["exclude_border_px"] > 0:
        b = int(o["exclude_border_px"])
        gy, gx = yy + oy, xx + ox
        ok = (gy >= b) & (gy < H - b) & (gx >= b) & (gx < W - b)
        yy, xx = yy[ok], xx[ok]
    n = len(yy)
    resp, sn, sidx = np.empty(0), np.empty(0), np.zeros(n, np.int64)
    if n:  # one crossing: response, SNR and scale of the candidates, gathered on the device and stacked
        from ..backend import array_module

        xp = array_module(response)
        iy, ix = (a if array_module(a) is xp else to_device(a, name, what="candidates") for a in (yy, xx))
        cols = [response[iy, ix], snr[iy, ix]] + ([scale_idx[iy, ix]] if scale_idx is not None else [])
        got = to_host_all(cols, what="candidate values")
        resp, sn = got[0], got[1]
        if scale_idx is not None:
            sidx = got[2].astype(np.int64)
    win = int(o["window"]) if o["window"] is not None else max(fit_window_size(float(s)) for s in sig)
    fit_ok = o["fit"] and min(h, w) >= win
    if o["fit"] and n and fit_ok:
        parts = []
        for s_i in np.unique(sidx):
            sel = np.flatnonzero(sidx == s_i)
            df = _fit_with_fallback(
                photons, yy[sel], xx[sel], float(sig[s_i]), o["window"], o["method"], o["fit_sigma"],
                o["camera"].readout_var_photons if o["camera"] is not None else 0.0, name, o["impl"],
                origin=(oy, ox),
            )
            df.index = sel
            parts.append(df)
        out = pd.concat(parts).sort_index()
    elif o["fit"] and fit_ok:
        out = _empty_fit()
    else:
        out = pd.DataFrame({"y": (yy + oy).astype(np.float64), "x": (xx + ox).astype(np.float64)})
    out["response"] = resp
    out["snr"] = sn
    out["scale_sigma"] = sig[sidx] if n else np.empty(0)
    out["y_peak"] = (yy + oy).astype(np.int64)
    out["x_peak"] = (xx + ox).astype(np.int64)
    fr = flag_radius(float(sig.min()))
    out["saturated"] = _near(sat, yy, xx, fr) | _near_wide_saturation(sat, yy, xx, fr, o["background_radius_px"])
    out["masked"] = _near(invalid, yy, xx, fr)
    hw = win // 2
    gy, gx = yy + oy, xx + ox
    out["border"] = (gy < hw) | (gy >= H - hw) | (gx < hw) | (gx >= W - hw)
    out = out.reset_index(drop=True)
    n_narrow = n_wide = n_excess = 0
    wide_snr = ()
    if not unfixed and o["fit"] and len(out):
        from ._core import PHOTON_EXCESS, PHOTON_EXCESS_CRLB, WIDE_FOR_THRESHOLD

        none = np.zeros(len(out), bool)
        # the photon test: far more photons in the fit than the filter's response of a PSF spot (a slope, a
        # structure); fits on a bound have NaN photons and are left alone
        excess = (out["photons"].to_numpy() - PHOTON_EXCESS * out["response"].to_numpy()
                  > PHOTON_EXCESS_CRLB * out["crlb_photons"].to_numpy()) if o["max_sigma_ratio"] else none
        narrow = wide = wide_fit = none
        if o["fit_sigma"]:
            ps, fs = out["scale_sigma"].to_numpy(), out["sigma"].to_numpy()
            crlb = np.nan_to_num(out["crlb_sigma"].to_numpy(), nan=np.inf)
            wide_fit = fs - 0.5 * crlb > WIDE_FOR_THRESHOLD * ps
            cr = 2.0 * crlb
            conv = out["fit_status"].to_numpy() == 0
            narrow = conv & (fs + cr < o["min_sigma_ratio"] * ps)
            wide = conv & (fs - 0.5 * cr > o["max_sigma_ratio"] * ps) if o["max_sigma_ratio"] else none
        wide_snr = tuple(float(v) for v in out["snr"].to_numpy()[wide_fit | excess])
        excess = excess & ~(narrow | wide)
        n_narrow, n_wide, n_excess = int(narrow.sum()), int(wide.sum()), int(excess.sum())
        if n_narrow or n_wide or n_excess:
            out = out[~(narrow | wide | excess)].reset_index(drop=True)
    out.attrs.update(
        {
            "noise": [float(v[0]) for v in ninfo],
            "noise_model": [list(v[1][:2]) if v[1] is not None else None for v in ninfo],
            "noise_excess_blocks": [len(v[1][2]) if v[1] is not None else 0 for v in ninfo],
            "threshold": thr_photons,
            "threshold_snr": float(thr_snr),
            "threshold_rule": "manual" if o["threshold"] is not None else o["threshold_rule"],
            "psf_sigma_px": [float(v) for v in sig],
            "min_distance_px": md,
            "shape": (int(H), int(W)),
            "n_rejected_narrow": n_narrow,
            "n_rejected_wide": n_wide,
            "n_rejected_photons": n_excess,
            "background_radius_px": o["background_radius_px"],
            "psf_sigma_source": o.get("psf_sigma_source", "given"),
            "psf_sigma_estimate": o.get("psf_sigma_estimate"),
            "_wide_snr": wide_snr,  # SNRs of the maxima fitted wide, taken out by _core._refine_threshold
        }
    )
    return out


def _near_wide_saturation(sat, yy, xx, fr, radius):
    """Maxima whose background map took in a saturated structure: with a background subtraction of ``radius``
    (None: none), a saturated region that holds the whole ``2 radius + 1`` px element survives the map's
    opening, and its box mean carries the plateau's edge out: the DoG of the subtracted image rings there
    (a ridge of false spots ~8 px off a saturated block at radius 5).  Flagged within
    :func:`~evflow.imaging.background.background_halo` (the reach of the map) + ``fr`` px of such a region;
    narrower saturated regions the opening removes, so they leave the map alone."""
    if radius is None or not len(yy) or not sat.any():
        return np.zeros(len(yy), bool)
    import scipy.ndimage as sndi

    from .background import background_halo

    size = 2 * int(radius) + 1
    wide = sndi.binary_opening(sat, structure=np.ones((size, size), bool))
    return _near(wide, yy, xx, fr + background_halo(int(radius)))


#: a free-sigma fit is redone with the PSF sigma fixed when its sigma leaves
#: this relative range or its position moves more than MAX_SHIFT_PX from the maximum
SIGMA_RANGE = (0.7, 1.4)
MAX_SHIFT_PX = 1.0


def _fit_with_fallback(photons, yy, xx, sigma, window, method, fit_sigma, readout_var, name, impl,
                       origin=(0, 0)):
    """Fit; spots pulled by a neighbour (sigma out of range, large shift, no convergence) are refitted
    with sigma fixed (column ``sigma_fixed``): their position and photons come from the refit, their
    ``sigma`` (and ``crlb_sigma``) stay the free fit's, so a spot too narrow or too wide for the PSF
    still shows it.  Output positions are ``origin`` + image px."""
    from .localize import fit_spots

    kw = dict(psf_sigma_px=sigma, window=window, method=method, readout_var=readout_var, backend=name,
              impl=impl, origin=origin)
    df = fit_spots(photons, yy, xx, fit_sigma=fit_sigma, **kw)
    df["sigma_fixed"] = not fit_sigma
    if fit_sigma and len(df):
        rel = df["sigma"].to_numpy() / sigma
        shift = np.hypot(df["y"].to_numpy() - (yy + origin[0]), df["x"].to_numpy() - (xx + origin[1]))
        bad = (rel < SIGMA_RANGE[0]) | (rel > SIGMA_RANGE[1]) | (shift > MAX_SHIFT_PX) | (df["fit_status"].to_numpy() != 0)
        if bad.any():
            idx = np.flatnonzero(bad)
            re = fit_spots(photons, yy[idx], xx[idx], fit_sigma=False, **kw)
            re["sigma_fixed"] = True
            keep_cols = [c for c in re.columns if c not in ("sigma", "crlb_sigma", "fit_status")]
            re.index = df.index[idx]
            df.loc[df.index[idx], keep_cols] = re[keep_cols]
            # a failed free fit takes the refit's status, and so does any refit that ended on a bound (the
            # position and photons are the refit's)
            from .localize import AT_BOUND

            failed = (df.loc[df.index[idx], "fit_status"].to_numpy() != 0) | (re["fit_status"].to_numpy() == AT_BOUND)
            df.loc[df.index[idx[failed]], "fit_status"] = re["fit_status"].to_numpy()[failed]
    return _unlocalised(df, yy, xx, origin)


def _unlocalised(df, yy, xx, origin):
    """Spots whose final fit ended on a bound (``fit_status`` AT_BOUND: the window held nothing the model
    could place) keep the detection at its maximum: ``y``, ``x`` are the integer maximum, and the fitted
    photons, background, their CRLBs and ``llr`` are NaN (the bound's values would read as measurements)."""
    from .localize import AT_BOUND

    bad = df["fit_status"].to_numpy() == AT_BOUND
    if bad.any():
        rows = df.index[bad]
        df.loc[rows, "y"] = (np.asarray(yy)[bad] + origin[0]).astype(np.float64)
        df.loc[rows, "x"] = (np.asarray(xx)[bad] + origin[1]).astype(np.float64)
        cols = ["photons", "background", "crlb_y", "crlb_x", "crlb_photons", "crlb_background", "llr"]
        df.loc[rows, cols] = np.nan
    return df


#: a PSF-width estimate at or above this (px) is not trusted: the fit windows took in structure wider
#: than a diffraction-limited spot (cells, nuclei, clustered spots); the default sigma is used instead
SIGMA_SUSPECT_PX = 3.0
#: PSF sigma (px) when the field cannot tell (fewer than 5 fits, or an estimate >= SIGMA_SUSPECT_PX)
DEFAULT_SIGMA_PX = 1.5


def _estimate_sigma(photons, name, camera, impl, o=None):
    """PSF sigma from the field: median fitted sigma of the 200 brightest spots (start 1.5 px).

    :data:`DEFAULT_SIGMA_PX` when fewer than 5 fits converge or the median
    is at least :data:`SIGMA_SUSPECT_PX`.  With ``o`` (the detection
    options), ``o['psf_sigma_source']`` says which ('estimated', 'default:
    too few spots', 'default: estimate too wide') and ``o['psf_sigma_estimate']``
    holds the median fitted sigma (None without one); both go to the result's attrs."""
    val, source, raw = _estimate_sigma_info(photons, name, camera, impl)
    if o is not None:
        o["psf_sigma_source"], o["psf_sigma_estimate"] = source, raw
    return val


def _estimate_sigma_info(photons, name, camera, impl):
    H, W = photons.shape
    o = dict(threshold=None, camera=camera, false_positives=0.1, min_distance_px=3, exclude_border_px=3, fit=True,
             method="mle", fit_sigma=True, window=11 if min(H, W) >= 11 else None, impl=impl,
             background_radius_px=None, noise="global", block=NOISE_BLOCK_PX, threshold_rule="false_positives",
             level=None, hot_pixels="keep", min_sigma_ratio=0.0, max_sigma_ratio=None)
    few = (DEFAULT_SIGMA_PX, "default: too few spots", None)
    sig = _sigmas(DEFAULT_SIGMA_PX)
    resp = _responses(photons, sig, name)
    samples = [[_noise_sample_scale(resp[0], DEFAULT_SIGMA_PX, name, (0, 0), _stride(H * W), None, None)]]
    try:
        ninfo = _noise_info(samples, sig, (H, W), "global", NOISE_BLOCK_PX)
    except ImageError:
        return few
    none = np.zeros(photons.shape, bool)
    sp = _detect_region(photons, resp, none, none, name, sig, ninfo, auto_threshold_factor(H * W, 0.1), o,
                        origin=(0, 0), field_shape=(H, W), unfixed=True)
    if "fit_status" not in sp:
        return few
    good = sp[(sp["fit_status"] == 0) & np.isfinite(sp["sigma"])]
    if len(good) < 5:
        return few
    good = good.nlargest(200, "snr")
    raw = float(np.median(good["sigma"]))
    if raw >= SIGMA_SUSPECT_PX:
        return DEFAULT_SIGMA_PX, "default: estimate too wide", raw
    return float(max(raw, 0.5)), "estimated", raw
