"""Flow-cytometry stage bodies of the pipeline: calibration, controls, per-sample counts.

Each ``*_item`` function computes one stored item (a dict of numbers and
arrays) and runs inside a dask task (see :mod:`evflow.pipeline.stage`);
the other functions turn stored items and the experiment's settings into
what the next stage needs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import ConfigError, EvflowError
from .config import default
from .inputs import flow_scale, offsets_entry, read_flow
from .scheduler import inner_compute
from .store import file_sha256

__all__ = ["fluorescence_item", "size_item", "control_item", "flow_sample_item", "gating", "density_spec",
           "display_item", "CHUNK_EVENTS", "DENSITY_BINS", "DISPLAY_EVENTS", "SIZE_BINS"]

DENSITY_BINS = 96
#: events per dask chunk of a flow sample (the same for every scheduler, so results are identical)
CHUNK_EVENTS = default("flow", "chunk_events")
DISPLAY_EVENTS = 100_000  # events shown in the density plots and size distributions of the report
SIZE_BINS = 48


def _size(cal_s, key) -> float:
    """A number of ``[flow.calibration.size]``, or its default."""
    return float(cal_s.get(key, default("flow.calibration.size", key)))


def _particle(cal_s):
    from ..flow.mie import CoatedSphere, Sphere

    bead = Sphere(_size(cal_s, "bead_index"))
    ev = CoatedSphere(_size(cal_s, "ev_core_index"), _size(cal_s, "ev_shell_index"), _size(cal_s, "ev_shell_nm"))
    return bead, ev


# =========================================================================== calibration


def _read_beads(path, cal_s, kind):
    """The bead file of ``[flow.calibration.<kind>]`` on the experiment's scale policy, its DATA where the
    table's ``data_offsets`` says (both put in ``cal_s`` by the run)."""
    return read_flow(path, {"scale": cal_s.get("scale", "auto")}, data_offsets=cal_s.get("data_offsets", "auto"),
                     who=(f"the {kind} beads", f"flow.calibration.{kind}.data_offsets"))


def fluorescence_item(path, cal_s) -> dict:
    """MESF calibration of ``[flow.calibration.fluorescence]`` from the bead file ``path``."""
    from ..flow.calibration import calibrate_mesf

    beads = _read_beads(path, cal_s, "fluorescence")
    cal = calibrate_mesf(beads, cal_s["channel"], cal_s["values"],
                         clustering_channels=cal_s.get("clustering_channels"),
                         units=cal_s.get("units", default("flow.calibration.fluorescence", "units")),
                         placement="best" if cal_s.get("kit") else "given")  # a kit's short list: placed
    s = cal.summary()
    return {"summary": s, "m": float(cal.params["m"]), "b": float(cal.params["b"]),
            "peaks": np.asarray(cal.peak_medians, float), "mesf_values": np.asarray(cal.mesf_values, float),
            "used": np.asarray([st == "used" for st in cal.peak_status]), "r2": float(cal.r2),
            "axis_label": beads.axis_label(cal_s["channel"]),
            "calibration": cal.to_dict()}  # rebuilt by MESFCalibration.from_dict for the report's diagnostics


def size_item(path, cal_s) -> dict:
    """Scatter-to-diameter calibration of ``[flow.calibration.size]`` from the bead file ``path``."""
    from ..flow.calibration import calibrate_scatter

    bead, ev = _particle(cal_s)
    beads = _read_beads(path, cal_s, "size")
    cal = calibrate_scatter(beads, cal_s["channel"], cal_s["diameters_nm"], bead_model=bead, particle=ev,
                            wavelength_nm=_size(cal_s, "wavelength_nm"),
                            medium_index=_size(cal_s, "medium_index"))
    # the whole calibration (rebuilt without a refit by scatter_calibration()) and the axis label of its channel
    return {**cal.to_dict(), "axis_label": beads.axis_label(cal_s["channel"])}


def scatter_calibration(items: dict, cal_s: dict):
    """The scatter calibration from the calibration stage's items (None without a size calibration)."""
    from ..flow.calibration import ScatterCalibration

    if "size" not in items:
        return None
    stored = {k: v for k, v in items["size"].items() if k not in ("seconds", "axis_label")}
    return ScatterCalibration.from_dict(stored)


# =========================================================================== gates and plots


def gating(exp, size_cal):
    """(strategy, parent id, description, list of scatter limits) from the experiment's gates."""
    from ..flow.gates import Dimension, GatingStrategy, RectangleGate

    gates_s = exp.flow.get("gates", {})
    strategy, parent, desc = None, None, []
    if "gatingml" in gates_s:
        from ..flow.flowjo import read_gates_file as read_gatingml

        strategy = read_gatingml(exp.resolve(gates_s["gatingml"]))
        parent = gates_s["parent"]
        ids = strategy.gate_ids() if callable(strategy.gate_ids) else list(strategy.gate_ids)
        if parent not in ids:
            raise ConfigError(f"{exp.path}: 'flow.gates.parent' {parent!r} is not a gate of "
                              f"{gates_s['gatingml']} (gates: {ids})")
        desc.append(f"Gating-ML {gates_s['gatingml']}: {parent}")
    size_limits = None
    new = []
    if "size_nm" in gates_s:
        from ..flow.calibration import size_gate_limits

        lo_nm, hi_nm = gates_s["size_nm"]
        lo, hi = size_gate_limits(size_cal, float(lo_nm), float(hi_nm))
        size_limits = (lo, hi)
        new.append(("evflow_size", size_cal.channel, lo, hi))
        desc.append(f"size {lo_nm:g}-{hi_nm:g} nm = {size_cal.channel} {lo:.4g}-{hi:.4g}")
    for j, r in enumerate(gates_s.get("range", [])):
        lo, hi = r.get("min"), r.get("max")
        new.append((f"evflow_range_{j}", r["channel"], lo, hi))
        desc.append(f"{r['channel']} {lo if lo is not None else '-inf'}-{hi if hi is not None else 'inf'}")
    if new:
        strategy = strategy or GatingStrategy()
        for gid, ch, lo, hi in new:
            strategy.add_gate(RectangleGate(gid, [Dimension(ch)], [lo], [hi], parent=parent))
            parent = gid
    return strategy, parent, desc, size_limits


def _channel_top(path, channel, flow_s=None, data_offsets="auto", who=None):
    """The top of a channel's scale (``channel_limits()[1]``: ``$PnR`` on the experiment's scale policy, decoded
    on log channels) and its ``$PnN``, as the sample answers (its nominal range without ``$PnR``)."""
    s = read_flow(path, flow_s, data_offsets=data_offsets, who=who)  # HEADER and TEXT only
    i = s.channel_index(channel)
    return s.channel_limits(i)[1], s.channels[i]


def density_spec(flow_samples, markers, flow_s, key=None):
    """(x, y, (top_x, decades_x), (top_y, decades_y)) of the report's density plots, or None.  ``key``: the
    ``data_offsets`` key of the first sample (named by an error about its DATA offsets)."""
    if not (flow_samples and markers and flow_s.get("scatter_channel")):
        return None
    first = flow_samples[0]
    how = (flow_s, first.data_offsets, (f"sample {first.name!r}", key or "data_offsets"))
    tx, x = _channel_top(first.flow, flow_s["scatter_channel"], *how)
    ty, y = _channel_top(first.flow, next(iter(markers)), *how)
    return (x, y, (tx, max(math.log10(tx) + 1.0, 1.0)), (ty, max(math.log10(ty) + 1.0, 1.0)))


def display_item(shown, strategy, parent, channels) -> dict:
    """The events the report plots: ``display_events`` (n x c, the values the gates see) of ``display_channels``
    (the plotted channels and those the gates read) and ``display_parent``, their membership of the parent gate
    as the run's gating strategy computes it."""
    chans = list(dict.fromkeys([*channels, *((strategy.required_channels([parent])[parent]) if parent else [])]))
    chans = [c for c in chans if c in shown.channels]
    ev = np.asarray(shown.events.compute(), np.float64)
    if parent is not None:
        try:
            spill = shown.spillover
        except EvflowError:  # an unreadable $SPILLOVER: the run's gates did without it too, or failed
            spill = None
        inside = np.asarray(strategy.mask(ev, list(shown.channels), parent, spillover=spill), bool)
    else:
        inside = np.ones(len(ev), bool)
    return {"display_channels": chans, "display_events": ev[:, [shown.channel_index(c) for c in chans]],
            "display_parent": inside}


# =========================================================================== controls and samples


def control_item(name, path, data_offsets="auto", key=None, *, strategy, parent, markers, rule, backend,
                 scale="auto") -> dict:
    """Per-marker thresholds (``rule``, a :class:`~evflow.flow.thresholds.ThresholdRule`, over the parent gate)
    of the control sample ``name``, on the scale policy ``scale``, its DATA where ``data_offsets`` says (``key``:
    the experiment-file key of that choice)."""
    from ..flow.phenotypes import count_phenotypes

    trule = rule.for_control(name)
    fcs = read_flow(path, {"scale": scale}, data_offsets=data_offsets,
                    who=(f"sample {name!r}", key or "data_offsets"))
    ds = count_phenotypes({name: fcs}, parent=parent, strategy=strategy,
                          markers={m: (ch, trule) for ch, m in markers.items()},
                          controls={name: fcs}, backend=backend)
    return {"thresholds": np.asarray(ds["threshold"].values[0], float), "n_parent": int(ds["n_parent"].values[0])}


def control_thresholds(stage, rule, failures):
    """(thresholds, description) from the controls stage: per marker, the max over the good controls."""
    good, role = stage.good, rule.control
    if not good:
        raise EvflowError(f"no usable {role!r} control: thresholds cannot be set ({failures})")
    thresholds = np.max(np.stack([good[k]["thresholds"] for k in sorted(good)]), axis=0)
    desc = (f"{rule.statistic_name} of the {role} control(s) "
            f"({', '.join(sorted(good))}) in the parent gate; max over controls")
    return thresholds, desc


def flowjo_check(strategy, path, fcs, backend) -> dict:
    """``{"flowjo_check": rows}`` when ``path`` is one of the FlowJo workspace's samples: the run's count of each
    gate on all its events beside the count FlowJo stored for that sample
    (:func:`~evflow.flow.flowjo.compare_flowjo_counts`; FlowJo may have gated it with gates of its own, which the
    run does not use); ``{"flowjo_check_error": message}`` when their gates differ in name; else {}."""
    from ..errors import GatingError
    from ..flow.flowjo import compare_flowjo_counts, workspace_sample

    ref = workspace_sample(strategy, path, fcs.meta)
    if ref is None or not getattr(ref, "flowjo_counts", None):
        return {}
    counts = strategy.apply(fcs, backend=backend).counts()
    other = {} if ref is strategy else {"flowjo_gates_of": strategy.flowjo_sample}  # the gates the run applies
    try:
        return {"flowjo_check": compare_flowjo_counts(ref, counts, fcs.n_events).to_dict("records"), **other}
    except GatingError as exc:
        return {"flowjo_check_error": str(exc), **other}


def flow_sample_item(sample, key=None, *, strategy, parent, markers, thresholds, flow_s, backend, density,
                     split=False, copies=None) -> dict:
    """Counts per phenotype, marker statistics, analysed volume and report densities of one flow sample (its DATA
    where ``sample["data_offsets"]`` says, default ``"auto"``; ``key``: the experiment-file key of that choice)."""
    from ..flow.calibration import analysed_volume_ul
    from ..flow.phenotypes import count_phenotypes, density2d
    from ..flow.transforms import LogTransform
    from .flow_qc import sample_qc

    path = str(sample["flow"])
    offsets = sample.get("data_offsets", "auto")
    fcs = read_flow(path, flow_s, chunk_events=int(flow_s.get("chunk_events", CHUNK_EVENTS)), data_offsets=offsets,
                    who=(f"sample {sample['name']!r}", key or "data_offsets"))
    fcs, qc_item = sample_qc(fcs_all := fcs, sample, flow_s)  # time QC (bad intervals dropped if asked), swarm
    mk = {m: (ch, float(t)) for (ch, m), t in zip(markers.items(), thresholds)}
    build, graph = count_phenotypes({sample["name"]: fcs}, parent=parent, strategy=strategy, markers=mk,
                                    backend=backend, compute=False)
    ds = build(inner_compute(graph, split))
    item = {
        "counts": np.asarray(ds["count"].values[0], np.int64),
        "n_total": int(ds["n_total"].values[0]),
        "n_parent": int(ds["n_parent"].values[0]),
        "thresholds": np.asarray(ds["threshold"].values[0], float),
        "n_positive": np.asarray(ds["n_positive"].values[0], float),
        "median_positive": np.asarray(ds["median_positive"].values[0], float),
        "mean_positive": np.asarray(ds["mean_positive"].values[0], float),
        "sha256": file_sha256(path),
        "instrument": str(fcs.meta.get("$CYT", "")).strip(),
        "scale": fcs.scale,  # the policy the values are on ([flow] scale, or the instrument's default)
        "scale_setting": flow_scale(flow_s),
        **offsets_entry(offsets),  # provenance: where the experiment said the DATA lies (when not "auto")
        "axis_labels": {ch: fcs.axis_label(ch) for ch in dict.fromkeys([*markers, flow_s.get("scatter_channel")])
                        if ch},
        **qc_item,
        "n_acquired": int(fcs_all.n_events),  # before any time interval is dropped
    }
    if getattr(strategy, "flowjo_sample", None) is not None:
        item.update(flowjo_check(strategy, path, fcs_all, backend))
    try:
        vol = analysed_volume_ul(fcs_all, volume_ul=sample.get("volume_ul"),
                                 flow_rate_ul_per_min=None if sample.get("volume_ul") else flow_s.get("flow_rate_ul_per_min"),
                                 time_channel=flow_s.get("time_channel"))
        item["volume_ul"] = float(vol["volume_ul"]) * item["kept_time_fraction"]  # < 1 when intervals dropped
        item["volume_method"] = str(vol["method"]) + (f" x {item['kept_time_fraction']:.4g} (time kept)"
                                                      if item["kept_time_fraction"] < 1 else "")
    except EvflowError as exc:
        item["volume_ul"] = float("nan")
        item["volume_method"] = f"unknown ({exc})"
    if copies is not None:  # antibodies per parent event of the calibrated marker (pipeline.copies)
        from .copies import flow_event_copies

        item.update(flow_event_copies(fcs, DISPLAY_EVENTS, strategy=strategy, parent=parent, markers=list(markers),
                                      thresholds=thresholds, spec=copies))
    if density is not None:
        # plots use the first DISPLAY_EVENTS events (the same for any chunking or backend)
        shown = dataclasses.replace(fcs, events=fcs.events[:DISPLAY_EVENTS]) if fcs.n_events > DISPLAY_EVENTS else fcs
        item.update(display_item(shown, strategy, parent, [density[0], density[1], *markers]))
        item["density_events"] = int(shown.n_events)
        x, y, (tx, mx), (ty, my) = density
        tr = {x: LogTransform(tx, mx), y: LogTransform(ty, my)}
        d_all = density2d(shown, x, y, bins=DENSITY_BINS, transforms=tr, backend=backend)
        item["density_all"] = np.asarray(d_all.values, np.int64)
        if parent is not None:
            d_par = density2d(shown, x, y, bins=DENSITY_BINS, transforms=tr, parent=parent, strategy=strategy,
                              backend=backend)
            item["density_parent"] = np.asarray(d_par.values, np.int64)
        else:
            item["density_parent"] = item["density_all"]
    return item
