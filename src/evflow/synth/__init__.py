"""Synthetic data with known ground truth, by modality.

:mod:`evflow.synth.tirf`
    TIRF imaging: :func:`tirf` (multicolour fields of surface-captured
    vesicles), :func:`integrated_gaussian`, :func:`peak_fraction`.
:mod:`evflow.synth.flow`
    Flow cytometry: size beads, MESF beads and EVs of known size
    (:func:`synthetic_ev_sample`, ...), :func:`write_synthetic_fcs`.
:mod:`evflow.synth.bleaching`
    Photobleaching: :func:`bleaching_traces` (traces with known step counts),
    :func:`bleaching_movie` (a drifting TIRF movie of vesicles that bleach).

Every name is re-exported here, so ``evflow.synth.tirf(...)`` and
``from evflow.synth import synthetic_ev_sample`` both work.  Note that the
attribute ``evflow.synth.tirf`` is the *function*; the module that defines it
is ``sys.modules["evflow.synth.tirf"]`` (``from evflow.synth.tirf import
SyntheticTIRF`` works as usual).
"""

from __future__ import annotations

from .bleaching import SyntheticBleaching, bleaching_movie, bleaching_traces
from .flow import (
    default_scatter_gain,
    scatter_cross_section,
    synthetic_ev_sample,
    synthetic_mesf_beads,
    synthetic_size_beads,
    write_synthetic_fcs,
)

# importing the submodule binds evflow.synth.tirf to the module; the name is
# then rebound to the function, which is what evflow.synth.tirf(...) calls
from .tirf import SyntheticTIRF, integrated_gaussian, peak_fraction, tirf

__all__ = [
    "tirf",
    "SyntheticTIRF",
    "integrated_gaussian",
    "peak_fraction",
    "default_scatter_gain",
    "synthetic_size_beads",
    "synthetic_mesf_beads",
    "synthetic_ev_sample",
    "scatter_cross_section",
    "write_synthetic_fcs",
    "bleaching_traces",
    "bleaching_movie",
    "SyntheticBleaching",
]
