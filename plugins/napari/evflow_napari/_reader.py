"""napari readers: FCS files, TIFF/OME-TIFF fields, an evflow ``results.zarr``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from evflow.palette import CHANNEL_COLORMAPS, PHENOTYPE_COLOURS, channel_colormap, phenotype_colour

__all__ = ["get_reader", "read_fcs_layers", "read_tiff_layers", "read_results_layers", "read_experiment_layers",
           "find_experiment", "experiment_registration", "robust_contrast", "CHANNEL_COLORMAPS", "PHENOTYPE_COLOURS"]


def _kind(path) -> str | None:
    p = str(path).rstrip("/\\")
    low = p.lower()
    if low.endswith(".fcs"):
        return "fcs"
    if low.endswith((".tif", ".tiff", ".nd2", ".czi", ".lif")):  # read_images reads them all
        return "tiff"
    if low.endswith(".zarr") and os.path.isdir(p):
        return "results"
    if low.endswith(".toml") and os.path.isfile(p):
        return "experiment"
    return None


def get_reader(path):
    """npe2 reader hook: a function for ``.fcs``, ``.tif``/``.tiff``, ``.nd2``/``.czi``/``.lif`` (or a list of
    them), an experiment ``.toml`` and ``results.zarr``."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    kinds = {_kind(p) for p in paths}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind == "fcs":
        return read_fcs_layers
    if kind == "tiff":
        return read_tiff_layers
    if kind == "results" and len(paths) == 1:
        return read_results_layers
    if kind == "experiment" and len(paths) == 1:
        return read_experiment_layers
    return None


# ------------------------------------------------------------------ FCS


def read_fcs_layers(path, x=None, y=None, transforms=(None, None), bins=512):
    """Layers of FCS file(s): a density image of two channels on display scales and an empty gates layer each.

    Display transforms default to linear for scatter channels and logicle for fluorescence.

    The sample stays open (cached) for the flow gating widget, which finds it
    through the layers' ``metadata['evflow']``.
    """
    from ._flow import FlowView

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out = []
    for p in paths:
        view = FlowView(p, x, y, transforms[0], transforms[1], bins)
        out.append(view.image_layer_data())
        out.append(view.gates_layer_data())
    return out


# ------------------------------------------------------------------ TIFF


def find_experiment(start) -> Path | None:
    """An experiment file (``experiment.toml``/``.yaml``) in the folder of ``start`` or the two above it."""
    p = Path(start).resolve()
    folder = p if p.is_dir() else p.parent
    for d in (folder, folder.parent, folder.parent.parent):
        for name in ("experiment.toml", "experiment.yaml", "experiment.yml"):
            if (d / name).is_file():
                return d / name
    return None


def _experiment_channels(path, n_channels) -> list | None:
    exp = find_experiment(path)
    if exp is None:
        return None
    try:
        from evflow.pipeline.config import load_experiment

        chans = list(load_experiment(exp, check_files=False).imaging.get("channels", []))
    except Exception:  # noqa: BLE001 - a broken experiment file only loses the names
        return None
    return chans if len(chans) == n_channels else None


def channel_names(paths, stored) -> list:
    """Marker names of the channels: the names the file stores (``stored``, as :func:`evflow.read_images` read
    them: OME, ND2/CZI/LIF), else the imaging channels of the experiment file next to the images, else ch0..."""
    default = [f"ch{i}" for i in range(len(stored))]
    if list(stored) != default:
        return list(stored)
    return _experiment_channels(paths[0], len(stored)) or default


def robust_contrast(data, percentiles=(50.0, 99.8)):
    """Contrast limits from robust percentiles (background median to the brightest spots) of the first field."""
    plane = data
    while getattr(plane, "ndim", 0) > 2:
        plane = plane[0]
    a = np.asarray(plane.compute() if hasattr(plane, "compute") else plane, np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return None
    lo, hi = np.percentile(a, percentiles)
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
    return (float(lo), float(hi)) if hi > lo else None


def image_layers(images, source, extra_meta=None, registration=None):
    """One napari Image LayerData per channel of a (fov, [t,] channel, y, x) DataArray (dask data kept lazy;
    a layer is (fov, [t,] y, x), the fov axis dropped when there is one field).

    Named by marker and coloured by channel (:mod:`evflow.palette`), contrast from robust
    percentiles; with ``registration`` (``ChannelRegistration.to_dict()``) each layer gets its
    channel -> reference affine, so all channels (and vesicle points) share the reference frame.
    """
    out = []
    files = [str(f) for f in images["file"].values]
    names = [str(c) for c in images["channel"].values]
    px = images.attrs.get("pixel_size_nm")
    for c, m in enumerate(names):
        data = images.isel(channel=c).data  # by name: a time-lapse has t before channel
        if data.shape[0] == 1:
            data = data[0]
        meta = {"evflow": {"kind": "image", "source": source, "files": files, "channel": c, "markers": names,
                           "pixel_size_nm": px, "units": images.attrs.get("units"), **(extra_meta or {})}}
        kw = {"name": m, "colormap": channel_colormap(c), "blending": "additive", "metadata": meta}
        lim = robust_contrast(data)
        if lim is not None:
            kw["contrast_limits"] = lim
        if registration is not None:
            kw["affine"] = layer_affine(registration["transforms"].get(m), data.ndim)
            meta["evflow"]["registered"] = True
        out.append((data, kw, "image"))
    return out


def layer_affine(A, ndim):
    """napari affine ((ndim+1) x (ndim+1)) of a channel layer from a (2, 3) map channel px -> reference px
    (y, x); leading axes (fields) are left as they are; None gives the identity."""
    M = np.eye(ndim + 1)
    if A is not None:
        A = np.asarray(A, np.float64).reshape(2, 3)
        M[ndim - 2:ndim, ndim - 2:ndim] = A[:, :2]
        M[ndim - 2:ndim, ndim] = A[:, 2]
    return M


def read_tiff_layers(path, markers=None):
    """TIFF / OME-TIFF (and ND2 / CZI / LIF) fields opened lazily with ``evflow.read_images``; one layer per
    channel (fov, [t,] y, x).  Channels are named as the file names them, else as the experiment file next to
    the images does, else ch0, ch1, ..."""
    import evflow

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    paths = [str(p) for p in sorted(paths)]
    if markers is None:
        markers = channel_names(paths, [str(c) for c in evflow.read_images(paths[0])["channel"].values])
    images = evflow.read_images(paths if len(paths) > 1 else paths[0], markers=markers)
    return image_layers(images, source=paths[0] if len(paths) == 1 else os.path.commonpath(paths))


# ------------------------------------------------------------------ results.zarr


def open_results(path):
    """The results Dataset of an evflow ``results.zarr`` (lazy)."""
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(str(path), consolidated=None)


def _experiment_of(ds, results_path):
    from evflow.pipeline.config import load_experiment

    exp_file = ds.attrs.get("experiment_file") or ""
    candidates = [Path(exp_file)] if exp_file else []
    out = Path(results_path).resolve().parent
    candidates += [out / "experiment.toml", out / "data" / "experiment.toml"]
    for c in candidates:
        if c.is_file():
            return load_experiment(c, check_files=False)
    return None


def _read_spots(folder):
    """The run's per-vesicle table ``spots.parquet`` (else ``spots.csv``) beside ``results.zarr``, or None."""
    import pandas as pd

    pq, csv = folder / "spots.parquet", folder / "spots.csv"
    if pq.is_file():
        try:
            return pd.read_parquet(pq)
        except ImportError:  # no parquet engine: the csv copy holds the same table
            if not csv.is_file():
                raise
    if csv.is_file():
        return pd.read_csv(csv, dtype={"sample": str}, float_precision="round_trip")
    return None


def vesicle_table(results_path, ds=None):
    """Per-vesicle table of the imaged fields of a run: ``sample``, ``fov``, ``field`` (index of the field in run
    order), ``y``, ``x`` (px), ``bitmask``, ``phenotype``, then ``photons``, ``sigma`` (px) and the per-marker
    columns of the run's ``spots.parquet`` (else ``spots.csv``) beside ``results.zarr``.

    ``attrs['fields']`` lists the imaged (sample, fov) pairs in run order.
    """
    import pandas as pd

    from evflow.errors import EvflowError

    ds = open_results(results_path) if ds is None else ds
    base = ["sample", "fov", "field", "y", "x", "bitmask", "phenotype"]
    if "image_sample" not in ds.dims:
        return pd.DataFrame(columns=base)
    fields = []
    for s in ds["image_sample"].values:
        for f in ds["fov"].values:
            area = ds["image_field_area_um2"].sel(image_sample=s, fov=f).values
            if np.isfinite(area):
                fields.append((str(s), int(f)))
    folder = Path(results_path).resolve().parent
    spots = _read_spots(folder)
    if spots is None:
        raise EvflowError(f"{folder}: no per-vesicle table spots.parquet or spots.csv beside results.zarr "
                          f"(expected from an imaging run, which writes them with results.zarr)")
    missing = [c for c in ("sample", "fov", "y", "x", "bitmask", "phenotype") if c not in spots.columns]
    if missing:
        raise EvflowError(f"{folder / 'spots.parquet'}: columns {missing} missing; found {list(spots.columns)}")
    df = spots.copy()
    df["sample"] = df["sample"].astype(str)
    df["fov"] = df["fov"].to_numpy(np.int64)
    index = {sf: i for i, sf in enumerate(fields)}
    field = np.array([index.get((s, int(f)), -1) for s, f in zip(df["sample"], df["fov"])], np.int64)
    if (field < 0).any():
        bad = sorted({(s, int(f)) for s, f, i in zip(df["sample"], df["fov"], field) if i < 0})
        raise EvflowError(f"{folder / 'spots.parquet'}: vesicles of fields {bad[:5]} that results.zarr does not "
                          f"list as imaged (imaged: {fields[:5]}...)")
    df["field"] = field
    df["y"] = df["y"].to_numpy(np.float64)
    df["x"] = df["x"].to_numpy(np.float64)
    df["bitmask"] = df["bitmask"].to_numpy(np.int64)
    df["phenotype"] = df["phenotype"].astype(str)
    df = df[base + [c for c in df.columns if c not in base]].reset_index(drop=True)
    df.attrs["fields"] = fields
    return df


def points_layer(df, name="vesicles", labels=None, ndim=None, extra_meta=None):
    """A Points LayerData of vesicles coloured by phenotype (properties: every column of ``df``)."""
    labels = list(labels) if labels is not None else sorted(df["phenotype"].unique())
    coords = df[["y", "x"]].to_numpy(float)
    if ndim == 3:
        coords = np.column_stack([df["field"].to_numpy(float), coords])
    feats = df.reset_index(drop=True).copy()
    import pandas as pd

    feats["phenotype"] = pd.Categorical(feats["phenotype"].astype(str), categories=[str(x) for x in labels])
    # labels are in bitmask order (evflow.schema.phenotype_labels); colours from evflow.palette
    cmap = {str(lab): phenotype_colour(i) for i, lab in enumerate(labels)}
    kw = {"name": name, "features": feats, "face_color": "transparent", "border_color": "phenotype",
          "border_color_cycle": cmap, "border_width": 0.15, "size": 7, "ndim": coords.shape[1],
          "metadata": {"evflow": {"kind": "vesicles", "phenotype_colours": cmap, **(extra_meta or {})}}}
    return coords, kw, "points"


def read_results_layers(path):
    """An evflow ``results.zarr``: the imaged fields (one layer per channel, fields stacked in run order, lazy)
    and the detected vesicles as a Points layer coloured by phenotype."""
    import evflow

    path = str(Path(path).resolve())
    ds = open_results(path)
    layers = []
    if "image_sample" not in ds.dims:
        return [(np.zeros((2, 2), np.uint8), {"name": "results (no imaging)", "visible": False,
                                              "metadata": {"evflow": {"kind": "results", "path": path}}}, "image")]
    vt = vesicle_table(path, ds)
    exp = _experiment_of(ds, path)
    fields = vt.attrs.get("fields", [])
    if exp is not None:
        by = {s.name: s for s in exp.samples}
        files = [str(exp.resolve(by[s].images[f])) for s, f in fields if s in by and f < len(by[s].images)]
        if len(files) == len(fields) and files:
            images = evflow.read_images(files, markers=[str(m) for m in ds["image_marker"].values])
            layers += image_layers(images, source=path, extra_meta={"fields": [list(f) for f in fields]},
                                   registration=experiment_registration(exp))
    ndim = 3 if len(fields) > 1 else 2
    if ndim == 2:
        vt = vt.copy()
    layers.append(points_layer(vt, name="vesicles", labels=[str(p) for p in ds["image_phenotype"].values],
                               ndim=ndim, extra_meta={"path": path, "fields": [list(f) for f in fields]}))
    return layers


def results_summary(path) -> dict:
    """Small JSON-able summary of a results.zarr (title, samples, phenotypes)."""
    ds = open_results(path)
    return {"title": ds.attrs.get("title", ""), "samples": [str(s) for s in ds["sample"].values] if "sample" in ds.dims
            else [], "qc": json.loads(ds.attrs.get("qc", "{}") or "{}")}


# ------------------------------------------------------------------ experiment file

_REGISTRATIONS: dict = {}


def experiment_registration(exp) -> dict | None:
    """The channel registration of an experiment (from its ``registration_beads``), as the pipeline fits it;
    None without beads.  Cached per bead file and settings."""
    from evflow.pipeline.imaging import registration_from_beads

    img_s = exp.imaging or {}
    beads = img_s.get("registration_beads")
    if not beads or not img_s.get("channels"):
        return None
    p = Path(exp.resolve(beads))
    key = (str(p), p.stat().st_mtime_ns if p.is_file() else None, json.dumps(img_s, sort_keys=True, default=str))
    if key not in _REGISTRATIONS:
        _REGISTRATIONS[key] = registration_from_beads(p, img_s)
    return _REGISTRATIONS[key]


def experiment_fields(exp) -> list:
    """(sample, fov, file) of every image field of an experiment, in experiment order."""
    return [(s.name, f, str(exp.resolve(p))) for s in exp.samples for f, p in enumerate(s.images)]


def experiment_summary(path) -> dict:
    """Browsable contents of an experiment file: samples (name, role, flow file, fields), markers, output."""
    from evflow.pipeline.config import load_experiment

    exp = load_experiment(path, check_files=False)
    return {"name": exp.name, "file": str(Path(path).resolve()), "output": str(exp.output),
            "channels": list((exp.imaging or {}).get("channels", [])), "markers": dict(exp.markers or {}),
            "samples": [{"name": s.name, "role": s.role, "flow": None if s.flow is None else str(exp.resolve(s.flow)),
                         "fields": [str(exp.resolve(p)) for p in s.images]} for s in exp.samples]}


def experiment_results(exp, path) -> Path | None:
    """The ``results.zarr`` of a run of this experiment: in its output folder, else one beside the experiment
    (or one folder up) whose ``experiment_file`` attribute is this file."""
    own = Path(exp.output) / "results.zarr"
    if own.is_dir():
        return own
    here = Path(path).resolve()
    for c in (here.parent / "results.zarr", here.parent.parent / "results.zarr"):
        if c.is_dir():
            try:
                ef = open_results(c).attrs.get("experiment_file") or ""
            except Exception:  # noqa: BLE001 - not a results store
                continue
            if ef and Path(ef).resolve() == here:
                return c
    return None


def read_experiment_layers(path, samples=None, flow=True):
    """An experiment file (``experiment.toml``): its image fields as one registered layer per marker (fields
    stacked in experiment order, lazy), and, when the experiment has been run, the vesicles of its
    ``results.zarr`` as points in that frame.  ``samples`` limits the fields to some samples.

    With ``flow`` its flow samples too (:func:`evflow_napari._experiment_flow.experiment_flow_layers`: a density
    image and a gates layer with the experiment's gates per sample; hidden when there are image layers,
    whose pixel frame they do not share; the gating widget shows the sample it is on).

    Every layer's ``metadata['evflow']`` carries ``experiment`` (the file) and ``summary``
    (:func:`experiment_summary`: samples, flow files, fields) for the widgets.
    """
    import evflow
    from evflow.pipeline.config import load_experiment
    from evflow.schema import phenotype_labels

    path = str(Path(path).resolve())
    exp = load_experiment(path, check_files=False)
    summary = experiment_summary(path)
    base = {"experiment": path, "summary": summary}
    chans = list((exp.imaging or {}).get("channels", []))
    fields = [f for f in experiment_fields(exp) if samples is None or f[0] in samples]
    layers = []
    if chans and fields:
        images = evflow.read_images([f[2] for f in fields], markers=chans,
                                    pixel_size_nm=exp.imaging.get("pixel_size_nm"))
        layers += image_layers(images, source=path, registration=experiment_registration(exp),
                               extra_meta={**base, "fields": [[s, f] for s, f, _ in fields]})
        res = experiment_results(exp, path)
        if res is not None:
            try:
                vt = vesicle_table(res)
            except Exception:  # noqa: BLE001 - a run without imaging results gives images only
                vt = None
            if vt is not None and len(vt):
                index = {(s, f): i for i, (s, f, _) in enumerate(fields)}
                keep = np.array([(s, int(f)) in index for s, f in zip(vt["sample"], vt["fov"])], bool)
                vt = vt[keep].reset_index(drop=True)
                vt["field"] = [index[(s, int(f))] for s, f in zip(vt["sample"], vt["fov"])]
                ndim = 3 if len(fields) > 1 else 2
                layers.append(points_layer(vt, name="vesicles", labels=phenotype_labels(chans), ndim=ndim,
                                           extra_meta={**base, "path": str(res),
                                                       "fields": [[s, f] for s, f, _ in fields]}))
    if flow:
        from ._experiment_flow import experiment_flow_layers

        layers += experiment_flow_layers(path, visible=not layers)
    if not layers:
        layers.append((np.zeros((2, 2), np.uint8), {"name": f"{exp.name} (no image fields)", "visible": False,
                                                    "metadata": {"evflow": {"kind": "experiment", **base}}}, "image"))
    return layers
