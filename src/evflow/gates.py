"""Gates and gating strategies (Gating-ML 2.0), as a public namespace.

``evflow.gates.PolygonGate``, ``evflow.gates.GatingStrategy``, ... are the
classes of :mod:`evflow.flow.gates`; :func:`evflow.read_gatingml` returns a
:class:`GatingStrategy`.

Examples
--------
>>> import evflow
>>> from evflow.gates import Dimension, PolygonGate, GatingStrategy
>>> g = PolygonGate("EVs", [Dimension("SSC-H"), Dimension("FL1-H")], [[0, 0], [10, 0], [10, 10]])
>>> GatingStrategy([g]).gate_ids
['EVs']
"""

from __future__ import annotations

from .flow.gates import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    Gate,
    GatingResults,
    GatingStrategy,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RangeGate,
    RatioDimension,
    RectangleGate,
)

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
