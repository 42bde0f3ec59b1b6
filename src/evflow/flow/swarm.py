"""Swarm and coincidence checks of one sample without a dilution series.

Two checks, each flagged with its numbers:

**Event rate.**  The mean rate (events / acquisition time) and the peak rate
(the highest binned rate of :func:`evflow.flow.time_qc.time_qc`, when there
is a time channel) against the instrument's stated maximum event rate
(``max_event_rate``, events/s, from ``[instrument] max_event_rate``; evflow
ships no table of instrument limits, since none could be sourced from public
material).  Flagged when the peak (or mean) rate exceeds ``rate_fraction``
(default 1.0) of the limit: above it events are lost or merged.

**Pulse width.**  Where a width channel exists (``-W``/``WIDTH``, by
:func:`~evflow.flow.calibration.channel_roles`), the singlet width is the
median width of the events; the fraction of events wider than ``factor``
(default 1.5) times it estimates coincident (two or more particles in the
beam) and swarm events.  Flagged when that fraction exceeds
``max_wide_fraction`` (default 5 %).
"""

from __future__ import annotations

import numpy as np

from ..errors import EvflowError

__all__ = ["rate_check", "width_check"]


def rate_check(n_events: int, acquisition_s: float | None, max_event_rate: float | None, *,
               peak_rate: float | None = None, rate_fraction: float = 1.0) -> dict:
    """Mean and peak event rate (events/s) against the instrument's maximum; ``flag`` True when above."""
    out = {"mean_rate_per_s": np.nan, "peak_rate_per_s": np.nan if peak_rate is None else float(peak_rate),
           "max_event_rate_per_s": np.nan if max_event_rate is None else float(max_event_rate),
           "rate_fraction_of_max": np.nan, "flag": False, "judged": False}
    if acquisition_s is not None and acquisition_s > 0:
        out["mean_rate_per_s"] = float(n_events) / float(acquisition_s)
    if max_event_rate is None:
        return out
    if not max_event_rate > 0:
        raise EvflowError(f"max_event_rate must be > 0 events/s, got {max_event_rate}")
    worst = np.nanmax([out["mean_rate_per_s"], out["peak_rate_per_s"]])
    if np.isfinite(worst):
        out["rate_fraction_of_max"] = float(worst / max_event_rate)
        out["judged"] = True
        out["flag"] = bool(worst > rate_fraction * max_event_rate)
    return out


def width_check(widths, *, factor: float = 1.5, max_wide_fraction: float = 0.05) -> dict:
    """Fraction of events wider than ``factor`` x the median (singlet) width; ``flag`` above ``max_wide_fraction``."""
    if not factor > 1:
        raise EvflowError(f"width factor must be > 1, got {factor}")
    w = np.asarray(widths, float).ravel()
    w = w[np.isfinite(w) & (w > 0)]
    if w.size < 100:
        return {"singlet_width": np.nan, "wide_fraction": np.nan, "factor": float(factor),
                "max_wide_fraction": float(max_wide_fraction), "flag": False, "judged": False, "n": int(w.size)}
    single = float(np.median(w))
    frac = float(np.mean(w > factor * single))
    return {"singlet_width": single, "wide_fraction": frac, "factor": float(factor),
            "max_wide_fraction": float(max_wide_fraction), "flag": bool(frac > max_wide_fraction),
            "judged": True, "n": int(w.size)}
