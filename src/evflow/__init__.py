"""evflow: single extracellular-vesicle analysis for nano-flow cytometry and TIRF imaging.

The verbs live at the top level::

    s = evflow.read_fcs("sample.fcs")                  # also write_fcs, read_images
    strategy = evflow.read_gatingml("gates.xml")       # also write_gatingml, read_flowjo("x.wsp")
    ds = evflow.count_phenotypes(s, parent="EVs", strategy=strategy, markers=...)
    cal = evflow.calibrate_mesf("beads.fcs", "FL1", mesf_values)   # also calibrate_scatter
    spots = evflow.detect_spots(field, psf_sigma_px=1.3)            # also count_vesicles
    ds = evflow.run("experiment.toml")                 # the whole pipeline

and so do the errors (:class:`EvflowError` and its subclasses).  The domain
objects live in namespaces: ``evflow.gates`` (``PolygonGate``,
``GatingStrategy``, ...), ``evflow.transforms`` (``LogicleTransform``,
``Compensation``, ...), ``evflow.synth`` (synthetic data with known truth)
and ``evflow.metrics``.

Everything is imported lazily on first use (``__init__.pyi`` lists it for
editors and type checkers), so ``import evflow`` stays light and never imports
CuPy, napari or Qt.
"""

from __future__ import annotations

import importlib

from ._cache import configure_numba_cache as _configure_numba_cache
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

# compiled Numba kernels go to a user cache folder, never into the installation
_configure_numba_cache()

# public name -> module that defines it (imported on first access); __init__.pyi lists the same names
_EXPORTS = {
    # reading and writing
    "read_fcs": "evflow.io.fcs",
    "write_fcs": "evflow.io.fcs",
    "FCSSample": "evflow.io.fcs",
    "read_images": "evflow.io.images",
    "read_gatingml": "evflow.flow.gatingml",
    "write_gatingml": "evflow.flow.gatingml",
    "read_flowjo": "evflow.flow.flowjo",
    "export_fcs": "evflow.flow.export",
    # the pipeline
    "run": "evflow.pipeline.run",
    "load_experiment": "evflow.pipeline.config",
    # flow: phenotypes, calibration, controls
    "count_phenotypes": "evflow.flow.phenotypes",
    "density2d": "evflow.flow.phenotypes",
    "calibrate_mesf": "evflow.flow.calibration",
    "MESFCalibration": "evflow.flow.calibration",
    "bead_kit": "evflow.flow.calibration",
    "list_bead_kits": "evflow.flow.calibration",
    "BeadKit": "evflow.flow.calibration",
    "calibrate_scatter": "evflow.flow.calibration",
    "fit_scatter_gain": "evflow.flow.calibration",
    "ScatterCalibration": "evflow.flow.calibration",
    "size_gate": "evflow.flow.calibration",
    "analysed_volume_ul": "evflow.flow.calibration",
    "concentration_per_ml": "evflow.flow.calibration",
    "evaluate_controls": "evflow.flow.controls",
    "threshold_from_control": "evflow.flow.controls",
    "subtract_buffer_counts": "evflow.flow.controls",
    "miflowcyt_ev_items": "evflow.flow.controls",
    # imaging
    "detect_spots": "evflow.imaging.detect",
    "Camera": "evflow.imaging.camera",
    "count_vesicles": "evflow.imaging.count",
    "thresholds_from_control": "evflow.imaging.count",
    "register_channels": "evflow.imaging.register",
    "ChannelRegistration": "evflow.imaging.register",
    "colocalize": "evflow.imaging.colocalize",
    "estimate_flat": "evflow.imaging.background",
    "subtract_image_background": "evflow.imaging.background",
    # photobleaching steps and copies per vesicle
    "count_bleaching_steps": "evflow.imaging.bleaching",
    "BleachingSteps": "evflow.imaging.bleaching",
    "extract_traces": "evflow.imaging.traces",
    "unit_brightness": "evflow.imaging.copies",
    "UnitBrightness": "evflow.imaging.copies",
    "copies_per_vesicle": "evflow.imaging.copies",
    "copies_summary": "evflow.imaging.copies",
    "fluorophores_from_mesf": "evflow.imaging.copies",
    # array backends
    "resolve_backend": "evflow.backend",
    "gpu_available": "evflow.backend",
    # namespaces (submodules)
    "gates": "evflow.gates",
    "transforms": "evflow.transforms",
    "synth": "evflow.synth",
    "metrics": "evflow.metrics",
}

# names that worked at the top level before the gates/transforms namespaces:
# still resolved, but not part of __all__ (use evflow.gates.X / evflow.transforms.X)
_COMPAT = {
    **dict.fromkeys(("GatingStrategy", "GatingResults", "Dimension", "RatioDimension", "RectangleGate", "RangeGate", "PolygonGate", "EllipsoidGate", "QuadrantGate", "Quadrant", "BooleanGate"), "evflow.gates"),
    **dict.fromkeys(("Compensation", "LinearTransform", "LogTransform", "AsinhTransform", "LogicleTransform", "HyperlogTransform"), "evflow.transforms"),
    # deprecated name of subtract_image_background (warns when called)
    "subtract_background": "evflow.imaging.background",
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
    module = _EXPORTS.get(name) or _COMPAT.get(name)
    if module is None:
        raise AttributeError(f"module 'evflow' has no attribute {name!r}")
    mod = importlib.import_module(module)
    # a name that is itself a submodule (evflow.gates, evflow.synth, ...) exports the module
    value = mod if module == f"{__name__}.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
