"""Diagnostic figure of a bead calibration: the populations found, their assigned values, the curve and residuals."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_calibration"]


def plot_calibration(cal, fig=None):
    """Three panels: histogram of the calibrated channel coloured by population (median, assigned value and
    status of each), the standard curve through the used peaks, and the residuals (%) of each used peak.

    The histogram needs the binned events kept by :func:`calibrate_mesf` (``cal.histogram``); a calibration
    rebuilt by ``from_dict`` has none and shows only the curve and residuals.  Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if fig is None:
        fig = plt.figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    ax_h, ax_c, ax_r = axes
    k = len(cal.mesf_values)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(k, 2)))
    hist = getattr(cal, "histogram", None)
    if hist is not None:
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
        centres = np.sqrt(np.maximum(edges[:-1], 1e-3) * np.maximum(edges[1:], 1e-3))
        for j in range(min(k, counts.shape[0])):
            ax_h.step(centres, counts[j], where="mid", color=colours[j], lw=1)
    for j in range(k):
        med = cal.peak_medians[j]
        if not np.isfinite(med) or med <= 0:
            continue
        v = cal.mesf_values[j]
        ax_h.axvline(med, color=colours[j], ls="--", lw=0.8)
        label = f"{j}: {'-' if not np.isfinite(v) else format(v, 'g')}\n{cal.peak_status[j]}"
        ax_h.annotate(label, (med, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                      fontsize=6, rotation=90, color=colours[j])
    ax_h.set_xscale("log")
    label = cal.qc.get("axis_label") or f"{cal.channel} (linear scale)"
    ax_h.set_xlabel(label)
    ax_h.set_ylabel("events")
    ax_h.set_title(f"{k} populations; {cal.qc.get('n_values', k)} values given", fontsize=8, pad=40)
    used = np.isfinite(cal.peaks)
    a = cal.params.get("mesf_auto", 0.0)
    x = cal.peaks[used]
    if x.size:
        xs = np.geomspace(x.min() / 2, x.max() * 2, 100)
        ax_c.loglog(x, cal.mesf_values[used] + a, "o", color="k", label=f"beads (+ auto {a:.3g})")
        ax_c.loglog(xs, np.exp(cal.params["b"]) * xs ** cal.params["m"], "-", color="C1",
                    label=f"m={cal.params['m']:.3f}, b={cal.params['b']:.3f}, R²={cal.r2:.4f}")
        ax_c.legend(fontsize=7)
        ax_r.axhline(0, color="k", lw=0.8)
        for lim in (-5, 5):
            ax_r.axhline(lim, color="C3", lw=0.8, ls=":")
        ax_r.plot(x, 100 * np.expm1(cal.residuals[used]), "o", color="k")
        ax_r.set_xscale("log")
        ax_r.xaxis.set_minor_formatter(NullFormatter())  # a narrow decade: minor labels would overlap
    ax_c.set_xlabel(f"{label}: peak median")
    ax_c.set_ylabel(f"{cal.units} + autofluorescence")
    ax_r.set_xlabel(f"{label}: peak median")
    ax_r.set_ylabel("residual (%)")
    flags = [f for f in ("blank_brighter", "non_monotone", "large_residuals", "ambiguous_placement") if cal.qc.get(f)]
    ax_r.set_title("QC: " + (", ".join(flags) if flags else "ok"), fontsize=8)
    fig.suptitle(f"{cal.source}", fontsize=8)
    fig.tight_layout()
    return fig
