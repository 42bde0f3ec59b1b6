"""Gating-ML gates in dependency order (parents and Boolean operands first), in linear time."""

from __future__ import annotations

from ..errors import GatingError
from .gates import BooleanGate

__all__ = ["add_in_dependency_order"]


def add_in_dependency_order(p, strategy, gates, provides, elements, *, max_depth: int):
    """Add gates parents (and Boolean operands) first: an iterative depth-first topological order, linear in
    the number of gates and references; cycles, unknown references and over-deep parent chains are errors."""
    def deps_of(g):
        deps = [g.parent] if g.parent else []
        if isinstance(g, BooleanGate):
            deps += [r for r, _ in g.refs]
        missing = [d for d in deps if d not in provides]
        if missing:
            raise p.err(f"references gate(s) {missing} not defined in the document", elements[id(g)], g.id)
        return [provides[d] for d in deps]

    state, depth = {}, {}  # id(gate) -> 1 on the path, 2 added; depth of the parent chain
    for root in gates:
        if state.get(id(root)) == 2:
            continue
        path = [(root, iter(deps_of(root)))]
        state[id(root)] = 1
        while path:
            g, it = path[-1]
            d = next(it, None)
            if d is not None:
                s_ = state.get(id(d))
                if s_ == 1:
                    ids = [x.id for x, _ in path[[x for x, _ in path].index(d):]]
                    raise p.err(f"gates {ids} form a cycle of parent / Boolean references", elements[id(d)], d.id)
                if s_ is None:
                    state[id(d)] = 1
                    path.append((d, iter(deps_of(d))))
                continue
            path.pop()
            depth[id(g)] = 1 + max((depth[id(x)] for x in deps_of(g)), default=0)
            if depth[id(g)] > max_depth:
                raise p.err(f"gate chain deeper than {max_depth} gates (parents and Boolean operands)",
                            elements[id(g)], g.id)
            try:
                strategy.add_gate(g)
            except GatingError as exc:
                raise p.err(str(exc).replace(f"gate {g.id!r}: ", ""), elements[id(g)], g.id) from None
            state[id(g)] = 2
