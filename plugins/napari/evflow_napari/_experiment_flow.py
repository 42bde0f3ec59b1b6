"""An experiment's flow samples for napari, free of Qt: the experiment's gates as the run builds them, and
a density image with those gates drawn per flow sample."""

from __future__ import annotations

from pathlib import Path

__all__ = ["experiment_strategy", "experiment_flow_layers"]


_STRATEGIES: dict = {}


def experiment_strategy(exp):
    """(strategy or None, parent gate id or None, notes) of an experiment's ``[flow.gates]``, built as
    ``evflow run`` builds them (the size gate from the size calibration's bead file, fitted here and kept
    per file version); a size gate that cannot be fitted is left out with a note saying why."""
    from evflow.pipeline import flow as fl

    key = (str(exp.path), Path(exp.path).stat().st_mtime_ns if Path(exp.path).is_file() else None)
    if key in _STRATEGIES:
        return _STRATEGIES[key]
    flow_s = exp.flow or {}
    gates_s = dict(flow_s.get("gates", {}) or {})
    notes, size_cal = [], None
    if "size_nm" in gates_s:
        cal_s = flow_s.get("calibration", {}) or {}
        c = cal_s.get("size") or {}
        try:
            size_cal = fl.scatter_calibration({"size": fl.size_item(exp.resolve(c["file"]), c)}, cal_s)
        except Exception as exc:  # noqa: BLE001 - shown without the size gate, and the note says why
            notes.append(f"size gate {gates_s['size_nm']} nm left out: {type(exc).__name__}: {exc}")
            gates_s.pop("size_nm")

    class _Exp:  # the experiment as fl.gating reads it, with the gates that can be built
        path, resolve = exp.path, exp.resolve
        flow = {**flow_s, "gates": gates_s}

    try:
        strategy, parent, desc, _ = fl.gating(_Exp, size_cal)
    except Exception as exc:  # noqa: BLE001 - a broken gates file: the samples open without gates
        strategy, parent, desc = None, None, []
        notes.append(f"gates left out: {type(exc).__name__}: {exc}")
    out = (strategy, parent, desc + notes)
    _STRATEGIES[key] = out
    return out


def experiment_flow_layers(path, bins=512, visible=True):
    """LayerData of an experiment's flow samples: per sample with a flow file, its density image (x: the
    ``scatter_channel``, y: the first marker channel, else the file's first two channels) and one Shapes
    layer with the experiment's gates drawn on it (:func:`evflow_napari._flow.strategy_shapes`; feature
    ``gate`` = gate id).  Only the first sample is visible (``visible=False``: none); the gating widget
    shows the one it is on.  Every layer's ``metadata['evflow']`` carries ``experiment``, ``sample`` and,
    on the gates layer, ``parent`` (the run's parent gate), ``left_out`` and ``notes``.
    """
    from evflow.pipeline.config import load_experiment

    from ._flow import FlowView, strategy_shapes

    path = str(Path(path).resolve())
    exp = load_experiment(path, check_files=False)
    flow_s = exp.flow or {}
    strategy, parent, notes = experiment_strategy(exp)
    marker_channels = list((exp.markers or {}).keys())
    out = []
    for s in exp.samples:
        if s.flow is None or not Path(exp.resolve(s.flow)).is_file():
            continue
        view = FlowView(exp.resolve(s.flow), bins=bins, experiment=path, data_offsets=s.data_offsets)
        chans = view.sample.channels
        x, y = flow_s.get("scatter_channel"), marker_channels[0] if marker_channels else None
        if x in chans and y in chans and x != y:
            view = FlowView(view.path, x, y, bins=bins, experiment=path, data_offsets=s.data_offsets)
        show = visible and not out
        data, kw, kind = view.image_layer_data()
        kw["metadata"]["evflow"]["sample"] = s.name
        kw["visible"] = show
        out.append((data, kw, kind))
        shapes, types, ids, left = strategy_shapes(strategy, view) if strategy is not None else ([], [], [], [])
        _, gkw, gkind = view.gates_layer_data()
        gkw["metadata"]["evflow"].update({"sample": s.name, "parent": parent, "left_out": left, "notes": notes})
        gkw["visible"] = show
        if shapes:
            gkw["shape_type"] = types
            gkw["features"] = {"gate": ids}
        out.append((shapes, gkw, gkind))
    return out
