"""Concentration: the analysed volume of a sample and particles per mL."""

from __future__ import annotations

import numpy as np

from ...errors import CalibrationError

__all__ = ["analysed_volume_ul", "concentration_per_ml"]


# --------------------------------------------------------------------------- concentration


def analysed_volume_ul(sample=None, *, volume_ul=None, flow_rate_ul_per_min=None, time_channel=None) -> dict:
    """Volume of sample the events came from, in microlitres, and how it was obtained.

    In order of preference: ``volume_ul`` given by the user; the ``$VOL``
    keyword (nanolitres, FCS 3.1); ``flow_rate_ul_per_min`` times the
    acquisition time from the Time channel (span of its values, scaled by
    ``$TIMESTEP`` seconds) or, without a Time channel, ``$BTIM``/``$ETIM``.

    Returns
    -------
    dict with ``volume_ul``, ``method`` and the numbers behind it.

    Raises
    ------
    CalibrationError
        If none of these is available.
    """
    if volume_ul is not None:
        v = float(volume_ul)
        if not v > 0:
            raise CalibrationError(f"volume_ul must be > 0, got {volume_ul}")
        return {"volume_ul": v, "method": "user"}
    meta = getattr(sample, "meta", {}) or {}
    src = getattr(sample, "path", "sample")
    vol = str(meta.get("$VOL", "") or "").strip()
    if vol and flow_rate_ul_per_min is None:
        try:
            v = float(vol) / 1000.0
        except ValueError:
            raise CalibrationError(f"{src}: $VOL is {vol!r}, expected a number of nanolitres") from None
        if v > 0:
            return {"volume_ul": v, "method": "$VOL", "$VOL_nl": float(vol)}
    if flow_rate_ul_per_min is not None:
        rate = float(flow_rate_ul_per_min)
        if not rate > 0:
            raise CalibrationError(f"flow_rate_ul_per_min must be > 0, got {flow_rate_ul_per_min}")
        seconds, how = _acquisition_seconds(sample, time_channel)
        return {
            "volume_ul": rate * seconds / 60.0,
            "method": f"flow rate x acquisition time ({how})",
            "flow_rate_ul_per_min": rate,
            "acquisition_s": seconds,
        }
    raise CalibrationError(
        f"{src}: cannot tell the analysed volume: no $VOL keyword; give volume_ul= or flow_rate_ul_per_min= "
        "(with a Time channel or $BTIM/$ETIM)"
    )


def _acquisition_seconds(sample, time_channel=None):
    from ...backend import to_numpy

    meta = getattr(sample, "meta", {}) or {}
    src = getattr(sample, "path", "sample")
    name = time_channel or getattr(sample, "time_channel", None)
    if name is not None and hasattr(sample, "channel_index"):
        i = sample.channel_index(name)
        # linear_events applies $TIMESTEP to the time channel (FCSSample); other samples are taken as is
        events = sample.linear_events() if hasattr(sample, "linear_events") else sample.events
        t = to_numpy(events[:, i]).astype(float)
        if t.size > 1 and np.nanmax(t) > np.nanmin(t):
            return float(np.nanmax(t) - np.nanmin(t)), f"Time channel {name!r}"
    bt, et = str(meta.get("$BTIM", "") or ""), str(meta.get("$ETIM", "") or "")
    if bt and et:
        def secs(s):
            parts = s.strip().replace(".", ":").split(":")
            h, m, sec = (float(x) for x in parts[:3])
            frac = float("0." + parts[3]) if len(parts) > 3 and parts[3] else 0.0
            return h * 3600 + m * 60 + sec + frac

        try:
            dt = secs(et) - secs(bt)
        except ValueError:
            dt = -1
        if dt < 0:
            dt += 86400
        if dt > 0:
            return dt, "$BTIM/$ETIM"
    raise CalibrationError(f"{src}: no usable Time channel or $BTIM/$ETIM to measure the acquisition time")


def concentration_per_ml(n_events, volume_ul, dilution_factor: float = 1.0):
    """Particles per mL of the original sample: ``n_events / volume * dilution_factor``.

    Parameters
    ----------
    n_events : int or array
        Events counted (after gating / background subtraction).
    volume_ul : float
        Analysed volume (microlitres).
    dilution_factor : float
        How many times the sample was diluted before acquisition (>= 1).
    """
    v = float(volume_ul)
    f = float(dilution_factor)
    if not v > 0:
        raise CalibrationError(f"analysed volume must be > 0 uL, got {volume_ul}")
    if not f > 0:
        raise CalibrationError(f"dilution factor must be > 0, got {dilution_factor}")
    return np.asarray(n_events, float) / (v * 1e-3) * f
