"""Fast recount of a flow sample after a gate edit, free of Qt: the gating widget's counting.

:class:`Recounter` keeps, per sample in memory, everything that does not change when one gate is
edited: the events of the channels used, their values on each display scale (gate dimensions), the
membership of every gate already evaluated (by its geometry), each marker's positive events (by
channel and threshold) and the phenotype code of the markers (bit ``i`` = marker ``i``, one byte or
two per event).  A recount after an edit then evaluates the edited gate only and counts with
``np.bincount(code[inside])``.

The parent gate is compiled by evflow's own phenotype plan (:func:`evflow.count_phenotypes`' plan:
the same raw bounds for rectangles, the same lookup tables for logicle / hyperlog / log / asinh
dimensions, the same even-odd polygon and ellipse tests in float64), so the counts are
``count_phenotypes``' integers.  Gates the plan cannot fuse (compensated or ratio dimensions,
boolean gates, quadrants) and markers on compensated channels are counted by ``count_phenotypes``
itself.
"""

from __future__ import annotations

import threading

import numpy as np

from evflow.kernels._numba import njit
from evflow.kernels.phenotype_numpy import ellipse_inside, table_eval

__all__ = ["Recounter"]


@njit(cache=True, nogil=True)
def _polygon_mask(px, py, vx, vy, out):  # pragma: no cover - compiled; the NumPy twin is the kernels' oracle
    """Even-odd test as the fused kernel does it (``(yi > py) != (yj > py)`` and ``px < xc``), after a
    bounding-box check; non-finite points are outside."""
    nv = vx.size
    x0, x1, y0, y1 = vx.min(), vx.max(), vy.min(), vy.max()
    for i in range(px.size):
        x = px[i]
        y = py[i]
        if not (x >= x0 and x <= x1 and y >= y0 and y <= y1):  # outside the box (and NaN, inf)
            out[i] = False
            continue
        inside = False
        j = nv - 1
        for k in range(nv):
            xi, yi, xj, yj = vx[k], vy[k], vx[j], vy[j]
            if (yi > y) != (yj > y):
                xc = (xj - xi) * (y - yi) / (yj - yi) + xi
                if x < xc:
                    inside = not inside
            j = k
        out[i] = inside


class _Unfused(Exception):
    """The gate or a marker needs ``count_phenotypes`` itself."""


class Recounter:
    """Phenotype counts of one flow sample in a gate, recounted fast after an edit.

    Parameters
    ----------
    view : evflow_napari._flow.FlowView
        The sample; its :meth:`~evflow_napari._flow.FlowView.events_of` keeps the events in memory.
    max_gates : int
        Gate memberships kept (least recently used first out).
    """

    def __init__(self, view, max_gates=32):
        self.view = view
        self.max_gates = int(max_gates)
        self._dims: dict = {}
        self._gates: dict = {}
        self._pos: dict = {}
        self._code: dict = {}
        self.last = {}  # what the last count reused / computed (for the benchmark and tests)
        self._lock = threading.Lock()  # one count at a time per sample (worker threads share the caches)

    # ------------------------------------------------------------ pieces
    def _events(self, channels):
        got = self.view.events_of(channels)
        if got is None:
            raise _Unfused("channels not in memory")
        arr, names = got
        return {c: arr[:, names.index(c)] for c in channels}

    def _plan(self, gate, markers):
        """evflow's fused plan of ``gate`` and the markers on the sample's channels (raw columns only)."""
        from evflow.flow._plan import _compile, _make_plan, _markers_spec, _parent_gates

        chain, mask_gate, _ = _parent_gates(gate, None)
        spec = _markers_spec(markers)
        sample = self.view.sample
        comp, use_mask, _, mslots = _compile(sample, "events", chain, mask_gate, None, spec, None)
        plan = _make_plan(comp, mslots, [float(t) for _, _, t in spec])
        if use_mask is not None or any(kind != 0 for kind, _ in plan.slots):
            raise _Unfused("compensated, ratio or boolean gate")
        slot_channel = [sample.channels[idx] for _, idx in plan.slots]
        return plan, slot_channel, spec

    def _dim_values(self, dim, slot_channel, ev):
        s, kind, p0, p1, table = dim
        tkey = None if table is None else (len(table), float(table[0]), float(table[-1]),
                                           hash(np.asarray(table, np.float64).tobytes()))
        key = (slot_channel[s], kind, float(p0), float(p1), tkey)
        v = self._dims.get(key)
        if v is None:
            x = ev[slot_channel[s]].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                if kind == 0:
                    v = x
                elif kind == 1:
                    v = (x + p0) / p1
                else:
                    v = table_eval(x, table, p0, p1)
            if len(self._dims) > 16:
                self._dims.clear()
            self._dims[key] = v
        return key, v

    def gate_mask(self, plan, slot_channel, ev):
        """Membership of the plan's parent gate (cached by its geometry); (mask, reused?)."""
        n = self.view.sample.n_events
        keys, dims = [], []
        for d in plan.dims:
            k, v = self._dim_values(d, slot_channel, ev)
            keys.append(k)
            dims.append(v)
        key = (tuple(("r", slot_channel[s], lo, hi) for s, lo, hi in plan.ranges),
               tuple(("p", keys[dx], keys[dy], np.asarray(vt, np.float64).tobytes()) for dx, dy, vt in plan.polygons),
               tuple(("e", tuple(keys[d] for d in ed), np.asarray(mu, np.float64).tobytes(),
                      np.asarray(ic, np.float64).tobytes(), float(d2)) for ed, mu, ic, d2 in plan.ellipses))
        hit = self._gates.pop(key, None)
        if hit is not None:
            self._gates[key] = hit  # most recently used last
            return hit, True
        keep = np.ones(n, bool)
        for s, lo, hi in plan.ranges:
            x = ev[slot_channel[s]]
            keep &= (x >= lo) & (x < hi)
        for dx, dy, verts in plan.polygons:
            v = np.asarray(verts, np.float64)
            inside = np.empty(n, bool)
            _polygon_mask(dims[dx], dims[dy], np.ascontiguousarray(v[:, 0]), np.ascontiguousarray(v[:, 1]), inside)
            keep &= inside
        for edims, mean, icov, d2 in plan.ellipses:
            with np.errstate(invalid="ignore", over="ignore"):
                keep &= ellipse_inside(dims, edims, mean, icov, d2)
        self._gates[key] = keep
        while len(self._gates) > self.max_gates:
            self._gates.pop(next(iter(self._gates)))
        return keep, False

    def phenotype_code(self, plan, slot_channel, ev):
        """Phenotype code per event (bit ``i``: marker ``i`` above its threshold), cached per thresholds."""
        mk = tuple((slot_channel[s], float(t)) for s, t in plan.markers)
        code = self._code.get(mk)
        if code is None:
            k = len(mk)
            code = np.zeros(self.view.sample.n_events, np.uint8 if k <= 8 else np.uint16 if k <= 16 else np.int64)
            for i, (ch, t) in enumerate(mk):
                pos = self._pos.get((ch, t))
                if pos is None:
                    pos = ev[ch] > t
                    if len(self._pos) > 64:
                        self._pos.clear()
                    self._pos[(ch, t)] = pos
                code |= pos.astype(code.dtype) << code.dtype.type(i)
            if len(self._code) > 8:
                self._code.clear()
            self._code[mk] = code
        return code

    # ------------------------------------------------------------ counting
    def counts(self, gate, markers):
        """``count_phenotypes``-style Dataset of the sample in ``gate`` (None: all events).

        ``markers``: name -> (channel, threshold in channel units[, transform]) as for
        :func:`evflow.count_phenotypes`.  Holds ``count``, ``fraction_of_parent``, ``fraction_of_total``,
        ``n_parent``, ``n_total``, ``threshold``, ``n_positive`` and the count intervals;
        ``median_positive`` and ``mean_positive`` are left out here (the widget shows counts).
        """
        with self._lock:
            return self._counts(gate, markers)

    def _counts(self, gate, markers):
        import evflow

        try:
            plan, slot_channel, spec = self._plan(gate, markers)
            ev = self._events(sorted(set(slot_channel)))
        except _Unfused:
            self.last = {"fused": False}
            return evflow.count_phenotypes(self.view.sample, parent=gate, markers=markers)
        n = self.view.sample.n_events
        if plan.ranges or plan.polygons or plan.ellipses:
            keep, reused = self.gate_mask(plan, slot_channel, ev)
        else:
            keep, reused = None, True
        code = self.phenotype_code(plan, slot_channel, ev)
        k = len(spec)
        sel = code if keep is None else code[keep]
        counts = np.bincount(sel, minlength=1 << k).astype(np.int64)
        bits = (np.arange(1 << k)[:, None] >> np.arange(k)[None, :]) & 1
        npos = (counts[:, None] * bits).sum(0).astype(np.float64)
        self.last = {"fused": True, "gate_reused": reused}
        return _dataset(counts, spec, n, npos, gate)


def _dataset(counts, spec, n_total, npos, gate):
    from evflow.flow.intervals import add_count_intervals
    from evflow.schema import counts_dataset

    names = [nm for nm, _, _ in spec]
    thr = np.array([[float(t) for _, _, t in spec]], np.float64).reshape(1, len(spec))
    attrs = {"units": "channel units (linear scale after $PnE/$PnG)", "parent": "" if gate is None else str(gate.id),
             "marker_channels": ", ".join(f"{nm}={c}" for nm, c, _ in spec), "positive": "value > threshold",
             "kernel": "evflow_napari recount (cached gate membership + bincount)"}
    return add_count_intervals(counts_dataset(counts[None], names, ["events"], n_total=np.array([n_total]),
                                              thresholds=thr, marker_stats={"n_positive": npos[None]}, attrs=attrs))
