"""FlowJo 10 workspaces (``.wsp``) in: the gating hierarchy of one sample as a :class:`GatingStrategy`.

A FlowJo workspace is XML whose gates are Gating-ML 2.0 elements
(``gating:RectangleGate``, ``gating:PolygonGate``, ...) wrapped in FlowJo's
``Population`` tree, with FlowJo's own ellipse form, Boolean nodes
(``AndNode``/``OrNode``/``NotNode``), per-sample display transforms and
spillover matrices.  :func:`read_flowjo` reads them into the same structures as
:func:`~evflow.flow.gatingml.read_gatingml` (and reuses its parser for the
Gating-ML gate elements):

- gate ids are FlowJo's population paths, ``"Cells/Singlets/CD63+"``;
- FlowJo's quadrant gates (four open rectangles) and curly quads (polygon
  pieces) are the rectangles and polygons FlowJo writes for each quadrant; a
  range gate is a one-dimensional rectangle;
- a gate with ``eventsInside="0"`` selects the events outside its shape: a
  Boolean ``not`` gate of the shape, which is kept as ``"<path> [shape]"``;
- FlowJo stores coordinates in data units and gates on its display scales:
  every dimension gets the sample's transform for its channel (``log``,
  ``biex``: :mod:`evflow.flow.flowjo_transforms`; ``logicle``, ``fasinh``:
  Gating-ML's) and the coordinates are mapped onto it, so polygon edges are
  straight where FlowJo draws them straight; a ``linear`` scale changes no
  membership and is left out;
- ellipses (foci and edge points on FlowJo's 256-bin display) become
  128-vertex polygons on the display scale, as FlowJo evaluates them;
- a ``spilloverMatrix`` becomes a :class:`~evflow.flow.compensation.Compensation`
  whose outputs are the prefixed names the gates use (``Comp-FL1-A``).

The strategy carries what FlowJo stored beside the gates: ``flowjo_counts``
(``{gate_id: FlowJo's event count}``), ``flowjo_sample``, ``flowjo_group``,
``fcs_file`` (the data set's path as the workspace gives it, resolved against
the workspace's folder when relative) and ``flowjo_keywords``.
:func:`compare_flowjo_counts` sets evflow's counts beside FlowJo's, gate by
gate, for the events of any of the workspace's samples
(:func:`workspace_sample`): a different scale, a transform read otherwise, a
different file, or a sample FlowJo gated with gates of its own shows there.
"""

from __future__ import annotations

import copy
import math
import os
from urllib.parse import unquote, urlparse

import numpy as np

from ..errors import GatingError
from . import gatingml as _gml
from .compensation import Compensation
from .flowjo_transforms import BIEX_CHANNELS, FlowJoBiexTransform, FlowJoLogTransform
from .gates import BooleanGate, Dimension, GatingStrategy, PolygonGate, RectangleGate
from .transforms import AsinhTransform, LogicleTransform

__all__ = ["read_flowjo", "read_gates_file", "flowjo_samples", "compare_flowjo_counts", "is_flowjo_sample",
           "workspace_sample", "FLOWJO_COUNT_TOLERANCE"]

_G, _T, _D = _gml._G, _gml._T, _gml._D
_BOOL = {"AndNode": "and", "OrNode": "or", "NotNode": "not"}
ELLIPSE_VERTICES = 128
#: a gate's count may differ from the one FlowJo stored by this share of it (and at least 1 event) before the
#: difference is flagged: events on a gate's very edge, which FlowJo evaluates on its display grid
FLOWJO_COUNT_TOLERANCE = 0.001


# ============================================================================ entry points


def read_gates_file(path) -> GatingStrategy:
    """A Gating-ML 2.0 file, or a FlowJo workspace (``.wsp``: its default group and first sample)."""
    if os.fspath(path).lower().endswith(".wsp"):
        return read_flowjo(path)
    return _gml.read_gatingml(path)


def flowjo_samples(path) -> dict:
    """``{group name: [sample name, ...]}`` of a FlowJo workspace."""
    p, root = _open(path)
    samples = _samples(p, root)
    return {name: [samples[i]["name"] for i in ids if i in samples] for name, (_, ids) in _groups(p, root).items()}


def read_flowjo(path, group: str | None = None, sample: str | None = None) -> GatingStrategy:
    """Read the gating hierarchy of a FlowJo 10 workspace into a :class:`GatingStrategy`.

    Parameters
    ----------
    path : str or Path
        The ``.wsp`` file.
    group : str, optional
        Sample group (FlowJo's ``GroupNode``).  Default: the only group whose
        samples carry gates (other than "All Samples" when another one does).
    sample : str, optional
        Sample name (FlowJo's ``SampleNode`` name, usually the FCS file name),
        or its ``sampleID``.  FlowJo keeps a full gate tree, transforms and
        compensation per sample; default: the group's first sample.

    Returns
    -------
    GatingStrategy
        Gate ids are population paths (``"Cells/Singlets"``); see the module
        documentation for the attributes FlowJo's counts and keywords are kept in.

    Raises
    ------
    GatingError
        The file is missing or not well-formed XML, not a FlowJo workspace,
        the group or sample is unknown (the message lists them), or an element
        is not one evflow reads (an unknown gate type or transform, a bad
        number); the message names the file, line and element.
    """
    p, root = _open(path)
    return _read_sample(p, root, group, sample)


def _read_sample(p, root, group, sample) -> GatingStrategy:
    """:func:`read_flowjo` of a parsed workspace."""
    samples = _samples(p, root)
    groups = _groups(p, root)
    gname, sid = _choose(p, groups, samples, group, sample)
    s = samples[sid]
    reader = _SampleReader(p, s)
    strategy = reader.build()
    strategy.source = p.source
    strategy.flowjo_group = gname
    strategy.flowjo_sample = s["name"]
    strategy.flowjo_keywords = s["keywords"]
    strategy.fcs_file = _uri_path(s["uri"], p.source) if s["uri"] else None
    return strategy


def workspace_sample(strategy, path, meta=None):
    """The workspace's own reading of the sample whose FCS file is at ``path`` (a :class:`GatingStrategy` with
    that sample's gates and stored counts), or None when the file is none of the workspace's samples or
    ``strategy`` did not come from a workspace.  Matched by file name against the sample names and data set
    file names, or by ``$FIL`` (``meta``: the file's TEXT keywords)."""
    source = getattr(strategy, "source", None)
    if getattr(strategy, "flowjo_sample", None) is None or not source:
        return None
    if is_flowjo_sample(strategy, path, meta):
        return strategy
    p, root = _open(source)
    keys = {os.path.basename(os.fspath(path))}
    fil = str((meta or {}).get("$FIL", "")).strip()
    if fil:
        keys.add(os.path.basename(fil))
    for sid, smp in _samples(p, root).items():
        names = {smp["name"]} | ({os.path.basename(_uri_path(smp["uri"], p.source))} if smp["uri"] else set())
        if names & keys:
            group = getattr(strategy, "flowjo_group", None)
            members = _groups(p, root).get(group, (None, []))[1] if group else [sid]
            return _read_sample(p, root, group if sid in members else None, sid)
    return None


def is_flowjo_sample(strategy, path, meta=None) -> bool:
    """Whether the FCS file at ``path`` is the sample the workspace's gates (and stored counts) were read from:
    its file name is the workspace's sample name, its data set's file name or, with ``meta`` (the file's
    TEXT keywords), its ``$FIL``."""
    names = {getattr(strategy, "flowjo_sample", None)}
    if getattr(strategy, "fcs_file", None):
        names.add(os.path.basename(strategy.fcs_file))
    names.discard(None)
    if not names:
        return False
    fil = str((meta or {}).get("$FIL", "")).strip()
    return os.path.basename(os.fspath(path)) in names or (bool(fil) and os.path.basename(fil) in names)


def compare_flowjo_counts(strategy, counts: dict, n_events: int | None = None, *,
                          tolerance: float = FLOWJO_COUNT_TOLERANCE):
    """evflow's counts beside the ones FlowJo stored in the workspace, gate by gate (pandas DataFrame).

    ``strategy`` is the workspace's reading of a sample (:func:`read_flowjo`, :func:`workspace_sample`), whose
    stored counts are compared; ``counts`` is ``GatingResults.counts()`` of that sample's file, every event of it
    (before any time interval is dropped), under whichever gates the run applied; ``n_events`` its event count,
    set beside FlowJo's count of the sample (row ``"(all events)"``).  Columns: ``gate``, ``flowjo``, ``evflow``, ``difference``
    (evflow - FlowJo) and ``flagged`` (the difference exceeds ``tolerance`` of FlowJo's count and 1 event).
    Gates FlowJo stored no count for (``count="-1"``) are left out; a stored gate evflow did not count raises
    :class:`~evflow.errors.GatingError`."""
    import pandas as pd

    stored = dict(getattr(strategy, "flowjo_counts", None) or {})
    rows = []
    total = getattr(strategy, "flowjo_total", None)
    if n_events is not None and total is not None:
        rows.append(("(all events)", int(total), int(n_events)))
    missing = sorted(g for g in stored if g not in counts)
    if missing:
        raise GatingError(f"{getattr(strategy, 'source', 'workspace')}: FlowJo stored counts for gates with no "
                          f"evflow count: {missing} (counted: {sorted(counts)})")
    rows += [(g, int(c), int(counts[g])) for g, c in stored.items()]
    df = pd.DataFrame(rows, columns=["gate", "flowjo", "evflow"])
    df["difference"] = df["evflow"] - df["flowjo"]
    df["flagged"] = df["difference"].abs() > np.maximum(1.0, float(tolerance) * df["flowjo"].abs())
    return df


# ============================================================================ the document


def _open(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GatingError(f"{path}: FlowJo workspace not found")
    p, root = _gml._parse_tree(path)
    if _gml._local(root.tag) != "Workspace":
        raise p.err(f"root element is {root.tag!r}, expected a FlowJo Workspace", root)
    return p, root


def _child(p, el, tag, what):
    c = el.find(tag)
    if c is None:
        raise p.err(f"{what}: missing <{tag}> element", el)
    return c


def _name(p, el, attr="name"):
    v = el.get(attr)
    if v is None:
        raise p.err(f"<{_gml._local(el.tag)}> without a {attr!r} attribute", el)
    return v


def _samples(p, root) -> dict:
    out = {}
    for s_el in _child(p, root, "SampleList", "Workspace").findall("Sample"):
        node = _child(p, s_el, "SampleNode", "Sample")
        sid = node.get("sampleID") or (s_el.find("DataSet").get("sampleID") if s_el.find("DataSet") is not None else None)
        if sid is None:
            raise p.err("SampleNode without a sampleID", node)
        ds = s_el.find("DataSet")
        kw = {}
        kw_el = s_el.find("Keywords")
        for k in kw_el.findall("Keyword") if kw_el is not None else ():
            kw[_name(p, k)] = k.get("value", "")
        out[sid] = {"id": sid, "name": _name(p, node), "node": node, "el": s_el, "keywords": kw,
                    "uri": ds.get("uri") if ds is not None else None}
    if not out:
        raise p.err("the workspace holds no samples (empty SampleList)", root)
    return out


def _groups(p, root) -> dict:
    out = {}
    groups_el = root.find("Groups")
    for g in groups_el.findall("GroupNode") if groups_el is not None else ():
        ids = []
        gr = g.find("Group")
        refs = gr.find("SampleRefs") if gr is not None else None
        for r in refs.findall("SampleRef") if refs is not None else ():
            ids.append(_name(p, r, "sampleID"))
        out[_name(p, g)] = (g, ids)
    return out


def _has_gates(node) -> bool:
    sub = node.find("Subpopulations")
    return sub is not None and len(sub) > 0


def _choose(p, groups, samples, group, sample):
    names = {s["name"]: sid for sid, s in samples.items()}
    if sample is not None:
        sample = str(sample)
        sid = names.get(sample, sample if sample in samples else None)
        if sid is None:
            base = {os.path.basename(_uri_path(s["uri"], p.source)): i for i, s in samples.items() if s["uri"]}
            sid = base.get(sample)
        if sid is None:
            raise p.err(f"sample {sample!r} is not in the workspace; samples are {sorted(names)}")
    if group is not None:
        if group not in groups:
            raise p.err(f"group {group!r} is not in the workspace; groups are {sorted(groups)}")
        members = [i for i in groups[group][1] if i in samples]
        if sample is None:
            if not members:
                raise p.err(f"group {group!r} has no samples")
            sid = members[0]
        elif sid not in members:
            raise p.err(f"sample {sample!r} is not in group {group!r}; its samples are "
                        f"{[samples[i]['name'] for i in members]}")
        return group, sid
    gated = [g for g, (_, ids) in groups.items() if any(_has_gates(samples[i]["node"]) for i in ids if i in samples)]
    if sample is not None:
        gated_with = [g for g in gated if sid in groups[g][1]]
        gated_with = [g for g in gated_with if g != "All Samples"] or gated_with
        return (gated_with[0] if len(gated_with) == 1 else None), sid
    pick = [g for g in gated if g != "All Samples"] or gated
    if len(pick) != 1:
        if not pick:
            sid = next((i for i, s in samples.items() if _has_gates(s["node"])), next(iter(samples)))
            return None, sid
        raise p.err(f"the workspace has {len(pick)} sample groups with gates {sorted(pick)}; choose one with group=")
    members = [i for i in groups[pick[0]][1] if i in samples]
    sid = next((i for i in members if _has_gates(samples[i]["node"])), members[0])
    return pick[0], sid


def _uri_path(uri, wsp):
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", "") and len(parsed.scheme) != 1:  # one letter: a Windows drive
        return uri
    path = unquote(parsed.path if parsed.scheme == "file" else uri)
    if len(path) > 2 and path[0] == "/" and path[2] == ":":  # file:/C:/...
        path = path[1:]
    if os.path.isabs(path) or (len(path) > 1 and path[1] == ":"):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(wsp)), path)


# ============================================================================ one sample's gates


def _float(p, el, v, what):
    return _gml._float(p, el, v, what, None)


def _tattr(el, name):
    return _gml._attr(el, name, _gml.NS_TRANSFORMS)


class _SampleReader:
    def __init__(self, p, s):
        self.p = p
        self.s = s
        self.comp = None
        self.transforms = {}
        self.gates = []  # (gate, element) in document order
        self.elements = {}
        self.counts = {}

    # ------------------------------------------------------------------ transforms and compensation
    def _read_transforms(self):
        p = self.p
        el = self.s["el"].find("Transformations")
        for t in list(el) if el is not None else ():
            if not isinstance(t.tag, str):
                continue
            kind = _gml._local(t.tag)
            par = t.find(_D + "parameter")
            ch = _gml._attr(par, "name", _gml.NS_DATATYPE) if par is not None else None
            if not ch:
                raise p.err(f"transforms:{kind} without a data-type:parameter name", t)

            def num(name, default=None, t=t, kind=kind, ch=ch):
                v = _tattr(t, name)
                if v is None:
                    if default is not None:
                        return default
                    raise p.err(f"transforms:{kind} for {ch!r}: missing attribute {name}", t)
                return _float(p, t, v, f"transforms:{kind} {name}")

            try:
                if kind == "linear":
                    self.transforms[ch] = ("linear", num("minRange", 0.0), num("maxRange"))
                    continue
                if kind == "log":
                    tr = FlowJoLogTransform(num("offset"), num("decades"), id=ch)
                elif kind == "biex":
                    if num("length", 256.0) != 256:
                        raise p.err(f"transforms:biex for {ch!r}: length {num('length'):g} is not 256, the only "
                                    "table length FlowJo documents", t)
                    tr = FlowJoBiexTransform(num("pos", 4.418540), num("neg", 0.0), num("width", -10.0),
                                             num("maxRange", 262144.0), id=ch)
                elif kind == "logicle":
                    tr = LogicleTransform(num("T"), num("W"), num("M"), num("A", 0.0), id=ch)
                elif kind == "fasinh":
                    tr = AsinhTransform(num("T"), num("M"), num("A", 0.0), id=ch)
                else:
                    raise p.err(f"unsupported FlowJo transform transforms:{kind} for {ch!r} (evflow reads linear, "
                                "log, biex, logicle and fasinh; save the axis with one of them in FlowJo)", t)
            except GatingError as exc:
                if str(exc).startswith(p.source):
                    raise
                raise p.err(str(exc), t) from None
            self.transforms[ch] = tr

    def _read_compensation(self):
        p = self.p
        mats = self.s["el"].findall(_T + "spilloverMatrix")
        if not mats:
            return
        if len(mats) > 1:
            raise p.err(f"sample {self.s['name']!r} has {len(mats)} spillover matrices, expected one", mats[1])
        m = mats[0]
        if str(m.get("spectral", "0")) == "1":
            raise p.err("spectral (unmixing) matrices are not supported; export a conventional spillover matrix", m)
        cid = m.get("name") or m.get("id") or "FlowJo"
        pre, suf = m.get("prefix", "Comp-"), m.get("suffix", "")
        params = m.find(_D + "parameters")
        dets = [_gml._attr(x, "name", _gml.NS_DATATYPE) for x in (params.findall(_D + "parameter") if params is not None else ())]
        if not dets or not all(dets):
            raise p.err(f"spilloverMatrix {cid!r}: needs data-type:parameters with names", m)
        rows = {}
        for sp in m.findall(_T + "spillover"):
            src = _gml._attr(sp, "parameter", _gml.NS_DATATYPE)
            row = {}
            for c in sp.findall(_T + "coefficient"):
                row[_gml._attr(c, "parameter", _gml.NS_DATATYPE)] = _float(p, c, _tattr(c, "value"), "coefficient")
            rows[src] = row
        try:
            mat = [[rows[a][b] for b in dets] for a in dets]
        except KeyError as exc:
            raise p.err(f"spilloverMatrix {cid!r}: no coefficient for {exc.args[0]!r}; detectors are {dets}", m) from None
        try:
            self.comp = Compensation(np.array(mat), dets, id=cid, fluorochromes=[pre + d + suf for d in dets])
        except GatingError as exc:
            raise p.err(str(exc), m) from None

    # ------------------------------------------------------------------ dimensions
    def _dimension(self, name):
        """(Dimension, forward map of data coordinates) for a FlowJo channel name."""
        comp = None
        if self.comp is not None and name in self.comp.fluorochromes:
            comp = self.comp.id
        t = self.transforms.get(name)
        if t is None and comp is not None:
            t = self.transforms.get(self.comp.channels_in[self.comp.fluorochromes.index(name)])
        if t is None or isinstance(t, tuple):
            return Dimension(name, None, comp), t
        return Dimension(name, t, comp), t

    # ------------------------------------------------------------------ gates
    def _geometric(self, pop, gid, parent):
        p = self.p
        gate_el = pop.find("Gate")
        if gate_el is None:
            raise p.err(f"population {gid!r}: missing <Gate> element", pop)
        kids = [c for c in gate_el if isinstance(c.tag, str)]
        if len(kids) != 1 or _gml._ns(kids[0].tag) != _gml.NS_GATING:
            raise p.err(f"population {gid!r}: <Gate> must hold exactly one gating:* element", gate_el)
        el = kids[0]
        kind = _gml._local(el.tag)
        inside = str(el.get("eventsInside", "1")).strip() != "0"
        shape_id = gid if inside else f"{gid} [shape]"
        if kind == "EllipsoidGate":
            gate = self._ellipse(el, shape_id, parent)
        elif kind in ("RectangleGate", "PolygonGate"):
            gate = self._gml_gate(el, kind, shape_id, parent)
        else:
            raise p.err(f"population {gid!r}: unsupported FlowJo gate element gating:{kind} (evflow reads "
                        "RectangleGate, PolygonGate and EllipsoidGate populations and And/Or/Not nodes)", el)
        self._add(gate, el)
        if not inside:
            self._add(BooleanGate(gid, "not", [(shape_id, False)], parent=parent), el)

    def _gml_gate(self, el, kind, gid, parent):
        """Reuse the Gating-ML reader on a copy with evflow's ids and compensation refs, then move the
        coordinates onto FlowJo's display scales."""
        p = self.p
        el2 = copy.deepcopy(el)
        for a, b in zip(el.iter(), el2.iter()):
            if id(a) in p.lines:
                p.lines[id(b)] = p.lines[id(a)]
        self._keep = getattr(self, "_keep", []) + [el2]  # keep the copies alive while their ids key p.lines
        el2.set(_G + "id", gid)
        el2.attrib.pop(_G + "parent_id", None)
        if parent is not None:
            el2.set(_G + "parent_id", parent)
        forward = []
        dims = el2.findall(_G + "dimension")
        for d in dims:
            fcs = d.find(_D + "fcs-dimension")
            name = _gml._attr(fcs, "name", _gml.NS_DATATYPE) if fcs is not None else None
            if not name:
                raise p.err(f"gate {gid!r}: dimension without a data-type:fcs-dimension name", d)
            dim, t = self._dimension(name)
            d.set(_G + "compensation-ref", dim.compensation or "uncompensated")
            forward.append(dim)
        gate = _gml._read_gate(p, el2, {})
        for i, dim in enumerate(forward):
            gate.dims[i] = dim
        if isinstance(gate, RectangleGate):
            for i, dim in enumerate(forward):
                if dim.transform is not None:
                    gate.mins[i] = None if gate.mins[i] is None else float(dim.transform.apply(np.array([gate.mins[i]]))[0])
                    gate.maxs[i] = None if gate.maxs[i] is None else float(dim.transform.apply(np.array([gate.maxs[i]]))[0])
            return RectangleGate(gid, forward, gate.mins, gate.maxs, parent=parent)
        v = np.array(gate.vertices, dtype=np.float64)
        for i, dim in enumerate(forward):
            if dim.transform is not None:
                v[:, i] = dim.transform.apply(v[:, i])
        return PolygonGate(gid, forward, v, parent=parent)

    def _ellipse(self, el, gid, parent):
        p = self.p
        dims = []
        for d in el.findall(_G + "dimension"):
            fcs = d.find(_D + "fcs-dimension")
            name = _gml._attr(fcs, "name", _gml.NS_DATATYPE) if fcs is not None else None
            if not name:
                raise p.err(f"gate {gid!r}: dimension without a data-type:fcs-dimension name", d)
            dims.append(self._dimension(name))
        if len(dims) != 2:
            raise p.err(f"gate {gid!r}: a FlowJo ellipse has 2 dimensions, found {len(dims)}", el)

        def points(tag, n_min):
            box = el.find(_G + tag)
            pts = []
            for v in box.findall(_G + "vertex") if box is not None else ():
                c = [_float(p, c, _gml._attr(c, "value", _gml.NS_DATATYPE), f"{tag} coordinate")
                     for c in v.findall(_G + "coordinate")]
                if len(c) != 2:
                    raise p.err(f"gate {gid!r}: {tag} vertex has {len(c)} coordinates, expected 2", v)
                pts.append(c)
            if len(pts) < n_min:
                raise p.err(f"gate {gid!r}: a FlowJo ellipse needs gating:{tag} with {n_min} vertices, "
                            f"found {len(pts)}", box if box is not None else el)
            return np.array(pts) / 256.0  # FlowJo's 256-bin display, normalised to 0..1

        foci, edge = points("foci", 2), points("edge", 4)
        center = foci[:2].mean(axis=0)
        theta = math.atan2(foci[1, 1] - foci[0, 1], foci[1, 0] - foci[0, 0])
        u = np.array([math.cos(theta), math.sin(theta)])
        w = np.array([-math.sin(theta), math.cos(theta)])
        half_focal = abs(float((foci[0] - center) @ u))
        e0 = np.abs([(edge[0] - center) @ u, (edge[0] - center) @ w])
        e2 = np.abs([(edge[2] - center) @ u, (edge[2] - center) @ w])
        if e0.argmax() == e2.argmax():
            raise p.err(f"gate {gid!r}: cannot tell the ellipse's major axis from its edge points", el)
        a = max(e0.max(), e2.max())
        b = math.sqrt(abs(half_focal ** 2 - a ** 2))
        ang = 2 * np.pi * np.arange(ELLIPSE_VERTICES) / ELLIPSE_VERTICES
        x, y = (a * np.cos(ang), b * np.sin(ang)) if e0.argmax() == 0 else (b * np.cos(ang), a * np.sin(ang))
        v = center + np.outer(x, u) + np.outer(y, w)
        out = []
        for i, (dim, t) in enumerate(dims):
            if isinstance(dim.transform, FlowJoBiexTransform):
                v[:, i] *= BIEX_CHANNELS
            elif dim.transform is None:  # linear scale: back to data units
                lo, hi = (t[1], t[2]) if isinstance(t, tuple) else (0.0, 262144.0)
                v[:, i] = lo + v[:, i] * (hi - lo)
            out.append(dim)
        try:
            return PolygonGate(gid, out, v, parent=parent)
        except GatingError as exc:
            raise p.err(str(exc).replace(f"gate {gid!r}: ", ""), el, gid) from None

    def _boolean(self, node, gid, parent, op, path):
        p = self.p
        deps = node.find("Dependents")
        refs = []
        for d in deps.findall("Dependent") if deps is not None else ():
            refs.append((self._resolve(_name(p, d), path, d, gid), False))
        if not refs or (op == "not" and len(refs) != 1) or (op != "not" and len(refs) < 2):
            raise p.err(f"Boolean node {gid!r} ({op}) has {len(refs)} dependents", node)
        self._pending.append((BooleanGate(gid, op, refs, parent=parent), node))

    def _resolve(self, ref, path, el, gid):
        names = self._paths
        parts = [x for x in ref.split("/") if x]
        cands = ["/".join(parts), "/".join(path + parts)]
        for c in cands:
            if c in names:
                return c
        leaf = [n for n in names if n.split("/")[-1] == parts[-1]] if parts else []
        if len(leaf) == 1:
            return leaf[0]
        raise self.p.err(f"Boolean node {gid!r}: dependent {ref!r} is not a population of this sample "
                         f"(populations: {sorted(names)})", el)

    def _walk(self, sub, path, parent):
        p = self.p
        for c in sub:
            if not isinstance(c.tag, str):
                continue
            tag = c.tag
            if tag not in ("Population",) and tag not in _BOOL:
                continue
            name = _name(p, c)
            gid = "/".join(path + [name])
            if gid in self._paths:
                raise p.err(f"population {gid!r} appears twice", c)
            self._paths.add(gid)
            cnt = c.get("count")
            try:
                if cnt is not None and int(cnt) >= 0:
                    self.counts[gid] = int(cnt)
            except ValueError:
                raise p.err(f"population {gid!r}: count {cnt!r} is not an integer", c) from None
            if tag == "Population":
                self._geometric(c, gid, parent)
            else:
                self._boolean(c, gid, parent, _BOOL[tag], path)
            child = c.find("Subpopulations")
            if child is not None:
                if len(path) + 1 > _gml.MAX_GATE_DEPTH:
                    raise p.err(f"population {gid!r}: nested deeper than {_gml.MAX_GATE_DEPTH} gates", c)
                self._walk(child, path + [name], gid)

    def _add(self, gate, el):
        self.gates.append(gate)
        self.elements[id(gate)] = el

    def build(self) -> GatingStrategy:
        p = self.p
        self._read_transforms()
        self._read_compensation()
        self._paths, self._pending = set(), []
        sub = self.s["node"].find("Subpopulations")
        if sub is not None:
            self._walk(sub, [], None)
        for g, el in self._pending:
            self._add(g, el)
        comps = {self.comp.id: self.comp} if self.comp is not None else {}
        strategy = GatingStrategy(compensations=comps)
        provides = {g.id: g for g in self.gates}
        _gml.add_in_dependency_order(p, strategy, self.gates, provides, self.elements, max_depth=_gml.MAX_GATE_DEPTH)
        order = {id(g): i for i, g in enumerate(self.gates)}
        strategy._order.sort(key=lambda g: order.get(id(g), len(order)))
        strategy.flowjo_counts = dict(self.counts)
        cnt = self.s["node"].get("count")
        strategy.flowjo_total = int(cnt) if cnt and cnt.lstrip("-").isdigit() and int(cnt) >= 0 else None
        return strategy
