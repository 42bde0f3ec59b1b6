"""Flow sections of the HTML report: density plots with the run's gates drawn, per-marker histograms, the
thresholds and concentrations tables, calibration diagnostics and the MIFlowCyt-EV checklist.

The plots use the events each sample's task kept for display (``display_events`` of ``display_channels``, the
first :data:`~evflow.pipeline.flow.DISPLAY_EVENTS` events, with ``display_parent``, their membership of the parent
gate as the run computed it).  Gates are drawn from the run's gating strategy in the plotted coordinates (channel
values on the sample's scale policy; a Gating-ML dimension's transform is inverted), and each drawn gate is applied
to the plotted events so that the report states how many events its drawing holds beside the run's count.

The HTML helpers are those of :mod:`evflow.pipeline.report`, handed in (this module does not import it).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["gate_shapes", "inside_shapes", "axis_limits", "flow_parts", "miflowcyt_items", "GATE_COLOURS"]

#: drawing colour of the run's gates: the size gate red, range gates magenta, Gating-ML gates cyan
GATE_COLOURS = {"size": "#e41a1c", "range": "#e7298a", "gatingml": "#00bcd4"}
_PLOT_ROLES = ("sample", "detergent", "dilution")
_CONTROL_STYLE = {"isotype": "--", "unstained": ":", "buffer": "-."}


# =========================================================================== gates in plotted coordinates


def _inverse(dim):
    t = getattr(dim, "transform", None)
    if t is None:
        return lambda v: np.asarray(v, np.float64)
    return lambda v: np.asarray(t.inverse(np.asarray(v, np.float64)), np.float64)


def _origin(gid) -> str:
    return "size" if gid == "evflow_size" else "range" if str(gid).startswith("evflow_range_") else "gatingml"


def gate_shapes(strategy, parent, x, y, extent) -> list[dict]:
    """The gates of the parent chain as polygons on the plot of channel ``x`` against ``y``.

    Parameters
    ----------
    strategy : GatingStrategy or None
    parent : str or None
        The parent gate of the run (its chain, root first, is drawn).
    x, y : str
        The plotted channels.
    extent : (xmin, xmax, ymin, ymax)
        Finite coordinates that stand for an open end of a gate (beyond every plotted event).

    Returns
    -------
    list of dict
        One per gate: ``id``, ``kind``, ``origin`` (size, range, gatingml), ``xy`` (k x 2 vertices in channel
        values, None when not drawable), ``rect`` (x0, x1, y0, y1 of a rectangle gate, held as
        ``x0 <= x < x1``) and ``reason`` (why not drawn).
    """
    from ..flow.gates import Dimension, EllipsoidGate, PolygonGate, RectangleGate

    if strategy is None or parent is None:
        return []
    out = []
    for gid in strategy.parent_chain(parent):
        g = strategy.gates[gid]
        shape = {"id": gid, "kind": getattr(g, "kind", type(g).__name__), "origin": _origin(gid), "xy": None,
                 "rect": None, "reason": ""}
        out.append(shape)
        dims = list(getattr(g, "dims", []))
        bad = [d for d in dims if not isinstance(d, Dimension) or d.compensation is not None]
        if not dims or bad:
            shape["reason"] = "compensated, ratio or Boolean gate" if bad or not dims else ""
            continue
        chans = [d.channel for d in dims]
        off = [c for c in chans if c not in (x, y)]
        if off or len(set(chans)) != len(chans):
            shape["reason"] = f"on {', '.join(off or chans)}, not the plotted channels"
            continue
        axes = [0 if c == x else 1 for c in chans]
        if isinstance(g, RectangleGate):
            lo, hi = [extent[0], extent[2]], [extent[1], extent[3]]
            for d, a, mn, mx in zip(dims, axes, g.mins, g.maxs):
                if mn is not None:
                    lo[a] = float(_inverse(d)([mn])[0])
                if mx is not None:
                    hi[a] = float(_inverse(d)([mx])[0])
            shape["xy"] = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
            shape["rect"] = (lo[0], hi[0], lo[1], hi[1])  # held as the gate holds it: lo <= v < hi
        elif isinstance(g, (PolygonGate, EllipsoidGate)) and len(dims) == 2:
            if isinstance(g, PolygonGate):
                v = np.asarray(g.vertices, np.float64)
                t = np.linspace(0.0, 1.0, 128, endpoint=False)[:, None]  # edges densified: straight on the gate's
                w = np.roll(v, -1, axis=0)                                  # scale, curved on the plot's
                pts = (v[:, None, :] + t[None] * (w - v)[:, None, :]).reshape(-1, 2)
            else:
                ev, vec = np.linalg.eigh(np.asarray(g.covariance, np.float64))
                a = np.linspace(0.0, 2 * np.pi, 256, endpoint=False)
                circle = np.stack([np.cos(a), np.sin(a)], axis=1) * np.sqrt(np.maximum(ev, 0) * g.distance_square)
                pts = np.asarray(g.mean, np.float64) + circle @ vec.T
            xy = np.empty_like(pts)
            for c, (d, a) in enumerate(zip(dims, axes)):
                xy[:, a] = _inverse(d)(pts[:, c])
            shape["xy"] = xy
        else:
            shape["reason"] = f"{shape['kind']} gates are not drawn"
    return out


def inside_shapes(shapes, xy) -> np.ndarray:
    """Events (n x 2, plotted channel values) inside every drawn gate polygon of ``shapes``."""
    from matplotlib.path import Path

    xy = np.asarray(xy, np.float64)
    inside = np.isfinite(xy).all(axis=1)
    for s in shapes:
        if s.get("rect") is not None:  # axis-aligned: the gate's half-open rule (events on a bound, as on
            x0, x1, y0, y1 = s["rect"]  # digitised channels, belong to the side the gate puts them)
            inside &= (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
        elif s["xy"] is not None:
            inside &= Path(np.asarray(s["xy"], np.float64)).contains_points(np.nan_to_num(xy))
    return inside


def axis_limits(values, extra=(), lo_pct=0.5, hi_pct=99.9):
    """(lo, hi) of a log axis from the data: the ``lo_pct``/``hi_pct`` percentiles of the positive values, widened
    by a factor 1.5, then stretched to take in the ``extra`` values (gate edges, thresholds) lying within a
    decade of them; None without positive values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2:
        return None
    lo, hi = np.percentile(v, [lo_pct, hi_pct])
    lo, hi = lo / 1.5, hi * 1.5
    if hi <= lo * 10:
        g = math.sqrt(lo * hi)
        lo, hi = g / math.sqrt(10), g * math.sqrt(10)
    for e in extra:
        if np.isfinite(e) and e > 0 and lo / 10 <= e <= hi * 10:
            lo, hi = min(lo, e / 1.3), max(hi, e * 1.3)
    return float(lo), float(hi)


# =========================================================================== plotted data


def _display(it, channels):
    """(events n x len(channels), parent mask) of a flow item, or None without display events."""
    ev, chans = it.get("display_events"), [str(c) for c in it.get("display_channels", [])]
    if ev is None or any(c not in chans for c in channels):
        return None
    ev = np.asarray(ev, np.float64).reshape(-1, len(chans))
    return ev[:, [chans.index(c) for c in channels]], np.asarray(it["display_parent"], bool)


def _density_setup(ds, ctx):
    """Names, x, y, limits, gate shapes and per-sample plotted events of the density plots (None if none)."""
    dens = ctx.density
    if dens is None:
        return None
    x, y = dens[0], dens[1]
    shown = {str(n): d for n in ds["sample"].values
             if (d := _display(ctx.flow_items.get(str(n), {}), [x, y])) is not None}
    if not shown:
        return None
    pooled = np.concatenate([e for e, _ in shown.values()])
    far = np.nanmax(np.abs(pooled[np.isfinite(pooled)])) if np.isfinite(pooled).any() else 1.0
    extent = (-10 * far - 1, 10 * far + 1, -10 * far - 1, 10 * far + 1)
    shapes = gate_shapes(getattr(ctx, "strategy", None), getattr(ctx, "parent", None), x, y, extent)
    edges_x = [v for s in shapes if s["xy"] is not None for v in s["xy"][:, 0]]
    edges_y = [v for s in shapes if s["xy"] is not None for v in s["xy"][:, 1]]
    chans = list(ctx.markers)
    thr = []
    if y in chans:
        thr = [float(v) for v in np.unique(ds["threshold"].values[:, chans.index(y)]) if np.isfinite(v)]
    xl = axis_limits(pooled[:, 0], edges_x)
    yl = axis_limits(pooled[:, 1], [*edges_y, *thr])
    if xl is None or yl is None:
        return None
    return {"x": x, "y": y, "shown": shown, "shapes": shapes, "xlim": xl, "ylim": yl, "thresholds": thr}


def gate_check_rows(ds, ctx, setup=None) -> list:
    """Per sample: plotted events, gates drawn, events inside the drawn gates, the run's parent-gate events among
    the plotted ones and the run's count over all events."""
    setup = setup or _density_setup(ds, ctx)
    if setup is None:
        return []
    shapes = setup["shapes"]
    drawn = sum(s["xy"] is not None for s in shapes)
    rows = []
    for i, s in enumerate(ds["sample"].values):
        d = setup["shown"].get(str(s))
        if d is None:
            continue
        ev, par = d
        rows.append([str(s), int(len(ev)), f"{drawn} of {len(shapes)}", int(inside_shapes(shapes, ev).sum()),
                     int(par.sum()), int(ds["n_parent"].values[i]),
                     "yes" if len(ev) == int(ds["n_total"].values[i]) else "no (first events)"])
    return rows


def _fig_density(ds, ctx, setup, png):
    import matplotlib.pyplot as plt

    names = [str(n) for n in ds["sample"].values if str(n) in setup["shown"]]
    x, y = setup["x"], setup["y"]
    (x0, x1), (y0, y1) = setup["xlim"], setup["ylim"]
    xe, ye = np.geomspace(x0, x1, 97), np.geomspace(y0, y1, 97)
    ncol = min(5, len(names))
    nrow = int(math.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 2.9 * nrow), squeeze=False)
    roles = dict(zip([str(s) for s in ds["sample"].values], [str(r) for r in ds["role"].values]))
    for ax, n in zip(axes.ravel(), names):
        ev, _par = setup["shown"][n]
        cx, cy = np.clip(ev[:, 0], x0, x1 * 0.999), np.clip(ev[:, 1], y0, y1 * 0.999)  # off-axis events at the edge
        ok = np.isfinite(cx) & np.isfinite(cy)
        h, _, _ = np.histogram2d(cx[ok], cy[ok], bins=(xe, ye))
        ax.pcolormesh(xe, ye, np.log10(h.T + 1), cmap="viridis", shading="flat")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for s in setup["shapes"]:
            if s["xy"] is not None:
                p = np.vstack([s["xy"], s["xy"][:1]])
                ax.plot(np.clip(p[:, 0], x0, x1), np.clip(p[:, 1], y0, y1), "-", color=GATE_COLOURS[s["origin"]],
                        lw=1.3)
        for t in setup["thresholds"]:
            ax.axhline(t, color="orange", lw=1, ls="--")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.text(0.02, 0.98, f"in drawn gate: {int(inside_shapes(setup['shapes'], ev).sum()):,}", fontsize=7,
                color="w", transform=ax.transAxes, va="top")
        ax.set_title(f"{n} ({roles[n]})", fontsize=9)
        labels = ctx.flow_items[n].get("axis_labels", {})
        ax.set_xlabel(labels.get(x, x), fontsize=7)
        ax.set_ylabel(f"{labels.get(y, y)} ({ctx.markers.get(y, '')})", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    drawn = [s for s in setup["shapes"] if s["xy"] is not None]
    key = "; ".join(f"{ {'size': 'red', 'range': 'magenta', 'gatingml': 'cyan'}[s['origin']]}: {s['id']}"
                    for s in drawn) or "no gate on these channels"
    fig.suptitle(f"{x} vs {y}: gates of the run ({key}); orange dashed: positivity threshold", fontsize=9)
    fig.tight_layout()
    return png(fig)


def _fig_markers(ds, ctx, png):
    """One panel per marker: parent-gate events of the samples against the isotype/unstained/buffer controls."""
    import matplotlib.pyplot as plt

    chans = list(ctx.markers)
    names = [str(s) for s in ds["sample"].values]
    roles = [str(r) for r in ds["role"].values]
    data = {}
    for k, ch in enumerate(chans):
        for i, n in enumerate(names):
            d = _display(ctx.flow_items.get(n, {}), [ch])
            if d is not None and (roles[i] in _PLOT_ROLES[:1] or roles[i] in _CONTROL_STYLE):
                data[(k, i)] = d[0][d[1], 0]
    if not data:
        return None
    fig, axes = plt.subplots(1, len(chans), figsize=(4.6 * len(chans), 3.4), squeeze=False)
    for k, ch in enumerate(chans):
        ax = axes[0, k]
        vals = [v for (kk, _i), v in data.items() if kk == k]
        thr = [float(t) for t in np.unique(ds["threshold"].values[:, k]) if np.isfinite(t)]
        lim = axis_limits(np.concatenate(vals), thr) if vals else None
        if lim is None:
            ax.axis("off")
            continue
        edges = np.geomspace(*lim, 65)
        for (kk, i), v in data.items():
            if kk != k or not len(v):
                continue
            h, _ = np.histogram(v, bins=edges)
            frac = float(ds["n_positive"].values[i, k]) / max(int(ds["n_parent"].values[i]), 1)
            ax.stairs(h / len(v), edges, ls=_CONTROL_STYLE.get(roles[i], "-"), lw=1.2 if roles[i] in _CONTROL_STYLE
                      else 0.9, label=f"{names[i]} ({roles[i]}): {frac:.1%} +")
        for t in thr:
            ax.axvline(t, color="orange", lw=1.2, ls="--")
        ax.set_xscale("log")
        lab = next((ctx.flow_items[n].get("axis_labels", {}).get(ch) for n in names
                    if ch in ctx.flow_items.get(n, {}).get("axis_labels", {})), ch)
        ax.set_xlabel(lab, fontsize=8)
        ax.set_ylabel("fraction of parent-gate events", fontsize=8)
        ax.set_title(f"{ctx.markers[ch]}: threshold {', '.join(f'{t:.4g}' for t in thr)}", fontsize=9)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    fig.suptitle("Per marker: samples (solid) against the controls (dashed isotype, dotted unstained, dash-dot "
                 "buffer); orange: threshold", fontsize=9)
    fig.tight_layout()
    return png(fig)


# =========================================================================== tables


def _interval(v, lo, hi) -> str:
    if not np.isfinite(v):
        return ""
    return f"{v:.4g} ({lo:.4g} to {hi:.4g})"


def threshold_rows(ds, ctx) -> list:
    """Per marker: channel, rule, threshold (channel units), calibrated threshold, detection limit."""
    chans = list(ctx.markers)
    fl = ctx.fluor
    cal_ch = ctx.experiment.flow.get("calibration", {}).get("fluorescence", {}).get("channel") if fl else None
    rows = []
    for k, m in enumerate(ds["marker"].values):
        t = ds["threshold"].values[:, k]
        t = t[np.isfinite(t)]
        tv = float(t.max()) if t.size else float("nan")
        cal = float(np.sign(tv) * np.exp(fl["b"]) * abs(tv) ** fl["m"]) if fl and chans[k] == cal_ch else float("nan")
        lim = float(ds["detection_limit"].values[k]) if "detection_limit" in ds else float("nan")
        rows.append([str(m), chans[k], ds.attrs.get("threshold_rule", ""), tv,
                     "same for all samples" if t.size and np.ptp(t) == 0 else "max over samples", cal, lim])
    return rows


def concentration_rows(ds, key: str = "concentration_per_ml") -> list:
    """Per sample: per-phenotype particles/mL (``key``: raw or buffer-subtracted) with their 95% intervals,
    " doubtful" after a buffer-subtracted value its flag marks."""
    doubt = ds["buffer_subtracted_doubtful"].values if key.startswith("buffer_") else None
    rows = []
    for i, s in enumerate(ds["sample"].values):
        r = [str(s), str(ds["role"].values[i])]
        for j in range(ds.sizes["phenotype"]):
            cell = _interval(float(ds[key].values[i, j]), float(ds[f"{key}_lo"].values[i, j]),
                             float(ds[f"{key}_hi"].values[i, j]))
            r.append(cell + " doubtful" if cell and doubt is not None and doubt[i, j] else cell)
        rows.append(r)
    return rows


def _calibration_parts(ctx, table, img, png, esc) -> list:
    out = []
    fl = ctx.fluor
    if fl is not None and fl.get("calibration"):
        from ..flow.calibration import MESFCalibration

        cal = MESFCalibration.from_dict(fl["calibration"])
        rows = [[j, float(cal.peak_medians[j]), float(cal.mesf_values[j]), str(cal.peak_status[j]),
                 int(cal.peak_events[j]), 100 * float(cal.relative_error[j])] for j in range(len(cal.mesf_values))]
        flags = [f for f in ("blank_brighter", "non_monotone", "large_residuals", "ambiguous_placement")
                 if cal.qc.get(f)]
        out.append(f"<h3>Fluorescence ({esc(cal.units)}): {esc(cal.channel)}</h3>"
                   f"<p class='small'>{esc(cal.source)}; m {cal.params['m']:.4f}, b {cal.params['b']:.4f}, "
                   f"R² {cal.r2:.5f}; QC: {esc(', '.join(flags) or 'no flag')}.</p>"
                   + img(png(cal.plot()), "fluorescence calibration diagnostics")
                   + table(rows, ["population", "median (channel units)", f"assigned {cal.units}", "status",
                                  "events", "relative error (%)"], left=1))
    sc = ctx.size_cal
    if sc is not None:
        model = sc.gain * np.asarray(sc.bead_cross_section, float)
        rows = [[float(d), float(m), float(p), 100 * (float(m) / float(p) - 1) if p > 0 else float("nan")]
                for d, m, p in zip(sc.bead_diameters_nm, sc.bead_scatter, model)]
        s = ctx.experiment.flow.get("calibration", {}).get("size", {})
        from .config import default

        ri = {k: s.get(k, default("flow.calibration.size", k)) for k in
              ("bead_index", "medium_index", "ev_core_index", "ev_shell_index", "ev_shell_nm", "wavelength_nm")}
        out.append(f"<h3>Scatter to diameter: {esc(sc.channel)}</h3><p class='small'>Mie theory, beads of refractive "
                   f"index {ri['bead_index']:g} in a medium of {ri['medium_index']:g} at {ri['wavelength_nm']:g} nm; "
                   f"EVs as a core ({ri['ev_core_index']:g}) with a {ri['ev_shell_nm']:g} nm shell "
                   f"({ri['ev_shell_index']:g}); gain {sc.gain:.4g}, R² {sc.r2:.5f}; diameters are unique over "
                   f"{sc.unique_range_nm[0]:.0f}-{sc.unique_range_nm[1]:.0f} nm.</p>"
                   + table(rows, ["bead diameter (nm)", "measured scatter (median)", "model scatter (fitted gain)",
                                  "residual (%)"], left=0))
    return out


# =========================================================================== MIFlowCyt-EV


def _triggers(ctx) -> str:
    from ..errors import EvflowError
    from ..io.fcs import read_fcs

    found = set()
    for s in ctx.experiment.samples:
        if s.flow is not None and s.name in ctx.flow_items:
            try:
                found.update(f"{c} {lvl}" if c else lvl for c, lvl, _k in read_fcs(s.flow, data_offsets=s.data_offsets).triggers)
            except (EvflowError, OSError):
                continue
    return ", ".join(sorted(found))


def miflowcyt_items(ds, ctx) -> list[tuple[str, str, bool, str]]:
    """The MIFlowCyt-EV framework's reporting items (Welsh et al. 2020, J Extracell Vesicles 9:1713526) as
    ``(section, item, present, what the experiment file and data supply)``."""
    exp = ctx.experiment
    roles = set(ds["role"].values.tolist()) if "role" in ds.coords else set()
    qc = __import__("json").loads(ds.attrs.get("qc", "{}"))
    items = ctx.flow_items
    fl, sc = ctx.fluor, ctx.size_cal
    desc = exp.settings.get("experiment", {}).get("description") or ""
    treat = sorted({s.treatment for s in exp.samples if s.treatment})
    inst = sorted({it.get("instrument", "") for it in items.values()} - {""})
    vols = sorted({str(it.get("volume_method", "")) for it in items.values()} - {""})
    trig = _triggers(ctx)
    out = []

    def add(section, item, value, present=None):
        out.append((section, item, bool(value) if present is None else bool(present), value or "missing"))

    add("Preanalytical variables", "Sample description (source, collection, isolation, storage)", desc)
    add("Preanalytical variables", "Sample treatments", ", ".join(treat))
    add("Experimental design", "Samples, roles and dilutions",
        "; ".join(f"{s} ({r}, x{float(d):g})" for s, r, d in zip(ds["sample"].values, ds["role"].values,
                                                                  ds["dilution"].values)))
    add("Experimental design", "Instrument ($CYT)", ", ".join(inst))
    add("Experimental design", "Trigger channel and threshold (FCS keywords)", trig)
    for role, what, key in (("buffer", "Buffer-only control", "buffer_fraction"),
                            ("unstained", "Unstained control", None), ("isotype", "Isotype control", None),
                            ("detergent", "Detergent lysis control", "detergent_reduction"),
                            ("dilution", "Serial dilution", "dilution_linearity")):
        n = int((ds["role"].values == role).sum()) if role in roles else 0
        v = f"{n} sample(s)" + (f"; {key} {float(qc[key]['value']):.4g} (limit {float(qc[key]['limit']):g}, "
                                 f"{'pass' if qc[key]['pass'] else 'FAIL'})" if key in qc else "") if n else ""
        add("Assay controls", what, v)
    add("Instrument calibration", "Fluorescence calibration (MESF/ERF beads, reference values, fit)",
        f"{fl['summary']['units']} beads on {fl['summary']['channel']}, {fl['summary']['source']}, R² {fl['r2']:.4f}"
        if fl else "")
    add("Instrument calibration", "Scatter calibration to diameter (bead and EV refractive indices, Mie)",
        f"{sc.channel}: beads {', '.join(f'{d:g}' for d in sc.bead_diameters_nm)} nm, R² {sc.r2:.4f}" if sc else "")
    lim = []
    if "detection_limit_calibrated" in ds and np.isfinite(ds["detection_limit_calibrated"].values).any():
        lim.append(", ".join(f"{m} {v:.4g} {ds['detection_limit_calibrated'].attrs.get('units', '')}"
                             for m, v in zip(ds["marker"].values, ds["detection_limit_calibrated"].values)
                             if np.isfinite(v)))
    if "detection_limit_diameter_nm" in ds:
        lim.append(f"{float(ds['detection_limit_diameter_nm'].values):.0f} nm")
    add("Instrument calibration", "Detection limits (calibrated fluorescence, diameter)", "; ".join(lim))
    add("EV gating and thresholds", "Gates (definitions, in the report's density plots)", ds.attrs.get("gates", ""))
    add("EV gating and thresholds", "Positivity thresholds (rule and values)", ds.attrs.get("threshold_rule", ""))
    add("EV gating and thresholds", "Time QC (event rate over acquisition)",
        "per sample" if "time_qc_flags" in ds else "")
    add("EV characterisation", "Concentration (particles/mL of the undiluted sample, 95% intervals)",
        "per sample and phenotype" if "concentration_per_ml_lo" in ds and np.isfinite(
            ds["concentration_per_ml"].values).any() else "")
    add("EV characterisation", "Analysed volume (measurement method)",
        "; ".join(vols) if vols and not all(v.startswith("unknown") for v in vols) else "")
    add("EV characterisation", "Size in nm (calibrated scatter)", "size distributions" if sc else "")
    add("EV characterisation", "Fluorescence in calibrated units",
        "median of positive events" if "median_positive_calibrated" in ds else "")
    add("EV characterisation", "Software, settings and data files",
        f"evflow {ds.attrs.get('evflow_version', '')}; settings sha256 {ds.attrs.get('config_hash', '')[:16]}; "
        f"{len(__import__('json').loads(ds.attrs.get('input_files', '{}')))} input files with sha256")
    return out


def _miflowcyt_parts(ds, ctx, table, esc) -> list:
    items = miflowcyt_items(ds, ctx)
    missing = [it for _s, it, ok, _v in items if not ok]
    n = len(items) - len(missing)
    line = f"{n} of {len(items)} items present; missing: {', '.join(missing) if missing else 'none'}"
    rows = [(s, it, "present" if ok else "MISSING", v) for s, it, ok, v in items]
    return ["<h2>MIFlowCyt-EV</h2>",
            "<p class='small'>Reporting framework of Welsh et al. 2020 (J Extracell Vesicles 9:1713526): each item, "
            "and what the experiment file and the data supply.</p>",
            f"<p id='miflowcyt-completeness'><b>{esc(line)}</b></p>",
            table(rows, ["section", "item", "status", "value"], left=4)]


# =========================================================================== the flow sections


def flow_parts(ds, ctx, *, table, img, png, esc) -> dict:
    """HTML fragments of the flow result by place: ``thresholds`` (after the samples table), ``plots`` (density
    plots with the gate check, marker histograms, concentrations), ``calibration`` and ``miflowcyt``."""
    out = {"thresholds": [], "plots": [], "calibration": [], "miflowcyt": []}
    if "count" not in ds:
        return out
    cal_units = ds["median_positive_calibrated"].attrs.get("units", "MESF") if "median_positive_calibrated" in ds \
        else "calibrated"
    out["thresholds"] += ["<h2>Thresholds</h2>", table(threshold_rows(ds, ctx), [
        "marker", "channel", "rule", "threshold (channel units)", "across samples", f"threshold ({cal_units})",
        "detection limit (channel units)"], left=3).replace("<table>", "<table id='thresholds'>", 1)]
    mrows = []
    for i, s in enumerate(ds["sample"].values):
        for k, m in enumerate(ds["marker"].values):
            n_par = max(int(ds["n_parent"].values[i]), 1)
            r = [str(s), str(m), float(ds["threshold"].values[i, k]), int(ds["n_positive"].values[i, k]),
                 100 * float(ds["n_positive"].values[i, k]) / n_par, float(ds["median_positive"].values[i, k])]
            if "median_positive_calibrated" in ds:
                r.append(float(ds["median_positive_calibrated"].values[i, k]))
            mrows.append(r)
    out["thresholds"].append(table(mrows, ["sample", "marker", "threshold", "positive events", "positive (%)",
                                           "median positive"] + ([f"median positive ({cal_units})"]
                                                                 if "median_positive_calibrated" in ds else []),
                                   left=2))
    setup = _density_setup(ds, ctx)
    if setup is not None:
        out["plots"].append("<h2>Density plots with gates</h2>" + img(_fig_density(ds, ctx, setup, png),
                                                                     "density plots with gates"))
        undrawn = [f"{s['id']} ({s['reason']})" for s in setup["shapes"] if s["xy"] is None]
        out["plots"].append(
            "<p class='small'>Axes: 0.5th-99.9th percentiles of the plotted events (all samples), widened to show the "
            "gates and thresholds; events off the axes sit on its edge. Each drawn gate applied to the plotted "
            "events against the run's parent gate:"
            + (f" not drawn: {esc('; '.join(undrawn))}." if undrawn else "") + "</p>"
            + table(gate_check_rows(ds, ctx, setup), ["sample", "plotted events", "gates drawn",
                                                      "in the drawn gates", "in the run's gate (plotted events)",
                                                      "in the run's gate (all events)", "all events plotted"],
                    left=1).replace("<table>", "<table id='gate-check'>", 1))
    b64 = _fig_markers(ds, ctx, png)
    if b64:
        out["plots"].append("<h2>Markers: samples against controls</h2>" + img(b64, "marker histograms"))
    out["plots"] += ["<h2>Concentrations</h2><p class='small'>Particles per mL of the undiluted sample, 95% "
                     "interval (Poisson on the count, per-event volume factor) in brackets.</p>",
                     table(concentration_rows(ds), ["sample", "role"] + [str(p) for p in ds["phenotype"].values],
                           left=2).replace("<table>", "<table id='concentrations'>", 1)]
    if "buffer_subtracted_concentration_per_ml" in ds:
        out["plots"] += ["<p class='small'>" + esc(ds["buffer_subtracted_concentration_per_ml"].attrs["long_name"])
                         + "; 95% interval (normal approximation, Poisson on sample and buffer counts) in "
                         "brackets; doubtful: under 20 events in the sample or the buffer, or an interval that "
                         "contains 0.</p>",
                         table(concentration_rows(ds, "buffer_subtracted_concentration_per_ml"),
                               ["sample", "role"] + [str(p) for p in ds["phenotype"].values], left=2).replace(
                             "<table>", "<table id='buffer-subtracted'>", 1)]
    cparts = _calibration_parts(ctx, table, img, png, esc)
    if cparts:
        out["calibration"] = ["<h2>Calibration diagnostics</h2>", *cparts]
    out["miflowcyt"] = _miflowcyt_parts(ds, ctx, table, esc)
    return out
