"""Experiment settings of bead kits, the instrument and time/swarm QC (kept beside config.py).

``[flow.calibration.fluorescence] kit``/``lot`` and ``[flow.calibration.size]
kit``/``lot`` fill ``values``/``diameters_nm`` (and ``bead_index`` when the kit
states it) from the bead-kit registry
(:mod:`evflow.flow.calibration.beadkits`), before the rest of the experiment
is validated; ``[beads] kits_file`` adds a user's kits.  ``[instrument]``
and ``[flow] exclude_bad_time``/``time_bin_s`` set the time and swarm checks
(:mod:`evflow.flow.time_qc`, :mod:`evflow.flow.swarm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import EvflowError

__all__ = ["EXTRA_KEYS", "extend_schema", "apply_bead_kits"]

_NUM = (int, float)

#: section -> key -> (type, default, unit, description): added to config.SCHEMA by extend_schema
EXTRA_KEYS = {
    "beads": {"kits_file": (str, None, "", "a TOML file (or folder) of bead kits")},
    "instrument": {
        "name": (str, None, "", "an instrument model (for its stated maximum event rate)"),
        "max_event_rate": (_NUM, None, "events/s", "the instrument's maximum event rate (events/s)"),
        "width_channel": (str, None, "", "a pulse-width channel name"),
        "width_factor": (_NUM, 1.5, "", "a factor: events wider than factor x the singlet width are flagged"),
        "max_wide_fraction": (_NUM, 0.05, "", "a fraction of wide events above which a sample is flagged"),
    },
    "flow": {
        "exclude_bad_time": (bool, False, "", "true or false: drop the flagged time intervals"),
        "time_bin_s": (_NUM, None, "s", "a time bin (s); default: about 100 bins per acquisition"),
        "time_z": (_NUM, 5.0, "", "a robust z-score for time-QC flags"),
    },
    "flow.calibration.fluorescence": {"kit": (str, None, "", "a bead kit name (evflow.list_bead_kits())"),
                                      "lot": (str, None, "", "a lot number of the kit")},
    "flow.calibration.size": {"kit": (str, None, "", "a bead kit name (evflow.list_bead_kits())"),
                              "lot": (str, None, "", "a lot number of the kit")},
}


def extend_schema(schema: dict, key_type, *more: dict) -> None:
    """Add :data:`EXTRA_KEYS`, then each table of ``more`` (section -> key -> (type, default, unit,
    description)), to the experiment schema (``key_type`` is config.Key)."""
    for extra in (EXTRA_KEYS, *more):
        for section, keys in extra.items():
            schema.setdefault(section, {}).update({k: key_type(*v) for k, v in keys.items()})


def apply_bead_kits(settings: dict, path, problems: list, src: str) -> None:
    """Fill calibration values from ``kit``/``lot`` (in place); a problem per unknown kit, lot or unit."""
    from ..flow.calibration.beadkits import bead_kit

    flow = settings.get("flow")
    cal = flow.get("calibration") if isinstance(flow, Mapping) else None
    if not isinstance(cal, Mapping):
        return
    beads = settings.get("beads") if isinstance(settings.get("beads"), Mapping) else {}
    kits_file = beads.get("kits_file")
    if isinstance(kits_file, str):
        base = Path(path).parent if path else Path.cwd()
        kits_file = base / Path(kits_file).expanduser()
    else:
        kits_file = None
    for kind, target in (("fluorescence", "values"), ("size", "diameters_nm")):
        c = cal.get(kind)
        if not isinstance(c, dict) or not isinstance(c.get("kit"), str):
            continue
        where = f"'flow.calibration.{kind}.kit'"
        if target in c:
            problems.append(f"{src}: {where} and '{target}' are both given; give one")
            continue
        try:
            kit = bead_kit(c["kit"], c.get("lot"), kits_file=kits_file)
            if kind == "fluorescence":
                unit = kit.unit_name(c.get("units"))
                c["values"], c["units"] = kit.mesf(unit).tolist(), unit
            elif kit.diameters_nm is None:
                problems.append(f"{src}: {where} {c['kit']!r} lists no diameters (a fluorescence kit)")
            else:
                c["diameters_nm"] = kit.diameters_nm.tolist()
                if kit.refractive_index is not None and "bead_index" not in c:
                    c["bead_index"] = kit.refractive_index
        except EvflowError as exc:
            ch = c.get("channel")
            problems.append(f"{src}: {where}{f' (channel {ch!r})' if ch else ''}: {exc}")
