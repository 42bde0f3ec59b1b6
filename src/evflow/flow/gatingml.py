"""Gating-ML 2.0 import and export.

:func:`read_gatingml` reads rectangle (range), polygon, ellipsoid, quadrant and
Boolean gates, parent gates, the ``flin``, ``flog``, ``fasinh``, ``logicle``,
``hyperlog`` and ``fratio`` transformations and ``spectrumMatrix``
compensation into a :class:`~evflow.flow.gates.GatingStrategy`;
:func:`write_gatingml` writes one back.  Anything else in the Gating-ML
namespaces is refused with a :class:`~evflow.GatingError` that names the
element, the gate and the line; nothing half-read is returned.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from ..errors import GatingError
from ._gml_order import add_in_dependency_order
from .compensation import Compensation
from .gates import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    GatingStrategy,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RatioDimension,
    RectangleGate,
)
from .transforms import (
    AsinhTransform,
    HyperlogTransform,
    LinearTransform,
    LogicleTransform,
    LogTransform,
    RatioTransform,
    Transform,
)

__all__ = ["read_gatingml", "write_gatingml", "parse_gatingml", "to_gatingml_string"]

NS_GATING = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
NS_TRANSFORMS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
NS_DATATYPE = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
_G = "{%s}" % NS_GATING
_T = "{%s}" % NS_TRANSFORMS
_D = "{%s}" % NS_DATATYPE

_SIMPLE_TRANSFORMS = {
    "flin": (LinearTransform, ("T", "A")),
    "flog": (LogTransform, ("T", "M")),
    "fasinh": (AsinhTransform, ("T", "M", "A")),
    "logicle": (LogicleTransform, ("T", "W", "M", "A")),
    "hyperlog": (HyperlogTransform, ("T", "W", "M", "A")),
}
_GATE_TAGS = ("RectangleGate", "PolygonGate", "EllipsoidGate", "QuadrantGate", "BooleanGate")


# ============================================================================ reading


class _Parsed:
    def __init__(self, source):
        self.source = source
        self.lines = {}  # id(element) -> line

    def err(self, msg, el=None, gid=None):
        where = self.source
        line = self.lines.get(id(el)) if el is not None else None
        if line:
            where += f", line {line}"
        who = f"gate {gid!r}: " if gid else ""
        return GatingError(f"{where}: {who}{msg}")


def _local(tag):
    return tag.split("}", 1)[1] if tag.startswith("{") else tag


def _ns(tag):
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _attr(el, name, ns=NS_GATING, default=None):
    """An attribute in the given namespace, or unqualified."""
    v = el.get("{%s}%s" % (ns, name))
    if v is None:
        v = el.get(name)
    return default if v is None else v


def _float(p: _Parsed, el, value, what, gid):
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise p.err(f"{what} {value!r} is not a number", el, gid) from None
    if not np.isfinite(f):
        raise p.err(f"{what} {value!r} is not finite", el, gid)
    return f


def _parse_tree(source, text=None):
    """Parse XML with expat into ElementTree elements, recording each element's line number."""
    from xml.parsers import expat

    p = _Parsed(str(source))
    if text is None:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise GatingError(f"{source}: cannot read the Gating-ML file ({exc})") from None
    else:
        data = text if isinstance(text, bytes) else str(text).encode("utf-8")
    parser = expat.ParserCreate(namespace_separator="}")
    # frames: [element, text chunks since the last child started or ended]; text is joined once (linear time)
    stack, holder = [], []
    count = [0, 0]  # elements, characters

    def qname(name):
        return "{" + name if "}" in name else name

    def flush(frame):
        if frame[1]:
            el = frame[0]
            txt = "".join(frame[1])
            frame[1] = []
            if len(el):
                el[-1].tail = (el[-1].tail or "") + txt
            else:
                el.text = (el.text or "") + txt

    def start(name, attrs):
        count[0] += 1
        if count[0] > MAX_ELEMENTS:
            raise _Limit(f"more than {MAX_ELEMENTS:,} elements")
        el = ET.Element(qname(name), {qname(k): v for k, v in attrs.items()})
        p.lines[id(el)] = parser.CurrentLineNumber
        if stack:
            flush(stack[-1])
            stack[-1][0].append(el)
        else:
            holder.append(el)
        stack.append([el, []])

    def end(name):
        flush(stack.pop())

    def chars(data_):
        count[1] += len(data_)
        if count[1] > MAX_TEXT_CHARS:
            raise _Limit(f"more than {MAX_TEXT_CHARS:,} characters of text")
        if stack:
            stack[-1][1].append(data_)

    def entity_decl(name, *args):
        raise _Limit(f"it declares the entity {name!r} (Gating-ML needs no DTD entities; they are refused)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.EntityDeclHandler = entity_decl
    try:
        parser.Parse(data, True)
    except _Limit as exc:
        raise GatingError(f"{source}, line {parser.CurrentLineNumber}: refused: {exc}") from None
    except (LookupError, ValueError) as exc:  # an unknown encoding in the XML declaration, ...
        raise GatingError(f"{source}: not readable XML ({type(exc).__name__}: {exc})") from None
    except expat.ExpatError as exc:
        raise GatingError(
            f"{source}, line {exc.lineno}, column {exc.offset}: not well-formed XML ({expat.ErrorString(exc.code)})"
        ) from None
    if not holder:
        raise p.err("empty document")
    return p, holder[0]


#: bounds on what one Gating-ML document may hold (each far above real documents): the work and memory of
#: parsing and applying it stay proportional to the file
MAX_ELEMENTS = 500_000
MAX_TEXT_CHARS = 16 << 20
MAX_VERTICES = 100_000
MAX_GATE_DEPTH = 256


class _Limit(Exception):
    pass


def _walk(p: _Parsed, el, out):
    """Collect the Gating-ML elements under ``el`` in document order (skipping custom_info, looking inside
    foreign wrappers), without recursion: nesting depth costs no stack."""
    todo = [iter(el)]
    while todo:
        child = next(todo[-1], None)
        if child is None:
            todo.pop()
            continue
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        ns, name = _ns(child.tag), _local(child.tag)
        if ns == NS_DATATYPE and name == "custom_info":
            continue
        if ns == NS_GATING:
            if name in _GATE_TAGS:
                out["gates"].append(child)
            else:
                raise p.err(f"unsupported Gating-ML element gating:{name}", child)
        elif ns == NS_TRANSFORMS:
            if name == "transformation":
                out["transforms"].append(child)
            elif name == "spectrumMatrix":
                out["spectra"].append(child)
            else:
                raise p.err(f"unsupported Gating-ML element transforms:{name}", child)
        elif ns == NS_DATATYPE:
            raise p.err(f"unexpected element data-type:{name} at the top level", child)
        else:
            todo.append(iter(child))  # a foreign wrapper element: look inside


def _read_transform(p: _Parsed, el):
    tid = _attr(el, "id", NS_TRANSFORMS)
    if not tid:
        raise p.err("transforms:transformation without an id", el)
    kids = [c for c in el if isinstance(c.tag, str) and not (_ns(c.tag) == NS_DATATYPE and _local(c.tag) == "custom_info")]
    if len(kids) != 1 or _ns(kids[0].tag) != NS_TRANSFORMS:
        raise p.err(f"transformation {tid!r} must hold exactly one transforms:* function element", el)
    f = kids[0]
    name = _local(f.tag)
    if name in _SIMPLE_TRANSFORMS:
        cls, pnames = _SIMPLE_TRANSFORMS[name]
        vals = {}
        for pn in pnames:
            v = _attr(f, pn, NS_TRANSFORMS)
            if v is None:
                raise p.err(f"transformation {tid!r} ({name}): missing parameter {pn}", f)
            vals[pn.lower()] = _float(p, f, v, f"transformation {tid!r} parameter {pn}", None)
        try:
            return cls(**vals, id=tid)
        except GatingError as exc:
            raise p.err(str(exc), f) from None
    if name == "fratio":
        chans = [_attr(c, "name", NS_DATATYPE) for c in f if isinstance(c.tag, str) and _local(c.tag) == "fcs-dimension"]
        if len(chans) != 2 or not all(chans):
            raise p.err(f"transformation {tid!r} (fratio): needs two data-type:fcs-dimension children with names", f)
        vals = {}
        for pn in ("A", "B", "C"):
            v = _attr(f, pn, NS_TRANSFORMS)
            if v is None:
                raise p.err(f"transformation {tid!r} (fratio): missing parameter {pn}", f)
            vals[pn.lower()] = _float(p, f, v, f"transformation {tid!r} parameter {pn}", None)
        return RatioTransform(chans, **vals, id=tid)
    raise p.err(f"transformation {tid!r}: unsupported transformation transforms:{name}", f)


def _names(p, el, what, cid):
    if el is None:
        raise p.err(f"spectrumMatrix {cid!r}: missing transforms:{what}")
    names = [_attr(c, "name", NS_DATATYPE) for c in el if isinstance(c.tag, str) and _local(c.tag) == "fcs-dimension"]
    if not names or not all(names):
        raise p.err(f"spectrumMatrix {cid!r}: transforms:{what} needs data-type:fcs-dimension names", el)
    return names


def _read_spectrum(p: _Parsed, el):
    cid = _attr(el, "id", NS_TRANSFORMS)
    if not cid:
        raise p.err("transforms:spectrumMatrix without an id", el)
    fluoro = _names(p, el.find(_T + "fluorochromes"), "fluorochromes", cid)
    det = _names(p, el.find(_T + "detectors"), "detectors", cid)
    rows = []
    for sp in el.findall(_T + "spectrum"):
        rows.append(
            [
                _float(p, c, _attr(c, "value", NS_TRANSFORMS), f"spectrumMatrix {cid!r} coefficient", None)
                for c in sp.findall(_T + "coefficient")
            ]
        )
    if len(rows) != len(fluoro) or any(len(r) != len(det) for r in rows):
        raise p.err(
            f"spectrumMatrix {cid!r}: expected {len(fluoro)} spectra of {len(det)} coefficients, "
            f"found {[len(r) for r in rows]}",
            el,
        )
    m = np.array(rows, dtype=np.float64)
    inverted = str(_attr(el, "matrix-inverted-already", NS_TRANSFORMS, "false")).strip().lower() in ("true", "1")
    if inverted:
        if m.shape[0] != m.shape[1]:
            raise p.err(f"spectrumMatrix {cid!r}: an already inverted matrix must be square", el)
        try:
            m = np.linalg.inv(m)
        except np.linalg.LinAlgError:
            raise p.err(f"spectrumMatrix {cid!r}: the (inverted) matrix is singular", el) from None
    try:
        comp = Compensation(m, det, id=cid, fluorochromes=fluoro)
    except GatingError as exc:
        raise p.err(str(exc), el) from None
    comp.inverted_already = inverted
    return comp


def _read_dimension(p: _Parsed, el, gid, transforms, *, ratio_ok=True):
    """A gating:dimension or gating:divider → (Dimension/RatioDimension, min, max)."""
    comp = _attr(el, "compensation-ref")
    if comp is None:
        raise p.err("dimension without gating:compensation-ref", el, gid)
    tref = _attr(el, "transformation-ref")
    transform = None
    if tref is not None:
        transform = transforms.get(tref)
        if transform is None:
            raise p.err(f"transformation-ref {tref!r} is not defined", el, gid)
        if isinstance(transform, RatioTransform):
            raise p.err(f"transformation-ref {tref!r} is a ratio; use it in data-type:new-dimension", el, gid)
    fcs = el.find(_D + "fcs-dimension")
    new = el.find(_D + "new-dimension")
    if fcs is not None:
        name = _attr(fcs, "name", NS_DATATYPE)
        if not name:
            raise p.err("data-type:fcs-dimension without a name", fcs, gid)
        dim = Dimension(name, transform, comp)
    elif new is not None and ratio_ok:
        rref = _attr(new, "transformation-ref", NS_DATATYPE)
        ratio = transforms.get(rref)
        if not isinstance(ratio, RatioTransform):
            raise p.err(f"new-dimension transformation-ref {rref!r} is not a defined fratio transformation", new, gid)
        dim = RatioDimension(ratio.id, ratio, transform=transform, compensation=comp)
    else:
        raise p.err("dimension needs a data-type:fcs-dimension or data-type:new-dimension", el, gid)
    lo = _attr(el, "min")
    hi = _attr(el, "max")
    lo = None if lo is None else _float(p, el, lo, "min", gid)
    hi = None if hi is None else _float(p, el, hi, "max", gid)
    return dim, lo, hi


def _coords(p, el, gid, tag):
    return [_float(p, c, _attr(c, "value", NS_DATATYPE), tag, gid) for c in el.findall(_G + "coordinate")]


def _read_gate(p: _Parsed, el, transforms):
    kind = _local(el.tag)
    gid = _attr(el, "id")
    if not gid:
        raise p.err(f"gating:{kind} without a gating:id", el)
    parent = _attr(el, "parent_id")
    try:
        if kind == "RectangleGate":
            dims, mins, maxs = [], [], []
            for d in el.findall(_G + "dimension"):
                dim, lo, hi = _read_dimension(p, d, gid, transforms)
                if lo is None and hi is None:
                    raise p.err("rectangle dimension has neither gating:min nor gating:max", d, gid)
                dims.append(dim)
                mins.append(lo)
                maxs.append(hi)
            if not dims:
                raise p.err("rectangle gate without gating:dimension", el, gid)
            return RectangleGate(gid, dims, mins, maxs, parent=parent)
        if kind == "PolygonGate":
            dims = [_read_dimension(p, d, gid, transforms)[0] for d in el.findall(_G + "dimension")]
            verts = []
            vertex_els = el.findall(_G + "vertex")
            if len(vertex_els) > MAX_VERTICES:
                raise p.err(f"polygon has {len(vertex_els):,} vertices, more than the {MAX_VERTICES:,} evflow "
                            "accepts", el, gid)
            for v in vertex_els:
                c = _coords(p, v, gid, "vertex coordinate")
                if len(c) != 2:
                    raise p.err(f"vertex has {len(c)} coordinates, expected 2", v, gid)
                verts.append(c)
            return PolygonGate(gid, dims, np.array(verts).reshape(-1, 2), parent=parent)
        if kind == "EllipsoidGate":
            dims = [_read_dimension(p, d, gid, transforms)[0] for d in el.findall(_G + "dimension")]
            mean_el = el.find(_G + "mean")
            cov_el = el.find(_G + "covarianceMatrix")
            d2_el = el.find(_G + "distanceSquare")
            if mean_el is None or cov_el is None or d2_el is None:
                raise p.err("ellipsoid gate needs gating:mean, gating:covarianceMatrix and gating:distanceSquare", el, gid)
            mean = _coords(p, mean_el, gid, "mean coordinate")
            cov = [
                [_float(p, e, _attr(e, "value", NS_DATATYPE), "covariance entry", gid) for e in r.findall(_G + "entry")]
                for r in cov_el.findall(_G + "row")
            ]
            if len({len(r) for r in cov}) > 1:
                raise p.err("covariance matrix rows have different lengths", cov_el, gid)
            d2 = _float(p, d2_el, _attr(d2_el, "value", NS_DATATYPE), "distanceSquare", gid)
            return EllipsoidGate(gid, dims, mean, cov, d2, parent=parent)
        if kind == "QuadrantGate":
            dims, divs, div_ids = [], [], []
            for d in el.findall(_G + "divider"):
                did = _attr(d, "id")
                if not did:
                    raise p.err("divider without gating:id", d, gid)
                dim, _, _ = _read_dimension(p, d, gid, transforms)
                vals = []
                for v in d.findall(_G + "value"):
                    vals.append(_float(p, v, (v.text or "").strip(), f"divider {did!r} value", gid))
                dims.append(dim)
                divs.append(vals)
                div_ids.append(did)
            quads = {}
            for q in el.findall(_G + "Quadrant"):
                qid = _attr(q, "id")
                if not qid:
                    raise p.err("gating:Quadrant without gating:id", q, gid)
                if qid in quads:
                    raise p.err(f"quadrant id {qid!r} repeated", q, gid)
                pos = {}
                for ps in q.findall(_G + "position"):
                    ref = _attr(ps, "divider_ref")
                    if ref is None:
                        raise p.err(f"quadrant {qid!r}: position without gating:divider_ref", ps, gid)
                    pos[ref] = _float(p, ps, _attr(ps, "location"), f"quadrant {qid!r} location", gid)
                quads[qid] = pos
            return QuadrantGate(gid, dims, divs, quads, parent=parent, divider_ids=div_ids)
        if kind == "BooleanGate":
            ops = [c for c in el if isinstance(c.tag, str) and _ns(c.tag) == NS_GATING]
            if len(ops) != 1 or _local(ops[0].tag) not in ("and", "or", "not"):
                raise p.err("Boolean gate needs exactly one of gating:and, gating:or, gating:not", el, gid)
            op = ops[0]
            refs = []
            for r in op:
                if not isinstance(r.tag, str) or _local(r.tag) == "custom_info":
                    continue
                if r.tag != _G + "gateReference":
                    raise p.err(f"unsupported element {_local(r.tag)!r} in gating:{_local(op.tag)}", r, gid)
                ref = _attr(r, "ref")
                if not ref:
                    raise p.err("gateReference without gating:ref", r, gid)
                comp = str(_attr(r, "use-as-complement", default="false")).strip().lower() in ("true", "1")
                refs.append((ref, comp))
            return BooleanGate(gid, _local(op.tag), refs, parent=parent)
    except GatingError as exc:
        msg = str(exc)
        if msg.startswith(p.source):
            raise
        raise p.err(msg.replace(f"gate {gid!r}: ", ""), el, gid) from None
    raise p.err(f"unsupported gate element gating:{kind}", el, gid)  # pragma: no cover


def parse_gatingml(text, source="<string>") -> GatingStrategy:
    """Parse Gating-ML 2.0 from a string or bytes (see :func:`read_gatingml`)."""
    return _build(*_parse_tree(source, text))


def read_gatingml(path) -> GatingStrategy:
    """Read a Gating-ML 2.0 file into a :class:`GatingStrategy`.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    GatingStrategy
        With ``.gate_ids`` (every gate and every quadrant), the named
        transforms and spectrum matrices.

    Raises
    ------
    GatingError
        The file is missing, not well-formed XML, not Gating-ML 2.0, uses an
        element evflow does not support, or is inconsistent (unknown
        references, cycles, bad numbers); the message names the file, line
        and gate.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GatingError(f"{path}: Gating-ML file not found")
    return _build(*_parse_tree(path))


def _build(p: _Parsed, root) -> GatingStrategy:
    if root.tag != _G + "Gating-ML":
        raise p.err(
            f"root element is {root.tag!r}, expected gating:Gating-ML in namespace {NS_GATING}", root
        )
    found = {"gates": [], "transforms": [], "spectra": []}
    _walk(p, root, found)
    transforms = {}
    for el in found["transforms"]:
        t = _read_transform(p, el)
        if t.id in transforms:
            raise p.err(f"transformation id {t.id!r} defined twice", el)
        transforms[t.id] = t
    comps = {}
    for el in found["spectra"]:
        c = _read_spectrum(p, el)
        if c.id in comps or c.id in ("FCS", "uncompensated"):
            raise p.err(f"spectrumMatrix id {c.id!r} defined twice or reserved", el)
        comps[c.id] = c
    gates, elements = [], {}
    for el in found["gates"]:
        g = _read_gate(p, el, transforms)
        gates.append(g)
        elements[id(g)] = el
    strategy = GatingStrategy(compensations=comps)
    for t in transforms.values():
        strategy.add_transform(t)
    # add in dependency order: parent and referenced gates first
    provides = {}
    for g in gates:
        ids = list(g.quadrants) if isinstance(g, QuadrantGate) else [g.id]
        for i in ids + ([g.id] if isinstance(g, QuadrantGate) else []):
            if i in provides:
                raise p.err(f"gate id {i!r} defined twice", elements[id(g)], i)
            provides[i] = g
    add_in_dependency_order(p, strategy, gates, provides, elements, max_depth=MAX_GATE_DEPTH)
    # keep the document order for export
    order = {id(g): i for i, g in enumerate(gates)}
    strategy._order.sort(key=lambda g: order.get(id(g), len(order)))
    strategy.source = p.source
    return strategy


# ============================================================================ writing


def _fmt(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))


def to_gatingml_string(strategy: GatingStrategy) -> str:
    """The Gating-ML 2.0 document of ``strategy`` as a string."""
    if not isinstance(strategy, GatingStrategy):
        raise GatingError(f"write_gatingml expects a GatingStrategy, got {type(strategy).__name__}")
    ET.register_namespace("gating", NS_GATING)
    ET.register_namespace("transforms", NS_TRANSFORMS)
    ET.register_namespace("data-type", NS_DATATYPE)
    root = ET.Element(_G + "Gating-ML")

    # --- transforms: the registered ones, then any unnamed ones used by dimensions
    tids: dict[int, str] = {}
    written: dict[str, Transform] = {}
    used_ids = set(strategy.transforms)

    def tid_of(t: Transform):
        if id(t) in tids:
            return tids[id(t)]
        for name, w in written.items():
            if w == t and type(w) is type(t) and (t.id is None or t.id == name):
                tids[id(t)] = name
                return name
        name = t.id
        if name is None or (name in written and written[name] != t):
            k = 1
            base = t.gml_name or "T"
            while f"{base}_{k}" in used_ids or f"{base}_{k}" in written:
                k += 1
            name = f"{base}_{k}"
        tids[id(t)] = name
        written[name] = t
        _write_transform(root, t, name)
        return name

    for name, t in strategy.transforms.items():
        if name not in written:
            tids[id(t)] = name
            written[name] = t
            _write_transform(root, t, name)
    for g in strategy._order:
        for d in g.dims:
            if d.transform is not None:
                tid_of(d.transform)
            if isinstance(d, RatioDimension):
                tid_of(d.ratio)

    for cid, c in strategy.compensations.items():
        _write_spectrum(root, c, cid)

    for g in strategy._order:
        _write_gate(root, g, tid_of)
    ET.indent(root, space="    ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_gatingml(strategy: GatingStrategy, path) -> None:
    """Write ``strategy`` as a Gating-ML 2.0 file at ``path`` (read back by :func:`read_gatingml`)."""
    text = to_gatingml_string(strategy)
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write(text)


def _write_transform(root, t: Transform, name: str):
    el = ET.SubElement(root, _T + "transformation", {_T + "id": name})
    if isinstance(t, RatioTransform):
        a, b, c = t.params
        f = ET.SubElement(el, _T + "fratio", {_T + "A": _fmt(a), _T + "B": _fmt(b), _T + "C": _fmt(c)})
        for ch in t.channels:
            ET.SubElement(f, _D + "fcs-dimension", {_D + "name": ch})
        return
    attrs = {_T + k: _fmt(v) for k, v in t.parameters.items()}
    ET.SubElement(el, _T + t.gml_name, attrs)


def _write_spectrum(root, c: Compensation, cid: str):
    el = ET.SubElement(root, _T + "spectrumMatrix", {_T + "id": cid})
    fl = ET.SubElement(el, _T + "fluorochromes")
    for n in c.fluorochromes:
        ET.SubElement(fl, _D + "fcs-dimension", {_D + "name": n})
    de = ET.SubElement(el, _T + "detectors")
    for n in c.channels_in:
        ET.SubElement(de, _D + "fcs-dimension", {_D + "name": n})
    for row in c.matrix:
        sp = ET.SubElement(el, _T + "spectrum")
        for v in row:
            ET.SubElement(sp, _T + "coefficient", {_T + "value": repr(float(v))})


def _dim_element(parent, tag, d, tid_of, lo=None, hi=None, extra=None):
    attrs = dict(extra or {})
    attrs[_G + "compensation-ref"] = d.compensation_id or "uncompensated"
    if d.transform is not None:
        attrs[_G + "transformation-ref"] = tid_of(d.transform)
    if lo is not None:
        attrs[_G + "min"] = repr(float(lo))
    if hi is not None:
        attrs[_G + "max"] = repr(float(hi))
    el = ET.SubElement(parent, _G + tag, attrs)
    if isinstance(d, RatioDimension):
        ET.SubElement(el, _D + "new-dimension", {_D + "transformation-ref": tid_of(d.ratio)})
    else:
        ET.SubElement(el, _D + "fcs-dimension", {_D + "name": d.channel})
    return el


def _write_gate(root, g, tid_of):
    attrs = {_G + "id": g.id}
    if g.parent:
        attrs[_G + "parent_id"] = g.parent
    if isinstance(g, RectangleGate):
        el = ET.SubElement(root, _G + "RectangleGate", attrs)
        for d, lo, hi in zip(g.dims, g.mins, g.maxs):
            _dim_element(el, "dimension", d, tid_of, lo, hi)
    elif isinstance(g, PolygonGate):
        el = ET.SubElement(root, _G + "PolygonGate", attrs)
        for d in g.dims:
            _dim_element(el, "dimension", d, tid_of)
        for v in g.vertices:
            ve = ET.SubElement(el, _G + "vertex")
            for c in v:
                ET.SubElement(ve, _G + "coordinate", {_D + "value": repr(float(c))})
    elif isinstance(g, EllipsoidGate):
        el = ET.SubElement(root, _G + "EllipsoidGate", attrs)
        for d in g.dims:
            _dim_element(el, "dimension", d, tid_of)
        me = ET.SubElement(el, _G + "mean")
        for c in g.mean:
            ET.SubElement(me, _G + "coordinate", {_D + "value": repr(float(c))})
        ce = ET.SubElement(el, _G + "covarianceMatrix")
        for row in g.covariance:
            re_ = ET.SubElement(ce, _G + "row")
            for v in row:
                ET.SubElement(re_, _G + "entry", {_D + "value": repr(float(v))})
        ET.SubElement(el, _G + "distanceSquare", {_D + "value": repr(float(g.distance_square))})
    elif isinstance(g, QuadrantGate):
        el = ET.SubElement(root, _G + "QuadrantGate", attrs)
        for d, vals, did in zip(g.dims, g.dividers, g.divider_ids):
            de = _dim_element(el, "divider", d, tid_of, extra={_G + "id": did})
            for v in vals:
                ET.SubElement(de, _G + "value").text = repr(float(v))
        for q in g.quadrants.values():
            qe = ET.SubElement(el, _G + "Quadrant", {_G + "id": q.id})
            for did, iv, loc in zip(g.divider_ids, q.intervals, q.locations):
                if iv is None:
                    continue
                ET.SubElement(qe, _G + "position", {_G + "divider_ref": did, _G + "location": repr(float(loc))})
    elif isinstance(g, BooleanGate):
        el = ET.SubElement(root, _G + "BooleanGate", attrs)
        op = ET.SubElement(el, _G + g.op)
        for ref, comp in g.refs:
            ra = {_G + "ref": ref}
            if comp:
                ra[_G + "use-as-complement"] = "true"
            ET.SubElement(op, _G + "gateReference", ra)
    elif isinstance(g, Quadrant):  # pragma: no cover - quadrants are written with their gate
        return
    else:
        raise GatingError(f"gate {g.id!r}: cannot write a {type(g).__name__} to Gating-ML")
