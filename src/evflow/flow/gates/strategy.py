"""The gating strategy: gates with their hierarchy, transforms and compensation matrices, applied to a
sample in one lazy pass over its row chunks."""

from __future__ import annotations

import functools

from ...backend import array_module, resolve_backend, to_backend
from ...errors import GatingError
from ..compensation import Compensation
from ..transforms import Transform
from .dimensions import RatioDimension, _as_dim
from .geometry import BooleanGate, Gate, Quadrant, QuadrantGate
from .results import GatingResults

__all__ = ["GatingStrategy"]


class _Chunk:
    """Per-chunk evaluation state: the events, channel lookup, caches."""

    def __init__(self, strategy, events, channels, spillover):
        xp = array_module(events)
        self.xp = xp
        self.events = events
        self.channels = list(channels)
        self.names = channels  # a ChannelNames also answers to $PnS
        self.index = {}
        for i, c in enumerate(self.channels):
            self.index.setdefault(c, i)
        self.strategy = strategy
        self.fcs = _fcs_compensation(spillover)
        self.comp_cache = {}
        self.dim_cache = {}
        self.mask_cache = {}

    def column(self, channel, gid):
        i = _column_of(self.names, channel, gid)
        if i is None:
            raise GatingError(f"gate {gid!r}: channel {channel!r} is not in the data; channels are {self.channels}")
        return self.xp.asarray(self.events[:, i], dtype=self.xp.float64)

    def compensated(self, channel, comp_ref, gid):
        comp = self.strategy._compensation(comp_ref, self.fcs, gid)
        if comp is None:
            return self.column(channel, gid)
        k = comp.output_index(channel)
        if k is None:
            if _column_of(self.names, channel, gid) is not None:  # not part of the matrix: stays uncompensated
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
        names = channels
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
                    elif _column_of(names, c, gid) is None:
                        via = f" (nor an output of compensation {comp.id!r})" if comp is not None else ""
                        raise GatingError(
                            f"gate {gid!r}: channel {c!r} is not in the sample{via}; channels are {channels}"
                        )

    def apply(self, sample, backend: str | None = None, gate_ids=None) -> GatingResults:
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

        events, channels, spill, name, sample = _sample_events(sample)
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
        fn = functools.partial(_chunk_masks, strategy=self, channels=channels, ids=tuple(ids), fcs=fcs)
        masks = events.map_blocks(
            fn,
            dtype=bool,
            chunks=(events.chunks[0], (len(ids),)),
            meta=xp.empty((0, len(ids)), dtype=bool),
        )
        return GatingResults(self, masks, ids, int(events.shape[0]), name, sample=sample)

    def __repr__(self):
        return f"GatingStrategy({len(self.gates)} gates: {self.gate_ids})"


def _chunk_masks(block, strategy, channels, ids, fcs):
    xp = array_module(block)
    if block.shape[0] == 0:
        return xp.zeros((0, len(ids)), dtype=bool)
    return strategy.masks(block, channels, ids, fcs)


def _sample_events(sample):
    """(events (dask/array), channels, spillover, name, sample) of an FCSSample or (events, channels)."""
    from ...io.fcs import as_sample

    sample = as_sample(sample, what="apply()", name="<array>", error=GatingError)
    events = sample.linear_events()
    try:
        spill = sample.spillover
    except Exception as exc:  # a malformed $SPILLOVER only matters when "FCS" compensation is used
        spill = exc
    name = getattr(sample, "path", None) or getattr(sample, "name", "<sample>")
    return events, _names(sample), spill, str(name), sample


def _names(sample):
    """The sample's channel names, answering to ``$PnS`` too where the sample has markers."""
    from ...io.fcs.text import ChannelNames

    names = getattr(sample, "channel_names", None)
    return names if isinstance(names, ChannelNames) else ChannelNames(sample.channels)


def _column_of(names, channel, gid):
    """Column of ``channel`` (``$PnN``, or ``$PnS`` for a ChannelNames), None if absent; ambiguous: GatingError."""
    from ...errors import FCSError
    from ...io.fcs.text import column_of

    try:
        return column_of(names, channel)
    except FCSError as exc:
        raise GatingError(f"gate {gid!r}: {exc}") from None
