"""Report sections of the imaging result: numeric tables (vesicles, density and phenotype fractions with their
intervals, per sample and per field), photon histograms per marker with the thresholds, the gallery of every
field (in pages), the detection parameters, chance colocalisation beside each multi-marker fraction, the
per-field QC table and the chip map (fields by stage position, else by index, coloured by density and by each
flag).

The HTML helpers are those of :mod:`evflow.pipeline.report`, handed in (this module does not import it)."""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["imaging_qc_parts", "imaging_result_parts", "detection_parts", "field_layout", "GALLERY_PAGE"]

#: fields per gallery page (the first page is shown, the others are in collapsed sections, in order)
GALLERY_PAGE = 12


def _interval(lo, hi, fmt="{:.4f}"):
    return "" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{fmt.format(lo)} - {fmt.format(hi)}"


def _present(ds, i):
    """Field indices of sample ``i`` that were imaged."""
    return [int(f) for f in ds["fov"].values
            if ds["image_n_parent"].values[i, f] > 0 or np.isfinite(ds["image_field_area_um2"].values[i, f])]


def _tables(ds, esc, table):
    names = [str(s) for s in ds["image_sample"].values]
    labels = [str(p) for p in ds["image_phenotype"].values]
    srows, prows, frows = [], [], []
    for i, s in enumerate(names):
        fovs = _present(ds, i)
        srows.append([s, len(fovs), int(ds["image_count_all_fov"].values[i].sum()),
                      float(ds["image_area_all_fov_um2"].values[i]),
                      float(ds["image_density_all_fov_per_um2"].values[i]),
                      _interval(float(ds["image_density_all_fov_per_um2_lo"].values[i]),
                                float(ds["image_density_all_fov_per_um2_hi"].values[i]), "{:.4g}")])
        for j, lab in enumerate(labels):
            phi = float(ds["image_fraction_dispersion"].values[i, j])
            differ = bool(ds["image_fraction_fields_differ"].values[i, j])
            prows.append([s, lab, int(ds["image_count_all_fov"].values[i, j]),
                          float(ds["image_fraction_all_fov"].values[i, j]),
                          _interval(float(ds["image_fraction_all_fov_lo"].values[i, j]),
                                    float(ds["image_fraction_all_fov_hi"].values[i, j])),
                          phi, f"fields differ: interval about {math.sqrt(phi):.2g}x too narrow" if differ else ""])
        for f in fovs:
            frows.append([s, f, int(ds["image_n_parent"].values[i, f]),
                          float(ds["image_density_per_um2"].values[i, f])]
                         + [int(ds["image_count"].values[i, f, j]) for j in range(len(labels))])
    lim = ds["image_fraction_fields_differ"].attrs.get("limit", "")
    return [
        "<h2>Imaging: samples</h2>",
        table(srows, ["sample", "fields", "vesicles", "area (um^2)", "vesicles/um^2", "95% interval (Poisson)"],
              left=1).replace("<table>", "<table id='image-samples'>", 1),
        "<h2>Imaging: phenotypes (all fields)</h2><p class='small'>Fractions of a sample's vesicles over all its "
        "fields, 95% Wilson intervals from counting. Between-field dispersion: Pearson chi-square of the fields' "
        "fractions about the pooled one over its degrees of freedom, about 1 when fields differ by counting "
        f"alone; flagged where {esc(lim)}.</p>",
        table(prows, ["sample", "phenotype", "vesicles", "fraction", "95% interval (Wilson)",
                      "between-field dispersion", "flag"], left=2).replace("<table>", "<table id='image-phenotypes'>", 1),
        "<h2>Imaging: fields</h2>",
        table(frows, ["sample", "fov", "vesicles", "vesicles/um^2"] + labels, left=1)
        .replace("<table>", "<table id='image-fields'>", 1),
    ]


def _fig_photons(ds, ctx, png):
    """Photons per vesicle in each marker channel (every vesicle of every field, per sample), with the
    positivity threshold of each sample."""
    import matplotlib.pyplot as plt

    chans = [str(m) for m in ds["image_marker"].values]
    names = [str(s) for s in ds["image_sample"].values]
    per = {n: [] for n in names}
    for (n, _f), it in sorted(ctx.image_items.items()):
        pm = np.asarray(it.get("photons_marker", np.zeros((0, len(chans)))), np.float64).reshape(-1, len(chans))
        if n in per:
            per[n].append(pm)
    per = {n: (np.concatenate(v) if v else np.zeros((0, len(chans)))) for n, v in per.items()}
    allv = np.concatenate(list(per.values())) if per else np.zeros((0, len(chans)))
    if not len(allv):
        return None
    thr = ds["image_threshold"].values if "image_threshold" in ds else None
    fig, axes = plt.subplots(1, len(chans), figsize=(4.2 * len(chans), 3.4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for c, ch in enumerate(chans):
        ax = axes[0, c]
        v = allv[:, c]
        v = v[np.isfinite(v) & (v > 0)]
        if not len(v):
            ax.set_title(f"{ch}: no vesicle with photons > 0", fontsize=9)
            continue
        lo, hi = np.percentile(v, [0.5, 99.9])
        if thr is not None:
            t = thr[:, c][np.isfinite(thr[:, c]) & (thr[:, c] > 0)]
            if len(t):
                lo, hi = min(lo, t.min() / 1.5), max(hi, t.max() * 1.5)
        bins = np.geomspace(max(lo, 1e-3), max(hi, lo * 10), 60)
        for i, n in enumerate(names):
            x = per[n][:, c]
            ax.hist(x[np.isfinite(x) & (x > 0)], bins=bins, histtype="step", color=colours(i % 10), label=n)
            if thr is not None and np.isfinite(thr[i, c]):
                ax.axvline(thr[i, c], color=colours(i % 10), ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{ch}: photons per vesicle")
        ax.set_ylabel("vesicles per bin")
        ax.set_title(f"{ch} (dashed: each sample's threshold)", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def _fig_gallery(ctx, keys, chans):
    """One gallery page: the thumbnails of ``keys`` ((sample, fov)), circles coloured by phenotype; JPEG
    (base64), compact enough for hundreds of fields in one self-contained report."""
    import base64
    import io

    import matplotlib.pyplot as plt

    from ..palette import phenotype_colour
    from ..schema import phenotype_labels

    labels = phenotype_labels(chans)
    ncol = min(4, len(keys))
    nrow = int(math.ceil(len(keys) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.7 * nrow), squeeze=False)
    items = ctx.image_items
    for ax, (n, f) in zip(axes.ravel(), keys):
        it = items[(n, f)]
        ax.imshow(it["thumbnail"], interpolation="nearest")
        st = float(it["thumbnail_step"])
        b = np.asarray(it["bitmask"])
        for code in np.unique(b):
            sel = b == code
            ax.scatter(np.asarray(it["x"])[sel] / st, np.asarray(it["y"])[sel] / st, s=8, facecolors="none",
                       edgecolors=[phenotype_colour(code)], linewidths=0.6, label=labels[int(code)])
        ax.set_title(f"{n} field {f}: {len(b)} vesicles", fontsize=7)
        ax.axis("off")
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [lab for lab in labels if lab in handles]
    fig.legend([handles[lab] for lab in order], order, fontsize=6, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=80, pil_kwargs={"quality": 80})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _gallery(ctx, esc):
    items = ctx.image_items
    keys = sorted(items)
    if not keys:
        return []
    chans = list(ctx.experiment.imaging["channels"])
    pages = [keys[k:k + GALLERY_PAGE] for k in range(0, len(keys), GALLERY_PAGE)]
    out = [f"<h2 id='image-gallery'>Image fields ({len(keys)} fields, {len(pages)} "
           f"page{'s' if len(pages) > 1 else ''})</h2><p class='small'>Thumbnails of every field ("
           + esc(", ".join(chans)) + "), each vesicle circled in its phenotype's colour (the colours of the "
           "phenotype plots and of the napari plugin).</p>"]
    for p, page in enumerate(pages):
        what = f"fields {p * GALLERY_PAGE + 1} to {p * GALLERY_PAGE + len(page)}: " + ", ".join(
            f"{n} {f}" for n, f in page)
        tag = (f"<img class='gallery-page' alt='{esc(what)}' "
               f"src='data:image/jpeg;base64,{_fig_gallery(ctx, page, chans)}'>")
        out.append(f"<p class='small'>{esc(what)}</p>{tag}" if p == 0 else
                   f"<details><summary>{esc(what)}</summary>{tag}</details>")
    return out


def imaging_result_parts(ds, ctx, *, esc, table, png, img) -> list:
    """HTML parts of the imaging counts: sample, phenotype and field tables, photon histograms per marker with
    the thresholds, and the gallery of every field ([] without imaging)."""
    if "image_count" not in ds or "image_density_all_fov_per_um2" not in ds:
        return []
    parts = _tables(ds, esc, table)
    b64 = _fig_photons(ds, ctx, png)
    if b64:
        parts.append("<h2>Imaging: photons per marker</h2>" + img(b64, "photons per marker"))
    return parts + _gallery(ctx, esc)


def detection_parts(ds, *, esc, table) -> list:
    """The detection parameters of the run (``image_detection``), for the provenance section."""
    det = json.loads(ds.attrs.get("image_detection", "") or "{}")
    if not det:
        return []
    rows = [(k, json.dumps(v["value"], default=str) if isinstance(v["value"], (dict, list)) else str(v["value"]),
             v["source"]) for k, v in sorted(det.items())]
    return ["<h3>Spot detection</h3><p class='small'>The parameters evflow.detect_spots ran with in every field "
            "and channel, and where each came from.</p>",
            table(rows, ["parameter", "value", "from"], left=3).replace("<table>", "<table id='image-detection'>", 1)]


def field_layout(x_um, y_um):
    """(x, y, unit) of each field for the chip map: the stage position where every field has one, else a
    near-square grid by field index (row-major)."""
    x, y = np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)
    if len(x) and np.isfinite(x).all() and np.isfinite(y).all():
        return x, y, "stage position (um)"
    n = len(x)
    ncol = max(1, int(math.ceil(math.sqrt(n))))
    idx = np.arange(n)
    return (idx % ncol).astype(np.float64), (idx // ncol).astype(np.float64), "field index (no stage positions)"


def _chip_map(ds, png):
    import matplotlib.pyplot as plt

    samples = [str(s) for s in ds["image_sample"].values]
    chans = [str(c) for c in ds["image_channel"].values]
    flags = sorted(v[len("image_qc_flag_"):] for v in ds.data_vars if v.startswith("image_qc_flag_"))
    ncol = len(chans) + len(flags)
    fig, axes = plt.subplots(len(samples), ncol, figsize=(2.4 * ncol, 2.4 * len(samples)), squeeze=False)
    for i, s in enumerate(samples):
        present = np.isfinite(ds["image_field_area_um2"].values[i]) | (ds["image_n_parent"].values[i] > 0)
        present &= np.isfinite(ds["image_qc_background"].values[i]).any(-1)
        fovs = np.flatnonzero(present)
        x, y, unit = field_layout(ds["image_stage_x_um"].values[i, fovs], ds["image_stage_y_um"].values[i, fovs])
        dens = ds["image_qc_density_per_um2"].values[i]
        if not np.isfinite(dens[fovs]).any():
            dens = ds["image_qc_n_spots"].values[i]
        for c, ch in enumerate(chans):
            ax = axes[i, c]
            sc = ax.scatter(x, y, c=dens[fovs, c], marker="s", s=120, cmap="viridis")
            fig.colorbar(sc, ax=ax, fraction=0.046)
            ax.set_title(f"{s}: {ch} density", fontsize=8)
        for j, fl in enumerate(flags):
            ax = axes[i, len(chans) + j]
            v = ds[f"image_qc_flag_{fl}"].values[i][fovs].any(-1)
            ax.scatter(x, y, c=np.where(v, "#d62728", "#2ca02c"), marker="s", s=120)
            ax.set_title(f"{s}: {fl} ({int(v.sum())} flagged)", fontsize=8)
        for ax in axes[i]:
            ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=6)
            ax.invert_yaxis()
        axes[i, 0].set_ylabel(unit, fontsize=7)
    fig.suptitle("Chip map: fields coloured by spot density (per um^2, else spots) and by each QC flag "
                 "(red: flagged in a channel)", fontsize=9)
    fig.tight_layout()
    return png(fig)


def imaging_qc_parts(ds, *, esc, table, png, img) -> list:
    """HTML parts: the chance-colocalisation table, the chip map and the per-field QC table ([] without imaging)."""
    if "image_count" not in ds or "image_chance_fraction" not in ds:
        return []
    parts = []
    labels = [str(p) for p in ds["image_phenotype"].values]
    multi = [j for j in range(len(labels)) if bin(j).count("1") >= 2]
    corr = "image_fraction_corrected" in ds
    rows = []
    for i, s in enumerate(ds["image_sample"].values):
        for j in multi:
            r = [str(s), labels[j], float(ds["image_fraction_all_fov"].values[i, j]),
                 float(ds["image_chance_fraction"].values[i, j]),
                 f"{float(ds['image_chance_fraction_lo'].values[i, j]):.4f} - "
                 f"{float(ds['image_chance_fraction_hi'].values[i, j]):.4f}"]
            if corr:
                r += [float(ds["image_fraction_corrected"].values[i, j]),
                      f"{float(ds['image_fraction_corrected_lo'].values[i, j]):.4f} - "
                      f"{float(ds['image_fraction_corrected_hi'].values[i, j]):.4f}"]
            rows.append(r)
    if rows:
        hdr = ["sample", "phenotype", "fraction", "chance fraction", "chance 95% interval"]
        hdr += ["corrected fraction", "corrected 95% interval"] if corr else []
        parts.append("<h2>Chance colocalisation</h2><p class='small'>Expected fraction of each multi-marker "
                     "phenotype from vesicles that lie within the matching radius of one another by chance "
                     "(independent channels at the observed densities; "
                     + esc(ds["image_chance_fraction"].attrs.get("method", "")) + ")"
                     + ("; corrected: those coincidences taken out (imaging.chance_correction)" if corr else "")
                     + ".</p>" + table(rows, hdr, left=2))
    if "image_qc_field_ok" in ds:
        b64 = _chip_map(ds, png)
        parts.append("<h2>Fields: chip map and QC</h2>" + img(b64, "chip map")
                     + "<p class='small'>Flags: " + esc(ds["image_qc_field_ok"].attrs.get("limits", "")) + "</p>")
        flags = sorted(v[len("image_qc_flag_"):] for v in ds.data_vars if v.startswith("image_qc_flag_"))
        qrows = []
        for i, s in enumerate(ds["image_sample"].values):
            for f in ds["fov"].values:
                if not np.isfinite(ds["image_qc_background"].values[i, f]).any():
                    continue
                for c, ch in enumerate(ds["image_channel"].values):
                    q = [float(ds[f"image_qc_{m}"].values[i, f, c]) for m in
                         ("density_per_um2", "background", "noise", "threshold", "saturated_fraction", "focus",
                          "spot_width", "crowding", "noise_excess", "registration_residual_px")]
                    fl = ", ".join(n for n in flags if bool(ds[f"image_qc_flag_{n}"].values[i, f, c]))
                    qrows.append([str(s), int(f), str(ch)] + q + [fl])
        parts.append("<details><summary>Per-field QC (" + str(len(qrows)) + " rows)</summary>"
                     + table(qrows, ["sample", "fov", "channel", "spots/um^2", "background", "noise", "threshold",
                                     "saturated", "focus", "spot width", "crowding", "noise excess",
                                     "registration (px)", "flags"],
                                     left=3)
                     + "</details>")
    return parts
