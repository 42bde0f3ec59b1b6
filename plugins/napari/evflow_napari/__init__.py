"""napari plugin of evflow: FCS / TIFF / results.zarr readers, a Gating-ML writer,
flow gating, vesicle detection and results-browser widgets, demo sample data.

The npe2 manifest is ``napari.yaml`` (plugin name ``evflow``); Qt code lives in
:mod:`evflow_napari._qt` and is imported only when a widget is opened.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
