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
