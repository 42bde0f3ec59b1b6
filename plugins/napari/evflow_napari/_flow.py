"""Flow-cytometry side of the plugin, free of Qt: samples, display transforms,
density images, napari shapes -> evflow gates, phenotype counts.

Display coordinates: both axes of a density image are on a transform's
display scale in [0, 1] (Gating-ML semantics); napari world coordinates of
the density layer and its gate layer are these display values, rows = y
channel, columns = x channel.  A shape drawn there is therefore a gate on
``Dimension(channel, transform)`` with the drawn coordinates as they are.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from evflow.errors import GatingError

__all__ = [
    "TRANSFORM_KINDS",
    "open_sample",
    "channel_top",
    "make_transform",
    "default_channels",
    "FlowView",
    "shape_to_gate",
    "shapes_to_gates",
    "gates_to_shapes",
    "convert_shape",
    "convert_shapes",
    "strategy_shapes",
]

TRANSFORM_KINDS = ("logicle", "asinh", "log", "linear")

_CACHE: dict = {}
_LOCK = threading.Lock()


def open_sample(path, data_offsets="auto"):
    """The :class:`evflow.FCSSample` of ``path`` read with ``data_offsets`` (see :func:`evflow.read_fcs`;
    cached by path, size, modification time and that choice)."""
    import evflow

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, str(data_offsets))
    with _LOCK:
        s = _CACHE.get(key)
        if s is None:
            s = evflow.read_fcs(p, data_offsets=data_offsets)
            if len(_CACHE) > 16:
                _CACHE.clear()
            _CACHE[key] = s
    return s


def channel_top(sample, channel) -> float:
    """Top of the linear scale of a channel (``$PnR`` after ``$PnE`` decoding and ``$PnG`` gain).

    The sample's :meth:`~evflow.FCSSample.channel_limits`, read leniently (a malformed ``$PnE``
    is linear, a malformed ``$PnG`` is 1), 262144 without a usable ``$PnR``; at least 1 on a
    linear channel.
    """
    _, top = sample.channel_limits(channel, default=262144.0, strict=False)
    if sample.channel_log(channel, strict=False)[0] > 0:
        return top
    return max(top, 1.0)


def make_transform(kind: str, top: float):
    """A display transform onto [0, 1]: 'logicle' (W=0.5, M=4.5), 'asinh' (M=4.5), 'log' (M=4.5) or 'linear'."""
    import evflow

    top = float(top)
    if kind == "logicle":
        return evflow.transforms.LogicleTransform(t=top, w=0.5, m=4.5, a=0.0)
    if kind == "asinh":
        return evflow.transforms.AsinhTransform(t=top, m=4.5, a=0.0)
    if kind == "log":
        return evflow.transforms.LogTransform(t=top, m=4.5)
    if kind == "linear":
        return evflow.transforms.LinearTransform(t=top, a=0.0)
    raise GatingError(f"display transform {kind!r} is not one of {TRANSFORM_KINDS}")


def default_channels(sample) -> tuple[str, str]:
    """The first two channels that are not the time channel."""
    time = sample.time_channel
    chans = [c for c in sample.channels if c != time and c.lower() != "time"]
    if len(chans) < 2:
        raise GatingError(f"{sample.path}: a density plot needs two channels besides time, found {sample.channels}")
    return chans[0], chans[1]


def _label(sample, channel):
    i = sample.channel_index(channel)
    m = sample.markers[i] if sample.markers else None
    return f"{channel} ({m})" if m and m != channel else str(channel)


class FlowView:
    """One sample shown as a density image of two channels on display scales.

    Parameters
    ----------
    path : path of an FCS file
    x, y : str, optional
        Channels ($PnN or $PnS); default :func:`default_channels`.
    x_transform, y_transform : str, optional
        One of :data:`TRANSFORM_KINDS` (top of scale from the channel's $PnR); default
        :func:`default_transform` (linear for scatter, logicle for fluorescence).
    bins : int
        Density image size (bins per axis).
    data_offsets : {"auto", "header", "text"}
        Where the DATA lies when HEADER and TEXT disagree (an experiment's sample passes its setting).
    """

    def __init__(self, path, x=None, y=None, x_transform=None, y_transform=None, bins=512, experiment=None,
                 data_offsets="auto"):
        self.path = str(Path(path).resolve())
        self.experiment = None if experiment is None else str(experiment)  # the experiment file it was opened from
        self.data_offsets = str(data_offsets)
        self.sample = open_sample(self.path, self.data_offsets)
        dx, dy = default_channels(self.sample)
        self.x = x or dx
        self.y = y or dy
        for c in (self.x, self.y):
            self.sample.channel_index(c)  # FCSError naming the file and channel
        self.x_transform = x_transform or default_transform(self.x)
        self.y_transform = y_transform or default_transform(self.y)
        self.bins = int(bins)
        self._xy_cache = (None, None)  # ((x, y), linear-scale events of the two channels)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def transform(self, channel, kind):
        return make_transform(kind, channel_top(self.sample, channel))

    @property
    def transforms(self):
        return self.transform(self.x, self.x_transform), self.transform(self.y, self.y_transform)

    def dimensions(self):
        import evflow

        tx, ty = self.transforms
        return [evflow.gates.Dimension(self.x, tx), evflow.gates.Dimension(self.y, ty)]

    def xy_events(self):
        """Linear-scale events of the two shown channels, read once per channel pair and kept.

        A transform change then only re-bins these two columns in memory
        instead of reading and scaling every channel of the file again.
        """
        key, cached = self._xy_cache
        if key != (self.x, self.y):
            import numpy as np

            cols = [self.sample.channel_index(self.x), self.sample.channel_index(self.y)]
            cached = np.ascontiguousarray(self.sample.linear_events()[:, cols].compute())
            self._xy_cache = ((self.x, self.y), cached)
        return cached

    def events_of(self, channels):
        """(linear-scale events, $PnN names) of some channels, in memory, kept for the next call; None when
        a channel is not a plain $PnN name of the sample (the caller then reads the sample)."""
        names = list(dict.fromkeys(str(c) for c in channels))
        if any(c not in self.sample.channels for c in names):
            return None
        cache = getattr(self, "_events_cache", None)
        if cache is None or not set(names) <= set(cache[1]):
            have = [] if cache is None else list(cache[1])
            want = have + [c for c in names if c not in have]
            cols = [self.sample.channel_index(c) for c in want]
            arr = np.ascontiguousarray(self.sample.linear_events()[:, cols].compute())
            cache = (arr, want)
            self._events_cache = cache
        return cache

    def density(self, parent=None, strategy=None):
        """``evflow.density2d`` of the two channels on [0, 1) x [0, 1) display scales."""
        import evflow

        rng = ((0.0, 1.0), (0.0, 1.0))
        if parent is None:  # all events: the two kept columns are enough
            names = [self.sample.channels[self.sample.channel_index(c)] for c in (self.x, self.y)]
            if names[0] == names[1]:
                names = [names[0], names[1] + " (y)"]
            return evflow.density2d((self.xy_events(), names), names[0], names[1], bins=self.bins, range=rng,
                                    transforms=self.transforms)
        return evflow.density2d(self.sample, self.x, self.y, bins=self.bins, range=rng,
                                transforms=self.transforms, parent=parent, strategy=strategy)

    def spec(self) -> dict:
        """What the layers' metadata keep (plain data)."""
        out = {"kind": "flow", "path": self.path, "x": self.x, "y": self.y, "x_transform": self.x_transform,
               "y_transform": self.y_transform, "bins": self.bins}
        if self.experiment:
            out["experiment"] = self.experiment
        if self.data_offsets != "auto":
            out["data_offsets"] = self.data_offsets
        return out

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["path"], spec["x"], spec["y"], spec["x_transform"], spec["y_transform"], spec["bins"],
                   experiment=spec.get("experiment"), data_offsets=spec.get("data_offsets", "auto"))

    def image_layer_data(self, density=None):
        """napari LayerData of the density image: data ``log10(1 + events per bin)``, rows = y."""
        d = self.density() if density is None else density
        counts = np.asarray(d.values).T  # (y, x)
        step = 1.0 / self.bins
        meta = {"evflow": {**self.spec(), "density": counts, "n_total": int(d.attrs["n_total"])}}
        kw = {
            "name": f"{self.name} density",
            "scale": (step, step),
            "translate": (step / 2, step / 2),
            "colormap": "viridis",
            "metadata": meta,
            "contrast_limits": (0.0, max(float(np.log10(1.0 + counts.max())), 1e-3)),
            "axis_labels": (_label(self.sample, self.y), _label(self.sample, self.x)),
        }
        return np.log10(1.0 + counts).astype(np.float32), kw, "image"

    def gates_layer_data(self):
        """napari LayerData of an empty Shapes layer for the gates of this view."""
        kw = {
            "name": f"{self.name} gates",
            "ndim": 2,
            "edge_color": "red",
            "face_color": "transparent",
            "edge_width": 0.004,
            "metadata": {"evflow": {**self.spec(), "kind": "gates"}},
            "axis_labels": (_label(self.sample, self.y), _label(self.sample, self.x)),
        }
        return [], kw, "shapes"


# ------------------------------------------------------------------ shapes <-> gates


def shape_to_gate(vertices, shape_type: str, gate_id: str, dims):
    """An evflow gate from one napari shape drawn in display coordinates.

    Parameters
    ----------
    vertices : (n, 2) array
        Shape vertices as napari stores them: (row, column) = (y, x) display values.
    shape_type : {'polygon', 'rectangle', 'ellipse'}
    gate_id : str
    dims : [Dimension x, Dimension y]

    Returns
    -------
    PolygonGate, RectangleGate (axis-aligned rectangle) or EllipsoidGate.
    """
    import evflow

    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 2:
        raise GatingError(f"gate {gate_id!r}: expected 2-D shape vertices (n, 2), got shape {v.shape}")
    xy = v[:, ::-1]  # (x, y)
    if shape_type == "rectangle":
        xs, ys = np.unique(np.round(xy[:, 0], 12)), np.unique(np.round(xy[:, 1], 12))
        if len(xs) == 2 and len(ys) == 2:
            return evflow.gates.RectangleGate(gate_id, dims, mins=[xy[:, 0].min(), xy[:, 1].min()],
                                        maxs=[xy[:, 0].max(), xy[:, 1].max()])
        return evflow.gates.PolygonGate(gate_id, dims, xy)
    if shape_type == "polygon":
        if len(xy) < 3:
            raise GatingError(f"gate {gate_id!r}: a polygon needs at least 3 vertices, got {len(xy)}")
        return evflow.gates.PolygonGate(gate_id, dims, xy)
    if shape_type == "ellipse":
        if len(xy) != 4:
            raise GatingError(f"gate {gate_id!r}: an ellipse is stored as 4 bounding-box corners, got {len(xy)}")
        centre = xy.mean(axis=0)
        e1 = (xy[1] - xy[0]) / 2.0
        e2 = (xy[3] - xy[0]) / 2.0
        cov = np.outer(e1, e1) + np.outer(e2, e2)
        return evflow.gates.EllipsoidGate(gate_id, dims, mean=centre, covariance=cov, distance_square=1.0)
    raise GatingError(f"gate {gate_id!r}: napari shape type {shape_type!r} is not a gate "
                      "(draw a polygon, rectangle or ellipse)")


def _gate_ids(layer_or_n, names=None):
    n = layer_or_n
    names = list(names) if names is not None else []
    out = []
    for i in range(n):
        nm = str(names[i]) if i < len(names) and names[i] not in (None, "", "nan") else f"gate{i + 1}"
        out.append(nm)
    if len(set(out)) != len(out):
        seen = {}
        for i, nm in enumerate(out):
            seen[nm] = seen.get(nm, 0) + 1
            if seen[nm] > 1:
                out[i] = f"{nm}_{seen[nm]}"
    return out


def shapes_to_gates(data, shape_types, spec, names=None):
    """Gates (list) of all shapes of a gates layer; ``spec`` is the layer's ``metadata['evflow']``."""
    view = FlowView.from_spec(spec)
    dims = view.dimensions()
    ids = _gate_ids(len(data), names)
    return [shape_to_gate(v, t, gid, dims) for v, t, gid in zip(data, shape_types, ids)]


def gates_to_shapes(strategy, x, y):
    """(vertices list, shape types, gate ids) of the 2-D gates of ``strategy`` on channels ``x``, ``y``.

    Polygons and rectangles map back one-to-one; ellipses as their bounding
    boxes; gates on other channels are left out.
    """
    import evflow

    data, types, ids = [], [], []
    for gid, g in strategy.gates.items():
        chans = [d.channel for d in getattr(g, "dims", [])]
        if chans != [x, y]:
            continue
        if isinstance(g, evflow.gates.PolygonGate):
            xy = np.asarray(g.vertices, float)
            data.append(xy[:, ::-1])
            types.append("polygon")
        elif isinstance(g, evflow.gates.RectangleGate):
            (x0, y0), (x1, y1) = g.mins, g.maxs
            if None in (x0, y0, x1, y1):
                continue
            data.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float))
            types.append("rectangle")
        elif isinstance(g, evflow.gates.EllipsoidGate):
            w, vecs = np.linalg.eigh(np.asarray(g.covariance, float) * float(g.distance_square))
            e1, e2 = vecs[:, 0] * np.sqrt(w[0]), vecs[:, 1] * np.sqrt(w[1])
            c = np.asarray(g.mean, float)
            corners = np.array([c - e1 - e2, c + e1 - e2, c + e1 + e2, c - e1 + e2])
            data.append(corners[:, ::-1])
            types.append("ellipse")
        else:
            continue
        ids.append(gid)
    return data, types, ids


class _Identity:
    """The transform of a dimension without one: gate coordinates are channel values."""

    @staticmethod
    def apply(x):
        return np.asarray(x, np.float64)

    inverse = apply


def _event_extent(view, axis):
    """Display range (lo, hi) of the view's events on one axis, padded: open gate ends are drawn to it."""
    col = np.asarray(view.transforms[axis].apply(view.xy_events()[:, axis].astype(np.float64)), np.float64)
    col = col[np.isfinite(col)]
    lo = min(float(col.min()) if col.size else 0.0, 0.0)
    hi = max(float(col.max()) if col.size else 1.0, 1.0)
    return lo - 0.01, hi + 0.01


def strategy_shapes(strategy, view):
    """(vertices list, shape types, gate ids, ids left out) of the gates of ``strategy`` drawn on ``view``.

    Drawn: 2-D polygon, rectangle and ellipse gates on the view's two channels and 1-D range gates on
    either of them (across the whole other axis), plain dimensions only (no compensation or ratio), each
    redrawn from the gate's own scale onto the view's display scales (an open range end goes to just
    beyond the events shown). Quadrants, boolean gates and gates on other channels are left out.
    """
    import evflow

    G = evflow.gates
    data, types, ids, left = [], [], [], []
    new = view.transforms
    for gid, g in getattr(strategy, "gates", {}).items():
        dims = list(getattr(g, "dims", []) or [])
        chans = [getattr(d, "channel", None) for d in dims]
        plain = dims and all(type(d) is G.Dimension and d.compensation is None for d in dims)
        if not plain or not isinstance(g, (G.RectangleGate, G.PolygonGate, G.EllipsoidGate)):
            left.append(gid)
            continue
        old = [d.transform or _Identity() for d in dims]

        def remap(v, k, axis, old=old):  # gate scale of dimension k -> display of view axis
            return float(np.asarray(new[axis].apply(old[k].inverse(np.array([float(v)], np.float64))))[0])

        if isinstance(g, G.RectangleGate) and len(dims) == 1 and chans[0] in (view.x, view.y):
            axis = 0 if chans[0] == view.x else 1
            ext = _event_extent(view, axis)
            lo = ext[0] if g.mins[0] is None else remap(g.mins[0], 0, axis)
            hi = ext[1] if g.maxs[0] is None else remap(g.maxs[0], 0, axis)
            lo, hi = max(lo, ext[0]), min(hi, ext[1])  # beyond every event: the same events inside
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                left.append(gid)
                continue
            o0, o1 = _event_extent(view, 1 - axis)
            (x0, x1), (y0, y1) = ((lo, hi), (o0, o1)) if axis == 0 else ((o0, o1), (lo, hi))
            data.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float))
            types.append("rectangle")
        elif chans == [view.x, view.y]:
            if isinstance(g, G.RectangleGate):
                ext = [_event_extent(view, a) for a in (0, 1)]
                lo = [ext[a][0] if g.mins[a] is None else max(remap(g.mins[a], a, a), ext[a][0]) for a in (0, 1)]
                hi = [ext[a][1] if g.maxs[a] is None else min(remap(g.maxs[a], a, a), ext[a][1]) for a in (0, 1)]
                if not all(np.isfinite(lo[a]) and np.isfinite(hi[a]) and lo[a] < hi[a] for a in (0, 1)):
                    left.append(gid)
                    continue
                data.append(np.array([[lo[1], lo[0]], [lo[1], hi[0]], [hi[1], hi[0]], [hi[1], lo[0]]], float))
                types.append("rectangle")
            else:
                d, t, _ = gates_to_shapes(_One(gid, g), view.x, view.y)
                same = all(type(a) is type(b) and getattr(a, "params", None) == getattr(b, "params", None)
                           for a, b in zip(old, new))
                if same:
                    data.append(d[0])
                    types.append(t[0])
                else:
                    v, st = convert_shape(d[0], t[0], tuple(old), tuple(new))
                    data.append(v)
                    types.append(st)
        else:
            left.append(gid)
            continue
        ids.append(gid)
    return data, types, ids, left


class _One:
    """A one-gate stand-in for a strategy (what :func:`gates_to_shapes` reads)."""

    def __init__(self, gid, gate):
        self.gates = {gid: gate}


def _densify(xy, shape_type, per_edge):
    """Boundary points (x, y) of a shape: each straight edge cut into ``per_edge`` pieces, an ellipse
    (4 bounding-box corners) sampled at ``4 * per_edge`` angles."""
    if shape_type == "ellipse":
        c = xy.mean(axis=0)
        e1, e2 = (xy[1] - xy[0]) / 2.0, (xy[3] - xy[0]) / 2.0
        t = np.arange(4 * per_edge) * (2.0 * np.pi / (4 * per_edge))
        return c + np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2
    nxt = np.roll(xy, -1, axis=0)
    f = np.arange(per_edge) / per_edge
    return (xy[:, None, :] + f[None, :, None] * (nxt - xy)[:, None, :]).reshape(-1, 2)


def _remap_axis(v, old, new, floor):
    """Display values of transform ``old`` -> data -> display values of transform ``new``."""
    out = np.asarray(new.apply(old.inverse(np.asarray(v, np.float64))), np.float64)
    bad = ~np.isfinite(out)
    if bad.any():  # data outside the new scale's domain (log of <= 0): below every event shown
        good = out[~bad]
        lo = min(good.min() if good.size else 0.0, floor if floor is not None else 0.0) - 1e-3
        out[bad] = lo
    return out


def convert_shape(vertices, shape_type, old, new, per_edge=32, floors=(None, None)):
    """A gate shape drawn on the display scales of ``old`` transforms, redrawn on those of ``new``.

    Each vertex goes display -> data through ``old[i].inverse`` and data -> display
    through ``new[i].apply`` (axes whose entry is None stay as they are).
    Straight edges are densified first (``per_edge`` points each) so that the
    polygon follows the curved image of the old edge; axis-aligned rectangles
    stay rectangles (the two transforms act on each axis separately); rotated
    rectangles and ellipses become polygons.

    Parameters
    ----------
    vertices : (n, 2) array of (y, x) display values, as napari stores them.
    shape_type : {'polygon', 'rectangle', 'ellipse'}
    old, new : (x transform or None, y transform or None)
    per_edge : int
        Points per straight edge (ellipses: ``4 * per_edge`` points).
    floors : (float or None, float or None)
        Per axis, a display value on the new scale below every event; vertices
        whose data fall outside the new scale's domain (``log`` of values <= 0)
        go just below it.

    Returns
    -------
    (vertices (m, 2) as (y, x), shape type)
    """
    v = np.asarray(vertices, np.float64)
    xy = v[:, ::-1].copy()
    if shape_type == "rectangle":
        xs, ys = np.unique(np.round(xy[:, 0], 12)), np.unique(np.round(xy[:, 1], 12))
        if not (len(xs) == 2 and len(ys) == 2):
            xy, shape_type = _densify(xy, "polygon", per_edge), "polygon"
    elif shape_type in ("polygon", "ellipse"):
        xy, shape_type = _densify(xy, shape_type, per_edge), "polygon"
    else:
        raise GatingError(f"napari shape type {shape_type!r} is not a gate (draw a polygon, rectangle or ellipse)")
    for i in range(2):
        if old[i] is not None and new[i] is not None:
            xy[:, i] = _remap_axis(xy[:, i], old[i], new[i], floors[i])
    return xy[:, ::-1], shape_type


def convert_shapes(data, shape_types, old_view, new_view, per_edge=32):
    """Gate shapes of ``old_view`` redrawn for ``new_view`` (see :func:`convert_shape`).

    An axis is converted when it keeps its channel and changes its transform;
    an axis whose channel changes keeps the drawn display values.
    Returns (list of vertices, list of shape types).
    """
    old, new, floors = [None, None], [None, None], [None, None]
    for i, (a, b) in enumerate(((old_view.x, new_view.x), (old_view.y, new_view.y))):
        ka = (old_view.x_transform, old_view.y_transform)[i]
        kb = (new_view.x_transform, new_view.y_transform)[i]
        if a == b and ka != kb:
            old[i], new[i] = old_view.transforms[i], new_view.transforms[i]
            if kb == "log":
                col = np.asarray(new_view.xy_events()[:, i])
                pos = col[col > 0]
                if pos.size:
                    floors[i] = float(new[i].apply(np.array([pos.min()]))[0])
    if old == [None, None]:
        return [np.asarray(d, np.float64) for d in data], list(shape_types)
    out = [convert_shape(d, t, old, new, per_edge, floors) for d, t in zip(data, shape_types)]
    return [o[0] for o in out], [o[1] for o in out]


def counts_for(view: FlowView, gate, markers: dict):
    """``evflow.count_phenotypes`` of the view's sample in ``gate`` (None: all events).

    ``markers``: name -> (channel, threshold, transform kind): the threshold is on the channel's
    display scale of that transform, or in channel units (linear scale) when the kind is None.
    The events of the gate's and markers' channels are read once and kept in memory
    (:meth:`FlowView.events_of`), so a recount after an edit only gates and counts.
    """
    import evflow

    spec = {m: (ch, float(thr)) if kind is None else (ch, float(thr), view.transform(ch, kind))
            for m, (ch, thr, kind) in markers.items()}
    dims = [] if gate is None else list(getattr(gate, "dims", []))
    plain = gate is None or (getattr(gate, "parent", None) is None and all(
        type(d).__name__ == "Dimension" and d.compensation is None for d in dims))
    data = view.events_of([*[d.channel for d in dims], *[ch for ch, *_ in spec.values()]]) if plain else None
    return evflow.count_phenotypes(view.sample if data is None else data, parent=gate, markers=spec)


def default_markers(sample, exclude=(), max_markers=None):
    """Marker channels of a sample: the channels with a $PnS name, else all but time and scatter.

    ``max_markers`` keeps the first few (phenotypes grow as 2**k)."""
    out = _default_markers(sample, exclude)
    if max_markers is not None and len(out) > max_markers:
        out = dict(list(out.items())[:int(max_markers)])
    return out


def _default_markers(sample, exclude=()):
    time = sample.time_channel
    out = {}
    for i, c in enumerate(sample.channels):
        if c == time or c.lower() == "time":
            continue
        m = sample.markers[i] if sample.markers else None
        if m:
            out[m] = c
    if not out:
        for c in sample.channels:
            u = c.upper()
            if c == time or u == "TIME" or u.startswith(("FSC", "SSC")) or c in exclude:
                continue
            out[c] = c
    return out


def is_scatter(channel) -> bool:
    """Forward / side scatter channels (FSC*, SSC*): shown on a linear scale by default."""
    return str(channel).upper().startswith(("FSC", "SSC"))


def default_transform(channel) -> str:
    """Default display transform: linear for scatter, logicle for fluorescence."""
    return "linear" if is_scatter(channel) else "logicle"


def tick_label(v) -> str:
    """Short tick label of a channel value: 0, 10, 250, 1k, 65.5k, 1M, ..."""
    v = float(v)
    if v == 0:
        return "0"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def axis_ticks(transform, top, n_linear=5):
    """Tick positions on the display scale [0, 1] and their labels in channel units for one axis.

    Linear: ``n_linear`` even steps up to ``top``; logicle / asinh / log: 0 (when shown) and decades.
    """
    if type(transform).__name__ == "LinearTransform":
        vals = np.linspace(0.0, float(top), n_linear)
    else:
        vals = [0.0] + [10.0 ** k for k in range(0, int(np.floor(np.log10(max(top, 1.0)))) + 1)]
    pos, lab = [], []
    for v in vals:
        try:
            d = float(np.asarray(transform.apply(np.array([v], np.float64)))[0])
        except Exception:  # noqa: BLE001 - outside the transform's domain (log of 0)
            continue
        if np.isfinite(d) and -1e-9 <= d <= 1 + 1e-9:
            pos.append(min(max(d, 0.0), 1.0))
            lab.append(tick_label(v))
    return np.asarray(pos), lab


def fspath(p):
    return os.fspath(p)
