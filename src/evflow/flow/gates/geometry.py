"""The gates of Gating-ML 2.0 and their membership maths.

Geometric gates test already computed dimension values (``contains(values)``,
values of shape ``(n_events, n_dims)``).  Boundary conventions are those of
Gating-ML 2.0:

- rectangle / range: ``min <= x < max`` in every dimension (missing ends open),
- polygon: even-odd rule (a ray towards +x crosses the edges an odd number of times),
- ellipsoid: ``(x - mean)' inv(C) (x - mean) <= distance_square``,
- quadrant: each divider splits its dimension at its values; a quadrant is the
  interval ``v_k <= x < v_{k+1}`` that holds its position's location.

Events with NaN in a gate's dimension are outside the gate.  Boolean gates
only name the gates they combine; :class:`~evflow.flow.gates.GatingStrategy`
evaluates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ...backend import array_module
from ...errors import GatingError
from .dimensions import Dimension, RatioDimension, _as_dim

__all__ = [
    "Gate",
    "RectangleGate",
    "RangeGate",
    "PolygonGate",
    "EllipsoidGate",
    "QuadrantGate",
    "Quadrant",
    "BooleanGate",
]


def _finite_array(values, gid, what, shape=None):
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise GatingError(f"gate {gid!r}: {what} {values!r} is not numeric") from None
    if shape is not None and a.shape != shape:
        raise GatingError(f"gate {gid!r}: {what} has shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)):
        raise GatingError(f"gate {gid!r}: {what} has non-finite entries ({values!r})")
    a.setflags(write=False)
    return a


# ============================================================================ gates


class Gate:
    """Base class of all gates: an ``id``, an optional ``parent`` gate id and dimensions."""

    kind = "gate"

    def __init__(self, id, dims=(), parent=None):
        if not isinstance(id, str) or not id:
            raise GatingError(f"gate id must be a non-empty string, got {id!r}")
        self.id = id
        self.parent = None if parent in (None, "") else str(parent)
        self.dims = [_as_dim(d, id) for d in dims]

    @property
    def channels(self) -> list:
        """Channel names the gate reads (before compensation)."""
        out = []
        for d in self.dims:
            for c in d.channels:
                if c not in out:
                    out.append(c)
        return out

    def contains(self, values):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_values(self, values):
        xp = array_module(values)
        values = xp.asarray(values)
        if values.ndim != 2 or values.shape[1] != len(self.dims):
            raise GatingError(
                f"gate {self.id!r}: values have shape {tuple(values.shape)}, expected (n_events, {len(self.dims)})"
            )
        return xp, values

    def __repr__(self):
        par = f", parent={self.parent!r}" if self.parent else ""
        return f"{type(self).__name__}({self.id!r}, dims={self.dims}{par})"


class RectangleGate(Gate):
    """n-dimensional rectangle: ``mins[i] <= x_i < maxs[i]``; None leaves an end open.

    Parameters
    ----------
    id : str
    dims : sequence of Dimension (or channel names)
    mins, maxs : sequence of float or None
        Bounds on each dimension's (display) scale.
    parent : str, optional
    """

    kind = "rectangle"

    def __init__(self, id, dims, mins, maxs, parent=None):
        if isinstance(dims, (str, Dimension, RatioDimension)):
            dims = [dims]
        super().__init__(id, dims, parent)
        n = len(self.dims)
        if n == 0:
            raise GatingError(f"gate {id!r}: a rectangle gate needs at least one dimension")
        mins = [mins] if mins is None or np.ndim(mins) == 0 else list(mins)
        maxs = [maxs] if maxs is None or np.ndim(maxs) == 0 else list(maxs)
        if len(mins) != n or len(maxs) != n:
            raise GatingError(f"gate {id!r}: {n} dimension(s) but {len(mins)} min(s) and {len(maxs)} max(es)")
        self.mins = [self._bound(v, "min", i) for i, v in enumerate(mins)]
        self.maxs = [self._bound(v, "max", i) for i, v in enumerate(maxs)]
        for i, (lo, hi) in enumerate(zip(self.mins, self.maxs)):
            if lo is None and hi is None:
                raise GatingError(f"gate {id!r}: dimension {self.dims[i].channel!r} has neither min nor max")
            if lo is not None and hi is not None and not lo <= hi:
                raise GatingError(f"gate {id!r}: dimension {self.dims[i].channel!r} has min {lo:g} > max {hi:g}")

    def _bound(self, v, what, i):
        if v is None:
            return None
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise GatingError(f"gate {self.id!r}: {what} {v!r} of dimension {i} is not a number") from None
        if math.isnan(f):
            raise GatingError(f"gate {self.id!r}: {what} of dimension {i} is NaN")
        if math.isinf(f):
            return None if (what == "min" and f < 0) or (what == "max" and f > 0) else f
        return f

    def contains(self, values):
        xp, values = self._check_values(values)
        inside = xp.ones(values.shape[0], dtype=bool)
        for i, (lo, hi) in enumerate(zip(self.mins, self.maxs)):
            v = values[:, i]
            if lo is not None:
                inside &= v >= lo
            if hi is not None:
                inside &= v < hi
            if lo is None and hi is None:  # pragma: no cover - rejected in __init__
                inside &= ~xp.isnan(v)
        return inside


class RangeGate(RectangleGate):
    """One-dimensional rectangle: ``min <= x < max`` (either end may be None)."""

    kind = "range"

    def __init__(self, id, dims, mins, maxs, parent=None):
        super().__init__(id, dims, mins, maxs, parent)
        if len(self.dims) != 1:
            raise GatingError(f"gate {id!r}: a range gate has one dimension, got {len(self.dims)}")


class PolygonGate(Gate):
    """Polygon in two dimensions, any number (>= 3) of vertices, even-odd rule.

    Parameters
    ----------
    id : str
    dims : (Dimension, Dimension)
    vertices : array_like (k, 2)
        Vertex coordinates on the dimensions' display scales; the polygon is
        closed from the last vertex back to the first; self-intersecting
        polygons are allowed.
    parent : str, optional
    """

    kind = "polygon"

    def __init__(self, id, dims, vertices, parent=None):
        super().__init__(id, dims, parent)
        if len(self.dims) != 2:
            raise GatingError(f"gate {id!r}: a polygon gate has 2 dimensions, got {len(self.dims)}")
        v = _finite_array(vertices, id, "vertices")
        if v.ndim != 2 or v.shape[1] != 2 or v.shape[0] < 3:
            raise GatingError(f"gate {id!r}: vertices have shape {v.shape}, expected (k >= 3, 2)")
        self.vertices = v

    def contains(self, values):
        xp, values = self._check_values(values)
        px = values[:, 0]
        py = values[:, 1]
        inside = xp.zeros(values.shape[0], dtype=bool)
        v = self.vertices
        nv = len(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            j = nv - 1
            for i in range(nv):
                xi, yi = float(v[i, 0]), float(v[i, 1])
                xj, yj = float(v[j, 0]), float(v[j, 1])
                if yi != yj:
                    cross = (py < yi) != (py < yj)
                    xc = (xj - xi) * (py - yi) / (yj - yi) + xi
                    inside ^= cross & (px < xc)
                j = i
        return inside & xp.isfinite(px) & xp.isfinite(py)


class EllipsoidGate(Gate):
    """n-dimensional ellipsoid: ``(x - mean)' inv(covariance) (x - mean) <= distance_square``.

    Parameters
    ----------
    id : str
    dims : sequence of Dimension (n >= 2)
    mean : array_like (n,)
    covariance : array_like (n, n), invertible
    distance_square : float > 0
    parent : str, optional
    """

    kind = "ellipsoid"

    def __init__(self, id, dims, mean, covariance, distance_square, parent=None):
        super().__init__(id, dims, parent)
        n = len(self.dims)
        if n < 2:
            raise GatingError(f"gate {id!r}: an ellipsoid gate needs at least 2 dimensions, got {n}")
        self.mean = _finite_array(mean, id, "mean", (n,))
        self.covariance = _finite_array(covariance, id, "covariance matrix", (n, n))
        try:
            d2 = float(distance_square)
        except (TypeError, ValueError):
            raise GatingError(f"gate {id!r}: distance square {distance_square!r} is not a number") from None
        if not (math.isfinite(d2) and d2 > 0):
            raise GatingError(f"gate {id!r}: distance square {d2!r} must be finite and > 0")
        self.distance_square = d2
        if np.linalg.matrix_rank(self.covariance) < n:
            raise GatingError(f"gate {id!r}: covariance matrix is singular")
        inv = np.linalg.inv(self.covariance)
        inv.setflags(write=False)
        self.inverse_covariance = inv

    def contains(self, values):
        xp, values = self._check_values(values)
        d = xp.asarray(values, dtype=xp.float64) - xp.asarray(self.mean)
        m = xp.asarray(self.inverse_covariance)
        with np.errstate(invalid="ignore", over="ignore"):
            dist = xp.sum((d @ m) * d, axis=1)
        return dist <= self.distance_square


class QuadrantGate(Gate):
    """Dividers that split the space into quadrants, each quadrant being a gate of its own.

    Parameters
    ----------
    id : str
        Id of the quadrant gate (the container; not a population itself).
    dims : sequence of Dimension
        One dimension per divider.
    dividers : sequence of sequence of float
        Split values of each divider (increasing).
    quadrants : mapping quadrant id -> positions
        Positions are a mapping ``divider index or divider id -> location``
        (or a sequence of locations, None for "any"): the quadrant is, in each
        listed divider, the interval between split values that holds the
        location.
    parent : str, optional
    divider_ids : sequence of str, optional
        Names of the dividers (Gating-ML ``divider`` ids); default "<id>_d<i>".
    """

    kind = "quadrant"

    def __init__(self, id, dims, dividers, quadrants, parent=None, divider_ids=None):
        super().__init__(id, dims, parent)
        n = len(self.dims)
        if n == 0:
            raise GatingError(f"gate {id!r}: a quadrant gate needs at least one divider")
        if len(dividers) != n:
            raise GatingError(f"gate {id!r}: {n} dimension(s) but {len(dividers)} divider(s)")
        self.dividers = []
        for i, vals in enumerate(dividers):
            a = _finite_array(np.atleast_1d(vals), id, f"divider {i} values")
            if a.ndim != 1 or a.size == 0 or np.any(np.diff(a) <= 0):
                raise GatingError(f"gate {id!r}: divider {i} values {list(a)} must be a non-empty increasing list")
            self.dividers.append(a)
        self.divider_ids = list(divider_ids) if divider_ids is not None else [f"{id}_d{i}" for i in range(n)]
        if len(self.divider_ids) != n or len(set(self.divider_ids)) != n:
            raise GatingError(f"gate {id!r}: divider ids {self.divider_ids} must be {n} distinct names")
        if not isinstance(quadrants, Mapping) or not quadrants:
            raise GatingError(f"gate {id!r}: quadrants must be a non-empty mapping quadrant id -> positions")
        self.quadrants = {}
        for qid, pos in quadrants.items():
            self.quadrants[str(qid)] = Quadrant(str(qid), self, self._intervals(str(qid), pos))

    def _intervals(self, qid, pos):
        n = len(self.dims)
        if isinstance(pos, Mapping):
            items = list(pos.items())
        else:
            pos = list(pos)
            if len(pos) != n:
                raise GatingError(f"quadrant {qid!r} of gate {self.id!r}: {len(pos)} positions for {n} dividers")
            items = list(enumerate(pos))
        intervals = [None] * n
        locations = [None] * n
        for key, loc in items:
            if isinstance(key, str):
                if key not in self.divider_ids:
                    raise GatingError(
                        f"quadrant {qid!r} of gate {self.id!r}: divider {key!r} not among {self.divider_ids}"
                    )
                k = self.divider_ids.index(key)
            else:
                k = int(key)
                if not 0 <= k < n:
                    raise GatingError(f"quadrant {qid!r} of gate {self.id!r}: divider index {k} out of range")
            if loc is None:
                continue
            try:
                loc = float(loc)
            except (TypeError, ValueError):
                raise GatingError(f"quadrant {qid!r} of gate {self.id!r}: location {loc!r} is not a number") from None
            if not math.isfinite(loc):
                raise GatingError(f"quadrant {qid!r} of gate {self.id!r}: location {loc!r} is not finite")
            vals = self.dividers[k]
            j = int(np.searchsorted(vals, loc, side="right"))
            lo = float(vals[j - 1]) if j > 0 else None
            hi = float(vals[j]) if j < len(vals) else None
            intervals[k] = (lo, hi)
            locations[k] = loc
        if all(iv is None for iv in intervals):
            raise GatingError(f"quadrant {qid!r} of gate {self.id!r}: no divider position given")
        return intervals, locations

    def contains(self, values):
        raise GatingError(
            f"gate {self.id!r} is a quadrant gate; test one of its quadrants {list(self.quadrants)} instead"
        )


class Quadrant(Gate):
    """One quadrant of a :class:`QuadrantGate` (a population with its own id)."""

    kind = "quadrant_member"

    def __init__(self, id, quadrant_gate: QuadrantGate, intervals_locations):
        intervals, locations = intervals_locations
        super().__init__(id, quadrant_gate.dims, quadrant_gate.parent)
        self.quadrant_gate = quadrant_gate
        self.intervals = intervals
        self.locations = locations

    def contains(self, values):
        xp, values = self._check_values(values)
        inside = xp.ones(values.shape[0], dtype=bool)
        for i, iv in enumerate(self.intervals):
            if iv is None:
                continue
            lo, hi = iv
            v = values[:, i]
            if lo is not None:
                inside &= v >= lo
            if hi is not None:
                inside &= v < hi
            if lo is None and hi is None:
                inside &= ~xp.isnan(v)
        return inside

    def __repr__(self):
        return f"Quadrant({self.id!r} of {self.quadrant_gate.id!r}, intervals={self.intervals})"


class BooleanGate(Gate):
    """``and`` / ``or`` / ``not`` of other gates (their full populations, parents included).

    Parameters
    ----------
    id : str
    op : {'and', 'or', 'not'}
    refs : sequence of str or (str, bool)
        Referenced gate ids, each optionally with ``complement=True`` (use the
        events outside that gate).  'not' takes exactly one, 'and'/'or' two or more.
    parent : str, optional
    """

    kind = "boolean"

    def __init__(self, id, op, refs, parent=None):
        super().__init__(id, (), parent)
        op = str(op).lower()
        if op not in ("and", "or", "not"):
            raise GatingError(f"gate {id!r}: boolean operation {op!r}, expected 'and', 'or' or 'not'")
        out = []
        for r in refs:
            if isinstance(r, str):
                out.append((r, False))
            else:
                try:
                    gid, comp = r
                except (TypeError, ValueError):
                    raise GatingError(f"gate {id!r}: gate reference {r!r} is not an id or (id, complement)") from None
                out.append((str(gid), bool(comp)))
        if op == "not" and len(out) != 1:
            raise GatingError(f"gate {id!r}: 'not' takes exactly one gate reference, got {len(out)}")
        if op in ("and", "or") and len(out) < 2:
            raise GatingError(f"gate {id!r}: '{op}' takes at least two gate references, got {len(out)}")
        self.op = op
        self.refs = out

    def contains(self, values):
        raise GatingError(f"gate {self.id!r} is a Boolean gate; evaluate it through a GatingStrategy")

    def __repr__(self):
        par = f", parent={self.parent!r}" if self.parent else ""
        return f"BooleanGate({self.id!r}, {self.op!r}, {self.refs}{par})"
