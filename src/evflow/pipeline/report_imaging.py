"""Report sections of the imaging result: chance colocalisation beside each multi-marker fraction, the per-field
QC table and the chip map (fields by stage position, else by index, coloured by density and by each flag).

The HTML helpers are those of :mod:`evflow.pipeline.report`, handed in (this module does not import it)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["imaging_qc_parts", "field_layout"]


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
                          "registration_residual_px")]
                    fl = ", ".join(n for n in flags if bool(ds[f"image_qc_flag_{n}"].values[i, f, c]))
                    qrows.append([str(s), int(f), str(ch)] + q + [fl])
        parts.append("<details><summary>Per-field QC (" + str(len(qrows)) + " rows)</summary>"
                     + table(qrows, ["sample", "fov", "channel", "spots/um^2", "background", "noise", "threshold",
                                     "saturated", "focus", "registration (px)", "flags"], left=3) + "</details>")
    return parts
