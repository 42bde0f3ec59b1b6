"""Sample data: the flow sample and an image field of the ``evflow demo`` experiment.

The demo experiment is written once (synthetic, with known truth) into
``$EVFLOW_NAPARI_DEMO`` or ``~/.cache/evflow/napari-demo`` and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["demo_folder", "demo_flow_sample", "demo_image_field"]


def demo_folder(folder=None, *, n_events: int = 200_000, n_fields: int = 2, field_shape=(512, 512)) -> Path:
    """Folder holding the demo experiment (``experiment.toml``, ``flow/``, ``images/``); written when missing."""
    from evflow.pipeline.demo import build_demo

    folder = Path(folder or os.environ.get("EVFLOW_NAPARI_DEMO") or Path.home() / ".cache" / "evflow" / "napari-demo")
    if not (folder / "experiment.toml").is_file() or not (folder / "images" / "S2_fov0.tif").is_file():
        build_demo(folder, n_events=n_events, n_fields=n_fields, field_shape=field_shape)
    return folder


def demo_flow_sample():
    """Layers of the demo's flow sample S2: density of SSC-H vs FL1-H (logicle) and an empty gates layer."""
    from ._reader import read_fcs_layers

    return read_fcs_layers(demo_folder() / "flow" / "S2.fcs")


def demo_image_field():
    """Layers of the demo's image field S2 / field 0: one layer per channel (CD9, CD63, CD81)."""
    from ._reader import read_tiff_layers

    return read_tiff_layers(demo_folder() / "images" / "S2_fov0.tif")
