"""Calibration of single-vesicle flow data: MESF beads, scatter to diameter, concentration.

Fluorescence (:mod:`.mesf`)
    :func:`calibrate_mesf` finds the populations of a multi-peak bead file
    (a density gate on the singlet beads in FSC/SSC, then a Gaussian mixture
    on the peaks in a log-like scale, :mod:`.clustering`), drops saturated or
    unresolved peaks, fits the standard curve
    ``m*log(rfi) + b = log(mesf_auto + mesf)`` (the model of FlowCal's
    ``fit_beads_autofluorescence``) and returns a :class:`MESFCalibration`
    whose :meth:`~MESFCalibration.to_mesf` converts any array (NumPy, CuPy,
    dask) of that channel to MESF, lazily.

Scatter (:mod:`.scatter`)
    :func:`calibrate_scatter` fits the gain between measured scatter and the
    Mie cross-section (:mod:`evflow.flow.mie`) of size beads; the resulting
    :class:`ScatterCalibration` converts scatter to a diameter (nm) for a
    particle model (e.g. an EV as a core-shell sphere) and flags values outside
    the range where the relation is unique.  :func:`size_gate` turns a diameter
    range into a rectangle gate on the scatter channel.

Concentration (:mod:`.volume`)
    :func:`analysed_volume_ul` and :func:`concentration_per_ml`.

Calibration results store and reload without refitting:
``MESFCalibration.from_dict(cal.to_dict())`` and
``ScatterCalibration.from_dict(cal.to_dict())`` convert values exactly as the
original does.

All values are on the channel's linear scale: after ``$PnE`` log decoding and
division by ``$PnG`` (what ``read_fcs(path, scale=True)`` returns, and what
FlowCal calls RFI).
"""

from __future__ import annotations

# private helpers, kept importable from their old place
from ._table import _apply_elementwise, _as_table, _channel_range, _Table  # noqa: F401
from .beadkits import BeadKit, bead_kit, list_bead_kits
from .clustering import BeadPopulations, _display, bead_populations, density_gate  # noqa: F401
from .mesf import MESFCalibration, calibrate_mesf, fit_mesf_curve
from .placement import CalibrationWarning
from .roles import channel_roles, fluorescence_channels, scatter_pair
from .scatter import (
    ScatterCalibration,
    calibrate_scatter,
    fit_scatter_gain,
    size_gate,
    size_gate_limits,
)
from .volume import _acquisition_seconds, analysed_volume_ul, concentration_per_ml  # noqa: F401

__all__ = [
    "MESFCalibration",
    "BeadKit",
    "bead_kit",
    "list_bead_kits",
    "CalibrationWarning",
    "channel_roles",
    "scatter_pair",
    "fluorescence_channels",
    "calibrate_mesf",
    "fit_mesf_curve",
    "density_gate",
    "bead_populations",
    "BeadPopulations",
    "ScatterCalibration",
    "calibrate_scatter",
    "fit_scatter_gain",
    "size_gate",
    "size_gate_limits",
    "analysed_volume_ul",
    "concentration_per_ml",
]
