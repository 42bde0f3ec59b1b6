"""napari plugin of evflow: FCS / TIFF / experiment / results.zarr readers, a Gating-ML writer,
flow gating, vesicle detection and results-browser widgets, demo sample data.

The npe2 manifest is ``napari.yaml`` (plugin name ``evflow``); Qt code lives in
:mod:`evflow_napari._qt` and is imported only when a widget is opened.
:func:`detect_field` (Qt-free) is the detection the widget runs: the pipeline's field stage.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "detect_field"]


def __getattr__(name):
    if name == "detect_field":
        from ._detection import detect_field

        return detect_field
    raise AttributeError(f"module 'evflow_napari' has no attribute {name!r}")
