"""Imaging variables of the result beyond counts: chance colocalisation beside each multi-marker fraction
(:mod:`evflow.imaging.chance`) and per-field QC over (sample, fov, channel) with flags and stage positions
(:mod:`evflow.imaging.field_qc`)."""

from __future__ import annotations

import numpy as np

__all__ = ["add_image_extras"]


def add_image_extras(ds, ctx, names, n_fov, chans):
    """Add chance colocalisation, per-field QC metrics and flags, and stage positions to the imaging counts
    Dataset (dims sample, fov, phenotype; before the ``image_`` prefix is added).  Returns it."""
    from ..imaging.chance import add_chance_fractions
    from ..imaging.field_qc import QC_LIMITS, QC_METRICS, qc_flags

    items = ctx.image_items
    img_s = ctx.experiment.imaging
    S, F, C = len(names), n_fov, len(chans)
    area_px = np.full((S, F), np.nan)
    metrics = {m: np.full((S, F, C), np.nan) for m in QC_METRICS}
    stage = np.full((S, F, 2), np.nan)
    for i, n in enumerate(names):
        for f in range(F):
            it = items.get((n, f))
            if it is None:
                continue
            h, w = it["shape"]
            area_px[i, f] = h * w
            for m, v in (it.get("qc") or {}).items():
                if m in metrics and len(v) == C:
                    metrics[m][i, f] = np.asarray(v, np.float64)
            if it.get("stage_um") is not None:
                stage[i, f] = np.asarray(it["stage_um"], np.float64)
    add_chance_fractions(ds, area_px, float(img_s.get("match_radius_px", 1.5)),
                         correct=bool(img_s.get("chance_correction", False)))
    dims = ("sample", "fov", "channel")
    for m, (units, what) in QC_METRICS.items():
        ds[f"qc_{m}"] = (dims, metrics[m], {"units": units, "long_name": what})
    present = np.isfinite(area_px)[..., None]
    flags = qc_flags(metrics)
    for name, v in flags.items():
        ds[f"qc_flag_{name}"] = (dims, np.asarray(v) & present, {"limit": float(QC_LIMITS[name])})
    any_flag = np.zeros((S, F), bool)
    for v in flags.values():
        any_flag |= (np.asarray(v) & present).any(-1)
    ds["qc_field_ok"] = (("sample", "fov"), ~any_flag & present[..., 0],
                         {"long_name": "field has no QC flag in any channel (False also where no field)"})
    ds["stage_x_um"] = (("sample", "fov"), stage[..., 0], {"units": "um", "long_name": "stage x (OME metadata)"})
    ds["stage_y_um"] = (("sample", "fov"), stage[..., 1], {"units": "um", "long_name": "stage y (OME metadata)"})
    ds = ds.assign_coords(channel=list(chans))
    ds["qc_field_ok"].attrs["limits"] = ("saturated: saturated_fraction > {saturated:g}; defocused: focus < {defocused:g} x "
                                   "the sample's median; registration: residual > {registration:g} px; background: "
                                   "> {background:g} x median; sparse: density < {sparse:g} x median"
                                   ).format(**QC_LIMITS)
    return ds
