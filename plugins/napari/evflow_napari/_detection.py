"""Vesicle detection on one image field, free of Qt: the library's detection and merge, experiment-file export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from evflow.errors import ConfigError

__all__ = ["DetectionParameters", "detect_field", "export_parameters", "update_toml_section"]


class DetectionParameters:
    """Detection settings, named as in the experiment file's ``[imaging]`` section.

    psf_sigma_px : PSF sigma (px); false_positives : expected noise detections per field and channel
    (automatic threshold); detection_threshold_photons : manual threshold (photons) or None (automatic);
    camera_offset (ADU), camera_gain (ADU per photo-electron); match_radius_px : detections of
    different channels closer than this are one vesicle; exclude_border_px.
    """

    keys = ("psf_sigma_px", "false_positives", "detection_threshold_photons", "camera_offset", "camera_gain",
            "match_radius_px")

    def __init__(self, psf_sigma_px=1.3, false_positives=0.1, detection_threshold_photons=None, camera_offset=0.0,
                 camera_gain=1.0, match_radius_px=2.0, exclude_border_px=2):
        self.psf_sigma_px = float(psf_sigma_px)
        self.false_positives = float(false_positives)
        self.detection_threshold_photons = None if detection_threshold_photons is None else float(
            detection_threshold_photons)
        self.camera_offset = float(camera_offset)
        self.camera_gain = float(camera_gain)
        self.match_radius_px = float(match_radius_px)
        self.exclude_border_px = int(exclude_border_px)

    @classmethod
    def from_experiment(cls, imaging: dict):
        kw = {k: imaging[k] for k in cls.keys if k in imaging}
        return cls(**kw)

    def camera(self):
        return {"offset": self.camera_offset, "gain": self.camera_gain}

    def detect_kwargs(self):
        return {"false_positives": self.false_positives, "threshold": self.detection_threshold_photons,
                "exclude_border_px": self.exclude_border_px}

    def as_dict(self):
        return {k: getattr(self, k) for k in self.keys}


def detect_field(field, markers, params: DetectionParameters, *, backend=None, progress=None):
    """Vesicles of one (channel, y, x) field: ``evflow.detect_spots`` per channel, merged across channels.

    Same computation as :func:`evflow.imaging.count.phenotype_field` with
    phenotype = detected in the channel (no registration), plus per-vesicle
    ``photons`` and ``sigma`` of its detection in the first channel that
    found it.  ``progress(i)`` is called after each channel.

    Returns
    -------
    (vesicles DataFrame: y, x, bitmask, phenotype, photons, sigma, detected_<m>; per-channel spot tables)
    """
    import evflow
    from evflow.imaging.camera import as_camera
    from evflow.imaging.count import _merge
    from evflow.schema import phenotype_labels

    markers = list(markers)
    a = np.asarray(field)
    if a.ndim == 2:
        a = a[None]
    if a.shape[0] != len(markers):
        raise ConfigError(f"field has {a.shape[0]} channel(s) but {len(markers)} marker(s) {markers}")
    photons = as_camera(params.camera()).to_photons(a)
    tables = {}
    for c, m in enumerate(markers):
        df = evflow.detect_spots(photons[c], psf_sigma_px=params.psf_sigma_px, backend=backend,
                                 **params.detect_kwargs())
        df["y_ref"], df["x_ref"] = df["y"].to_numpy(), df["x"].to_numpy()
        tables[m] = df
        if progress is not None:
            progress(c + 1)
    merged, det = _merge(tables, markers, params.match_radius_px)
    out = pd.DataFrame({"y": merged["y"].to_numpy(float), "x": merged["x"].to_numpy(float)})
    bitmask = (det.astype(np.int64) << np.arange(len(markers))).sum(axis=1) if len(out) else np.zeros(0, np.int64)
    out["bitmask"] = bitmask.astype(np.int64)
    labels = phenotype_labels(markers)
    out["phenotype"] = [labels[b] for b in out["bitmask"]]
    photons_v = np.full(len(out), np.nan)
    sigma_v = np.full(len(out), np.nan)
    from scipy.spatial import cKDTree

    for c, m in enumerate(markers):
        out[f"detected_{m}"] = det[:, c]
        t = tables[m]
        todo = det[:, c] & np.isnan(photons_v)
        if not todo.any() or not len(t):
            continue
        d, j = cKDTree(t[["y", "x"]].to_numpy()).query(out.loc[todo, ["y", "x"]].to_numpy())
        photons_v[todo] = t["photons"].to_numpy()[j]
        sigma_v[todo] = t["sigma"].to_numpy()[j]
    out["photons"] = photons_v
    out["sigma"] = sigma_v
    return out, tables


def update_toml_section(text: str, section: str, values: dict) -> str:
    """Set (or, for None, remove) ``key = value`` lines in ``[section]`` of a TOML text, keeping the rest as is."""
    import json
    import tomllib

    lines = text.splitlines()
    head = re.compile(r"^\s*\[" + re.escape(section) + r"\]\s*(#.*)?$")
    start = next((i for i, ln in enumerate(lines) if head.match(ln)), None)
    if start is None:
        lines += ["", f"[{section}]"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for key, val in values.items():
        pat = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        idx = next((i for i in range(start + 1, end) if pat.match(lines[i])), None)
        if val is None:
            if idx is not None:
                del lines[idx]
                end -= 1
            continue
        new = f"{key} = {json.dumps(val)}"
        if idx is not None:
            lines[idx] = new
        else:
            lines.insert(start + 1, new)
            end += 1
    out = "\n".join(lines) + "\n"
    try:
        tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"updating [{section}] would make the experiment file invalid TOML: {exc}") from None
    return out


def export_parameters(path, params: DetectionParameters) -> Path:
    """Write the detection parameters into the ``[imaging]`` section of an experiment file (TOML)."""
    from evflow.pipeline.store import atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() != ".toml":
        raise ConfigError(f"{path}: parameters are exported to a TOML experiment file, got {path.suffix!r}")
    text = path.read_text() if path.is_file() else ""
    atomic_write_bytes(path, update_toml_section(text, "imaging", params.as_dict()).encode())
    return path
