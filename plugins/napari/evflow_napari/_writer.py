"""napari writer: a gates Shapes layer -> Gating-ML 2.0."""

from __future__ import annotations

from evflow.errors import GatingError

__all__ = ["write_gates", "strategy_from_layer_data"]


def strategy_from_layer_data(data, meta):
    """An ``evflow.gates.GatingStrategy`` of the shapes of a gates layer (``meta``: the layer state napari passes)."""
    import evflow

    from ._flow import shapes_to_gates

    spec = (meta.get("metadata") or {}).get("evflow")
    if not spec or spec.get("kind") not in ("gates", "flow"):
        raise GatingError(
            f"layer {meta.get('name', '?')!r} is not an evflow gates layer (no metadata['evflow'] with the channels "
            "and transforms); draw gates on the Shapes layer that opening an .fcs file creates"
        )
    feats = meta.get("features")
    names = None
    if feats is not None and "gate" in getattr(feats, "columns", []):
        names = list(feats["gate"])
    elif meta.get("properties") and "gate" in meta["properties"]:
        names = list(meta["properties"]["gate"])
    types = meta.get("shape_type") or ["polygon"] * len(data)
    gates = shapes_to_gates(data, types, spec, names)
    return evflow.gates.GatingStrategy(gates=gates)


def write_gates(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: the gates of a Shapes layer as a Gating-ML 2.0 file at ``path``."""
    import evflow

    if not str(path).lower().endswith(".xml"):
        path = f"{path}.xml"
    evflow.write_gatingml(strategy_from_layer_data(data, meta), path)
    return [str(path)]
