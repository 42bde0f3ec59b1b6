"""Bounds on experiment settings: size after YAML alias expansion, finite numbers, physical ranges, paths."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError

_NUM = (int, float)


#: most values (after YAML aliases are expanded) an experiment file may hold
MAX_SETTINGS_VALUES = 100_000


def _check_size(data, path):
    """Refuse settings that expand to more than MAX_SETTINGS_VALUES values (a YAML alias bomb), in bounded work."""
    n, stack = 0, [data]
    while stack:
        obj = stack.pop()
        n += 1
        if n > MAX_SETTINGS_VALUES:
            raise ConfigError(f"{path}: the settings expand to more than {MAX_SETTINGS_VALUES:,} values "
                              "(YAML aliases repeating large tables?); an experiment file is far smaller")
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return data


def _inside(base: Path, p: Path) -> bool:
    return os.path.normpath(p).startswith(os.path.normpath(base) + os.sep)


#: settings that are physical quantities: (minimum, minimum allowed?) (NaN and infinities are refused everywhere)
_BOUNDS = {
    "flow.flow_rate_ul_per_min": (0, False),
    "flow.calibration.size.bead_index": (0, False), "flow.calibration.size.wavelength_nm": (0, False),
    "flow.calibration.size.medium_index": (0, False), "flow.calibration.size.ev_core_index": (0, False),
    "flow.calibration.size.ev_shell_index": (0, False), "flow.calibration.size.ev_shell_nm": (0, True),
    "imaging.pixel_size_nm": (0, False), "imaging.psf_sigma_px": (0, False), "imaging.camera_gain": (0, False),
    "imaging.camera_em_gain": (1, True), "imaging.camera_read_noise_e": (0, True),
    "imaging.false_positives": (0, False), "imaging.detection_threshold_photons": (0, False),
    "imaging.match_radius_px": (0, False),
    "instrument.max_event_rate": (0, False), "instrument.width_factor": (1, False),
    "instrument.max_wide_fraction": (0, True), "flow.time_bin_s": (0, False), "flow.time_z": (0, False),
}


def _check_numbers(settings, problems, src):
    """NaN or infinite numbers anywhere, and physical quantities out of range, are problems."""
    stack = [("", settings)]
    while stack:
        key, v = stack.pop()
        if isinstance(v, Mapping):
            stack.extend((f"{key}.{k}" if key else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{key}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{src}: '{key}' is {v!r}, expected a finite number")
        elif isinstance(v, _NUM) and not isinstance(v, bool) and key in _BOUNDS:
            lo, closed = _BOUNDS[key]
            if v < lo or (v == lo and not closed):
                problems.append(f"{src}: '{key}' is {v!r}, expected a number {'>=' if closed else '>'} {lo}")


def _path_resolver(base: Path, outside_ok: bool, problems: list, src: str):
    """``resolve(p)``: an experiment-file path made absolute; one that climbs out of ``base`` is a problem and
    resolves to a name that does not exist, so it is never opened (no message can show what it holds)."""

    def resolve(p):
        p = Path(p)
        if p.is_absolute():
            return p
        if not outside_ok and not _inside(base, base / p):
            problems.append(f"{src}: path {str(p)!r} climbs out of the experiment's folder {base} (use an absolute "
                            "path, or set experiment.allow_outside_paths = true)")
            return base / "(refused: outside the experiment's folder)"
        return base / p

    return resolve


#: spot-detection keys of ``[imaging]``: name -> (type, default, unit, what is expected), made Keys in config.SCHEMA
DETECTION_KEYS = {
    "false_positives": ((int, float, dict), 0.1, "per field and channel",
                        "expected noise detections per field and channel (a number, or a table marker -> number)"),
    "detection_threshold_photons": ((int, float, dict), None, "photons", "a detection threshold (photons), or a "
                                    "table marker -> photons (channels not in it: automatic)"),
    "saturation_adu": (_NUM, None, "ADU", "the raw level at which pixels saturate (default: the TIFF's dtype maximum)"),
    "hot_pixels": (str, "repair", "", "repair or keep (single hot/cold pixels)"),
    "noise_model": (str, "local", "", "local, global or photon (noise of the detection filter; photon: photon "
                    "statistics of the camera model, needs camera_gain)"),
    "threshold_rule": (str, "adaptive", "", "adaptive or false_positives (automatic detection threshold)"),
    "background_radius_px": ((int, str), "auto", "px", "a radius (px), 'auto' or 'none'"),
    "flat_field": (str, None, "", "'estimate' or a TIFF file of the flat, (y, x) or (channel, y, x)"),
}


#: result keys of ``[imaging]``: name -> (type, default, unit, what is expected), made Keys in config.SCHEMA
RESULT_KEYS = {
    "chance_correction": (bool, False, "", "true or false: take the expected chance coincidences out of each "
                          "multi-marker fraction (image_fraction_corrected, interval widened)"),
}


#: [imaging] detection keys that take a table marker -> value as well as one value for every channel
PER_CHANNEL_KEYS = ("detection_threshold_photons", "false_positives")


def _check_detection(img_s, src, resolve, check_files, problems):
    """The spot-detection keys of ``[imaging]``; a relative ``flat_field`` file is resolved in place."""
    for key, choices in (("hot_pixels", ("repair", "keep")), ("noise_model", ("local", "global", "photon")),
                         ("threshold_rule", ("adaptive", "false_positives"))):
        if isinstance(img_s.get(key), str) and img_s[key] not in choices:
            problems.append(f"{src}: 'imaging.{key}' is {img_s[key]!r}, expected one of {', '.join(choices)}")
    if img_s.get("noise_model") == "photon" and "camera_gain" not in img_s:
        problems.append(f"{src}: 'imaging.noise_model' is 'photon', which takes the noise from photon statistics "
                        "and needs the camera model: set 'imaging.camera_gain' (ADU per electron), and "
                        "camera_em_gain / camera_read_noise_e where they apply")
    br = img_s.get("background_radius_px")
    if (isinstance(br, str) and br not in ("auto", "none")) or (isinstance(br, int) and not isinstance(br, bool)
                                                                and br < 1):
        problems.append(f"{src}: 'imaging.background_radius_px' is {br!r}, expected an integer >= 1 (px), "
                        "'auto' or 'none'")
    chans = img_s.get("channels") if isinstance(img_s.get("channels"), list) else []
    for key in PER_CHANNEL_KEYS:  # per channel: a table marker -> number > 0, markers of imaging.channels
        table = img_s.get(key)
        if not isinstance(table, Mapping):
            continue
        for m, v in table.items():
            if m not in chans:
                problems.append(f"{src}: 'imaging.{key}.{m}': {m!r} is not one of 'imaging.channels' {chans}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                problems.append(f"{src}: 'imaging.{key}.{m}' is {v!r}, expected a number > 0")
    ff = img_s.get("flat_field")
    if isinstance(ff, str) and ff != "estimate":
        if check_files and not resolve(ff).is_file():
            problems.append(f"{src}: 'imaging.flat_field' file {ff!r} not found (looked at {resolve(ff)})")
        img_s["flat_field"] = str(resolve(ff))  # read by the imaging stage, wherever it runs


def _check_qc(qc, samples, roles, src, problems):
    """``[qc]``: the rules and the roles they need."""
    for key, role in (("max_buffer_fraction", "buffer"), ("min_detergent_reduction", "detergent"),
                      ("min_dilution_r2", "dilution")):
        if key in qc and role not in roles:
            problems.append(f"{src}: 'qc.{key}' needs a sample with role {role!r}, but none is listed")
    dil = [s for s in samples if s.role == "dilution"]
    if "min_dilution_r2" in qc and dil and len({s.dilution for s in dil}) < 3:
        problems.append(f"{src}: 'qc.min_dilution_r2' needs a dilution series of at least 3 different factors, "
                        f"found {sorted({s.dilution for s in dil})}")
