"""Per-sample flow QC of the pipeline: time-channel QC, swarm/coincidence checks, detection limits.

:func:`sample_qc` runs inside a sample's task (:func:`~evflow.pipeline.flow.flow_sample_item`);
:func:`add_to_dataset` adds its numbers to the result Dataset (variables with
``units`` attrs); :func:`report_parts` renders them for the HTML report.  The
statistics are those of :mod:`evflow.flow.time_qc`, :mod:`evflow.flow.swarm`
and :mod:`evflow.flow.detection_limits`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import EvflowError

__all__ = ["qc_settings", "sample_qc", "add_to_dataset", "sample_flags", "max_event_rate", "report_parts", "DETECTION_PERCENTILE"]

#: the percentile of the buffer (or unstained) control that defines the noise level of a channel
DETECTION_PERCENTILE = 99.5
_NOISE_ROLES = ("buffer", "unstained")


def qc_settings(exp) -> dict:
    """The settings the per-sample QC depends on (part of each sample's fingerprint)."""
    from .config import default

    flow_s, inst = exp.flow, exp.settings.get("instrument", {})
    size = flow_s.get("calibration", {}).get("size", {})
    return {"exclude_bad_time": bool(flow_s.get("exclude_bad_time", False)),
            "time_bin_s": flow_s.get("time_bin_s"), "time_z": float(flow_s.get("time_z", default("flow", "time_z"))),
            "width_channel": inst.get("width_channel"),
            "width_factor": float(inst.get("width_factor", default("instrument", "width_factor"))),
            "max_wide_fraction": float(inst.get("max_wide_fraction", default("instrument", "max_wide_fraction"))),
            "noise_channels": sorted({*exp.markers, *([flow_s["scatter_channel"]] if flow_s.get("scatter_channel")
                                                       else []), *([size["channel"]] if size.get("channel") else [])})}


def _column(fcs, name):
    return np.asarray(fcs.events[:, fcs.channel_index(name)].compute(), float)


def sample_qc(fcs, sample: dict, flow_s: dict):
    """(events to count, item) of one sample: time QC (bad intervals dropped when asked), event rate, pulse
    width and, for a buffer/unstained control, the noise level of each channel."""
    from ..flow.calibration import channel_roles
    from ..flow.swarm import width_check
    from ..flow.time_qc import time_qc

    qs = sample.get("qc") or {}
    item: dict = {"excluded_event_fraction": 0.0, "excluded_time_fraction": 0.0, "kept_time_fraction": 1.0}
    tc = flow_s.get("time_channel") or fcs.time_channel
    tq, span = None, float("nan")
    if tc:
        try:
            t = _column(fcs, tc)
            tq = time_qc(t, bin_width=qs.get("time_bin_s"), z=float(qs.get("time_z", 5.0)), source=fcs.path)
            span = float(t.max() - t.min())
            item["time_qc"] = tq.summary()
            item["time_edges"], item["time_rate"] = np.asarray(tq.edges, float), np.asarray(tq.rate, float)
        except EvflowError as exc:
            item["time_qc"] = {"flags": [], "error": str(exc)}
    else:
        item["time_qc"] = {"flags": [], "error": "no time channel"}
    acq = fcs.acquisition_seconds(tc) if hasattr(fcs, "acquisition_seconds") else None
    acq_s = float(acq[0]) if acq else float("nan")
    item["acquisition_s"] = acq_s
    per_s = span / acq_s if tq is not None and acq_s > 0 and span > 0 else float("nan")
    item["peak_rate_per_s"] = float(np.max(tq.rate) * per_s) if tq is not None else float("nan")
    used = fcs
    if tq is not None:
        item["excluded_event_fraction"] = tq.excluded_event_fraction
        item["excluded_time_fraction"] = tq.excluded_time_fraction
        if qs.get("exclude_bad_time") and tq.intervals:
            if tq.excluded_event_fraction > 0:
                used = dataclasses.replace(fcs, events=fcs.events[tq.good_events])
            item["kept_time_fraction"] = 1.0 - tq.excluded_time_fraction
    item["time_excluded"] = bool(qs.get("exclude_bad_time")) and item["kept_time_fraction"] < 1.0
    wch = qs.get("width_channel") or next((c for c, r in channel_roles(fcs).items() if r == "width"), None)
    item["width_channel"] = wch or ""
    item["width"] = width_check(_column(used, wch), factor=float(qs.get("width_factor", 1.5)),
                                max_wide_fraction=float(qs.get("max_wide_fraction", 0.05))) if wch else {}
    if sample.get("role") in _NOISE_ROLES:
        chans = [c for c in qs.get("noise_channels", []) if c in fcs.channels]
        item["noise_channels"] = chans
        item["noise_levels"] = np.array([np.percentile(_column(used, c), DETECTION_PERCENTILE) for c in chans])
    return used, item


def sample_flags(item: dict, max_event_rate=None) -> list[str]:
    """Flags of one sample's QC item, each with its numbers."""
    from ..flow.swarm import rate_check

    out = []
    tq = item.get("time_qc") or {}
    for a, b, kind in tq.get("intervals", []):
        out.append(f"time QC: {kind} {a:.4g}-{b:.4g}")
    if "drift" in tq.get("flags", []):
        d = tq["drift"]
        out.append(f"time QC: rate drift {d['relative_change']:+.0%} at {d['time']:.4g}")
    if item.get("time_excluded"):
        out.append(f"excluded {item['excluded_event_fraction']:.1%} of events "
                   f"({item['excluded_time_fraction']:.1%} of the time)")
    rc = rate_check(item.get("n_acquired", item.get("n_total", 0)), item.get("acquisition_s"), max_event_rate,
                    peak_rate=item.get("peak_rate_per_s"))
    if rc["flag"]:
        out.append(f"event rate {rc['rate_fraction_of_max']:.0%} of the instrument maximum "
                   f"({max_event_rate:g}/s): swarm/coincidence risk")
    w = item.get("width") or {}
    if w.get("flag"):
        out.append(f"{w['wide_fraction']:.1%} of events wider than {w['factor']:g}x the singlet width "
                   f"(limit {w['max_wide_fraction']:.0%}): coincidence")
    bad = [r for r in item.get("flowjo_check", []) if r["flagged"]]
    if bad:
        out.append("counts differ from those FlowJo stored in the workspace: " + ", ".join(
            f"{r['gate']} {r['evflow']} (FlowJo {r['flowjo']})" for r in bad[:4]) + (" ..." if len(bad) > 4 else "")
            + f" on scale {item.get('scale', '?')!r}"
            + (f" with the gates FlowJo drew for sample {item['flowjo_gates_of']!r}" if item.get("flowjo_gates_of")
               else ""))
    if item.get("flowjo_check_error"):
        out.append(f"FlowJo's counts for this sample not compared: {item['flowjo_check_error']}")
    return out


def max_event_rate(exp):
    """``[instrument] max_event_rate`` (events/s) or None."""
    v = exp.settings.get("instrument", {}).get("max_event_rate")
    return float(v) if v is not None else None


def add_to_dataset(ds, ctx, names) -> None:
    """Time QC, event rate, pulse width and detection limits as Dataset variables (with units)."""
    from ..flow.detection_limits import CRITERION, fluorescence_limit, scatter_limit
    from ..flow.swarm import rate_check

    items, exp = ctx.flow_items, ctx.experiment
    mx = max_event_rate(exp)
    get = [items[n] for n in names]
    ds["time_qc_flags"] = ("sample", np.array([", ".join((it.get("time_qc") or {}).get("flags", [])) for it in get],
                                              dtype=object).astype(str))
    ds["time_qc_flags"].attrs["statistic"] = next(((it.get("time_qc") or {}).get("statistic", "") for it in get
                                                   if (it.get("time_qc") or {}).get("statistic")), "")
    for key, long in (("excluded_event_fraction", "events in flagged time intervals"),
                      ("excluded_time_fraction", "acquisition time in flagged time intervals")):
        ds[f"time_{key}"] = ("sample", np.array([float(it.get(key, 0.0)) for it in get]),
                             {"units": "1", "long_name": long})
    ds["time_intervals_excluded"] = ("sample", np.array([bool(it.get("time_excluded", False)) for it in get]))
    rates = [rate_check(it.get("n_acquired", it["n_total"]), it.get("acquisition_s"), mx,
                        peak_rate=it.get("peak_rate_per_s")) for it in get]
    ds["event_rate_per_s"] = ("sample", np.array([r["mean_rate_per_s"] for r in rates]),
                              {"units": "events/s", "long_name": "mean event rate"})
    ds["peak_event_rate_per_s"] = ("sample", np.array([r["peak_rate_per_s"] for r in rates]),
                                   {"units": "events/s", "long_name": "highest binned event rate"})
    ds["event_rate_fraction_of_max"] = ("sample", np.array([r["rate_fraction_of_max"] for r in rates]),
                                        {"units": "1", "long_name": "peak (or mean) rate over the instrument maximum",
                                         "max_event_rate_per_s": mx if mx is not None else np.nan})
    ds["wide_event_fraction"] = ("sample", np.array([float((it.get("width") or {}).get("wide_fraction", np.nan))
                                                     for it in get]),
                                 {"units": "1", "long_name": "events wider than factor x the median pulse width",
                                  "factor": float(next(((it.get("width") or {}).get("factor") for it in get
                                                        if it.get("width")), np.nan))})
    # detection limits from the buffer (else unstained) controls: max over them of the noise level
    by = {s.name: s.role for s in exp.samples}
    chans = list(ctx.markers)
    for role in _NOISE_ROLES:
        ctrl = [items[n] for n in names if by.get(n) == role and "noise_channels" in items[n]]
        if ctrl:
            break
    if not ctrl:
        return
    level = {}
    for it in ctrl:
        for c, v in zip(it["noise_channels"], np.asarray(it["noise_levels"], float)):
            level[c] = max(level.get(c, -np.inf), float(v))
    crit = CRITERION.format(p=DETECTION_PERCENTILE, role=role)
    lim = np.array([level.get(c, np.nan) for c in chans])
    ds["detection_limit"] = ("marker", lim, {"units": "channel units (linear scale)", "criterion": crit,
                                             "long_name": "noise level of the channel"})
    cal = np.full(len(chans), np.nan)
    fl = ctx.fluor
    units = exp.flow.get("calibration", {}).get("fluorescence", {}).get("units", "MESF")
    if fl is not None:
        ch = exp.flow["calibration"]["fluorescence"]["channel"]
        if ch in chans and np.isfinite(lim[chans.index(ch)]):
            cal[chans.index(ch)] = fluorescence_limit(lim[chans.index(ch)], m=fl["m"], b=fl["b"])
    ds["detection_limit_calibrated"] = ("marker", cal, {"units": units, "criterion": crit,
                                                        "long_name": "dimmest resolved signal, calibrated"})
    sc = ctx.size_cal
    if sc is not None and sc.channel in level:
        r = scatter_limit(level[sc.channel], sc)
        ds["detection_limit_diameter_nm"] = ((), r["diameter_nm"], {
            "units": "nm", "criterion": crit, "channel": sc.channel, "bound": r["bound"],
            "scatter_level": level[sc.channel], "long_name": "smallest resolved diameter (particle model of the "
                                                              "size calibration)"})


def report_parts(ds, ctx, table, img, png, esc) -> list:
    """HTML fragments: time QC (statistic, flags, a small rate plot per sample), rates, widths, detection limits."""
    if "time_qc_flags" not in ds:
        return []
    import matplotlib.pyplot as plt

    out = ["<h2>Time QC, event rate and coincidence</h2>",
           f"<p class='small'>Statistic: {esc(ds['time_qc_flags'].attrs.get('statistic', ''))}. Pulse width: events "
           f"wider than {float(ds['wide_event_fraction'].attrs.get('factor', np.nan)):g}x the median width.</p>"]
    rows = []
    for i, s in enumerate(ds["sample"].values):
        rows.append([str(s), str(ds["time_qc_flags"].values[i]) or "none",
                     float(ds["time_excluded_event_fraction"].values[i]),
                     "yes" if bool(ds["time_intervals_excluded"].values[i]) else "no",
                     float(ds["event_rate_per_s"].values[i]), float(ds["peak_event_rate_per_s"].values[i]),
                     float(ds["event_rate_fraction_of_max"].values[i]), float(ds["wide_event_fraction"].values[i])])
    out.append(table(rows, ["sample", "time flags", "events in flagged intervals", "excluded", "mean rate (/s)",
                            "peak rate (/s)", "rate / instrument max", "wide-pulse fraction"], left=2))
    names = [str(s) for s in ds["sample"].values if "time_rate" in ctx.flow_items.get(str(s), {})]
    if names:
        n = len(names)
        cols = min(n, 4)
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 1.9 * ((n + cols - 1) // cols)),
                                 squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            it = ctx.flow_items[name]
            e, r = np.asarray(it["time_edges"]), np.asarray(it["time_rate"])
            ax.stairs(r, e, color="#333")
            for a, b, kind in (it.get("time_qc") or {}).get("intervals", []):
                ax.axvspan(a, b, color={"burst": "#e69f00"}.get(kind, "#d55e00"), alpha=0.3, lw=0)
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("time", fontsize=7)
            ax.set_ylabel("events / time", fontsize=7)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        fig.tight_layout()
        out.append(img(png(fig), "event rate over time"))
    if "detection_limit" in ds:
        crit = ds["detection_limit"].attrs.get("criterion", "")
        rows = [[str(m), str(ds["marker_channel"].values[k]), float(ds["detection_limit"].values[k]),
                 float(ds["detection_limit_calibrated"].values[k])] for k, m in enumerate(ds["marker"].values)]
        out.append("<h2>Detection limits</h2>"
                   f"<p class='small'>Criterion: {esc(crit)}.</p>"
                   + table(rows, ["marker", "channel", "noise level (channel units)",
                                  f"limit ({ds['detection_limit_calibrated'].attrs.get('units', '')})"], left=2))
        if "detection_limit_diameter_nm" in ds:
            v = ds["detection_limit_diameter_nm"]
            out.append(f"<p>Smallest resolved diameter ({esc(v.attrs.get('channel', ''))}): "
                       f"{'&le; ' if v.attrs.get('bound') == 'upper' else ''}{float(v.values):.0f} nm "
                       f"({esc(v.attrs.get('bound', ''))})</p>")
    return out
