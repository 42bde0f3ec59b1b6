"""Self-contained HTML report: figures embedded as base64 PNG, no external URL or script."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from .flow_qc import report_parts as flow_qc_parts
from .report_flow import flow_parts
from .report_imaging import detection_parts, imaging_qc_parts, imaging_result_parts

__all__ = ["write_report", "esc", "Html"]


class Html(str):
    """A fragment of HTML built by this module from escaped parts (the only text inserted unescaped)."""


def esc(value) -> Html:
    """Escape any text for HTML (element content and quoted attributes); an :class:`Html` passes unchanged.

    Every piece of user- or file-derived text (sample, marker and file names, FCS keywords, error messages)
    reaches the report through this function.
    """
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def _status(passed: bool) -> Html:
    return Html(f"<span class='{'pass' if passed else 'fail'}'>{'pass' if passed else 'FAIL'}</span>")


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.pass{color:#176f2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
img{max-width:100%;border:1px solid #eee}.small{color:#666;font-size:12px}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64, alt):
    return Html(f'<img alt="{esc(alt)}" src="data:image/png;base64,{esc(b64)}">')


def _table(rows, header, left=1):
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>'
                                   for i, h in enumerate(header)) + "</tr>"]
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            if isinstance(v, float):
                v = "" if not math.isfinite(v) else (f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}")
            cls = "l" if i < left else ""
            cells.append(f'<td class="{cls}">{esc(v)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return Html("".join(out) + "</table>")


def _log_axis(top, decades, n):
    """Channel values at the bin edges of a flog(T, M) display axis with ``n`` bins over [0, 1)."""
    e = np.linspace(0.0, 1.0, n + 1)
    return top * 10.0 ** (decades * (e - 1.0))


def _fig_beads(ctx):
    import matplotlib.pyplot as plt

    fl, sc = ctx.fluor, ctx.size_cal
    if fl is None and sc is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if fl is not None:
        ax = axes[0]
        peaks, vals, used = fl["peaks"], fl["mesf_values"], fl["used"].astype(bool)
        ok = np.isfinite(peaks) & (vals > 0)
        ax.loglog(peaks[ok & used], vals[ok & used], "o", label="used peaks")
        if (ok & ~used).any():
            ax.loglog(peaks[ok & ~used], vals[ok & ~used], "x", color="gray", label="not used")
        xs = np.geomspace(max(np.nanmin(peaks[peaks > 0]) / 2, 1e-3), np.nanmax(peaks) * 2, 100)
        ax.loglog(xs, np.exp(fl["b"]) * xs ** fl["m"], "-", color="C1",
                  label=f"fit m={fl['m']:.3f}, R²={fl['r2']:.4f}")
        units = fl["summary"].get("units", "MESF")
        ax.set_xlabel(fl.get("axis_label") or f"{fl['summary']['channel']} (channel units)")
        ax.set_ylabel(units)
        ax.set_title(f"Fluorescence calibration ({units})")
        ax.legend(fontsize=8)
    else:
        axes[0].axis("off")
    if sc is not None:
        ax = axes[1]
        d = np.geomspace(max(sc.diameter_grid_nm.min(), 30), sc.diameter_grid_nm.max(), 200)
        ax.loglog(d, sc.gain * np.exp(np.interp(np.log(d), np.log(sc.diameter_grid_nm), np.log(sc.cross_section_grid))),
                  "-", color="C2", label="EV model (Mie)")
        ax.loglog(sc.bead_diameters_nm, sc.bead_scatter, "s", color="C0", label="size beads (measured)")
        ax.loglog(sc.bead_diameters_nm, sc.gain * sc.bead_cross_section, "+", color="k", ms=10,
                  label="size beads (Mie, fitted gain)")
        ax.set_xlabel("diameter (nm)")
        ax.set_ylabel((getattr(ctx, "calibration", None) or {}).get("size", {}).get("axis_label")
                      or f"{sc.channel} (channel units)")
        ax.set_title(f"Scatter calibration (gain {sc.gain:.3g}, R²={sc.r2:.4f})")
        ax.legend(fontsize=8)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    return _png(fig)


def _fig_sizes(ds, ctx):
    import matplotlib.pyplot as plt

    sc, dens = ctx.size_cal, ctx.density
    items = ctx.flow_items
    if sc is None or dens is None:
        return None
    x, _y, (tx, mx), _ = dens
    fig, ax = plt.subplots(figsize=(7, 3.8))
    shown = 0
    for n in ds["sample"].values:
        it = items.get(str(n), {})
        role = str(ds["role"].sel(sample=n).values)
        if "density_parent" not in it or role not in ("sample", "detergent"):
            continue
        h = it["density_parent"].sum(axis=1).astype(float)
        edges = _log_axis(tx, mx, h.size)
        centres = np.sqrt(edges[:-1] * edges[1:])
        d = np.asarray(sc.to_diameter(centres), float)
        ok = np.isfinite(d) & (h > 0)
        if ok.sum() < 2:
            continue
        ax.plot(d[ok], h[ok] / h[ok].sum(), "-", label=str(n))
        shown += 1
    if not shown:
        plt.close(fig)
        return None
    ax.set_xlabel("diameter (nm, from scatter via Mie)")
    ax.set_ylabel("fraction of gated events per bin")
    ax.set_title("Size distributions (parent gate)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _fig_phenotypes(ds, prefix=""):
    import matplotlib.pyplot as plt

    if f"{prefix}count" not in ds:
        return None
    sdim, pdim = (f"{prefix}sample" if prefix else "sample"), (f"{prefix}phenotype" if prefix else "phenotype")
    if prefix:
        frac = ds["image_fraction_all_fov"]
    else:
        frac = ds["fraction_of_parent"]
    names = [str(s) for s in ds[sdim].values]
    labels = [str(p) for p in ds[pdim].values]
    vals = np.nan_to_num(frac.transpose(sdim, pdim).values)
    keep = [j for j in range(len(labels)) if vals[:, j].max() > 0.002]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 3), 4))
    bottom = np.zeros(len(names))
    from ..palette import phenotype_colour

    bitname = f"{prefix}bitmask"
    bits = ds[bitname].values if bitname in ds.coords else np.arange(len(labels))
    for j in keep:
        ax.bar(names, vals[:, j], bottom=bottom, label=labels[j], color=phenotype_colour(bits[j]))
        bottom += vals[:, j]
    ax.set_ylabel("fraction of parent")
    ax.set_ylim(0, 1.0)
    ax.set_title("Phenotypes per sample" + (" (imaging, all fields)" if prefix else " (flow, parent gate)"))
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    return _png(fig)


def _fig_dilution(ds):
    import matplotlib.pyplot as plt

    if "role" not in ds.coords:
        return None
    dil = ds["role"].values == "dilution"
    if dil.sum() < 2:
        return None
    f = ds["dilution"].values[dil]
    rate = ds["n_parent"].values[dil] / ds["volume_ul"].values[dil]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(1 / f, rate, "o")
    if len(f) >= 2:
        s, i = np.polyfit(1 / f, rate, 1)
        xs = np.linspace(0, (1 / f).max() * 1.1, 20)
        axes[0].plot(xs, s * xs + i, "-", color="C1")
    axes[0].set_xlabel("1 / dilution factor")
    axes[0].set_ylabel("events per uL (measured)")
    axes[0].set_title("Dilution linearity")
    axes[1].plot(f, ds["total_concentration_per_ml"].values[dil], "o-")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("dilution factor")
    axes[1].set_ylabel("corrected particles / mL")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title("Dilution-corrected concentration")
    fig.tight_layout()
    return _png(fig)


def write_report(ds, ctx, path) -> Path:
    """Write the self-contained HTML report for a pipeline result."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from .store import atomic_write_bytes

    exp = ctx.experiment
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>evflow report: {esc(exp.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>evflow report: {esc(exp.name)}</h1>",
             f"<p class='small'>evflow {esc(ds.attrs.get('evflow_version', ''))} · backend "
             f"{esc(ds.attrs.get('backend', ''))} · config {esc(ds.attrs.get('config_hash', '')[:16])}…</p>"]
    flow = flow_parts(ds, ctx, table=_table, img=_img, png=_png, esc=esc)
    qc = json.loads(ds.attrs.get("qc", "{}"))
    parts.append("<h2>Quality control</h2>")
    if qc:
        rows = [(k, v.get("what", ""), float(v["value"]), float(v["limit"]),
                 _status(bool(v["pass"])))
                for k, v in qc.items()]
        parts.append(_table(rows, ["check", "what", "value", "limit", "result"], left=2))
    failed = json.loads(ds.attrs.get("failed", "{}"))
    if failed:
        parts.append("<p class='fail'>Failed items (the others were computed):</p>")
        parts.append(_table([(k, (str(v).splitlines() or [''])[0]) for k, v in failed.items()], ["item", "error"], left=2))
    if "qc_flags" in ds and any(str(v) for v in ds["qc_flags"].values):
        parts.append(_table([(str(s), str(f)) for s, f in zip(ds["sample"].values, ds["qc_flags"].values) if str(f)],
                            ["sample", "flags"], left=2))
    if "count" in ds:
        parts.append("<h2>Flow: samples</h2>")
        rows = []
        for i, s in enumerate(ds["sample"].values):
            rows.append([str(s), str(ds["role"].values[i]), float(ds["dilution"].values[i]), int(ds["n_total"].values[i]),
                         int(ds["n_parent"].values[i]), float(ds["volume_ul"].values[i]),
                         float(ds["total_concentration_per_ml"].values[i])]
                        + [float(v) for v in ds["threshold"].values[i]]
                        + [float(v) for v in ds["fraction_of_parent"].values[i]])
        parts.append(_table(rows, ["sample", "role", "dilution", "events", "in gate", "volume (uL)", "particles/mL"]
                            + [f"threshold {m}" for m in ds["marker"].values]
                            + [str(p) for p in ds["phenotype"].values], left=2)
                     .replace("<table>", "<table id='flow-samples'>", 1))
    parts += flow["thresholds"]
    from .copies import fig_copies

    parts += flow["plots"]  # density plots with the run's gates, marker histograms, concentrations
    figs = [
        ("Bead calibration", _fig_beads(ctx)),
        ("Size distributions", _fig_sizes(ds, ctx) if "count" in ds else None),
        ("Flow phenotypes", _fig_phenotypes(ds)),
        ("Dilution series", _fig_dilution(ds) if "count" in ds else None),
        ("Imaging phenotypes", _fig_phenotypes(ds, prefix="image_")),
    ]
    for title, b64 in figs:
        if b64:
            parts.append(f"<h2>{esc(title)}</h2>{_img(b64, title)}")
    # imaging tables (samples, phenotypes, fields), photons per marker, the gallery of every field
    parts += imaging_result_parts(ds, ctx, esc=esc, table=_table, png=_png, img=_img)
    b64 = fig_copies(ds)
    if b64:
        parts.append(f"<h2>Copies per vesicle</h2>{_img(b64, 'Copies per vesicle')}")
    if "image_count" in ds:
        reg = json.loads(ds.attrs.get("calibration", "{}")).get("registration")
        if reg:
            parts.append(f"<p class='small'>Channel registration from beads (reference {esc(reg['reference'])}): "
                         "residual rms (px) "
                         + ", ".join(f"{esc(k)} {float(v):.3f}" for k, v in reg["residual_rms_px"].items())
                         + "; matched beads "
                         + ", ".join(f"{esc(k)} {esc(v)}" for k, v in reg["n_matched"].items()) + "</p>")
        if ds.attrs.get("image_threshold_rule"):
            parts.append("<p class='small'>Imaging positivity: " + esc(ds.attrs["image_threshold_rule"])
                         + "</p>")
    parts += flow["calibration"]
    parts.extend(flow_qc_parts(ds, ctx, _table, _img, _png, esc))  # time QC, rates, detection limits
    parts += imaging_qc_parts(ds, esc=esc, table=_table, png=_png, img=_img)  # chance coloc., chip map, field QC
    parts += flow["miflowcyt"]
    inputs = json.loads(ds.attrs.get("input_files", "{}"))
    parts.append("<h2>Provenance</h2>" + _table([(k, v) for k, v in inputs.items()], ["input file", "sha256"], left=2))
    parts += detection_parts(ds, esc=esc, table=_table)
    parts.append("</body></html>")
    return atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
