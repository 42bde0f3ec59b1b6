"""Scale transformations and compensation (Gating-ML 2.0), as a public namespace.

``evflow.transforms.LogicleTransform``, ... are the classes of
:mod:`evflow.flow.transforms`; :class:`Compensation` (a spillover/spectrum
matrix, ``transforms:spectrumMatrix`` in Gating-ML) is that of
:mod:`evflow.flow.compensation`.

Examples
--------
>>> import numpy as np
>>> from evflow.transforms import LogicleTransform
>>> t = LogicleTransform(t=262144, w=0.5, m=4.5, a=0)
>>> bool(0 < t.apply(np.array([1000.0]))[0] < 1)
True
"""

from __future__ import annotations

from .flow.compensation import Compensation
from .flow.transforms import (
    AsinhTransform,
    HyperlogTransform,
    LinearTransform,
    LogicleTransform,
    LogTransform,
    RatioTransform,
    Transform,
)

__all__ = [
    "Transform",
    "LinearTransform",
    "LogTransform",
    "AsinhTransform",
    "LogicleTransform",
    "HyperlogTransform",
    "RatioTransform",
    "Compensation",
]
