"""Results browser, free of Qt: counts, fractions with intervals and per-field values of a results.zarr."""

from __future__ import annotations

import numpy as np

from evflow.flow.intervals import wilson_interval  # the one Wilson interval of the project (datasets, tables)

__all__ = ["wilson_interval", "sample_table"]


def sample_table(ds, sample, modality="flow"):
    """One sample's phenotypes: ``phenotype``, ``bitmask``, ``count``, ``fraction`` (of the parent, flow; of all
    vesicles of the imaged fields, imaging), its 95 % Wilson interval ``fraction_lo``/``fraction_hi``, and for
    imaging one ``fov <f>`` column of counts per imaged field."""
    import pandas as pd

    if modality == "imaging":
        s = ds.sel(image_sample=sample)
        counts = np.asarray(s["image_count_all_fov"].values, np.int64)
        n = counts.sum()
        labels = [str(p) for p in ds["image_phenotype"].values]
        bits = np.asarray(ds["image_bitmask"].values, np.int64)
        out = pd.DataFrame({"phenotype": labels, "bitmask": bits, "count": counts})
        ok = np.isfinite(np.asarray(s["image_field_area_um2"].values, np.float64))
        for f, use in zip(ds["fov"].values, ok):
            if use:
                out[f"fov {int(f)}"] = np.asarray(s["image_count"].sel(fov=f).values, np.int64)
    else:
        s = ds.sel(sample=sample)
        counts = np.asarray(s["count"].values, np.int64)
        n = int(s["n_parent"].values)
        labels = [str(p) for p in ds["phenotype"].values]
        bits = np.asarray(ds["bitmask"].values, np.int64) if "bitmask" in ds.coords else np.arange(len(labels))
        out = pd.DataFrame({"phenotype": labels, "bitmask": bits, "count": counts})
    with np.errstate(invalid="ignore", divide="ignore"):
        out.insert(3, "fraction", counts / n if n > 0 else np.full(len(counts), np.nan))
    lo, hi = wilson_interval(counts, np.full(len(counts), n))
    out.insert(4, "fraction_lo", lo)
    out.insert(5, "fraction_hi", hi)
    return out
