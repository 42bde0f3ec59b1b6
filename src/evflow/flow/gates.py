"""Gates, dimensions and gating strategies (the Gating-ML 2.0 model).

A gate selects events by the values of its *dimensions*.  A dimension is a
channel (``$PnN``), optionally compensated (the file's own ``$SPILLOVER``
matrix, "FCS", or a named spectrum matrix) and then transformed to a display
scale, or a ratio of two channels (:class:`RatioDimension`).  Geometric gates
test already computed dimension values (``contains(values)``, values of shape
``(n_events, n_dims)``); the :class:`GatingStrategy` computes those values,
follows the gate hierarchy (parents) and Boolean gates, and applies the whole
strategy to a sample in one lazy pass over its row chunks.

Boundary conventions are those of Gating-ML 2.0:

- rectangle / range: ``min <= x < max`` in every dimension (missing ends open),
- polygon: even-odd rule (a ray towards +x crosses the edges an odd number of times),
- ellipsoid: ``(x - mean)' inv(C) (x - mean) <= distance_square``,
- quadrant: each divider splits its dimension at its values; a quadrant is the
  interval ``v_k <= x < v_{k+1}`` that holds its position's location.

Events with NaN in a gate's dimension are outside the gate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

from ..backend import array_module, resolve_backend, to_backend, to_numpy
from ..errors import GatingError
from .compensation import Compensation
from .transforms import RatioTransform, Transform

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

_UNCOMP = (None, "", "uncompensated")


def _comp_ref(compensation):
    if compensation in _UNCOMP:
        return None
    if isinstance(compensation, Compensation):
        return compensation
    return str(compensation)


def _comp_name(ref):
    if ref is None:
        return None
    return ref.id if isinstance(ref, Compensation) else ref


# ============================================================================ dimensions


class Dimension:
    """One gate dimension: a channel, optionally compensated, optionally transformed.

    Parameters
    ----------
    channel : str
        ``$PnN`` of the channel, or the fluorochrome name of a spectrum matrix.
    transform : Transform, optional
        Applied after compensation; gate coordinates are on its display scale.
    compensation : str or Compensation, optional
        None or "uncompensated"; "FCS" (the file's ``$SPILLOVER``; no matrix
        in the file means uncompensated); or the id of a compensation of the
        strategy (a Gating-ML ``spectrumMatrix``).
    """

    def __init__(self, channel: str, transform: Transform | None = None, compensation=None):
        if not isinstance(channel, str) or not channel:
            raise GatingError(f"dimension channel must be a non-empty string, got {channel!r}")
        if transform is not None and not isinstance(transform, Transform):
            raise GatingError(f"dimension {channel!r}: transform must be a Transform, got {type(transform).__name__}")
        if isinstance(transform, RatioTransform):
            raise GatingError(f"dimension {channel!r}: a ratio is a RatioDimension, not a transform")
        self.channel = channel
        self.transform = transform
        self.compensation = _comp_ref(compensation)

    @property
    def compensation_id(self):
        """The compensation reference as a string (None when uncompensated)."""
        return _comp_name(self.compensation)

    @property
    def channels(self) -> tuple:
        return (self.channel,)

    def key(self):
        return ("dim", self.channel, self.compensation_id, self.transform)

    def __eq__(self, other):
        return isinstance(other, Dimension) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        extra = ""
        if self.compensation is not None:
            extra += f", compensation={self.compensation_id!r}"
        if self.transform is not None:
            extra += f", transform={self.transform!r}"
        return f"Dimension({self.channel!r}{extra})"


class RatioDimension:
    """A new dimension ``A (x1 - B) / (x2 - C)`` of two channels (Gating-ML ``fratio``).

    Parameters
    ----------
    id : str
        The ratio's transformation id.
    channels : (str, str)
        Numerator and denominator channels.
    a, b, c : float
        Scale and offsets of the ratio.
    transform : Transform, optional
        Applied to the ratio.
    compensation : str, optional
        Compensation of the two channels before the ratio (as in :class:`Dimension`).
    """

    def __init__(self, id, channels, a=1.0, b=0.0, c=0.0, transform=None, compensation=None):
        if isinstance(channels, RatioTransform):
            self.ratio = channels
        else:
            self.ratio = RatioTransform(channels, a, b, c, id=id)
        if transform is not None and not isinstance(transform, Transform):
            raise GatingError(f"ratio dimension {id!r}: transform must be a Transform")
        self.transform = transform
        self.compensation = _comp_ref(compensation)

    id = property(lambda self: self.ratio.id)
    channels = property(lambda self: self.ratio.channels)
    compensation_id = property(lambda self: _comp_name(self.compensation))

    @property
    def channel(self) -> str:
        return f"{self.ratio.id}"

    def key(self):
        return ("ratio", self.ratio, self.compensation_id, self.transform)

    def __eq__(self, other):
        return isinstance(other, RatioDimension) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        return f"RatioDimension({self.id!r}, {list(self.channels)}, A={self.ratio.params[0]:g}, B={self.ratio.params[1]:g}, C={self.ratio.params[2]:g}, compensation={self.compensation_id!r}, transform={self.transform!r})"


def _as_dim(d, gid):
    if isinstance(d, (Dimension, RatioDimension)):
        return d
    if isinstance(d, str):
        return Dimension(d)
    raise GatingError(f"gate {gid!r}: dimension {d!r} is not a Dimension, RatioDimension or channel name")


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


# ============================================================================ strategy


class _Chunk:
    """Per-chunk evaluation state: the events, channel lookup, caches."""

    def __init__(self, strategy, events, channels, spillover):
        xp = array_module(events)
        self.xp = xp
        self.events = events
        self.channels = list(channels)
        self.index = {}
        for i, c in enumerate(self.channels):
            self.index.setdefault(c, i)
        self.strategy = strategy
        self.fcs = _fcs_compensation(spillover)
        self.comp_cache = {}
        self.dim_cache = {}
        self.mask_cache = {}

    def column(self, channel, gid):
        i = self.index.get(channel)
        if i is None:
            raise GatingError(f"gate {gid!r}: channel {channel!r} is not in the data; channels are {self.channels}")
        return self.xp.asarray(self.events[:, i], dtype=self.xp.float64)

    def compensated(self, channel, comp_ref, gid):
        comp = self.strategy._compensation(comp_ref, self.fcs, gid)
        if comp is None:
            return self.column(channel, gid)
        k = comp.output_index(channel)
        if k is None:
            if channel in self.index:  # not part of the matrix: stays uncompensated
                return self.column(channel, gid)
            raise GatingError(
                f"gate {gid!r}: {channel!r} is neither a channel of the data nor an output of compensation "
                f"{comp.id!r} (outputs {comp.fluorochromes})"
            )
        ck = id(comp)
        block = self.comp_cache.get(ck)
        if block is None:
            missing = [c for c in comp.channels_in if c not in self.index]
            if missing:
                raise GatingError(
                    f"gate {gid!r}: compensation {comp.id!r} needs detector channel(s) {missing}, "
                    f"not in the data; channels are {self.channels}"
                )
            cols = [self.index[c] for c in comp.channels_in]
            block = comp.unmix(self.xp.asarray(self.events[:, cols], dtype=self.xp.float64))
            self.comp_cache[ck] = block
        return block[:, k]

    def values(self, dim, gid):
        key = dim.key()
        v = self.dim_cache.get(key)
        if v is not None:
            return v
        if isinstance(dim, RatioDimension):
            pair = self.xp.stack([self.compensated(c, dim.compensation, gid) for c in dim.channels], axis=1)
            v = dim.ratio.apply(pair)
        else:
            v = self.compensated(dim.channel, dim.compensation, gid)
        if dim.transform is not None:
            v = dim.transform.apply(v)
        self.dim_cache[key] = v
        return v


def _fcs_compensation(spillover):
    if spillover is None:
        return None
    return Compensation.from_spillover(spillover, id="FCS")


class GatingStrategy:
    """A set of gates with their hierarchy, transforms and compensation matrices.

    Parameters
    ----------
    gates : sequence of Gate, optional
        Added in order with :meth:`add_gate` (parents and referenced gates first).
    transforms : mapping id -> Transform, optional
        Named transforms (kept for Gating-ML export; dimensions hold their own).
    compensations : mapping id -> Compensation, optional
        Spectrum matrices referenced by dimensions' ``compensation``.
    """

    def __init__(self, gates=None, transforms=None, compensations=None):
        self.gates: dict[str, Gate] = {}
        self.quadrant_gates: dict[str, QuadrantGate] = {}
        self._order: list = []  # top-level gate objects in insertion order
        self.transforms: dict[str, Transform] = {}
        self.compensations: dict[str, Compensation] = {}
        for tid, t in dict(transforms or {}).items():
            self.add_transform(t, tid)
        for cid, c in dict(compensations or {}).items():
            self.add_compensation(c, cid)
        for g in gates or ():
            self.add_gate(g)

    # ------------------------------------------------------------------ building
    def add_transform(self, transform: Transform, id: str | None = None):
        """Register a named transform (its id, or ``id``)."""
        if not isinstance(transform, Transform):
            raise GatingError(f"transform {id!r}: expected a Transform, got {type(transform).__name__}")
        tid = id or transform.id
        if not tid:
            raise GatingError("a registered transform needs an id")
        if transform.id is None:
            transform.id = tid
        self.transforms[tid] = transform
        return transform

    def add_compensation(self, compensation: Compensation, id: str | None = None):
        """Register a compensation (spectrum matrix) under its id."""
        if not isinstance(compensation, Compensation):
            raise GatingError(f"compensation {id!r}: expected a Compensation, got {type(compensation).__name__}")
        cid = id or compensation.id
        if not cid:
            raise GatingError("a registered compensation needs an id")
        if cid in ("FCS", "uncompensated"):
            raise GatingError(f"compensation id {cid!r} is reserved by Gating-ML")
        if compensation.id is None:
            compensation.id = cid
        self.compensations[cid] = compensation
        return compensation

    def add_gate(self, gate: Gate):
        """Add a gate; its parent and any gates it references must already be present.

        Raises
        ------
        GatingError
            Duplicate id, unknown parent / referenced gate, or unknown compensation id.
        """
        if not isinstance(gate, Gate) or isinstance(gate, Quadrant):
            raise GatingError(f"add_gate expects a Gate (or QuadrantGate), got {type(gate).__name__}")
        new_ids = list(gate.quadrants) if isinstance(gate, QuadrantGate) else [gate.id]
        if isinstance(gate, QuadrantGate):
            if gate.id in self.gates or gate.id in self.quadrant_gates:
                raise GatingError(f"gate {gate.id!r}: id already used in this strategy")
        for gid in new_ids:
            if gid in self.gates or gid in self.quadrant_gates:
                raise GatingError(f"gate {gid!r}: id already used in this strategy")
        if len(set(new_ids)) != len(new_ids):
            raise GatingError(f"gate {gate.id!r}: quadrant ids repeated")
        if gate.parent is not None and gate.parent not in self.gates:
            hint = " (it is a quadrant gate; use one of its quadrants)" if gate.parent in self.quadrant_gates else ""
            raise GatingError(f"gate {gate.id!r}: parent gate {gate.parent!r} is not in the strategy{hint}")
        if isinstance(gate, BooleanGate):
            for ref, _ in gate.refs:
                if ref not in self.gates:
                    raise GatingError(f"gate {gate.id!r}: referenced gate {ref!r} is not in the strategy")
        for d in gate.dims:
            self._check_comp_ref(d, gate.id)
        if isinstance(gate, QuadrantGate):
            self.quadrant_gates[gate.id] = gate
            for q in gate.quadrants.values():
                self.gates[q.id] = q
        else:
            self.gates[gate.id] = gate
        self._order.append(gate)
        for d in gate.dims:
            for t in (d.transform, getattr(d, "ratio", None)):
                if t is not None and t.id is not None and t.id not in self.transforms:
                    self.transforms[t.id] = t
        return gate

    def _check_comp_ref(self, dim, gid):
        ref = dim.compensation
        if isinstance(ref, Compensation):
            if ref.id is None:
                raise GatingError(f"gate {gid!r}: a compensation used by a dimension needs an id")
            if ref.id not in self.compensations:
                self.compensations[ref.id] = ref
            elif self.compensations[ref.id] is not ref and self.compensations[ref.id] != ref:
                raise GatingError(f"gate {gid!r}: two different compensations share the id {ref.id!r}")
            dim.compensation = ref.id
        elif ref is not None and ref != "FCS" and ref not in self.compensations:
            raise GatingError(
                f"gate {gid!r}: compensation {ref!r} is not defined; known: "
                f"{['FCS', 'uncompensated', *self.compensations]}"
            )

    def _compensation(self, ref, fcs, gid):
        if ref is None:
            return None
        if ref == "FCS":
            return fcs
        try:
            return self.compensations[ref]
        except KeyError:
            raise GatingError(f"gate {gid!r}: compensation {ref!r} is not defined") from None

    # ------------------------------------------------------------------ queries
    @property
    def gate_ids(self) -> list:
        """Ids of all populations (every gate, each quadrant), parents before children."""
        return list(self.gates)

    def parent_chain(self, gate_id: str) -> list:
        """Gate ids from the root population down to ``gate_id`` (inclusive)."""
        self._gate(gate_id)
        chain = []
        g = gate_id
        while g is not None:
            chain.append(g)
            g = self.gates[g].parent
            if len(chain) > len(self.gates):  # pragma: no cover - add_gate forbids cycles
                raise GatingError(f"gate {gate_id!r}: cycle in the parent chain {chain}")
        return chain[::-1]

    def children(self, gate_id: str | None) -> list:
        """Ids of the gates whose parent is ``gate_id`` (None: the top-level gates)."""
        return [g for g, gate in self.gates.items() if gate.parent == gate_id]

    def _gate(self, gate_id):
        try:
            return self.gates[gate_id]
        except KeyError:
            hint = ""
            if gate_id in self.quadrant_gates:
                hint = f" ({gate_id!r} is a quadrant gate; its quadrants are {list(self.quadrant_gates[gate_id].quadrants)})"
            raise GatingError(f"gate {gate_id!r} is not in the strategy{hint}; gates are {self.gate_ids}") from None

    def required_channels(self, gate_ids=None) -> dict:
        """``{gate_id: [channel, ...]}`` of the raw channels each gate (with its dependencies) reads."""
        out = {}
        for gid in gate_ids or self.gate_ids:
            chans = []
            for dep in self._dependencies(gid):
                for d in self.gates[dep].dims:
                    for c in d.channels:
                        if c not in chans:
                            chans.append(c)
            out[gid] = chans
        return out

    def _dependencies(self, gate_id) -> list:
        """All gate ids whose masks ``gate_id`` needs (itself, parents, Boolean references)."""
        seen, stack = [], [gate_id]
        while stack:
            g = stack.pop()
            if g in seen:
                continue
            seen.append(g)
            gate = self._gate(g)
            if gate.parent is not None:
                stack.append(gate.parent)
            if isinstance(gate, BooleanGate):
                stack.extend(r for r, _ in gate.refs)
        return seen

    # ------------------------------------------------------------------ evaluation on one chunk
    def dimension_values(self, events, channels, dims, spillover=None):
        """Values of ``dims`` for an in-memory chunk of events.

        Parameters
        ----------
        events : numpy or cupy array (n_events, n_channels)
            Linear-scale channel values (after ``$PnE``/``$PnG`` scaling).
        channels : sequence of str
            ``$PnN`` of the columns of ``events``.
        dims : sequence of Dimension / RatioDimension (or channel names)
        spillover : Compensation, xarray.DataArray or str, optional
            The file's spillover matrix (for "FCS" compensation).

        Returns
        -------
        array (n_events, len(dims)) float64, on the backend of ``events``.
        """
        ctx = _Chunk(self, events, channels, spillover)
        dims = [_as_dim(d, "<dimension_values>") for d in dims]
        for d in dims:
            self._check_comp_ref(d, "<dimension_values>")
        cols = [ctx.values(d, "<dimension_values>") for d in dims]
        if not cols:
            return ctx.xp.empty((events.shape[0], 0), dtype=ctx.xp.float64)
        return ctx.xp.stack(cols, axis=1)

    def _full_mask(self, ctx: _Chunk, gid):
        m = ctx.mask_cache.get(gid)
        if m is not None:
            return m
        gate = self._gate(gid)
        xp = ctx.xp
        if isinstance(gate, BooleanGate):
            parts = []
            for ref, comp in gate.refs:
                r = self._full_mask(ctx, ref)
                parts.append(~r if comp else r)
            if gate.op == "not":
                own = ~parts[0]
            elif gate.op == "and":
                own = functools.reduce(lambda a, b: a & b, parts)
            else:
                own = functools.reduce(lambda a, b: a | b, parts)
        else:
            if gate.dims:
                values = xp.stack([ctx.values(d, gid) for d in gate.dims], axis=1)
            else:  # pragma: no cover - geometric gates always have dims
                values = xp.empty((ctx.events.shape[0], 0))
            own = gate.contains(values)
        if gate.parent is not None:
            own = own & self._full_mask(ctx, gate.parent)
        ctx.mask_cache[gid] = own
        return own

    def mask(self, events, channels, gate_id, spillover=None):
        """Membership of ``gate_id`` (parents included) for an in-memory chunk.

        ``events``: (n_events, n_channels) NumPy or CuPy array of linear-scale
        values whose columns are ``channels``.  Returns a bool array (n_events,).
        """
        ctx = _Chunk(self, events, channels, spillover)
        return self._full_mask(ctx, gate_id)

    def masks(self, events, channels, gate_ids=None, spillover=None):
        """Memberships of several gates at once: bool array (n_events, len(gate_ids))."""
        ids = list(gate_ids) if gate_ids is not None else self.gate_ids
        ctx = _Chunk(self, events, channels, spillover)
        xp = ctx.xp
        if not ids:
            return xp.zeros((events.shape[0], 0), dtype=bool)
        return xp.stack([self._full_mask(ctx, g) for g in ids], axis=1)

    # ------------------------------------------------------------------ validation and apply
    def validate(self, channels, spillover=None, gate_ids=None):
        """Check that every gate can be evaluated on data with ``channels``.

        Raises
        ------
        GatingError
            Naming the gate and the missing channel or compensation.
        """
        channels = list(channels)
        fcs = _fcs_compensation(spillover)
        ids = gate_ids if gate_ids is not None else self.gate_ids
        needed = set()
        for gid in ids:
            needed.update(self._dependencies(gid))
        for gid in [g for g in self.gate_ids if g in needed]:
            for d in self.gates[gid].dims:
                comp = self._compensation(d.compensation, fcs, gid)
                for c in d.channels:
                    if comp is not None and comp.output_index(c) is not None:
                        missing = [x for x in comp.channels_in if x not in channels]
                        if missing:
                            raise GatingError(
                                f"gate {gid!r}: compensation {comp.id!r} needs detector channel(s) {missing}, "
                                f"not in the sample; channels are {channels}"
                            )
                    elif c not in channels:
                        via = f" (nor an output of compensation {comp.id!r})" if comp is not None else ""
                        raise GatingError(
                            f"gate {gid!r}: channel {c!r} is not in the sample{via}; channels are {channels}"
                        )

    def apply(self, sample, backend: str | None = None, gate_ids=None) -> "GatingResults":
        """Apply the strategy to a sample, lazily (one dask graph, one pass over the row chunks).

        Parameters
        ----------
        sample : FCSSample, or (events, channels)
            An :class:`evflow.FCSSample` (raw values are scaled with ``$PnE``
            and ``$PnG`` first, as Gating-ML requires), or a tuple of a
            NumPy/CuPy/dask array of linear-scale events and channel names.
        backend : {None, 'auto', 'numpy', 'cupy'}
            Where the chunks are evaluated (default: ``EVFLOW_BACKEND`` / auto).
        gate_ids : sequence of str, optional
            Only these gates (and what they need); default all.

        Returns
        -------
        GatingResults
        """
        import dask.array as da

        events, channels, spill, name = _sample_events(sample)
        ids = list(gate_ids) if gate_ids is not None else self.gate_ids
        needed = set()
        for g in ids:
            needed.update(self._dependencies(g))
        ids = [g for g in self.gate_ids if g in needed]
        if not ids:
            raise GatingError("the gating strategy has no gates to apply")
        if events.ndim != 2 or events.shape[1] != len(channels):
            raise GatingError(
                f"sample {name!r}: events have shape {tuple(events.shape)} but {len(channels)} channel names"
            )
        if events.shape[0] == 0:
            raise GatingError(f"sample {name!r} has no events; nothing to gate")
        needs_fcs = any(
            d.compensation == "FCS" for g in ids for dep in self._dependencies(g) for d in self.gates[dep].dims
        )
        spill = spill if needs_fcs else None
        if isinstance(spill, Exception):
            raise GatingError(f"sample {name!r}: 'FCS' compensation is used but the file's spillover is invalid: {spill}")
        self.validate(channels, spill, ids)
        name_backend = resolve_backend(backend)
        if not isinstance(events, da.Array):
            events = da.from_array(events, chunks=(max(1, min(events.shape[0], 1 << 20)), -1))
        if len(events.chunks[1]) != 1:
            events = events.rechunk({1: -1})
        events = to_backend(events, name_backend)
        xp = array_module(events)
        fcs = _fcs_compensation(spill)
        fn = functools.partial(_chunk_masks, strategy=self, channels=tuple(channels), ids=tuple(ids), fcs=fcs)
        masks = events.map_blocks(
            fn,
            dtype=bool,
            chunks=(events.chunks[0], (len(ids),)),
            meta=xp.empty((0, len(ids)), dtype=bool),
        )
        return GatingResults(self, masks, ids, int(events.shape[0]), name)

    def __repr__(self):
        return f"GatingStrategy({len(self.gates)} gates: {self.gate_ids})"


def _chunk_masks(block, strategy, channels, ids, fcs):
    xp = array_module(block)
    if block.shape[0] == 0:
        return xp.zeros((0, len(ids)), dtype=bool)
    return strategy.masks(block, channels, ids, fcs)


def _sample_events(sample):
    """(events (dask/array), channels, spillover, name) of an FCSSample or (events, channels)."""
    if isinstance(sample, tuple) and len(sample) == 2:
        events, channels = sample
        return events, [str(c) for c in channels], None, "<array>"
    if not all(hasattr(sample, a) for a in ("events", "channels", "meta")):
        raise GatingError(
            f"apply() expects an FCSSample (evflow.read_fcs) or (events, channels), got {type(sample).__name__}"
        )
    events = sample.linear_events()
    try:
        spill = sample.spillover
    except Exception as exc:  # a malformed $SPILLOVER only matters when "FCS" compensation is used
        spill = exc
    name = getattr(sample, "path", None) or getattr(sample, "name", "<sample>")
    return events, list(sample.channels), spill, str(name)


class GatingResults:
    """Result of :meth:`GatingStrategy.apply`: lazy memberships and a statistics table."""

    def __init__(self, strategy, masks, gate_ids, n_events, sample_name=None):
        self.strategy = strategy
        self.masks = masks  # dask array (n_events, n_gates) of bool, NumPy or CuPy chunks
        self.gate_ids = list(gate_ids)
        self.n_events = n_events
        self.sample_name = sample_name
        self._counts = None

    def membership(self, gate_id: str):
        """Bool dask array (n_events,) of events in ``gate_id`` (parents included), NumPy chunks.

        ``numpy.asarray(result.membership(gid))`` computes it.
        """
        if gate_id not in self.gate_ids:
            raise GatingError(f"gate {gate_id!r} was not applied; gates are {self.gate_ids}")
        col = self.masks[:, self.gate_ids.index(gate_id)]
        if array_module(col).__name__ != "numpy":
            col = col.map_blocks(to_numpy, dtype=bool, meta=np.empty((0,), dtype=bool))
        return col

    def counts(self) -> dict:
        """``{gate_id: number of events}``, computed once (one pass for all gates)."""
        if self._counts is None:
            total = to_numpy(self.masks.sum(axis=0, dtype=np.int64))
            self._counts = {g: int(c) for g, c in zip(self.gate_ids, total)}
        return dict(self._counts)

    @property
    def stats(self):
        """pandas DataFrame indexed by gate id: parent, count, percent_parent, percent_total."""
        import pandas as pd

        counts = self.counts()
        rows = []
        for g in self.gate_ids:
            parent = self.strategy.gates[g].parent
            if parent is None:
                pc = self.n_events
            elif parent in counts:
                pc = counts[parent]
            else:
                pc = None
            c = counts[g]
            rows.append(
                {
                    "gate_id": g,
                    "parent": parent,
                    "count": c,
                    "percent_parent": (100.0 * c / pc) if pc else (float("nan")),
                    "percent_total": 100.0 * c / self.n_events,
                }
            )
        df = pd.DataFrame(rows).set_index("gate_id")
        df.attrs["n_events"] = self.n_events
        df.attrs["sample"] = self.sample_name
        return df

    def __repr__(self):
        return f"GatingResults({self.sample_name!r}, n_events={self.n_events}, gates={self.gate_ids})"
