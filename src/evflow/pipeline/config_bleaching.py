"""Experiment settings for copies per vesicle: bleaching acquisitions (imaging) and MESF per dye (flow).

Each sample may list photobleaching movies; the pipeline counts their steps,
pools the single-step heights per marker into the unit brightness (photons
per fluorophore per frame) and converts every detected vesicle's photons into
fluorophores and, with the dye-to-antibody ratio, antibodies (copies)::

    [[samples]]
    name = "S1"
    images = ["images/S1_f0.tif"]
    [[samples.bleaching]]            # one table per bleaching acquisition
    files = ["bleach/S1_EpCAM.tif"]  # time-lapse TIFFs (one field each: frames, [channel,] y, x)
    marker = "EpCAM"                 # the marker (one of imaging.channels) whose dye bleaches
    frames = 500                     # use the first 500 frames (default: all)
    exposure_ms = 50.0               # exposure per frame of the movie
    image_exposure_ms = 100.0        # exposure of the still images (default: exposure_ms)
    dye_per_antibody = 3.2           # degree of labelling (default: 1, copies = fluorophores)

    [flow.copies]                    # flow on the same scale (needs [flow.calibration.fluorescence])
    mesf_per_fluorophore = { EpCAM = 0.9 }   # MESF one dye molecule is worth, per marker's dye
    dye_per_antibody = { EpCAM = 3.2 }

The acquisitions of one marker must agree on ``exposure_ms``,
``image_exposure_ms`` and ``dye_per_antibody`` (one unit per marker).
This module does not import :mod:`evflow.pipeline.config` (which calls it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BLEACHING_KEYS", "Acquisition", "check_bleaching", "bleaching_acquisitions", "flow_copies_settings"]

_NUM = (int, float)

#: section -> key -> (type, default, unit, help): the rows the experiment schema adds for copies per vesicle
BLEACHING_KEYS = {
    "samples.bleaching": {
        "files": (list, None, "", "a list of time-lapse TIFF files"),
        "marker": (str, None, "", "a marker of imaging.channels"),
        "frames": (int, None, "frames", "the number of frames used (default: all)"),
        "exposure_ms": (_NUM, None, "ms", "the exposure per frame of the movie (ms)"),
        "image_exposure_ms": (_NUM, None, "ms", "the exposure of the still images (ms; default: exposure_ms)"),
        "dye_per_antibody": (_NUM, 1.0, "", "dyes per antibody (degree of labelling)"),
    },
    "flow.copies": {
        "mesf_per_fluorophore": (dict, None, "MESF", "a table marker -> MESF of one dye molecule"),
        "dye_per_antibody": (dict, None, "", "a table marker -> dyes per antibody"),
    },
}


@dataclass(frozen=True)
class Acquisition:
    """One bleaching acquisition of a sample: movie files, marker, frames used, exposures, labelling."""

    sample: str
    marker: str
    files: tuple
    frames: int | None = None
    exposure_ms: float | None = None
    image_exposure_ms: float | None = None
    dye_per_antibody: float = 1.0

    @property
    def exposure_ratio(self) -> float:
        """Still-image exposure over movie exposure (1 without exposures)."""
        if self.exposure_ms is None or self.image_exposure_ms is None:
            return 1.0
        return float(self.image_exposure_ms) / float(self.exposure_ms)


def _ok_type(v, types) -> bool:
    return isinstance(v, types) and not (types in (_NUM, int) and isinstance(v, bool))


def _entries(raw_samples):
    for i, s in enumerate(raw_samples if isinstance(raw_samples, list) else []):
        if isinstance(s, Mapping) and "bleaching" in s:
            yield i, s, s["bleaching"]


def check_bleaching(settings, src, problems, resolve, check_files) -> None:
    """Check every ``[[samples.bleaching]]`` table and ``[flow.copies]``; append one line per problem."""
    img_s = settings.get("imaging") if isinstance(settings.get("imaging"), Mapping) else {}
    chans = img_s.get("channels") if isinstance(img_s.get("channels"), list) else []
    spec = BLEACHING_KEYS["samples.bleaching"]
    per_marker: dict = {}
    for i, _s, raw in _entries(settings.get("samples")):
        if not isinstance(raw, list):
            continue  # the schema check reports it
        if not img_s:
            problems.append(f"{src}: 'samples[{i}].bleaching' given but there is no [imaging] section")
        for j, b in enumerate(raw):
            key = f"samples[{i}].bleaching[{j}]"
            if not isinstance(b, Mapping):
                problems.append(f"{src}: '{key}' must be a table with files and marker, found {type(b).__name__}")
                continue
            for k, v in b.items():
                if k not in spec:
                    problems.append(f"{src}: unknown key '{key}.{k}' (expected one of: {', '.join(sorted(spec))})")
                elif not _ok_type(v, spec[k][0]):
                    problems.append(f"{src}: '{key}.{k}' must be {spec[k][3]}, found {v!r} ({type(v).__name__})")
            for k in ("files", "marker"):
                if k not in b:
                    problems.append(f"{src}: '{key}.{k}' is missing (expected {spec[k][3]})")
            m = b.get("marker")
            if isinstance(m, str) and chans and m not in chans:
                problems.append(f"{src}: '{key}.marker' {m!r} is not one of 'imaging.channels' ({chans})")
            files = b.get("files") if isinstance(b.get("files"), list) else []
            if "files" in b and isinstance(b["files"], list) and not files:
                problems.append(f"{src}: '{key}.files' is empty (expected at least one time-lapse TIFF)")
            for f, name in enumerate(files):
                if not isinstance(name, str):
                    problems.append(f"{src}: '{key}.files[{f}]' must be a file name, found {name!r}")
                elif check_files and not resolve(name).is_file():
                    problems.append(f"{src}: '{key}.files[{f}]' file {name!r} not found (looked at {resolve(name)})")
            for k in ("frames", "exposure_ms", "image_exposure_ms", "dye_per_antibody"):
                v = b.get(k)
                if _ok_type(v, _NUM) and not v > 0:
                    problems.append(f"{src}: '{key}.{k}' is {v!r}, expected a number > 0")
            if isinstance(b.get("frames"), int) and 0 < b["frames"] < 10:
                problems.append(f"{src}: '{key}.frames' is {b['frames']}, expected >= 10 frames to count steps")
            if "image_exposure_ms" in b and "exposure_ms" not in b:
                problems.append(f"{src}: '{key}.image_exposure_ms' needs '{key}.exposure_ms' (the movie's exposure)")
            if isinstance(m, str):
                got = tuple(b.get(k, spec[k][1]) for k in ("exposure_ms", "image_exposure_ms", "dye_per_antibody"))
                first = per_marker.setdefault(m, (key, got))
                if first[1] != got:
                    problems.append(f"{src}: '{key}' ({m}) gives exposure_ms, image_exposure_ms, dye_per_antibody "
                                    f"{got}, '{first[0]}' gives {first[1]}: one marker needs one unit brightness")
    _check_flow_copies(settings, src, problems)


def _check_flow_copies(settings, src, problems) -> None:
    flow_s = settings.get("flow") if isinstance(settings.get("flow"), Mapping) else {}
    fc = flow_s.get("copies")
    if not isinstance(fc, Mapping):
        return
    markers = flow_s.get("markers") if isinstance(flow_s.get("markers"), Mapping) else {}
    cal = flow_s.get("calibration", {}).get("fluorescence") if isinstance(flow_s.get("calibration"), Mapping) else None
    cal_marker = markers.get(cal.get("channel")) if isinstance(cal, Mapping) else None
    for k in ("mesf_per_fluorophore", "dye_per_antibody"):
        table = fc.get(k)
        if not isinstance(table, Mapping):
            continue
        for m, v in table.items():
            if m not in markers.values():
                problems.append(f"{src}: 'flow.copies.{k}.{m}': {m!r} is not a marker of 'flow.markers' "
                                f"({list(markers.values())})")
            elif not _ok_type(v, _NUM) or not v > 0:
                problems.append(f"{src}: 'flow.copies.{k}.{m}' is {v!r}, expected a number > 0")
            elif k == "mesf_per_fluorophore" and m != cal_marker:
                problems.append(f"{src}: 'flow.copies.mesf_per_fluorophore.{m}': only the calibrated channel's "
                                f"marker ({cal_marker or 'none: no [flow.calibration.fluorescence]'}) has MESF")


def bleaching_acquisitions(exp) -> list:
    """The :class:`Acquisition` of every ``[[samples.bleaching]]`` table of a validated experiment (paths resolved)."""
    out = []
    for _i, s, raw in _entries(exp.settings.get("samples")):
        for b in raw:
            ex, ix = b.get("exposure_ms"), b.get("image_exposure_ms")
            out.append(Acquisition(
                sample=str(s["name"]), marker=str(b["marker"]), files=tuple(Path(exp.resolve(f)) for f in b["files"]),
                frames=b.get("frames"), exposure_ms=None if ex is None else float(ex),
                image_exposure_ms=None if ex is None else float(ix if ix is not None else ex),
                dye_per_antibody=float(b.get("dye_per_antibody", 1.0))))
    return out


def flow_copies_settings(exp) -> dict:
    """``{marker: (mesf_per_fluorophore, dye_per_antibody)}`` of ``[flow.copies]`` (markers with an equivalence)."""
    fc = exp.flow.get("copies", {})
    eq, dol = fc.get("mesf_per_fluorophore", {}), fc.get("dye_per_antibody", {})
    return {m: (float(v), float(dol.get(m, 1.0))) for m, v in eq.items()}
