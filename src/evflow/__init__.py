"""evflow: single extracellular-vesicle analysis for nano-flow cytometry and TIRF imaging.

The public API is re-exported here and imported lazily, so ``import evflow``
stays light and never imports CuPy, napari or Qt.
"""

from __future__ import annotations

import importlib

from .errors import (
    BackendError,
    CalibrationError,
    ConfigError,
    EvflowError,
    FCSError,
    GatingError,
    ImageError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    "run": "evflow.pipeline.run",
    "load_experiment": "evflow.pipeline.config",
    "read_fcs": "evflow.io.fcs",
    "write_fcs": "evflow.io.fcs",
    "FCSSample": "evflow.io.fcs",
    "resolve_backend": "evflow.backend",
    "gpu_available": "evflow.backend",
    "detect_spots": "evflow.imaging.detect",
    "read_images": "evflow.io.images",
    "Camera": "evflow.imaging.camera",
    "count_vesicles": "evflow.imaging.count",
    "thresholds_from_control": "evflow.imaging.count",
    "register_channels": "evflow.imaging.register",
    "ChannelRegistration": "evflow.imaging.register",
    "colocalize": "evflow.imaging.colocalize",
    "estimate_flat": "evflow.imaging.background",
    "subtract_background": "evflow.imaging.background",
    "synth": "evflow.synth",
    "metrics": "evflow.metrics",
    "calibrate_mesf": "evflow.flow.calibration",
    "MESFCalibration": "evflow.flow.calibration",
    "calibrate_scatter": "evflow.flow.calibration",
    "fit_scatter_gain": "evflow.flow.calibration",
    "ScatterCalibration": "evflow.flow.calibration",
    "size_gate": "evflow.flow.calibration",
    "analysed_volume_ul": "evflow.flow.calibration",
    "concentration_per_ml": "evflow.flow.calibration",
    "evaluate_controls": "evflow.flow.controls",
    "threshold_from_control": "evflow.flow.controls",
    "miflowcyt_ev_items": "evflow.flow.controls",
    "read_gatingml": "evflow.flow.gatingml",
    "write_gatingml": "evflow.flow.gatingml",
    "GatingStrategy": "evflow.flow.gates",
    "GatingResults": "evflow.flow.gates",
    "Compensation": "evflow.flow.compensation",
    "Dimension": "evflow.flow.gates",
    "RatioDimension": "evflow.flow.gates",
    "RectangleGate": "evflow.flow.gates",
    "RangeGate": "evflow.flow.gates",
    "PolygonGate": "evflow.flow.gates",
    "EllipsoidGate": "evflow.flow.gates",
    "QuadrantGate": "evflow.flow.gates",
    "Quadrant": "evflow.flow.gates",
    "BooleanGate": "evflow.flow.gates",
    "LinearTransform": "evflow.flow.transforms",
    "LogTransform": "evflow.flow.transforms",
    "AsinhTransform": "evflow.flow.transforms",
    "LogicleTransform": "evflow.flow.transforms",
    "HyperlogTransform": "evflow.flow.transforms",
    "count_phenotypes": "evflow.flow.phenotypes",
    "density2d": "evflow.flow.phenotypes",
}

__all__ = [
    "__version__",
    "EvflowError",
    "FCSError",
    "GatingError",
    "CalibrationError",
    "ImageError",
    "ConfigError",
    "BackendError",
    *_EXPORTS,
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'evflow' has no attribute {name!r}")
    mod = importlib.import_module(module)
    # a name that is itself a submodule (evflow.synth, evflow.metrics) exports the module
    value = mod if module == f"{__name__}.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
