"""Plan compilation: gates, markers, thresholds and density axes of one sample -> a fused kernel plan.

:func:`_compile` turns the parent gate chain (rectangle/range, polygon and
ellipsoid gates over plain or transformed, optionally compensated
dimensions) and the marker channels into the slots, bounds and tables of a
:class:`evflow.kernels.phenotype.FusedPlan` (:func:`_make_plan`); a chain the
kernel cannot evaluate (Boolean gates, quadrants, ratio dimensions) falls
back to a parent mask evaluated by the strategy.  Threshold rules are
parsed here (:func:`_markers_spec`) and filled into the plan from the
control values inside the graph (:func:`_resolve_thresholds`,
:func:`_with_thresholds`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import GatingError
from ._events import _sample_spillover
from .gates.strategy import _column_of, _names
from .thresholds import ThresholdRule, parse_threshold_rule

_TABLE_STEPS = 2**16


class _Unsupported(Exception):
    """The parent chain has a gate the fused kernel does not handle (use a mask)."""


def _log_table(transform, lo, hi):
    steps = _TABLE_STEPS
    y = np.linspace(lo, hi, steps + 1)
    knots = np.asarray(transform.inverse(y), dtype=np.float64)
    return knots, float(y[0]), float(y[1] - y[0])


class _Compiler:
    """Turns gates, markers and density axes of one sample into a :class:`FusedPlan`."""

    def __init__(self, channels, strategy=None, fcs=None):
        self.names = channels  # a ChannelNames also answers to $PnS
        self.channels = list(channels)
        self.index = {}
        for i, c in enumerate(self.channels):
            self.index.setdefault(c, i)
        self.strategy = strategy
        self.fcs = fcs  # Compensation or None or an exception (malformed $SPILLOVER)
        self.slots: list = []
        self.comp = None
        self.ranges: list = []
        self.dims: list = []
        self.polygons: list = []
        self.ellipses: list = []
        self.gates_used: list = []

    # -- values --
    def _resolve_comp(self, ref, gid):
        from .compensation import Compensation

        if ref is None:
            return None
        if isinstance(ref, Compensation):
            return ref
        if ref == "FCS":
            if isinstance(self.fcs, Exception):
                raise GatingError(f"gate {gid!r}: 'FCS' compensation is used but the file's spillover is invalid: {self.fcs}")
            return self.fcs
        if self.strategy is not None:
            return self.strategy._compensation(ref, self.fcs, gid)
        raise GatingError(f"gate {gid!r}: compensation {ref!r} is not defined (pass strategy=)")

    def slot(self, channel, comp, gid):
        """Slot index of ``channel`` after compensation ``comp`` (None: raw)."""
        if comp is not None and comp.output_index(channel) is not None:
            if self.comp is None:
                missing = [c for c in comp.channels_in if c not in self.index]
                if missing:
                    raise GatingError(
                        f"gate {gid!r}: compensation {comp.id!r} needs detector channel(s) {missing}, "
                        f"not in the sample; channels are {self.channels}"
                    )
                self.comp = comp
            elif self.comp is not comp and self.comp != comp:
                raise _Unsupported("two different compensations")
            key = (1, comp.output_index(channel))
        else:
            col = _column_of(self.names, channel, gid)
            if col is None:
                extra = f" (nor an output of compensation {comp.id!r})" if comp is not None else ""
                raise GatingError(
                    f"gate {gid!r}: channel {channel!r} is not in the sample{extra}; channels are {self.channels}"
                )
            key = (0, col)
        if key not in self.slots:
            self.slots.append(key)
        return self.slots.index(key)

    def dim_slot(self, dim, gid):
        from .gates import RatioDimension

        if isinstance(dim, RatioDimension):
            raise _Unsupported("ratio dimension")
        return self.slot(dim.channel, self._resolve_comp(dim.compensation, gid), gid)

    def dim(self, slot, transform, lo, hi):
        """A transformed dimension accurate over [lo, hi] (anything outside may be +-inf)."""
        from . import transforms as T

        if transform is None:
            entry = (slot, 0, 0.0, 0.0, None)
        elif isinstance(transform, T.LinearTransform):
            t, a = transform.params
            entry = (slot, 1, float(a), float(t + a), None)
        elif isinstance(transform, (T.LogicleTransform, T.HyperlogTransform)):
            knots, y0, h = transform.table()
            entry = (slot, 2, y0, h, knots)
        elif isinstance(transform, (T.LogTransform, T.AsinhTransform)):
            span = hi - lo
            lo, hi = lo - 0.01 * span - 1e-6, hi + 0.01 * span + 1e-6
            knots, y0, h = _log_table(transform, lo, hi)
            entry = (slot, 2, y0, h, knots)
        else:
            raise _Unsupported(f"transform {type(transform).__name__}")
        self.dims.append(entry)
        return len(self.dims) - 1

    # -- gates --
    def add_gate(self, gate):
        from . import gates as G

        gid = gate.id
        if isinstance(gate, G.RectangleGate):  # includes RangeGate
            for d, lo, hi in zip(gate.dims, gate.mins, gate.maxs):
                s = self.dim_slot(d, gid)
                rlo, rhi = _raw_bounds(d.transform, lo, hi, gid)
                self.ranges.append((s, rlo, rhi))
        elif isinstance(gate, G.PolygonGate):
            v = np.asarray(gate.vertices, dtype=np.float64)
            ids = []
            for k, d in enumerate(gate.dims):
                s = self.dim_slot(d, gid)
                ids.append(self.dim(s, d.transform, float(v[:, k].min()), float(v[:, k].max())))
            self.polygons.append((ids[0], ids[1], v))
        elif isinstance(gate, G.EllipsoidGate):
            cov = np.asarray(gate.covariance, dtype=np.float64)
            half = np.sqrt(np.abs(np.diag(cov)) * gate.distance_square)
            ids = []
            for k, d in enumerate(gate.dims):
                s = self.dim_slot(d, gid)
                ids.append(self.dim(s, d.transform, float(gate.mean[k] - half[k]), float(gate.mean[k] + half[k])))
            self.ellipses.append((ids, np.asarray(gate.mean, np.float64), np.asarray(gate.inverse_covariance), gate.distance_square))
        else:
            raise _Unsupported(type(gate).__name__)
        self.gates_used.append(gid)

    def comp_arrays(self):
        if self.comp is None:
            return [], None
        cols = [self.index[c] for c in self.comp.channels_in]
        return cols, np.asarray(self.comp.unmixing, dtype=np.float64)


def _raw_bounds(transform, lo, hi, gid):
    """Bounds on untransformed values equivalent to ``lo <= T(x) < hi`` (T monotone increasing)."""
    from . import transforms as T

    if transform is None:
        return (-np.inf if lo is None else float(lo)), (np.inf if hi is None else float(hi))
    if isinstance(transform, T.RatioTransform):  # pragma: no cover - ratios are RatioDimensions
        raise _Unsupported("ratio")

    def inv(y):
        with np.errstate(over="ignore"):
            return float(np.asarray(transform.inverse(np.asarray([float(y)])))[0])

    rlo = -np.inf if lo is None else inv(lo)
    rhi = np.inf if hi is None else inv(hi)
    if isinstance(transform, T.LogTransform):  # defined for x > 0 only
        rlo = max(rlo, np.nextafter(0.0, 1.0))
    if math.isnan(rlo) or math.isnan(rhi):
        raise GatingError(f"gate {gid!r}: bounds ({lo}, {hi}) cannot be mapped through {transform!r}")
    return rlo, rhi


def _parent_gates(parent, strategy):
    """``(gate objects of the chain root->parent, mask_gate_id or None, description)``."""
    from . import gates as G

    if parent is None:
        return [], None, None
    if isinstance(parent, G.Gate):
        if parent.parent is not None:
            if strategy is None:
                raise GatingError(
                    f"gate {parent.id!r} has parent {parent.parent!r}; pass strategy= to resolve it"
                )
            chain = [strategy._gate(g) for g in strategy.parent_chain(parent.parent)] + [parent]
        else:
            chain = [parent]
        return chain, None, parent.id
    if isinstance(parent, str):
        if strategy is None:
            raise GatingError(f"parent gate {parent!r} given by id; pass strategy= (a GatingStrategy) as well")
        chain = [strategy._gate(g) for g in strategy.parent_chain(parent)]
        return chain, parent, parent
    raise GatingError(f"parent must be None, a gate or a gate id, got {type(parent).__name__}")


def _markers_spec(markers):
    if markers is None:
        markers = {}
    if not isinstance(markers, Mapping):
        raise GatingError("markers must be a mapping name -> (channel, threshold)")
    out = []
    from .transforms import Transform

    for name, spec in markers.items():
        if isinstance(spec, str) or not isinstance(spec, Sequence) or len(spec) not in (2, 3):
            raise GatingError(f"marker {name!r}: expected (channel, threshold[, transform]), got {spec!r}")
        channel, thr = spec[0], spec[1]
        if not isinstance(channel, str):
            raise GatingError(f"marker {name!r}: channel {channel!r} is not a string")
        thr = parse_threshold_rule(thr, name)
        if len(spec) == 3 and spec[2] is not None:
            tr = spec[2]
            if not isinstance(tr, Transform):
                raise GatingError(f"marker {name!r}: {tr!r} is not a Transform")
            if isinstance(thr, ThresholdRule):
                raise GatingError(
                    f"marker {name!r}: rule {thr.text!r} gives a threshold in channel units; drop the transform"
                )
            with np.errstate(all="ignore"):
                raw = float(np.asarray(tr.inverse(np.asarray([thr], dtype=np.float64)))[0])
            if not math.isfinite(raw):
                raise GatingError(f"marker {name!r}: threshold {thr:g} on {tr!r} maps to {raw} channel units")
            thr = raw
        out.append((str(name), channel, thr))
    return out


def _marker_channel(sample, name, channel):
    try:
        return sample.channels[sample.channel_index(channel)]
    except Exception as exc:
        raise GatingError(f"marker {name!r}: {exc}") from None


def _compile(sample, sname, chain, mask_gate, strategy, marker_specs, compensation):
    """Plan pieces for one sample: ``(compiler, mask gate id or None, FCS compensation, marker slots)``."""
    from .compensation import Compensation

    fcs = _sample_spillover(sample, sname)
    fcs_comp = None if fcs is None or isinstance(fcs, Exception) else Compensation.from_spillover(fcs, id="FCS")
    names = _names(sample)
    comp = _Compiler(names, strategy, fcs if isinstance(fcs, Exception) else fcs_comp)
    use_mask = None
    if chain:
        if strategy is not None and mask_gate is not None:
            strategy.validate(names, fcs_comp, [mask_gate])
        try:
            for g in chain:
                comp.add_gate(g)
        except _Unsupported:
            comp = _Compiler(names, strategy, comp.fcs)
            use_mask = chain[-1].id
            if strategy is None:
                raise GatingError(
                    f"gate {chain[-1].id!r} ({type(chain[-1]).__name__}) needs a GatingStrategy: pass strategy="
                ) from None
            if strategy.gates.get(use_mask) is not chain[-1]:
                raise GatingError(
                    f"gate {use_mask!r} ({type(chain[-1]).__name__}) is evaluated by the strategy, "
                    "but the strategy holds no such gate object; add it with strategy.add_gate()"
                ) from None
            strategy.validate(names, fcs_comp, [use_mask])
    # compensation of the markers: the gates' own, unless given
    mcomp = comp.comp
    if use_mask is not None and compensation is None:
        refs = [(g.id, d.compensation) for g in chain for d in g.dims if getattr(d, "compensation", None) is not None]
        if refs:
            mcomp = comp._resolve_comp(refs[0][1], refs[0][0])
    if compensation is not None:
        if compensation is False or (isinstance(compensation, str) and compensation in ("none", "uncompensated")):
            mcomp = None
        elif isinstance(compensation, str) and compensation in ("FCS", "file"):
            if fcs_comp is None:
                raise GatingError(f"sample {sname!r}: compensation='FCS' asked for but the file has no $SPILLOVER")
            mcomp = fcs_comp
        elif isinstance(compensation, Compensation):
            mcomp = compensation
        elif isinstance(compensation, str) and strategy is not None and compensation in strategy.compensations:
            mcomp = strategy.compensations[compensation]
        else:
            mcomp = Compensation.from_spillover(compensation, id="user")
    marker_slots = []
    for name, channel, _thr in marker_specs:
        ch = _marker_channel(sample, name, channel)
        try:
            marker_slots.append(comp.slot(ch, mcomp, f"<marker {name}>"))
        except _Unsupported:
            raise GatingError(
                f"marker {name!r}: compensation {getattr(mcomp, 'id', mcomp)!r} differs from the gates' "
                f"compensation {getattr(comp.comp, 'id', None)!r}; evflow applies one compensation per count"
            ) from None
    return comp, use_mask, fcs_comp, marker_slots


def _make_plan(comp, marker_slots, thresholds, density=None):
    from ..kernels.phenotype import FusedPlan

    cols, mat = comp.comp_arrays()
    return FusedPlan(
        n_columns=len(comp.channels),
        slots=list(comp.slots),
        comp_cols=cols,
        comp_matrix=mat,
        ranges=list(comp.ranges),
        dims=list(comp.dims),
        polygons=list(comp.polygons),
        ellipses=list(comp.ellipses),
        markers=[(s, float(t)) for s, t in zip(marker_slots, thresholds)],
        density=density,
    )


def _with_thresholds(plan, thresholds):
    from ..kernels.phenotype import FusedPlan

    return FusedPlan(
        n_columns=plan.n_columns,
        slots=plan.slots,
        comp_cols=plan.comp_cols,
        comp_matrix=plan.comp_matrix,
        ranges=plan.ranges,
        dims=plan.dims,
        polygons=plan.polygons,
        ellipses=plan.ellipses,
        markers=[(s, float(t)) for (s, _), t in zip(plan.markers, thresholds)],
        density=plan.density,
    )


def _resolve_thresholds(fixed, rules, names, *control_values):
    """Fill the rule thresholds from the control values (called inside the graph)."""
    out = list(fixed)
    for (i, rule, j), vals in zip(rules, control_values):
        out[i] = rule.compute(vals[j], names[i])
    return out
