"""Copies per vesicle in the pipeline: bleaching movies -> unit brightness -> fluorophores and antibodies.

Imaging: one task per bleaching movie (:func:`bleaching_item`: traces of the
vesicles of the movie, steps counted); the single-step heights of every movie
of a marker are pooled into its unit brightness (photons per fluorophore per
frame, bootstrap interval); each vesicle's photons in the still images are
divided by the unit times the exposure ratio (fluorophores) and by the
dye-to-antibody ratio (antibodies, the marker's *copies*).

Flow: the parent-gate events of the MESF-calibrated channel (the first
:data:`~evflow.pipeline.flow.DISPLAY_EVENTS` events of each sample) in MESF,
divided by the dye's MESF equivalence (fluorophores) and the dye-to-antibody
ratio (copies).

Both modalities end in the same variables of the results dataset, over
``modality`` x ``copies_sample`` x ``copies_phenotype`` x ``copies_marker``:
``copies_median`` (antibodies per vesicle) with ``copies_lo``/``copies_hi``
(95 % order-statistic interval of the median, widened by the unit's interval
for imaging), ``copies_n``, and ``copies_hist`` (vesicles positive for the
marker, over ``copies_bin``, log-spaced edges in ``copies_bin_lo/hi``).
"""

from __future__ import annotations

import types

import numpy as np

from ..errors import CalibrationError, ImageError
from .config_bleaching import bleaching_acquisitions, flow_copies_settings

__all__ = ["bleaching_item", "bleaching_stage", "unit_brightness_per_marker", "flow_copies_spec", "flow_event_copies",
           "add_copies_columns", "copies_dataset", "fig_copies", "COPIES_EDGES"]

#: edges of the copies histograms (antibodies per vesicle), the same for every sample and modality
COPIES_EDGES = np.geomspace(0.5, 5e4, 61)


def bleaching_item(path, marker, frames=None, *, img_s) -> dict:
    """Stored item of one bleaching movie: traces of its vesicles, steps counted, single-step heights (photons)."""
    from ..imaging.bleaching import count_bleaching_steps
    from ..imaging.traces import extract_traces
    from ..io.images import read_images
    from .imaging import camera_of
    from .store import file_sha256

    chans = list(img_s["channels"])
    im = read_images([str(path)], t=True, camera=camera_of(img_s), pixel_size_nm=img_s.get("pixel_size_nm"))
    if "t" not in im.dims or im.sizes["fov"] != 1:
        raise ImageError(f"{path}: a bleaching movie must be one time-lapse field (frames, [channel,] y, x), "
                         f"got dims {dict(im.sizes)}")
    n_c = im.sizes["channel"]
    if n_c == len(chans):
        c = chans.index(marker)
    elif n_c == 1:
        c = 0
    else:
        raise ImageError(f"{path}: has {n_c} channels; a bleaching movie has one channel or the {len(chans)} "
                         f"of 'imaging.channels' ({chans})")
    movie = im.isel(fov=0, channel=c).data
    if frames is not None:
        if frames > movie.shape[0]:
            raise ImageError(f"{path}: 'frames' is {frames} but the movie has {movie.shape[0]} frames")
        movie = movie[:frames]
    if hasattr(movie, "rechunk"):  # one read per page: read 100 frames per computation, not one
        movie = movie.rechunk({0: 100, 1: -1, 2: -1})
    tr = extract_traces(movie, psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3)))
    st = count_bleaching_steps(tr.traces) if tr.traces.shape[1] else None
    heights, trace_of = [], []
    if st is not None:
        for i, (n, h, m) in enumerate(zip(st.n_steps, st.heights, st.multiplicity)):
            if n > 0:
                sel = np.asarray(h, np.float64)[np.asarray(m) == 1]
                heights.append(sel)
                trace_of.append(np.full(sel.size, i, np.int64))
    return {"n_steps": np.asarray(st.n_steps if st is not None else [], np.int64),
            "flag": [str(f) for f in (st.flag if st is not None else [])],
            "single_heights": np.concatenate(heights) if heights else np.zeros(0),
            "single_trace": np.concatenate(trace_of) if trace_of else np.zeros(0, np.int64),
            "yx": np.asarray(tr.yx, np.float64), "n_frames": int(movie.shape[0]), "marker": marker,
            "sha256": file_sha256(path)}


def bleaching_stage(runner, exp, img_s):
    """The stage of every bleaching movie of the experiment (key: (sample, marker, file index))."""
    from .store import file_fingerprint

    stage = runner.stage("bleaching", bleaching_item, name=lambda k: f"{k[0]}-{k[1]}-movie{k[2]}",
                         what=lambda k: f"bleaching {k[0]} {k[1]} movie {k[2]}", img_s=img_s)
    for a in bleaching_acquisitions(exp):
        for j, p in enumerate(a.files):
            stage.add((a.sample, a.marker, j), ["bleaching", file_fingerprint(p), img_s, a.marker, a.frames],
                      p, a.marker, a.frames)
    return stage


def unit_brightness_per_marker(exp, items, failures=None) -> dict:
    """``{marker: {"unit": UnitBrightness, "exposure_ratio", "dye_per_antibody", "n_movies"}}`` from the items
    of :func:`bleaching_stage` (single steps of every movie of a marker pooled)."""
    from ..imaging.copies import unit_brightness

    acq = {a.marker: a for a in bleaching_acquisitions(exp)}
    failures = {} if failures is None else failures
    out = {}
    for m, a in acq.items():
        its = [it for k, it in sorted(items.items()) if k[1] == m]
        if not its:
            continue
        h = [np.asarray(it["single_heights"], np.float64) for it in its]
        tr = [np.asarray(it["single_trace"]) + 1_000_000 * j for j, it in enumerate(its)]
        heights = np.concatenate(h)
        owner = np.concatenate(tr)
        groups = [heights[owner == t] for t in np.unique(owner)]
        steps = types.SimpleNamespace(n_steps=[len(g) for g in groups], heights=groups,
                                      multiplicity=[np.ones(len(g), np.int64) for g in groups])
        try:
            unit = unit_brightness(steps, channel=m)
        except CalibrationError as exc:  # no single step in any movie of the marker: no copies for it
            failures[f"unit brightness {m}"] = str(exc)
            continue
        out[m] = {"unit": unit, "exposure_ratio": a.exposure_ratio,
                  "dye_per_antibody": a.dye_per_antibody, "n_movies": len(its),
                  "n_traces": int(sum(len(it["n_steps"]) for it in its)),
                  "n_counted": int(sum((np.asarray(it["n_steps"]) >= 0).sum() for it in its))}
    return out


def flow_copies_spec(exp, fluor) -> dict | None:
    """What :func:`flow_event_copies` needs (calibrated channel, fit, equivalence, labelling), or None."""
    eq = flow_copies_settings(exp)
    if not eq or fluor is None:
        return None
    ch = exp.flow["calibration"]["fluorescence"]["channel"]
    m = exp.markers[ch]
    return {"channel": ch, "marker": m, "m": float(fluor["m"]), "b": float(fluor["b"]),
            "mesf_per_fluorophore": eq[m][0], "dye_per_antibody": eq[m][1]}


def flow_event_copies(fcs, n_events, *, strategy, parent, markers, thresholds, spec) -> dict:
    """Per parent-gate event of the first ``n_events``: antibodies (copies) of the calibrated marker and bitmask."""
    ev = np.asarray(fcs.events[:n_events], np.float64)
    chans = list(fcs.channels)
    keep = (np.asarray(strategy.mask(ev, chans, parent), bool) if parent is not None
            else np.ones(len(ev), bool))
    ev = ev[keep]
    bits = np.zeros(len(ev), np.int64)
    for j, (ch, t) in enumerate(zip(markers, thresholds)):
        bits |= (ev[:, fcs.channel_index(ch)] > float(t)).astype(np.int64) << j
    x = ev[:, fcs.channel_index(spec["channel"])]
    mesf = np.sign(x) * np.exp(spec["b"]) * np.abs(x) ** spec["m"]
    return {"copies_values": mesf / spec["mesf_per_fluorophore"] / spec["dye_per_antibody"],
            "copies_bitmask": bits, "copies_marker": spec["marker"]}


def add_copies_columns(spots, units):
    """The per-vesicle table with ``fluorophores_<m>`` and ``antibodies_<m>`` for the markers with a unit."""
    from ..imaging.copies import copies_per_vesicle

    if spots is None or not units:
        return spots
    ms = list(units)
    return copies_per_vesicle(spots, {m: units[m]["unit"] for m in ms},
                              {m: units[m]["dye_per_antibody"] for m in ms}, markers=ms,
                              exposure_ratio={m: units[m]["exposure_ratio"] for m in ms})


def _median_interval(v):
    """Median and its distribution-free 95 % interval (binomial order statistics)."""
    v = np.sort(v[np.isfinite(v)])
    n = v.size
    if n == 0:
        return np.nan, np.nan, np.nan
    half = 1.959964 * np.sqrt(n) / 2
    lo, hi = int(max(np.floor(n / 2 - half), 0)), int(min(np.ceil(n / 2 + half), n - 1))
    return float(np.median(v)), float(v[lo]), float(v[hi])


def _per_vesicle(ctx):
    """``{(modality, sample): (markers, values (n, k) copies, bitmask (n,), phenotype labels, interval factor)}``."""
    from ..schema import phenotype_labels

    out = {}
    units = getattr(ctx, "copies", None) or {}
    if units and ctx.image_items:
        chans = list(ctx.experiment.imaging["channels"])
        ms = [m for m in chans if m in units]
        labels = phenotype_labels(chans)
        fac = {m: (units[m]["unit"].photons / units[m]["unit"].ci_high, units[m]["unit"].photons / units[m]["unit"].ci_low)
               for m in ms}
        scale = np.array([units[m]["unit"].photons * units[m]["exposure_ratio"] * units[m]["dye_per_antibody"]
                          for m in ms])
        for s in ctx.experiment.samples:
            its = [ctx.image_items[(s.name, f)] for f in range(len(s.images)) if (s.name, f) in ctx.image_items]
            if not its:
                continue
            pm = np.vstack([np.asarray(it["photons_marker"], np.float64).reshape(-1, len(chans)) for it in its])
            bm = np.concatenate([np.asarray(it["bitmask"], np.int64) for it in its])
            cols = [chans.index(m) for m in ms]
            out[("imaging", s.name)] = (ms, pm[:, cols] / scale, bm, labels, fac, [1 << c for c in cols])
    for name, it in (ctx.flow_items or {}).items():
        if "copies_values" in it:
            fm = list(ctx.markers.values())
            m = it["copies_marker"]
            out[("flow", name)] = ([m], np.asarray(it["copies_values"], np.float64)[:, None],
                                   np.asarray(it["copies_bitmask"], np.int64), phenotype_labels(fm), {m: (1.0, 1.0)},
                                   [1 << fm.index(m)])
    return out


def copies_dataset(ctx):
    """The ``copies_*`` variables (see module docstring), or None when nothing was converted."""
    import xarray as xr

    data = _per_vesicle(ctx)
    if not data:
        return None
    mods = ["flow", "imaging"]
    samples = [s.name for s in ctx.experiment.samples if any((md, s.name) in data for md in mods)]
    markers = list(dict.fromkeys(m for v in data.values() for m in v[0]))
    phen = list(dict.fromkeys(lab for v in data.values() for lab in v[3]))
    shape = (len(mods), len(samples), len(phen), len(markers))
    med, lo, hi, n = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, np.int64)
    nb = len(COPIES_EDGES) - 1
    hist = np.zeros((len(mods), len(samples), len(markers), nb), np.int64)
    for (md, s), (ms, vals, bm, labels, fac, bit) in data.items():
        a, i = mods.index(md), samples.index(s)
        for c, m in enumerate(ms):
            k = markers.index(m)
            for code in np.unique(bm):
                v = vals[bm == code, c]
                p = phen.index(labels[int(code)])
                med[a, i, p, k], lo_, hi_ = _median_interval(v)
                lo[a, i, p, k], hi[a, i, p, k] = lo_ * fac[m][0], hi_ * fac[m][1]
                n[a, i, p, k] = int(np.isfinite(v).sum())
            pos = vals[(bm & bit[c]) > 0, c]
            pos = np.clip(pos[np.isfinite(pos)], COPIES_EDGES[0], COPIES_EDGES[-1] * (1 - 1e-12))
            hist[a, i, k] = np.histogram(pos, COPIES_EDGES)[0]
    dims = ("modality", "copies_sample", "copies_phenotype", "copies_marker")
    what = "antibodies (marker copies) per vesicle: fluorophores / dye_per_antibody"
    ds = xr.Dataset(
        {"copies_median": (dims, med, {"units": "antibodies per vesicle", "long_name": f"median {what}"}),
         "copies_lo": (dims, lo, {"units": "antibodies per vesicle", "long_name": "copies_median, 95% low"}),
         "copies_hi": (dims, hi, {"units": "antibodies per vesicle", "long_name": "copies_median, 95% high"}),
         "copies_n": (dims, n, {"long_name": "vesicles (events) in the median"}),
         "copies_hist": (("modality", "copies_sample", "copies_marker", "copies_bin"), hist,
                         {"long_name": f"{what}, vesicles positive for the marker"})},
        coords={"modality": mods, "copies_sample": samples, "copies_phenotype": phen, "copies_marker": markers,
                "copies_bin_lo": ("copies_bin", COPIES_EDGES[:-1]), "copies_bin_hi": ("copies_bin", COPIES_EDGES[1:])})
    units = getattr(ctx, "copies", None) or {}
    um = [m for m in markers if m in units]
    if um:
        u = np.array([[units[m]["unit"].photons, units[m]["unit"].ci_low, units[m]["unit"].ci_high]
                      if m in units else [np.nan] * 3 for m in markers])
        ds["unit_photons"] = ("copies_marker", u[:, 0], {"units": "photons per fluorophore per frame",
                                                        "long_name": "unit brightness (median single step)"})
        ds["unit_photons_lo"] = ("copies_marker", u[:, 1], {"units": "photons", "long_name": "unit, 95% low"})
        ds["unit_photons_hi"] = ("copies_marker", u[:, 2], {"units": "photons", "long_name": "unit, 95% high"})
        ds["unit_n_steps"] = ("copies_marker", np.array([units[m]["unit"].n_steps if m in units else 0
                                                         for m in markers]), {"long_name": "single steps used"})
    return ds


def fig_copies(ds):
    """Base64 PNG: per marker (rows) and sample (columns), histograms of copies per vesicle, flow and imaging."""
    if "copies_hist" not in ds:
        return None
    import base64
    import io

    import matplotlib.pyplot as plt

    markers = [str(m) for m in ds["copies_marker"].values]
    samples = [str(s) for s in ds["copies_sample"].values][:6]
    edges = np.append(ds["copies_bin_lo"].values, ds["copies_bin_hi"].values[-1])
    fig, axes = plt.subplots(len(markers), len(samples), figsize=(3.0 * len(samples), 2.5 * len(markers)),
                             squeeze=False)
    for r, m in enumerate(markers):
        for c, s in enumerate(samples):
            ax = axes[r, c]
            for md, colour in (("flow", "C0"), ("imaging", "C3")):
                h = ds["copies_hist"].sel(modality=md, copies_sample=s, copies_marker=m).values
                if h.sum():
                    ax.stairs(h / h.sum(), edges, color=colour, label=f"{md} (n={int(h.sum())})")
            ax.set_xscale("log")
            ax.set_title(f"{s}: {m}", fontsize=9)
            ax.set_xlabel("antibodies per vesicle", fontsize=8)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle("Copies per vesicle (vesicles positive for the marker; fraction per bin)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
