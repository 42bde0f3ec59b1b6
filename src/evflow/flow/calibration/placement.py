"""Which bead population gets which reference value, and the checks that flag a doubtful assignment.

Placement rule (``placement="best"`` of :func:`~evflow.flow.calibration.calibrate_mesf`,
when fewer reference values are given than populations are found):

- populations are ordered by their median in the calibrated channel, dimmest first;
- when the first value is 0 (the blank), it goes to the dimmest population;
- the other values, in increasing order, go to a run of *consecutive*
  populations that are all within the channel's range (not saturated, not
  below range); of all such runs the one whose standard curve fits best
  (smallest RMS log residual) is taken;
- when the second-best run fits almost as well (RMS within
  ``AMBIGUOUS_RATIO`` times the best plus ``AMBIGUOUS_FLOOR``), the placement
  is ambiguous: a :class:`CalibrationWarning` is raised and ``qc["ambiguous_placement"]`` set.

QC flags (``MESFCalibration.qc``), each with a warning when set:
``blank_brighter`` (a population given 0 is brighter than one given a bead
value), ``non_monotone`` (the used peaks or the fitted curve do not increase),
``large_residuals`` (a used peak more than ``MAX_RESIDUAL`` off the curve),
``ambiguous_placement``.
"""

from __future__ import annotations

import warnings

import numpy as np

from ...errors import CalibrationError, EvflowWarning

__all__ = ["CalibrationWarning", "place_values", "qc_flags", "AMBIGUOUS_RATIO", "AMBIGUOUS_FLOOR", "MAX_RESIDUAL"]

AMBIGUOUS_RATIO = 1.5
AMBIGUOUS_FLOOR = 0.01  # natural-log units (about 1 %)
MAX_RESIDUAL = 0.05  # relative (5 %)


class CalibrationWarning(EvflowWarning):
    """A calibration was fitted but an assignment or the fit is doubtful; ``cal.qc`` says which."""


def place_values(values, medians, in_range, source=""):
    """Spread ``values`` (fewer than populations) over the populations by the placement rule.

    Parameters
    ----------
    values : array (n_values,)
        Reference values, increasing (0 first for a blank), all finite.
    medians : array (n_populations,)
        Median of each population in the calibrated channel, increasing.
    in_range : array of bool (n_populations,)
        Populations neither saturated nor below range.

    Returns
    -------
    assigned : array (n_populations,) of the values (NaN where none was placed)
    info : dict with ``placement`` (population of each value), ``rms`` (best
        run), ``rms_second`` (second-best run or None), ``ambiguous`` (bool).
    """
    from .curve import fit_mesf_curve

    values = np.asarray(values, float)
    medians = np.asarray(medians, float)
    n, v = medians.size, values.size
    blank = values[0] == 0
    beads = values[1:] if blank else values
    first = 1 if blank else 0
    runs = []
    for start in range(first, n - beads.size + 1):
        idx = np.arange(start, start + beads.size)
        if not np.all(in_range[idx]) or not np.all(np.isfinite(medians[idx])) or np.any(medians[idx] <= 0):
            continue
        x, y = medians[idx], beads
        if blank and in_range[0] and medians[0] > 0:
            x, y = np.concatenate([[medians[0]], x]), np.concatenate([[0.0], y])
        try:
            fit = fit_mesf_curve(x, y)
        except CalibrationError:
            continue
        if not fit["m"] > 0:
            continue
        runs.append((float(np.sqrt(np.mean(fit["residuals"] ** 2))), start))
    if not runs:
        raise CalibrationError(
            f"{source}: found {n} bead populations and {v} reference values were given; no run of "
            f"{beads.size} consecutive populations within the channel's range takes the values "
            f"(populations in range: {np.nonzero(in_range)[0].tolist()}); give one value per population "
            "(NaN where a population has none)"
        )
    runs.sort()
    rms, start = runs[0]
    second = runs[1][0] if len(runs) > 1 else None
    assigned = np.full(n, np.nan)
    placement = list(range(start, start + beads.size))
    if blank:
        assigned[0] = 0.0
        placement = [0] + placement
    assigned[start : start + beads.size] = beads
    ambiguous = second is not None and second <= AMBIGUOUS_RATIO * rms + AMBIGUOUS_FLOOR
    return assigned, {"placement": placement, "rms": rms, "rms_second": second, "ambiguous": bool(ambiguous)}


def qc_flags(mesf, medians, used, residuals, curve_increasing=True):
    """The QC flags of a fitted calibration (see the module docstring)."""
    mesf = np.asarray(mesf, float)
    medians = np.asarray(medians, float)
    zero = np.isfinite(mesf) & (mesf == 0) & np.isfinite(medians)
    pos = np.isfinite(mesf) & (mesf > 0) & np.isfinite(medians)
    blank_brighter = bool(zero.any() and pos.any() and medians[zero].max() >= medians[pos].min())
    x = medians[used]
    non_monotone = bool(np.any(np.diff(x) <= 0) or not curve_increasing)
    r = np.asarray(residuals, float)[used]
    worst = float(np.max(np.abs(np.expm1(r)))) if r.size else 0.0
    return {
        "blank_brighter": blank_brighter,
        "non_monotone": non_monotone,
        "large_residuals": bool(worst > MAX_RESIDUAL),
        "max_residual": worst,
    }


def warn_qc(qc, source, channel):
    """One :class:`CalibrationWarning` naming every flag that is set."""
    msgs = []
    if qc.get("blank_brighter"):
        msgs.append("the blank (value 0) is brighter than a bead population")
    if qc.get("non_monotone"):
        msgs.append("the standard curve is not monotone")
    if qc.get("large_residuals"):
        msgs.append(f"a bead peak lies {qc['max_residual']:.1%} off the curve (more than {MAX_RESIDUAL:.0%})")
    if qc.get("ambiguous_placement"):
        msgs.append(
            f"the values could be placed on populations {qc['placement']} or shifted with almost the same "
            f"fit (RMS {qc['placement_rms']:.3g} vs {qc['placement_rms_second']:.3g}); check the assignment "
            "or give one value per population (NaN-padded)"
        )
    if msgs:
        warnings.warn(f"{source}, {channel}: doubtful calibration: " + "; ".join(msgs), CalibrationWarning,
                      stacklevel=3)
