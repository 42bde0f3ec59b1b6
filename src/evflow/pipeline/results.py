"""Assemble the pipeline's items into one xarray.Dataset, QC it, and write it out."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .flow_qc import add_to_dataset as add_flow_qc, max_event_rate, sample_flags
from .inputs import flow_offsets

__all__ = ["assemble", "write_outputs", "tidy_tables", "quality_checks"]


def _flow_dataset(ctx):
    from ..flow.calibration import concentration_per_ml
    from ..schema import counts_dataset

    exp = ctx.experiment
    markers = list(ctx.markers.values())
    items = ctx.flow_items
    names = [s.name for s in exp.samples if s.name in items]
    if not names or not markers:
        return None
    k = len(markers)
    counts = np.stack([items[n]["counts"] for n in names])
    ds = counts_dataset(
        counts, markers, names,
        n_total=np.array([items[n]["n_total"] for n in names]),
        thresholds=np.stack([np.asarray(items[n]["thresholds"], float).reshape(k) for n in names]),
        marker_stats={
            "n_positive": np.stack([items[n]["n_positive"] for n in names]),
            "median_positive": np.stack([items[n]["median_positive"] for n in names]),
            "mean_positive": np.stack([items[n]["mean_positive"] for n in names]),
        },
    )
    by = {s.name: s for s in exp.samples}
    ds = ds.assign_coords(
        role=("sample", [by[n].role for n in names]),
        dilution=("sample", [float(by[n].dilution) for n in names]),
        series=("sample", [by[n].series or "" for n in names]),
        marker_channel=("marker", list(ctx.markers)),
    )
    vol = np.array([items[n]["volume_ul"] for n in names], float)
    ds["volume_ul"] = ("sample", vol, {"units": "uL", "long_name": "analysed volume"})
    conc = np.full(counts.shape, np.nan)
    for i, n in enumerate(names):
        if np.isfinite(vol[i]) and vol[i] > 0:
            conc[i] = concentration_per_ml(counts[i], vol[i], by[n].dilution)
    ds["concentration_per_ml"] = (("sample", "phenotype"), conc,
                                  {"units": "1/mL", "long_name": "particles per mL of the undiluted sample"})
    from ..flow.intervals import add_buffer_subtracted, add_count_intervals

    add_count_intervals(ds)
    per_event = np.array([concentration_per_ml(1, vol[i], by[n].dilution) if np.isfinite(vol[i]) and vol[i] > 0
                          else np.nan for i, n in enumerate(names)], float)[:, None]
    for side in ("lo", "hi"):
        ds[f"concentration_per_ml_{side}"] = (("sample", "phenotype"), per_event * ds[f"count_{side}"].values,
                                              {"units": "1/mL", "long_name": f"concentration, {side} 95% limit "
                                                                             "(Poisson on the count)"})
    add_buffer_subtracted(ds)
    ds["total_concentration_per_ml"] = ("sample", conc.sum(axis=1),
                                        {"units": "1/mL", "long_name": "parent-gate particles per mL (undiluted)"})
    fl = ctx.fluor
    mesf = np.full((len(names), k), np.nan)
    if fl is not None:
        ch = exp.flow["calibration"]["fluorescence"]["channel"]
        units = exp.flow["calibration"]["fluorescence"].get("units", "MESF")
        chans = list(ctx.markers)
        if ch in chans:
            j = chans.index(ch)
            med = ds["median_positive"].values[:, j]
            mesf[:, j] = np.sign(med) * np.exp(fl["b"]) * np.abs(med) ** fl["m"]
        ds["median_positive_calibrated"] = (("sample", "marker"), mesf,
                                            {"units": units, "long_name": "median of positive events, calibrated"})
    scales = [str(items[n].get("scale", "")) for n in names]
    ds = ds.assign_coords(scale=("sample", scales))
    ds["scale"].attrs["long_name"] = "scale policy of the event values (raw, linear, linear-gain)"
    ds.attrs["flow_scale"] = str(items[names[0]].get("scale_setting", "auto"))
    ds.attrs["flow_scale_policies"] = ", ".join(sorted(set(scales)))
    cal_s = exp.flow.get("calibration", {})  # files read where the experiment said their DATA lies (not "auto")
    offs = {**{f"{k} beads": flow_offsets(cal_s[k], exp.flow) for k in ("fluorescence", "size") if k in cal_s},
            **{n: items[n]["data_offsets"] for n in names if "data_offsets" in items[n]}}
    if any(v != "auto" for v in offs.values()):
        ds.attrs["flow_data_offsets"] = ", ".join(f"{k}: {v}" for k, v in offs.items() if v != "auto")
    for var in ("median_positive", "threshold", "mean_positive"):
        if var in ds:
            ds[var].attrs["units"] = f"channel units on the scale policy ({', '.join(sorted(set(scales)))})"
    add_flow_qc(ds, ctx, names)  # time QC, event rate, pulse width, detection limits (pipeline.flow_qc)
    return ds


def _image_dataset(ctx):
    from ..schema import counts_dataset
    from .image_extras import add_image_extras

    exp = ctx.experiment
    items = ctx.image_items
    if not items:
        return None
    chans = list(exp.imaging["channels"])
    names = [s.name for s in exp.samples if any((s.name, f) in items for f in range(len(s.images)))]
    n_fov = max(f for (_n, f) in items) + 1
    P = 1 << len(chans)
    counts = np.zeros((len(names), n_fov, P), np.int64)
    for i, n in enumerate(names):
        for f in range(n_fov):
            if (n, f) in items:
                counts[i, f] = items[(n, f)]["counts"]
    thr = ctx.image_thresholds
    thresholds = None if thr is None else np.tile(np.array([float(thr[m]) for m in chans]), (len(names), 1))
    ds = counts_dataset(counts, chans, names, fovs=list(range(n_fov)), thresholds=thresholds)
    if "threshold" in ds:
        ds["threshold"].attrs.update(units="photons", long_name="positivity threshold (photons per vesicle)")
    total = counts.sum(axis=1)
    ds["count_all_fov"] = (("sample", "phenotype"), total)
    with np.errstate(invalid="ignore", divide="ignore"):
        ds["fraction_all_fov"] = (("sample", "phenotype"),
                                  np.where(total.sum(1, keepdims=True) > 0, total / np.maximum(total.sum(1, keepdims=True), 1), np.nan))
    px = float(exp.imaging.get("pixel_size_nm", np.nan))
    area = np.full((len(names), n_fov), np.nan)
    for i, n in enumerate(names):
        for f in range(n_fov):
            if (n, f) in items:
                h, w = items[(n, f)]["shape"]
                area[i, f] = h * w * (px * 1e-3) ** 2
    ds["field_area_um2"] = (("sample", "fov"), area, {"units": "um2"})
    with np.errstate(invalid="ignore", divide="ignore"):
        ds["density_per_um2"] = (("sample", "fov"), ds["n_parent"].values / area, {"units": "1/um2"})
    ds = add_image_extras(ds, ctx, names, n_fov, chans)  # chance colocalisation, per-field QC (fov x channel)
    ren = {v: f"image_{v}" for v in ds.data_vars}
    ren.update({"sample": "image_sample", "phenotype": "image_phenotype", "marker": "image_marker",
                "bitmask": "image_bitmask", "channel": "image_channel"})
    ren.update({f"{m}_positive": f"image_{m}_positive" for m in chans})
    return ds.rename(ren)


def _linfit_r2(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return np.nan, np.nan, np.nan
    slope, icpt = np.polyfit(x, y, 1)
    pred = slope * x + icpt
    ss = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum((y - pred) ** 2) / ss) if ss > 0 else 1.0, float(slope), float(icpt)


def quality_checks(ds, exp) -> dict:
    """Experiment-level QC: buffer background, detergent lysis, dilution linearity, calibration fits."""
    qc = {}
    rules = exp.settings.get("qc", {})
    if ds is None or "sample" not in ds.dims:
        return qc
    role = ds["role"].values
    n = ds["n_parent"].values.astype(float)
    vol = ds["volume_ul"].values
    rate = n / vol  # events per uL as measured
    samples = role == "sample"
    ref_rate = float(np.nanmedian(rate[samples])) if samples.any() else np.nan
    if (role == "buffer").any():
        frac = float(np.nanmax(rate[role == "buffer"]) / ref_rate) if ref_rate > 0 else np.nan
        lim = float(rules.get("max_buffer_fraction", 0.05))
        qc["buffer_fraction"] = {"value": frac, "limit": lim, "pass": bool(frac <= lim),
                                 "what": "buffer events/uL over median sample events/uL"}
    if (role == "detergent").any():
        names = list(ds["sample"].values)
        series = ds["series"].values
        vals = []
        for i in np.flatnonzero(role == "detergent"):
            ref = [j for j in np.flatnonzero(samples) if series[i] and (series[j] == series[i] or names[j] == series[i])]
            base = float(np.nanmean(rate[ref])) if ref else ref_rate
            vals.append(1.0 - rate[i] / base if base > 0 else np.nan)
        red = float(np.nanmin(vals))
        lim = float(rules.get("min_detergent_reduction", 0.8))
        qc["detergent_reduction"] = {"value": red, "limit": lim, "pass": bool(red >= lim),
                                     "what": "1 - detergent-treated events/uL over untreated"}
    dil = role == "dilution"
    if dil.any():
        f = ds["dilution"].values[dil]
        r2, slope, icpt = _linfit_r2(1.0 / f, rate[dil])
        conc = ds["total_concentration_per_ml"].values[dil]
        cv = float(np.nanstd(conc) / np.nanmean(conc)) if np.nanmean(conc) > 0 else np.nan
        lim = float(rules.get("min_dilution_r2", 0.95))
        qc["dilution_linearity"] = {"value": r2, "limit": lim, "pass": bool(r2 >= lim), "slope": slope,
                                    "intercept": icpt, "cv_corrected_concentration": cv,
                                    "what": "R^2 of events/uL vs 1/dilution"}
    return qc


def assemble(ctx) -> xr.Dataset:
    """Merge flow and imaging results, QC flags and provenance into one Dataset."""
    from .. import __version__

    exp = ctx.experiment
    fds = _flow_dataset(ctx)
    ids = _image_dataset(ctx)
    from .copies import copies_dataset

    parts = [d for d in (fds, ids, copies_dataset(ctx)) if d is not None]
    ds = xr.merge(parts, combine_attrs="drop_conflicts") if parts else xr.Dataset()  # variables keep units
    qc = quality_checks(fds, exp)
    if fds is not None:
        flags = []
        for i in range(len(fds["sample"])):
            f = []
            if fds["n_parent"].values[i] < 100:
                f.append("fewer than 100 events in the parent gate")
            if not np.isfinite(fds["volume_ul"].values[i]):
                f.append("no analysed volume")
            f.extend(sample_flags(ctx.flow_items[str(fds["sample"].values[i])], max_event_rate(exp)))
            flags.append("; ".join(f))
        ds["qc_flags"] = ("sample", np.asarray(flags, dtype=object).astype(str))
    inputs = {}
    for key, it in list(ctx.flow_items.items()):
        inputs[str(next(s.flow for s in exp.samples if s.name == key))] = it.get("sha256", "")
    for (n, f), it in ctx.image_items.items():
        inputs[str(next(s.images[f] for s in exp.samples if s.name == n))] = it.get("sha256", "")
    base = exp.base
    inputs = {(str(Path(p).relative_to(base)) if Path(p).is_relative_to(base) else p): h
              for p, h in sorted(inputs.items())}
    cal = {}
    if ctx.fluor is not None:
        cal["fluorescence"] = ctx.fluor["summary"]
    if ctx.size_cal is not None:
        sc = ctx.size_cal
        cal["size"] = {"channel": sc.channel, "gain": sc.gain, "r2": sc.r2,
                       "bead_diameters_nm": sc.bead_diameters_nm.tolist(), "bead_scatter": sc.bead_scatter.tolist(),
                       "unique_range_nm": list(sc.unique_range_nm)}
    reg = ctx.calibration.get("registration")
    if reg is not None:
        cal["registration"] = {"reference": reg["reference"], "residual_rms_px": reg["residual_rms_px"],
                               "n_matched": reg["n_matched"]}
    ds.attrs.update({
        "title": f"evflow results: {exp.name}",
        "evflow_version": __version__,
        "evflow_schema": "1",
        "backend": ctx.backend,
        "config_hash": exp.config_hash(),
        "experiment_file": str(exp.path) if exp.path else "",
        "input_files": json.dumps(inputs, sort_keys=True),
        "gates": "; ".join(ctx.gate_desc),
        "threshold_rule": ctx.threshold_desc,
        "image_threshold_rule": ctx.image_threshold_desc,
        "calibration": json.dumps(cal, sort_keys=True, default=float),
        "qc": json.dumps(qc, sort_keys=True, default=float),
        "qc_pass": int(all(v["pass"] for v in qc.values())),
        "failed": json.dumps(ctx.failures, sort_keys=True),
    })
    fj = {k: it["flowjo_check"] for k, it in ctx.flow_items.items() if it.get("flowjo_check")}
    if fj:  # each gate's count beside the count FlowJo stored, for the run's files that are workspace samples
        ds.attrs["flowjo_counts_check"] = json.dumps(fj, sort_keys=True, default=int)
    if ctx.image_items:
        from .imaging import detection_provenance

        ds.attrs["image_detection"] = json.dumps(detection_provenance(exp.imaging, ctx.backend), sort_keys=True,
                                                 default=str)
    return ds


def _interval_columns(ds, i, j, count=None, n_parent=None) -> dict:
    """``count_lo/_hi`` (Poisson), ``fraction_of_parent_lo/_hi`` (Wilson), ``concentration_per_ml_lo/_hi``."""
    from ..flow.intervals import poisson_interval, wilson_interval

    if ds is not None:
        count, n_parent = int(ds["count"].values[i, j]), int(ds["n_parent"].values[i])
    clo, chi = poisson_interval(count)
    flo, fhi = wilson_interval(count, n_parent)
    out = {"count_lo": float(clo), "count_hi": float(chi), "fraction_of_parent_lo": float(flo),
           "fraction_of_parent_hi": float(fhi)}
    for key in ("concentration_per_ml_lo", "concentration_per_ml_hi", "buffer_subtracted_concentration_per_ml",
                "buffer_subtracted_concentration_per_ml_lo", "buffer_subtracted_concentration_per_ml_hi"):
        out[key] = float(ds[key].values[i, j]) if ds is not None and key in ds else np.nan
    return out


def tidy_tables(ds) -> dict:
    """Tidy DataFrames: ``counts`` (one row per sample x phenotype [x fov]) and ``markers``."""
    rows = []
    if "count" in ds:
        for i, s in enumerate(ds["sample"].values):
            for j, p in enumerate(ds["phenotype"].values):
                rows.append({
                    "modality": "flow", "sample": str(s), "role": str(ds["role"].values[i]), "fov": -1,
                    "phenotype": str(p), "bitmask": int(ds["bitmask"].values[j]),
                    "count": int(ds["count"].values[i, j]),
                    "fraction_of_parent": float(ds["fraction_of_parent"].values[i, j]),
                    "n_parent": int(ds["n_parent"].values[i]),
                    "concentration_per_ml": float(ds["concentration_per_ml"].values[i, j]),
                    "dilution": float(ds["dilution"].values[i]),
                    **_interval_columns(ds, i, j),
                })
    if "image_count" in ds:
        for i, s in enumerate(ds["image_sample"].values):
            for f in ds["fov"].values:
                if not ds["image_n_parent"].values[i, f] and not np.isfinite(ds["image_field_area_um2"].values[i, f]):
                    continue
                for j, p in enumerate(ds["image_phenotype"].values):
                    rows.append({
                        "modality": "imaging", "sample": str(s), "role": "", "fov": int(f), "phenotype": str(p),
                        "bitmask": int(ds["image_bitmask"].values[j]),
                        "count": int(ds["image_count"].values[i, f, j]),
                        "fraction_of_parent": float(ds["image_fraction_of_parent"].values[i, f, j]),
                        "n_parent": int(ds["image_n_parent"].values[i, f]),
                        "concentration_per_ml": np.nan, "dilution": np.nan,
                        **_interval_columns(None, 0, 0, int(ds["image_count"].values[i, f, j]),
                                            int(ds["image_n_parent"].values[i, f])),
                    })
    mrows = []
    if "threshold" in ds:
        for i, s in enumerate(ds["sample"].values):
            for k, m in enumerate(ds["marker"].values):
                r = {"sample": str(s), "marker": str(m), "channel": str(ds["marker_channel"].values[k]),
                     "threshold": float(ds["threshold"].values[i, k]),
                     "n_positive": float(ds["n_positive"].values[i, k]),
                     "median_positive": float(ds["median_positive"].values[i, k])}
                if "median_positive_calibrated" in ds:
                    r["median_positive_calibrated"] = float(ds["median_positive_calibrated"].values[i, k])
                mrows.append(r)
    return {"counts": pd.DataFrame(rows), "markers": pd.DataFrame(mrows)}


def write_outputs(ds, out, spots=None) -> dict:
    """Write ``results.zarr``, the tidy tables ``counts.csv/.parquet`` and ``markers.csv/.parquet`` and, with
    imaging, the per-vesicle table ``spots.csv/.parquet`` (each file atomically)."""
    from .store import atomic_write_bytes

    out = Path(out)
    clean = ds.copy()
    clean.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("_")}
    for v in list(clean.variables):
        if clean[v].dtype == object:
            clean[v] = clean[v].astype(str)

    def write_zarr(tmp):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean.to_zarr(tmp / "results.zarr", mode="w", consolidated=True)

    # zarr store is a folder: build it in a temporary folder, then swap it in
    tmpdir = Path(tempfile.mkdtemp(prefix=".results.", dir=out))
    try:
        write_zarr(tmpdir)
        target = out / "results.zarr"
        old = out / ".results.zarr.old"
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            target.rename(old)
        (tmpdir / "results.zarr").rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    tables = tidy_tables(clean)
    if spots is not None:
        tables["spots"] = spots
    paths = {"zarr": out / "results.zarr"}
    for name, df in tables.items():
        atomic_write_bytes(out / f"{name}.csv", df.to_csv(index=False).encode())
        import io

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(out / f"{name}.parquet", buf.getvalue())
        paths[name] = out / f"{name}.csv"
    return paths
