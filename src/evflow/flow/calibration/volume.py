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
        If none of these is available, or (without ``flow_rate_ul_per_min``) ``$VOL``
        is there but is 0 or not a number.
    """
    if volume_ul is not None:
        v = float(volume_ul)
        if not v > 0:
            raise CalibrationError(f"volume_ul must be > 0, got {volume_ul}")
        return {"volume_ul": v, "method": "user"}
    from ...errors import FCSError

    src = getattr(sample, "path", "sample")
    if flow_rate_ul_per_min is None and hasattr(sample, "volume_nl"):
        try:
            vol_nl = sample.volume_nl()  # None: no $VOL; raises: $VOL is 0 or not a number
        except FCSError as exc:
            raise CalibrationError(str(exc)) from None
        if vol_nl is not None:
            return {"volume_ul": vol_nl / 1000.0, "method": "$VOL", "$VOL_nl": vol_nl}
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
    """The sample's acquisition time (time channel span, else $ETIM - $BTIM), or CalibrationError."""
    src = getattr(sample, "path", "sample")
    got = sample.acquisition_seconds(time_channel) if hasattr(sample, "acquisition_seconds") else None
    if got is None:
        raise CalibrationError(f"{src}: no usable Time channel or $BTIM/$ETIM to measure the acquisition time")
    return got


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
