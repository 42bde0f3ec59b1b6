"""Marker-phenotype counting and 2-D density histograms, in one fused pass per chunk.

:func:`count_phenotypes` gates the events (the parent population: a chain of
rectangle/range, polygon and ellipsoid gates over plain or transformed,
optionally compensated dimensions), calls each marker positive when its
channel value is above its threshold, and counts the events of every one of
the ``2**k`` marker combinations.  All of it happens in one kernel per chunk
of events (:mod:`evflow.kernels.phenotype`: NumPy reference, parallel Numba,
CUDA), so the events are read once; many samples make one dask graph and one
``compute()``.

Exactness
---------
- Counts are identical integers on every backend and for every chunking.
- ``median_positive`` comes from a fine histogram of ``value - threshold``
  (1024 bins per octave, see :mod:`evflow.kernels.phenotype`): it is exact to
  the bin, i.e. within 0.1 % of ``median - threshold``.
- ``mean_positive`` is a float64 sum divided by the count; the order of the
  summation depends on the chunking and backend, so means agree to about
  1e-12 relative, not bit for bit.

Gate dimensions with a transform are handled without evaluating the
transform per event where it is monotone: rectangle and range gates become
bounds on the untransformed values (``T^-1(min) <= x < T^-1(max)``).
Polygons, ellipsoids and density axes evaluate the transform: exactly for
linear scales, and by the lookup table of :class:`~evflow.flow.transforms`
(logicle, hyperlog; within 3e-8 of the exact scale) or a table of ``2**16``
steps over the needed range (log, asinh; within 1e-9).  Boolean gates,
quadrants and ratio dimensions are evaluated by
:meth:`GatingStrategy.mask` on the same chunk and handed to the kernel as a
precomputed parent mask.
"""

from __future__ import annotations

import math
import operator
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import GatingError

__all__ = ["count_phenotypes", "density2d", "parse_threshold_rule", "ThresholdRule"]

_TABLE_STEPS = 2**16


# ============================================================================ threshold rules


class ThresholdRule:
    """A positivity threshold computed from a control sample.

    Parameters
    ----------
    rule : str
        ``"percentile"``: the ``q``-th percentile (linear interpolation, as
        :func:`numpy.percentile`) of the control's marker values in the parent
        population; ``"mean_sd"``: mean + ``n_sd`` standard deviations.
    control : str
        Name of the control sample in ``controls=``.
    q : float
        Percentile, 0..100 (``percentile``).
    n_sd : float
        Number of standard deviations (``mean_sd``).
    """

    def __init__(self, rule: str, control: str, q: float | None = None, n_sd: float | None = None, text=None):
        self.rule = rule
        self.control = control
        self.q = q
        self.n_sd = n_sd
        self.text = text or self.describe()

    def describe(self) -> str:
        if self.rule == "percentile":
            return f"percentile {self.q:g} of {self.control}"
        return f"mean+{self.n_sd:g}sd of {self.control}"

    def compute(self, values: np.ndarray, marker: str) -> float:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise GatingError(
                f"marker {marker!r}: threshold rule {self.text!r}: control {self.control!r} has no events with a "
                "finite value in the parent population"
            )
        if self.rule == "percentile":
            return float(np.percentile(values, self.q))
        return float(values.mean() + self.n_sd * values.std())

    def __repr__(self):
        return f"ThresholdRule({self.text!r})"


_RULE_RE = re.compile(
    r"^\s*(?:(?P<pct>percentile|p|q)\s*(?P<q>[-+0-9.eE]+)"
    r"|mean\s*\+\s*(?P<nsd>[-+0-9.eE]+)\s*(?:sd|std|sigma))\s+of\s+(?P<control>\S.*?)\s*$",
    re.IGNORECASE,
)


def parse_threshold_rule(rule, marker: str = "?"):
    """A threshold: a float (channel units) or a :class:`ThresholdRule`.

    Accepts a number, a string like ``"percentile 99.5 of isotype"`` or
    ``"mean+3sd of isotype"``, or a dict ``{"rule": "percentile", "q": 99.5,
    "control": "isotype"}`` / ``{"rule": "mean_sd", "n_sd": 3, "control": ...}``.

    Raises
    ------
    GatingError
        If the rule cannot be understood; the message names the marker.
    """
    if isinstance(rule, ThresholdRule):
        return rule
    if isinstance(rule, (int, float, np.integer, np.floating)) and not isinstance(rule, bool):
        v = float(rule)
        if not math.isfinite(v):
            raise GatingError(f"marker {marker!r}: threshold {rule!r} is not finite")
        return v
    if isinstance(rule, str):
        m = _RULE_RE.match(rule)
        if m is None:
            try:
                return parse_threshold_rule(float(rule), marker)
            except ValueError:
                pass
            raise GatingError(
                f"marker {marker!r}: threshold rule {rule!r} not understood; expected a number, "
                "'percentile <q> of <control>' or 'mean+<n>sd of <control>'"
            )
        if m.group("pct"):
            spec = {"rule": "percentile", "q": m.group("q"), "control": m.group("control")}
        else:
            spec = {"rule": "mean_sd", "n_sd": m.group("nsd"), "control": m.group("control")}
        out = parse_threshold_rule(spec, marker)
        out.text = rule.strip()
        return out
    if isinstance(rule, Mapping):
        kind = str(rule.get("rule", "")).lower().replace("-", "_")
        control = rule.get("control")
        if not isinstance(control, str) or not control:
            raise GatingError(f"marker {marker!r}: threshold rule {dict(rule)!r} needs a 'control' sample name")
        try:
            if kind == "percentile":
                q = float(rule["q"])
                if not 0 <= q <= 100:
                    raise GatingError(f"marker {marker!r}: threshold rule {dict(rule)!r}: q={q:g} is not in 0..100")
                return ThresholdRule("percentile", control, q=q)
            if kind in ("mean_sd", "mean+sd", "meansd"):
                n_sd = float(rule["n_sd"])
                if not math.isfinite(n_sd):
                    raise ValueError
                return ThresholdRule("mean_sd", control, n_sd=n_sd)
        except (KeyError, TypeError, ValueError):
            raise GatingError(f"marker {marker!r}: threshold rule {dict(rule)!r} lacks a numeric q / n_sd") from None
        raise GatingError(
            f"marker {marker!r}: threshold rule kind {rule.get('rule')!r} unknown; expected 'percentile' or 'mean_sd'"
        )
    raise GatingError(f"marker {marker!r}: threshold {rule!r} is neither a number nor a rule")


# ============================================================================ samples


def _is_array_pair(s):
    return (
        isinstance(s, tuple)
        and len(s) == 2
        and hasattr(s[0], "shape")
        and isinstance(s[1], (list, tuple))
        and all(isinstance(c, str) for c in s[1])
    )


def _wrap_in_memory(events, rows=1 << 24):
    """A dask array over in-memory (NumPy/CuPy) events whose chunks are row slices (views) of them.

    Unlike ``dask.array.from_array`` this neither copies the events (``from_array`` copies every array:
    20 ms for 10M x 2 float64) nor hashes them (a random graph name); large chunks, as each kernel
    launch is parallel over Numba's threads.  The events are not copied: do not modify them while a
    lazy result (``compute=False``) that reads them is pending.
    """
    import uuid

    import dask.array as da

    n, k = events.shape
    step = max(1, min(n, rows))
    starts = list(range(0, n, step)) or [0]
    name = f"events-{uuid.uuid4().hex}"
    dsk = {(name, i, 0): events[a:min(a + step, n)] for i, a in enumerate(starts)}
    chunks = (tuple(min(a + step, n) - a for a in starts), (k,))
    return da.Array(dsk, name, chunks, meta=events[:0])


def _array_sample(events, channels, name):
    """An in-memory FCSSample of linear-scale events (NumPy, CuPy or dask array)."""
    import dask.array as da

    from ..io.fcs import FCSSample

    channels = [str(c) for c in channels]
    if getattr(events, "ndim", 0) != 2 or events.shape[1] != len(channels):
        raise GatingError(
            f"sample {name!r}: events have shape {tuple(getattr(events, 'shape', ()))} but {len(channels)} channel names"
        )
    if isinstance(events, np.ndarray) or type(events).__module__.split(".")[0] == "cupy":
        events = _wrap_in_memory(events)
    elif not isinstance(events, da.Array):  # other array-likes: dask's own wrapping (a copy, random name)
        events = da.from_array(events, chunks=(max(1, min(events.shape[0], 1 << 24)), -1), asarray=False, name=False)
    return FCSSample(path=str(name), version="", data_set=0, meta={}, channels=channels,
                     markers=[None] * len(channels), events=events, scaled=True)


def _as_sample(s, name_hint=None):
    from ..io.fcs import FCSSample, read_fcs

    if isinstance(s, (str, os.PathLike)):
        return read_fcs(s, scale=True)
    if _is_array_pair(s):
        return _array_sample(s[0], s[1], name_hint or "events")
    if isinstance(s, FCSSample) or all(hasattr(s, a) for a in ("events", "channels", "meta")):
        return s
    raise GatingError(
        f"sample {name_hint!r}: expected an FCSSample, a path or (events, channels), got {type(s).__name__}"
    )


def _samples(sample_or_samples):
    """``[(name, FCSSample)]`` from one sample/path, a list of them, or a dict name -> sample."""
    if _is_array_pair(sample_or_samples):
        sample_or_samples = [sample_or_samples]
    if isinstance(sample_or_samples, Mapping):
        items = [(str(k), _as_sample(v, k)) for k, v in sample_or_samples.items()]
    elif isinstance(sample_or_samples, (list, tuple)):
        items = []
        for i, s in enumerate(sample_or_samples):
            smp = _as_sample(s, f"events{i}" if len(sample_or_samples) > 1 else "events")
            items.append((smp.name, smp))
    else:
        smp = _as_sample(sample_or_samples)
        items = [(smp.name, smp)]
    if not items:
        raise GatingError("no samples given")
    names = [n for n, _ in items]
    seen = {}
    out = []
    for n, s in items:  # make names unique (two files with the same stem)
        if names.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            n = f"{n}#{seen[n]}"
        out.append((n, s))
    return out


def _scaled_events(sample):
    """Linear-scale events of a sample (dask, full rows per chunk)."""
    if hasattr(sample, "linear_events"):
        events = sample.linear_events()
    else:  # a sample-like object without the FCSSample API: assume linear values
        events = sample.events
    if len(events.chunks[1]) != 1:
        events = events.rechunk({1: -1})
    return events


def _sample_spillover(sample, name):
    try:
        return sample.spillover
    except Exception as exc:
        return exc


# ============================================================================ plan compiler


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
            if channel not in self.index:
                extra = f" (nor an output of compensation {comp.id!r})" if comp is not None else ""
                raise GatingError(
                    f"gate {gid!r}: channel {channel!r} is not in the sample{extra}; channels are {self.channels}"
                )
            key = (0, self.index[channel])
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
    comp = _Compiler(sample.channels, strategy, fcs if isinstance(fcs, Exception) else fcs_comp)
    use_mask = None
    if chain:
        if strategy is not None and mask_gate is not None:
            strategy.validate(sample.channels, fcs_comp, [mask_gate])
        try:
            for g in chain:
                comp.add_gate(g)
        except _Unsupported:
            comp = _Compiler(sample.channels, strategy, comp.fcs)
            use_mask = chain[-1].id
            if strategy is None:
                raise GatingError(
                    f"gate {chain[-1].id!r} ({type(chain[-1]).__name__}) needs a GatingStrategy: pass strategy="
                ) from None
            if strategy.gates.get(use_mask) is not chain[-1]:
                raise GatingError(
                    f"gate {use_mask!r} ({type(chain[-1]).__name__}) is evaluated by the strategy, "
                    "but the strategy holds no such gate object; add it with strategy.add_gate()"
                )
            strategy.validate(sample.channels, fcs_comp, [use_mask])
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


# ============================================================================ per-chunk tasks


def _chunk_threads(events):
    """Numba threads per chunk: all (launches are serialised; each uses every core)."""
    return None


def _worker_threads():
    """Numba threads for a chunk run by a ``distributed`` worker: the worker's per-task thread budget
    (``OMP_NUM_THREADS``, which the nanny sets to 1 by default: the cluster's parallelism is its tasks),
    else None (all cores; the threaded scheduler serialises launches)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        get_worker()
    except ValueError:
        return None
    v = os.environ.get("OMP_NUM_THREADS", "")
    return int(v) if v.isdigit() and int(v) > 0 else None


def _block_partial(block, plan, kernel, mask_info, n_threads=None):
    from ..kernels.phenotype import fused

    if n_threads is None:
        n_threads = _worker_threads()

    mask = None
    if mask_info is not None:
        strategy, channels, gate_id, fcs = mask_info
        mask = strategy.mask(block, channels, gate_id, fcs)
    return fused(block, plan, mask=mask, impl=kernel, n_threads=n_threads)


def _block_control_values(block, plan, mask_info, slots):
    from ..backend import to_numpy
    from ..kernels.phenotype import slot_values

    block = to_numpy(block)
    mask = None
    if mask_info is not None:
        strategy, channels, gate_id, fcs = mask_info
        mask = to_numpy(strategy.mask(block, channels, gate_id, fcs))
    vals, keep, _ = slot_values(block, plan, mask)
    return vals[list(slots)][:, keep]


def _tree(items, fn):
    import dask

    items = list(items)
    if not items:
        raise GatingError("a sample without chunks")
    while len(items) > 1:
        items = [dask.delayed(fn)(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


def _concat(a, b):
    return np.concatenate([a, b], axis=1)


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


def _kernel_name(kernel, backend):
    kernel = (kernel or "auto").lower()
    if kernel in ("reference", "numpy"):
        return "numpy"
    if kernel in ("fast", "numba"):
        return "numba" if backend == "numpy" else "cupy"
    if kernel in ("auto", "cupy"):
        return "auto"
    raise GatingError(f"kernel={kernel!r}; expected 'auto', 'reference' or 'fast'")


def _prepare_events(sample, sname, backend):
    from ..backend import to_backend

    if sample.n_events == 0 or sample.events.shape[0] == 0:
        raise GatingError(f"sample {sname!r} has no events; nothing to count")
    return to_backend(_scaled_events(sample), backend)


# ============================================================================ public API


def count_phenotypes(
    sample_or_samples,
    parent=None,
    markers=None,
    *,
    strategy=None,
    controls=None,
    compensation=None,
    backend: str | None = None,
    kernel: str = "auto",
    compute: bool = True,
):
    """Count the events of every marker phenotype in the parent population.

    Parameters
    ----------
    sample_or_samples : FCSSample, path, (events, channels), or a list / dict (name -> sample) of them
        Paths are read with ``evflow.read_fcs(path, scale=True)``; samples read
        without ``scale`` are scaled (``$PnE``, ``$PnG``) first, as for gating;
        ``(events, channels)`` is a NumPy/CuPy/dask array of linear-scale
        events (rows) with its channel names.
    parent : None, Gate or str
        The parent population: None (all events), a gate object, or the id of
        a gate of ``strategy`` (its whole parent chain applies).
    markers : dict name -> (channel, threshold) or (channel, threshold, transform)
        Channel as ``$PnN`` or ``$PnS``; threshold in the channel's linear
        units (or, with a transform, on its display scale: converted with
        ``transform.inverse``), or a rule computed from a control
        (``"percentile 99.5 of isotype"``, ``"mean+3sd of isotype"``, or
        ``{"rule": "percentile", "q": 99.5, "control": "isotype"}``).  An event is positive when its
        value is strictly above the threshold.  Bit ``i`` of a phenotype is
        marker ``i`` in the given order.
    strategy : GatingStrategy, optional
        Needed when ``parent`` is a gate id or a gate with a parent.
    controls : dict name -> FCSSample or path, optional
        Control samples for threshold rules; gated by the same parent.
    compensation : None, False, "FCS", Compensation or spillover matrix
        Compensation of the marker channels: default (None) the one the parent
        gates use (none if they use none); False: uncompensated.
    backend : {None, 'auto', 'numpy', 'cupy'}
        Where chunks are processed (``evflow.resolve_backend``).
    kernel : {'auto', 'reference', 'fast'}
        'reference' runs the NumPy oracle; 'auto'/'fast' the Numba (CPU) or
        CUDA kernel.
    compute : bool
        False returns ``(build, graph)`` where ``graph`` is the dask object to
        compute and ``build(result)`` makes the Dataset (for combining graphs).

    Returns
    -------
    xarray.Dataset
        ``evflow.phenotype.counts_dataset`` schema: ``count``,
        ``fraction_of_parent``, ``fraction_of_total`` (sample x phenotype),
        ``n_parent``, ``n_total``, and per sample x marker ``threshold``,
        ``n_positive``, ``median_positive``, ``mean_positive`` (channel units).

    Raises
    ------
    GatingError
        Missing channels, bad thresholds or rules, a rule pointing at a
        missing control, empty samples; nothing is computed then.
    """
    import dask

    from ..backend import resolve_backend
    from ..phenotype import counts_dataset, phenotype_labels

    spec = _markers_spec(markers)
    if not spec:
        spec = []
    names = [n for n, _, _ in spec]
    phenotype_labels(names)  # validates names / count (ConfigError)
    be = resolve_backend(backend)
    kname = _kernel_name(kernel, be)
    samples = _samples(sample_or_samples)
    chain, mask_gate, parent_desc = _parent_gates(parent, strategy)
    controls = dict(controls or {})
    # check the rules before building anything
    for name, _ch, rule in spec:
        if isinstance(rule, ThresholdRule) and rule.control not in controls:
            raise GatingError(
                f"marker {name!r}: threshold rule {rule.text!r} refers to control {rule.control!r}, "
                f"but controls= holds {sorted(controls) or 'nothing'}"
            )
    fixed = [t if not isinstance(t, ThresholdRule) else np.nan for _, _, t in spec]

    # --- controls: parent-gated marker values, in the same graph
    control_graph = {}
    for cname in sorted({r.control for _, _, r in spec if isinstance(r, ThresholdRule)}):
        csample = _as_sample(controls[cname], cname)
        comp, use_mask, fcs_comp, mslots = _compile(csample, cname, chain, mask_gate, strategy, spec, compensation)
        plan = _make_plan(comp, mslots, [0.0] * len(mslots))
        ev = _prepare_events(csample, cname, "numpy")
        mask_info = None if use_mask is None else (strategy, tuple(csample.channels), use_mask, fcs_comp)
        blocks = ev.to_delayed().ravel()
        parts = [dask.delayed(_block_control_values)(b, plan, mask_info, mslots) for b in blocks]
        control_graph[cname] = _tree(parts, _concat)
    rules = [(i, t, i) for i, (_, _, t) in enumerate(spec) if isinstance(t, ThresholdRule)]

    graphs, plans_desc, thresholds_nodes = [], [], []
    for sname, sample in samples:
        if sample.n_events == 0:
            raise GatingError(f"sample {sname!r} has no events; nothing to count")
    for sname, sample in samples:
        comp, use_mask, fcs_comp, mslots = _compile(sample, sname, chain, mask_gate, strategy, spec, compensation)
        base = _make_plan(comp, mslots, [0.0 if np.isnan(t) else t for t in fixed])
        if rules:
            thr = dask.delayed(_resolve_thresholds)(fixed, rules, names, *[control_graph[r.control] for _, r, _ in rules])
            plan = dask.delayed(_with_thresholds)(base, thr)
        else:
            thr = list(fixed)
            plan = base
        thresholds_nodes.append(thr)
        ev = _prepare_events(sample, sname, be)
        mask_info = None if use_mask is None else (strategy, tuple(sample.channels), use_mask, fcs_comp)
        blocks = ev.to_delayed().ravel()
        nt = _chunk_threads(ev)
        parts = [dask.delayed(_block_partial)(b, plan, kname, mask_info, nt) for b in blocks]
        graphs.append(_tree(parts, operator.add))
        plans_desc.append({"fused_gates": comp.gates_used, "mask_gate": use_mask,
                           "compensation": None if comp.comp is None else comp.comp.id})

    def build(result):
        totals, thresholds = result
        k = len(spec)
        counts = np.stack([t.counts for t in totals])
        n_total = np.array([t.n_events for t in totals], dtype=np.int64)
        thr = np.array([[float(x) for x in th] for th in thresholds], dtype=np.float64).reshape(len(totals), k)
        med = np.full((len(totals), k), np.nan)
        mean = np.full((len(totals), k), np.nan)
        npos = np.zeros((len(totals), k))
        from ..kernels.phenotype import fine_median

        for i, t in enumerate(totals):
            for j in range(k):
                n = int(t.pos_hist[j].sum())
                npos[i, j] = n
                if n:
                    med[i, j] = fine_median(t.pos_hist[j], thr[i, j])
                    mean[i, j] = t.pos_sum[j] / n
                    if np.isnan(med[i, j]):
                        warnings.warn(
                            f"sample {samples[i][0]!r}, marker {names[j]!r}: the median of the positive events "
                            "lies more than 2**40 channel units above the threshold; reported as NaN",
                            RuntimeWarning,
                            stacklevel=3,
                        )
        attrs = {
            "units": "channel units (linear scale after $PnE/$PnG and compensation)",
            "backend": be,
            "kernel": kname,
            "parent": "" if parent_desc is None else str(parent_desc),
            "gates": ", ".join(chain_ids) if (chain_ids := [g.id for g in chain]) else "",
            "marker_channels": ", ".join(f"{n}={c}" for n, c, _ in spec),
            "threshold_rules": ", ".join(
                f"{n}: {r.text if isinstance(r, ThresholdRule) else format(r, 'g')}" for n, _, r in spec
            ),
            "positive": "value > threshold",
            "median_positive": "centre of the fine-histogram bin (1024 bins/octave of value - threshold); exact to the bin",
            "mean_positive": "float64 sum / count; agrees across chunkings and backends to ~1e-12 relative",
            "fused": repr(plans_desc),
        }
        return counts_dataset(
            counts,
            names,
            [s for s, _ in samples],
            n_total=n_total,
            thresholds=thr,
            marker_stats={"n_positive": npos, "median_positive": med, "mean_positive": mean},
            attrs=attrs,
        )

    graph = (graphs, thresholds_nodes)
    if not compute:
        return build, graph
    return build(dask.compute(graph)[0])


def _axis(t, name):
    from .transforms import Transform

    if t is None or isinstance(t, Transform):
        return t
    raise GatingError(f"density2d: transform for {name!r} must be a Transform or None, got {type(t).__name__}")


def _default_range(sample, channel, transform):
    if transform is not None:
        return (0.0, 1.0)
    i = sample.channel_index(channel)
    meta = sample.meta
    n = i + 1
    try:
        r = float(meta[f"$P{n}R"])
        e = str(meta.get(f"$P{n}E", "0,0")).split(",")
        f1 = float(e[0]) if e and e[0].strip() else 0.0
        g = float(meta.get(f"$P{n}G", 1.0) or 1.0)
    except (KeyError, ValueError):
        raise GatingError(f"density2d: no range= given and channel {channel!r} has no usable $P{n}R") from None
    if f1 != 0 and getattr(sample, "scaled", False):
        raise GatingError(f"density2d: channel {channel!r} is log-amplified; pass range= or a transform")
    if not getattr(sample, "scaled", False):
        g = 1.0
    return (0.0, r / g)


def density2d(
    sample,
    x: str,
    y: str,
    bins=512,
    range=None,
    transforms=None,
    *,
    parent=None,
    strategy=None,
    compensation=None,
    backend: str | None = None,
    kernel: str = "auto",
):
    """2-D histogram of two (transformed) channels of the parent population.

    Parameters
    ----------
    sample : FCSSample or path
    x, y : str
        Channels (``$PnN`` or ``$PnS``).
    bins : int or (int, int)
        Number of bins along x and y.
    range : ((xmin, xmax), (ymin, ymax)), optional
        Half-open ranges on the display scale ``[min, max)``; default (0, 1)
        for a transformed axis, ``[0, $PnR)`` for a plain one.
    transforms : Transform or (Transform, Transform) or dict channel -> Transform, optional
        Display scales of the axes (evaluated as for polygon gates).
    parent, strategy, compensation, backend, kernel
        As in :func:`count_phenotypes` (compensation default: the gates' own).

    Returns
    -------
    xarray.DataArray
        ``(x, y)`` event counts (int64) with bin-centre coords ``x``, ``y``,
        edges in ``attrs`` (``x_edges``, ``y_edges``), ``n_parent`` and
        ``n_outside`` (parent events outside the range) in ``attrs``.
    """
    import dask
    import xarray as xr

    from ..backend import resolve_backend

    be = resolve_backend(backend)
    kname = _kernel_name(kernel, be)
    (sname, smp), = _samples(sample)
    if isinstance(transforms, Mapping):
        tx, ty = transforms.get(x), transforms.get(y)
    elif isinstance(transforms, (tuple, list)):
        tx, ty = transforms
    else:
        tx = ty = transforms
    tx, ty = _axis(tx, x), _axis(ty, y)
    nx, ny = (int(bins), int(bins)) if np.ndim(bins) == 0 else (int(bins[0]), int(bins[1]))
    if nx < 1 or ny < 1:
        raise GatingError(f"density2d: bins={bins!r} must be positive")
    if range is None:
        rx, ry = _default_range(smp, x, tx), _default_range(smp, y, ty)
    else:
        (rx, ry) = range
    rx, ry = (float(rx[0]), float(rx[1])), (float(ry[0]), float(ry[1]))
    if not (np.all(np.isfinite(rx + ry)) and rx[1] > rx[0] and ry[1] > ry[0]):
        raise GatingError(f"density2d: range={range!r} must be finite with max > min")
    chain, mask_gate, parent_desc = _parent_gates(parent, strategy)
    spec = [(x, x, 0.0), (y, y, 0.0)]
    comp, use_mask, fcs_comp, (sx, sy) = _compile(smp, sname, chain, mask_gate, strategy, spec, compensation)
    try:
        dx = comp.dim(sx, tx, *rx)
        dy = comp.dim(sy, ty, *ry)
    except _Unsupported as exc:
        raise GatingError(f"density2d: {exc}") from None
    plan = _make_plan(comp, [], [], density=(dx, dy, nx, ny, rx, ry))
    ev = _prepare_events(smp, sname, be)
    mask_info = None if use_mask is None else (strategy, tuple(smp.channels), use_mask, fcs_comp)
    nt = _chunk_threads(ev)
    parts = [dask.delayed(_block_partial)(b, plan, kname, mask_info, nt) for b in ev.to_delayed().ravel()]
    (total,) = dask.compute(_tree(parts, operator.add))
    xe = np.linspace(rx[0], rx[1], nx + 1)
    ye = np.linspace(ry[0], ry[1], ny + 1)
    n_parent = int(total.counts.sum())
    return xr.DataArray(
        total.density,
        dims=("x", "y"),
        coords={"x": 0.5 * (xe[:-1] + xe[1:]), "y": 0.5 * (ye[:-1] + ye[1:])},
        name="density",
        attrs={
            "x_channel": x,
            "y_channel": y,
            "x_transform": repr(tx),
            "y_transform": repr(ty),
            "x_edges": xe.tolist(),
            "y_edges": ye.tolist(),
            "n_parent": n_parent,
            "n_outside": n_parent - int(total.density.sum()),
            "n_total": int(total.n_events),
            "parent": "" if parent_desc is None else str(parent_desc),
            "sample": sname,
            "units": "events per bin",
        },
    )
