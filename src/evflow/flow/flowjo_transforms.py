"""FlowJo 10's own scale transformations (those that are not Gating-ML 2.0 functions).

FlowJo stores gate coordinates in data units and draws (and gates) on a display
scale.  Its ``linear``, ``logicle`` and ``fasinh`` scales are Gating-ML's
(:mod:`evflow.flow.transforms`); two are not:

- ``log``: ``y = (log10(max(x, offset)) - log10(offset)) / decades``; values
  below ``offset`` are clipped to it (so 0 and negatives land at 0, not NaN).
- ``biex``: FlowJo's biexponential, defined by a lookup table of 4097 channels
  (``0 ... 4096``) built from ``pos`` (decades), ``neg`` (extra negative
  decades), ``width`` (the width basis, a negative number such as -10 or -100)
  and ``maxRange``; data between table entries are interpolated linearly and
  data outside the table are clipped to its ends.  This is the table TreeStar's
  Java code builds (as also ported to cytolib and FlowKit).

Both work on NumPy and CuPy arrays (the module of the input is used).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from .transforms import Transform, _num

__all__ = ["FlowJoLogTransform", "FlowJoBiexTransform", "BIEX_CHANNELS"]

#: the top channel of FlowJo's biex table (the display scale runs 0 ... BIEX_CHANNELS)
BIEX_CHANNELS = 4096


class FlowJoLogTransform(Transform):
    """FlowJo ``log``: ``y = (log10(max(x, offset)) - log10(offset)) / decades``.

    Parameters
    ----------
    offset : float
        Smallest data value shown (data units), ``> 0``; smaller values are clipped to it.
    decades : float
        Number of decades shown, ``> 0``.
    """

    gml_name = "flowjo-log"
    param_names = ("offset", "decades")

    def __init__(self, offset, decades, id=None):
        super().__init__(id)
        offset = _num("offset", offset, id, self.gml_name)
        decades = _num("decades", decades, id, self.gml_name)
        self.params = (offset, decades)
        if not offset > 0:
            self._fail(f"offset={offset:g} must be > 0")
        if not decades > 0:
            self._fail(f"decades={decades:g} must be > 0")

    def apply(self, x):
        offset, decades = self.params
        xp = array_module(x)
        x = xp.asarray(x, dtype=xp.float64)
        with np.errstate(invalid="ignore"):
            return (xp.log10(xp.maximum(x, offset)) - math.log10(offset)) / decades

    def inverse(self, y):
        offset, decades = self.params
        xp = array_module(y)
        return offset * 10.0 ** (xp.asarray(y, dtype=xp.float64) * decades)


def _negative_range(positive_range: float, width: float) -> float:
    """The root ``d`` in ``(0, b]`` of ``2 ln d + w d = 2 ln b - w b`` (``b`` = positive range)."""
    b, w = positive_range, width
    if w == 0:
        return b
    from scipy.optimize import brentq

    target = 2.0 * math.log(b) - w * b
    g = lambda d: 2.0 * math.log(d) + w * d - target  # noqa: E731
    return brentq(g, 1e-300, b, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)


def biex_table(pos: float, neg: float, width: float, max_range: float, channels: int = BIEX_CHANNELS):
    """FlowJo's biex lookup table: (data values, channel values), both increasing, ``channels + 1`` entries."""
    w = math.log10(-width)
    decades = pos - w / 2.0
    extra = max(neg, 0.0) + w / 2.0
    zero = int(min(int(extra * channels / (extra + decades)), channels / 2))
    if zero > 0:
        decades = extra * channels / zero
    w = w / (2.0 * decades)
    pos_range = math.log(10.0) * decades
    bottom = max_range / math.exp(pos_range)
    neg_range = _negative_range(pos_range, w)
    n = channels + 1
    k = np.arange(n, dtype=np.float64)
    up = np.exp(k / n * pos_range)
    down = np.exp(k / n * -neg_range) * math.exp((pos_range + neg_range) * (w + extra / decades))
    data = np.empty(n)
    shift = up[zero] - down[zero]
    data[zero:] = bottom * ((up[zero:] - down[zero:]) - shift)
    data[:zero] = -data[2 * zero - np.arange(zero)]
    return data, k


class FlowJoBiexTransform(Transform):
    """FlowJo ``biex``: the lookup-table biexponential, display scale 0 ... 4096.

    Parameters
    ----------
    pos : float
        Positive decades (FlowJo's default 4.42).
    neg : float
        Extra negative decades (>= 0).
    width : float
        Width basis, < 0 (FlowJo offers -1 ... -1000).
    max_range : float
        Top of the data scale (data units), > 0.
    """

    gml_name = "flowjo-biex"
    param_names = ("pos", "neg", "width", "maxRange")

    def __init__(self, pos=4.418540, neg=0.0, width=-10.0, max_range=262144.0, id=None):
        super().__init__(id)
        vals = [_num(n, v, id, self.gml_name) for n, v in zip(self.param_names, (pos, neg, width, max_range))]
        self.params = tuple(vals)
        pos, neg, width, max_range = vals
        if not width < 0:
            self._fail(f"width={width:g} must be < 0 (a width basis such as -10)")
        if not max_range > 0:
            self._fail(f"maxRange={max_range:g} must be > 0")
        if not pos > 0 or neg < 0:
            self._fail(f"pos={pos:g} must be > 0 and neg={neg:g} >= 0")
        data, chan = biex_table(pos, neg, width, max_range)
        if not np.all(np.diff(data) > 0):
            self._fail("these parameters give a table that is not increasing")
        self._data, self._chan = data, chan

    def _tables(self, xp):
        if xp is np:
            return self._data, self._chan
        return xp.asarray(self._data), xp.asarray(self._chan)

    def apply(self, x):
        xp = array_module(x)
        d, c = self._tables(xp)
        return xp.interp(xp.asarray(x, dtype=xp.float64), d, c)

    def inverse(self, y):
        xp = array_module(y)
        d, c = self._tables(xp)
        return xp.interp(xp.asarray(y, dtype=xp.float64), c, d)
