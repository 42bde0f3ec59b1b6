"""Qt widgets of the evflow napari plugin (imported only when a widget is opened)."""

from ._detection import VesicleDetectionWidget
from ._gating import FlowGatingWidget
from ._results import ResultsBrowserWidget

__all__ = ["FlowGatingWidget", "VesicleDetectionWidget", "ResultsBrowserWidget"]
