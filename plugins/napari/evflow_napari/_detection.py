"""Vesicle detection on one image field, free of Qt: the pipeline's field computation, experiment-file export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from evflow.errors import ConfigError

__all__ = ["DetectionParameters", "detect_field", "resolve_registration", "experiment_thresholds", "export_parameters",
           "update_toml_section"]


class DetectionParameters:
    """Detection settings, named as in the experiment file's ``[imaging]`` section.

    psf_sigma_px : PSF sigma (px); false_positives : expected noise detections per field and channel
    (automatic threshold); detection_threshold_photons : manual threshold (photons) or None (automatic);
    camera_offset (ADU), camera_gain (ADU per photo-electron); match_radius_px : detections of
    different channels closer than this are one vesicle.  ``base`` holds the other ``[imaging]`` keys of
    the experiment (EM gain, read noise, pixel size, thresholds, registration beads), kept as they are.
    The defaults are those of the experiment file (:mod:`evflow.pipeline.config`).
    """

    keys = ("psf_sigma_px", "false_positives", "detection_threshold_photons", "camera_offset", "camera_gain",
            "match_radius_px")

    def __init__(self, psf_sigma_px=None, false_positives=None, detection_threshold_photons=None, camera_offset=None,
                 camera_gain=None, match_radius_px=None, exclude_border_px=2, base=None):
        from evflow.pipeline.config import default

        given = {"psf_sigma_px": psf_sigma_px, "false_positives": false_positives, "camera_offset": camera_offset,
                 "camera_gain": camera_gain, "match_radius_px": match_radius_px}
        for k, v in given.items():
            setattr(self, k, float(default("imaging", k) if v is None else v))
        self.detection_threshold_photons = None if detection_threshold_photons is None else float(
            detection_threshold_photons)
        self.exclude_border_px = int(exclude_border_px)
        self.base = {k: v for k, v in dict(base or {}).items() if k not in self.keys}

    @classmethod
    def from_experiment(cls, imaging: dict):
        kw = {k: imaging[k] for k in cls.keys if k in imaging}
        return cls(**kw, base=imaging)

    def camera(self):
        return {"offset": self.camera_offset, "gain": self.camera_gain,
                "em_gain": float(self.base.get("camera_em_gain", 1.0))}

    def detect_kwargs(self):
        return {"false_positives": self.false_positives, "threshold": self.detection_threshold_photons,
                "exclude_border_px": self.exclude_border_px}

    def as_dict(self):
        return {k: getattr(self, k) for k in self.keys}

    def imaging_settings(self, markers) -> dict:
        """The ``[imaging]`` settings the pipeline's field stage reads, with these values and ``channels``."""
        out = {**self.base, **self.as_dict(), "channels": list(markers)}
        if out["detection_threshold_photons"] is None:
            del out["detection_threshold_photons"]
        return out


def _settings(settings, markers) -> dict:
    if settings is None:
        settings = DetectionParameters()
    if isinstance(settings, DetectionParameters):
        return settings.imaging_settings(markers)
    if not isinstance(settings, dict):
        raise ConfigError(f"settings must be a DetectionParameters or the [imaging] section (a dict), "
                          f"got {type(settings).__name__}")
    img_s = dict(settings)
    if img_s.get("channels") is not None and list(img_s["channels"]) != list(markers):
        raise ConfigError(f"[imaging] channels {list(img_s['channels'])} differ from the field's markers {list(markers)}")
    img_s["channels"] = list(markers)
    return img_s


def resolve_registration(registration, img_s, photons=None) -> dict | None:
    """Channel registration (``ChannelRegistration.to_dict()``) from what the user chose.

    ``registration``: None or ``"none"`` (identity), a ``ChannelRegistration`` or its dict, a path of a
    registration-bead field (TIFF, read with the camera of ``img_s``), or ``"fit"``: fitted on the
    field itself (``photons``, (channel, y, x)), whose multi-positive vesicles serve as beads.
    """
    from evflow.imaging.register import ChannelRegistration, register_channels
    from evflow.pipeline.imaging import registration_from_beads

    if registration is None or (isinstance(registration, str) and registration == "none"):
        return None
    if isinstance(registration, ChannelRegistration):
        return registration.to_dict()
    if isinstance(registration, dict):
        return ChannelRegistration.from_dict(registration).to_dict()
    if isinstance(registration, str) and registration == "fit":
        if photons is None:
            raise ConfigError("registration='fit' needs the field to fit on")
        return register_channels(np.asarray(photons), markers=list(img_s["channels"]),
                                 psf_sigma_px=float(img_s.get("psf_sigma_px", 1.3))).to_dict()
    if isinstance(registration, (str, Path)):
        p = Path(registration)
        if not p.is_file():
            raise ConfigError(f"registration: bead field {p} not found (expected a TIFF of registration beads, "
                              f"'fit', 'none' or a ChannelRegistration)")
        return registration_from_beads(p, img_s)
    raise ConfigError(f"registration must be None, 'none', 'fit', a bead-field path or a ChannelRegistration, "
                      f"got {type(registration).__name__}")


def experiment_thresholds(experiment, img_s, registration=None, backend="numpy"):
    """Per-marker photon thresholds of the experiment's ``[imaging.thresholds]`` rule, as the pipeline sets them.

    Control rules measure the vesicles of the control role's fields (with ``registration``).
    Returns (thresholds dict or None for "detected in the channel", description).
    """
    from evflow.flow.thresholds import ThresholdRule, experiment_rule
    from evflow.pipeline.imaging import control_spots, image_thresholds

    exp = _load_experiment(experiment)
    rule = experiment_rule(img_s.get("thresholds", {}), "imaging.thresholds", default="detected",
                           keywords=("detected", "fixed"))
    items = {}
    if isinstance(rule, ThresholdRule) and exp is None:
        raise ConfigError(f"[imaging.thresholds] rule {rule.text if hasattr(rule, 'text') else rule!r} needs the "
                          f"experiment's {rule.control!r} fields: open the images of an experiment, or choose "
                          f"'detected in the channel'")
    if isinstance(rule, ThresholdRule):
        for s in exp.by_role(rule.control):
            for f, p in enumerate(s.images):
                items[(s.name, f)] = control_spots(p, img_s, registration, backend=backend)
        items = dict(sorted(items.items()))
    return image_thresholds(img_s, items)


def _load_experiment(experiment):
    if experiment is None or not isinstance(experiment, (str, Path)):
        return experiment
    from evflow.pipeline.config import load_experiment

    return load_experiment(experiment, check_files=False)


def detect_field(field, markers, settings=None, *, registration=None, thresholds=None, units="ADU", backend=None,
                 progress=None):
    """Vesicles of one (channel, y, x) field, computed as the pipeline's field stage computes them.

    Detection per channel, registration of every channel to the reference (first) channel,
    one-to-one merge across channels, photons measured in every channel at the registered
    position, positivity by threshold (or detection) and the fitted width and photons in the
    brightest channel: :func:`evflow.pipeline.imaging.analyse_photons`, the body of ``evflow run``'s
    image stage.

    Parameters
    ----------
    field : array (channel, y, x)
        In ADU (``units="ADU"``, converted with the camera of ``settings``) or photons.
    markers : sequence of str
        Marker of each channel (bit i of the bitmask = marker i).
    settings : DetectionParameters or dict, optional
        The experiment's ``[imaging]`` settings (default: the experiment file's defaults).
    registration : see :func:`resolve_registration` (default: identity).
    thresholds : mapping marker -> photons, optional
        Positivity thresholds; default: positive when detected in the marker's channel
        (see :func:`experiment_thresholds` for the experiment's rule).
    progress : callable, optional
        Called with 1, 2, 3 after the registration, the detection and the table.

    Returns
    -------
    DataFrame, one row per vesicle: ``y``, ``x`` (reference-channel px), ``photons``, ``sigma`` (px),
    ``phenotype``, ``bitmask``, then ``photons_<m>``, ``background_<m>``, ``detected_<m>`` per marker;
    ``attrs``: ``markers``, ``counts`` (vesicles per bitmask), ``n_spots`` (detections per channel),
    ``registration`` (dict or None), ``thresholds``, ``settings``.
    """
    from evflow.imaging.camera import as_camera
    from evflow.pipeline.imaging import analyse_photons, camera_of, saturation_photons, spots_table

    markers = [str(m) for m in markers]
    a = np.asarray(field)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] != len(markers):
        raise ConfigError(f"field has shape {a.shape}: expected (channel, y, x) with {len(markers)} channel(s) "
                          f"for markers {markers}")
    img_s = _settings(settings, markers)
    if units == "ADU":
        photons = as_camera(camera_of(img_s)).to_photons(a)
    elif units == "photons":
        photons = a.astype(np.float32, copy=False)
    else:
        raise ConfigError(f"units must be 'ADU' or 'photons', got {units!r}")
    reg = resolve_registration(registration, img_s, photons)
    if progress is not None:
        progress(1)
    if thresholds is not None:
        missing = [m for m in markers if m not in thresholds]
        if missing:
            raise ConfigError(f"thresholds have no value for marker(s) {missing}; have {list(thresholds)}")
        thresholds = {m: float(thresholds[m]) for m in markers}
    be = "cupy" if backend == "cupy" else "numpy"
    sat = saturation_photons(img_s, a.dtype if units == "ADU" else None)  # as the pipeline, from the raw dtype
    item = analyse_photons(photons, img_s, reg, thresholds=thresholds, backend=be, saturation=sat)
    if progress is not None:
        progress(2)
    out = spots_table({("field", 0): item}, markers).drop(columns=["sample", "fov"])
    out.attrs.update({"markers": markers, "counts": np.asarray(item["counts"], np.int64),
                      "n_spots": dict(zip(markers, np.asarray(item["n_spots"], np.int64).tolist())),
                      "registration": reg, "thresholds": thresholds, "settings": img_s})
    if progress is not None:
        progress(3)
    return out


def _toml_value(val) -> str:
    """A TOML value: JSON for scalars, strings and lists; an inline table for a mapping."""
    import json

    if isinstance(val, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in val.items()) + " }"
    return json.dumps(val)


def update_toml_section(text: str, section: str, values: dict) -> str:
    """Set (or, for None, remove) ``key = value`` lines in ``[section]`` of a TOML text, keeping the rest as is."""
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
        new = f"{key} = {_toml_value(val)}"
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
