"""The MESF standard curve: ``m*log(x) + b = log(mesf_auto + mesf)``, fitted as FlowCal does."""

from __future__ import annotations

import numpy as np

from ...errors import CalibrationError

__all__ = ["fit_mesf_curve"]


def fit_mesf_curve(channel_values, mesf_values):
    """Fit ``m*log(x) + b = log(mesf_auto + mesf)`` to bead peaks (natural logs, mesf_auto >= 0).

    Least squares in log space, started where FlowCal's
    ``fit_beads_autofluorescence`` starts (slope and intercept through the two
    brightest peaks, autofluorescence from the dimmest) and refined by a
    bounded quasi-Newton search (L-BFGS-B), as FlowCal does.  (The objective
    also decreases towards ``mesf_auto -> inf`` with a flat slope, so the
    local minimum near the start is the physical one.)

    Parameters
    ----------
    channel_values : array (n_peaks,)
        Peak positions on the channel's linear scale (> 0).
    mesf_values : array (n_peaks,)
        Manufacturer's values (>= 0).

    Returns
    -------
    dict with ``m``, ``b``, ``mesf_auto``, ``residuals`` (natural-log units,
    per peak), ``r2`` (log space).
    """
    from scipy.optimize import minimize

    x = np.asarray(channel_values, float)
    y = np.asarray(mesf_values, float)
    if x.shape != y.shape or x.ndim != 1:
        raise CalibrationError(f"peak values {x.shape} and MESF values {y.shape} must be equal 1-D arrays")
    if x.size < 3:
        raise CalibrationError(f"the standard curve needs at least 3 usable bead peaks, got {x.size}")
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        raise CalibrationError(f"bead peak positions must be finite and > 0, got {x.tolist()}")
    if np.any(~np.isfinite(y)) or np.any(y < 0):
        raise CalibrationError(f"MESF values must be finite and >= 0, got {y.tolist()}")
    lx = np.log(x)
    if lx[-1] == lx[-2]:
        raise CalibrationError(f"the two brightest bead peaks have the same position {x[-1]:g}; cannot fit")
    p0 = np.zeros(3)
    p0[0] = (np.log(y[-1]) - np.log(y[-2])) / (lx[-1] - lx[-2])
    p0[1] = np.log(y[-1]) - p0[0] * lx[-1]
    p0[2] = max(np.exp(p0[0] * lx[0] + p0[1]) - y[0], 0.0)

    def sse(p):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.log(y + p[2]) - (p[0] * lx + p[1])
        v = float(r @ r)
        return v if np.isfinite(v) else 1e300

    res = minimize(sse, p0, method="L-BFGS-B", bounds=((None, None), (None, None), (0, None)),
                   options={"gtol": 1e-10, "ftol": 1e-10})
    m, b, a = (float(v) for v in res.x)
    if not np.all(np.isfinite(res.x)) or (a == 0 and np.any(y == 0)):
        raise CalibrationError(
            f"the bead standard curve did not converge (peaks {x.tolist()}, MESF {y.tolist()}): {res.message}"
        )
    ly = np.log(y + a)
    r = ly - (m * lx + b)
    sst = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float(r @ r) / sst if sst > 0 else float("nan")
    return {"m": m, "b": b, "mesf_auto": a, "residuals": r, "r2": float(r2)}
