"""Detection limits: the dimmest MESF and the smallest diameter resolved above the buffer noise.

Criterion (stated in every result): the ``percentile`` (default 99.5) of a
control without particles of interest -- the buffer (or, without one, the
unstained sample) -- in a channel is the noise level of that channel; an event
must be brighter than it to be told from the noise.  That level converted by
the calibration is the detection limit: through the MESF standard curve for a
fluorescence channel (:meth:`MESFCalibration.to_mesf`), through the Mie
scatter calibration for a scatter channel
(:meth:`ScatterCalibration.to_diameter`, for the calibration's particle
model, e.g. an EV).  FCMPASS reports its limits of detection the same way,
in MESF and nm.  Without a calibration the limit stays in channel units.
A noise level below the scatter calibration's unique range gives the
smallest diameter of that range, marked as an upper bound.
"""

from __future__ import annotations

import numpy as np

from ..errors import EvflowError

__all__ = ["noise_level", "fluorescence_limit", "scatter_limit", "CRITERION"]

CRITERION = "{p:g}th percentile of the {role} control's events, converted by the calibration"


def noise_level(values, percentile: float = 99.5) -> float:
    """The ``percentile`` of the finite values of one channel of a particle-free control (channel units)."""
    if not 0 < percentile < 100:
        raise EvflowError(f"percentile must be in (0, 100), got {percentile}")
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if v.size < 20:
        raise EvflowError(f"a detection limit needs at least 20 control events, got {v.size}")
    return float(np.percentile(v, percentile))


def fluorescence_limit(level: float, cal=None, *, m=None, b=None) -> float:
    """The noise ``level`` (channel units) in calibrated units: ``cal.to_mesf`` or ``exp(b) * level**m``; NaN without."""
    if cal is not None:
        return float(np.asarray(cal.to_mesf(np.array([level], float)))[0])
    if m is not None and b is not None:
        return float(np.sign(level) * np.exp(b) * abs(level) ** m)
    return float("nan")


def scatter_limit(level: float, size_cal) -> dict:
    """``{"diameter_nm", "bound"}``: diameter at the noise ``level``; ``bound`` "upper" when the level is
    below the calibration's unique range (the limit is at most its smallest diameter), "none" above it."""
    if size_cal is None:
        return {"diameter_nm": float("nan"), "bound": "no size calibration"}
    lo, hi = size_cal.unique_scatter_range
    if level < lo:
        return {"diameter_nm": float(size_cal.unique_range_nm[0]), "bound": "upper"}
    if level > hi:
        return {"diameter_nm": float("nan"), "bound": "above the unique range"}
    return {"diameter_nm": float(np.asarray(size_cal.to_diameter(np.array([level], float)))[0]), "bound": "exact"}
