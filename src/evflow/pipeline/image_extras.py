"""Imaging variables of the result beyond counts: intervals on the counts, fractions and densities (per field
and pooled over a sample's fields, with a flag where the fields differ more than counting explains), chance
colocalisation beside each multi-marker fraction (:mod:`evflow.imaging.chance`) and per-field QC over
(sample, fov, channel) with flags and stage positions (:mod:`evflow.imaging.field_qc`)."""

from __future__ import annotations

import numpy as np

__all__ = ["add_image_extras", "add_pooled_intervals", "FIELDS_DIFFER_P"]

#: a sample's fields "differ" in a phenotype fraction when the chi-square test of counting noise gives p below this
FIELDS_DIFFER_P = 1e-3


def add_pooled_intervals(ds, conf: float = 0.95):
    """Per field: ``count_lo/_hi`` (Poisson) and ``fraction_of_parent_lo/_hi`` (Wilson).  Pooled over a sample's
    fields: ``fraction_all_fov_lo/_hi`` (Wilson), ``area_all_fov_um2``, ``density_all_fov_per_um2`` (vesicles
    per um^2 with its Poisson interval), and the between-field dispersion of each fraction
    (``fraction_dispersion``: chi-square / df, about 1 when fields differ by counting alone;
    ``fraction_dispersion_p``; ``fraction_fields_differ`` where p < :data:`FIELDS_DIFFER_P`, which says the
    counting interval understates the spread between fields by about ``sqrt(fraction_dispersion)``)."""
    from ..flow.intervals import add_count_intervals, binomial_dispersion, poisson_interval, wilson_interval

    add_count_intervals(ds, conf)
    note = f"{conf:.0%} interval"
    total = ds["count_all_fov"].values
    n_all = total.sum(-1)
    lo, hi = wilson_interval(total, n_all[:, None], conf)
    sp = ("sample", "phenotype")
    ds["fraction_all_fov_lo"] = (sp, lo, {"units": "1", "long_name": f"fraction over all fields, lower {note} (Wilson)"})
    ds["fraction_all_fov_hi"] = (sp, hi, {"units": "1", "long_name": f"fraction over all fields, upper {note} (Wilson)"})
    area = ds["field_area_um2"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        a_all = np.where(np.isfinite(area).any(-1), np.nansum(area, -1), np.nan)
        clo, chi = poisson_interval(n_all, conf)
        for name, v, what in (("density_all_fov_per_um2", n_all / a_all, "vesicles per um^2 over all fields"),
                              ("density_all_fov_per_um2_lo", clo / a_all, f"density, lower {note} (Poisson)"),
                              ("density_all_fov_per_um2_hi", chi / a_all, f"density, upper {note} (Poisson)")):
            ds[name] = ("sample", v, {"units": "1/um2", "long_name": what})
    ds["area_all_fov_um2"] = ("sample", a_all, {"units": "um2", "long_name": "imaged area over all fields"})
    phi, pval, _df = binomial_dispersion(ds["count"].values, ds["n_parent"].values[..., None], axis=1)
    ds["fraction_dispersion"] = (sp, phi, {"units": "1", "long_name": "between-field dispersion of the fraction "
                                           "(Pearson chi-square / df; about 1 from counting alone)"})
    ds["fraction_dispersion_p"] = (sp, pval, {"units": "1", "long_name": "chi-square p value of the fields' "
                                              "fractions under counting noise alone", "df": "fields with vesicles - 1"})
    ds["fraction_fields_differ"] = (sp, np.nan_to_num(pval, nan=1.0) < FIELDS_DIFFER_P,
                                    {"long_name": "fields differ in this fraction more than counting explains",
                                     "limit": f"p < {FIELDS_DIFFER_P:g}"})
    return ds


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
    add_pooled_intervals(ds)
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
                                   "> {background:g} x median; sparse: density < {sparse:g} x median; wide_spots: median fitted "
                                   "spot sigma > {wide_spots:g} x psf_sigma_px (out of focus, or the PSF stated too narrow); crowded: "
                                   "> {crowded:g} of vesicles expected within 2 PSF sigmas of another (count a lower bound); noisy: "
                                   "detection noise > {noisy:g} x photon statistics (crowded beyond what crowding sees, "
                                   "a structured background, or a wrong camera model; with imaging.camera_gain stated)"
                                   ).format(**QC_LIMITS)
    return ds
