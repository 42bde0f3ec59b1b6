"""Gates, dimensions and gating strategies (the Gating-ML 2.0 model).

A gate selects events by the values of its *dimensions*.  A dimension is a
channel (``$PnN``), optionally compensated (the file's own ``$SPILLOVER``
matrix, "FCS", or a named spectrum matrix) and then transformed to a display
scale, or a ratio of two channels (:class:`RatioDimension`).  Geometric gates
test already computed dimension values (``contains(values)``, values of shape
``(n_events, n_dims)``); the :class:`GatingStrategy` computes those values,
follows the gate hierarchy (parents) and Boolean gates, and applies the whole
strategy to a sample in one lazy pass over its row chunks.

Modules, as FlowKit separates them:

- :mod:`.dimensions`: :class:`Dimension`, :class:`RatioDimension`, compensation references,
- :mod:`.geometry`: the gate classes and their membership maths,
- :mod:`.strategy`: :class:`GatingStrategy`,
- :mod:`.results`: :class:`GatingResults`.

Boundary conventions are those of Gating-ML 2.0:

- rectangle / range: ``min <= x < max`` in every dimension (missing ends open),
- polygon: even-odd rule (a ray towards +x crosses the edges an odd number of times),
- ellipsoid: ``(x - mean)' inv(C) (x - mean) <= distance_square``,
- quadrant: each divider splits its dimension at its values; a quadrant is the
  interval ``v_k <= x < v_{k+1}`` that holds its position's location.

Events with NaN in a gate's dimension are outside the gate.
"""

from __future__ import annotations

from .dimensions import Dimension, RatioDimension
from .geometry import (
    BooleanGate,
    EllipsoidGate,
    Gate,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RangeGate,
    RectangleGate,
)
from .results import GatingResults
from .strategy import GatingStrategy

__all__ = [
    "Dimension",
    "RatioDimension",
    "Gate",
    "RectangleGate",
    "RangeGate",
    "PolygonGate",
    "EllipsoidGate",
    "QuadrantGate",
    "Quadrant",
    "BooleanGate",
    "GatingStrategy",
    "GatingResults",
]
