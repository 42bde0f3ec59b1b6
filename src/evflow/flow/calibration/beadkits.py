"""Bead kits as data: reference values of calibration-bead products, per lot.

Each kit is a TOML file (shipped in ``evflow/flow/calibration/kits/``, or the
user's own) with a ``[kit]`` table and one ``[[lot]]`` table per lot (or group
of lots sharing one value sheet)::

    [kit]
    name = "my-beads"                 # what bead_kit() is called with
    aliases = ["mb"]                  # optional other names
    product = "Vendor, product, catalogue number"
    kind = "fluorescence"             # or "size"
    populations = 8                   # populations in the vial (optional)
    blank = true                      # a blank population (optional)

    [[lot]]
    lots = ["A01", "A02"]             # lot numbers sharing these values
    source = "where the values come from"
    MEFL = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]   # unit -> values, dimmest first
    MEPE = [0, 531, 1504, 4819, 12506, 36159, 109588, 250892]
    # size kits instead: diameters_nm = [...], refractive_index = 1.59 (optional)

A user's kits are read from the file (or folder of files) named by the
``EVFLOW_BEAD_KITS`` environment variable (several joined by ``os.pathsep``)
and from ``[beads] kits_file`` of an experiment; a user kit with the name of a
shipped one replaces it.  A file may hold several kits as ``[[kits]]`` tables,
each with its own ``[kits.kit]``-style keys and ``[[kits.lot]]`` tables.

Only values that are public are shipped: Spherotech RCP-30-5A (8-peak rainbow,
three lot sheets) and the diameters of Rosetta Calibration as used by
FlowCyPy (no refractive index).  ApogeeMix, Megamix-Plus and NanoVis are not
shipped (their lot values could not be sourced); add them from the vendor's
sheet with a kits file.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ...errors import CalibrationError

__all__ = ["BeadKit", "bead_kit", "list_bead_kits", "kit_values", "ENV_VAR"]

#: environment variable naming a user's kits file(s) or folder(s), joined by os.pathsep
ENV_VAR = "EVFLOW_BEAD_KITS"

_SIZE_KEYS = ("diameters_nm", "refractive_index")
_LOT_KEYS = ("lots", "source", "note")


@dataclass(frozen=True)
class BeadKit:
    """Reference values of one lot of a bead product.

    Attributes
    ----------
    name : str
        Registry name (``bead_kit(name)``).
    lot : str
        The lot asked for (or the kit's only lot).
    product, kind, source : str
        Product description, ``"fluorescence"`` or ``"size"``, where the values come from.
    values : dict
        Unit (``"MEFL"``, ``"MEPE"``...) -> ndarray of the values, dimmest first
        (0 for the blank); fluorescence kits.
    diameters_nm : ndarray or None
        Bead diameters (nm), smallest first; size kits.
    refractive_index : float or None
        Bead refractive index, when the source states it.
    populations : int or None
        Populations in the vial, when known.
    file : str
        The TOML file the kit was read from.
    """

    name: str
    lot: str
    product: str = ""
    kind: str = "fluorescence"
    source: str = ""
    values: dict = field(default_factory=dict)
    diameters_nm: np.ndarray | None = None
    refractive_index: float | None = None
    populations: int | None = None
    lots: tuple = ()
    file: str = ""

    @property
    def units(self) -> list[str]:
        """The units (fluorophores) with values in this lot."""
        return list(self.values)

    def mesf(self, units: str | None = None) -> np.ndarray:
        """The values of ``units`` (any case); without ``units``, of the kit's only unit."""
        if not self.values:
            raise CalibrationError(f"bead kit {self.name!r} lot {self.lot!r} is a {self.kind} kit without "
                                   "fluorescence values (it lists diameters)")
        if units is None:
            if len(self.values) == 1:
                return next(iter(self.values.values())).copy()
            raise CalibrationError(f"bead kit {self.name!r} lot {self.lot!r} has values for {self.units}: "
                                   "say which with units=")
        for u, v in self.values.items():
            if u.upper() == str(units).upper():
                return v.copy()
        raise CalibrationError(f"bead kit {self.name!r} lot {self.lot!r} has no {units!r} values; "
                               f"it has values for {self.units}")

    def unit_name(self, units: str | None = None) -> str:
        """The kit's spelling of ``units`` (its only unit when None)."""
        self.mesf(units)  # raises with the available units
        if units is None:
            return next(iter(self.values))
        return next(u for u in self.values if u.upper() == str(units).upper())


def _problem(where: str, msg: str):
    return CalibrationError(f"{where}: {msg}")


def _parse_kit(table: dict, where: str) -> dict:
    """A validated kit dict from one TOML table (``[kit]`` + ``[[lot]]``)."""
    head = table.get("kit")
    lots = table.get("lot")
    if not isinstance(head, dict) or not isinstance(head.get("name"), str) or not head["name"].strip():
        raise _problem(where, "a bead kit needs a [kit] table with a name = \"...\"")
    name = head["name"].strip()
    kind = head.get("kind", "fluorescence")
    if kind not in ("fluorescence", "size"):
        raise _problem(where, f"kit {name!r}: kind = {kind!r}, expected \"fluorescence\" or \"size\"")
    if not isinstance(lots, list) or not lots or not all(isinstance(lt, dict) for lt in lots):
        raise _problem(where, f"kit {name!r} needs at least one [[lot]] table")
    parsed = []
    for j, lot in enumerate(lots):
        lw = f"kit {name!r} lot table {j + 1}"
        names = lot.get("lots", [f"lot{j + 1}"] if len(lots) == 1 else None)
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(s, str) for s in names):
            raise _problem(where, f"{lw}: lots = [...] must list the lot numbers these values belong to")
        values, diam, ri = {}, None, None
        for key, v in lot.items():
            if key in _LOT_KEYS:
                continue
            if key == "refractive_index":
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                    raise _problem(where, f"{lw}: refractive_index = {v!r}, expected a positive number")
                ri = float(v)
                continue
            if not isinstance(v, list) or not v or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise _problem(where, f"{lw}: {key} must be a list of numbers, found {v!r}")
            arr = np.asarray(v, float)
            if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(np.diff(arr) <= 0):
                raise _problem(where, f"{lw}: {key} = {v} must be finite, >= 0 and increasing (dimmest first)")
            if key == "diameters_nm":
                diam = arr
            else:
                values[key] = arr
        if kind == "size" and diam is None:
            raise _problem(where, f"{lw}: a size kit needs diameters_nm = [...]")
        if kind == "fluorescence" and not values:
            raise _problem(where, f"{lw}: a fluorescence kit needs values per unit, e.g. MEFL = [0, 792, ...]")
        parsed.append({"lots": tuple(names), "source": str(lot.get("source", "")), "values": values,
                       "diameters_nm": diam, "refractive_index": ri})
    aliases = head.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise _problem(where, f"kit {name!r}: aliases must be a list of names")
    pops = head.get("populations")
    return {"name": name, "aliases": [a.strip() for a in aliases], "product": str(head.get("product", "")),
            "kind": kind, "populations": int(pops) if isinstance(pops, int) else None, "lots": parsed,
            "file": where}


def _read_file(path: Path) -> list[dict]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"bead kits file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"bead kits file {path}: not valid TOML: {exc}") from None
    if "kits" in data:
        if not isinstance(data["kits"], list):
            raise CalibrationError(f"bead kits file {path}: 'kits' must be an array of [[kits]] tables")
        return [_parse_kit(t, f"{path} [[kits]] {i + 1}") for i, t in enumerate(data["kits"])]
    return [_parse_kit(data, str(path))]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob("*.toml"))
    return [path]


def _shipped() -> list[dict]:
    root = resources.files("evflow.flow.calibration") / "kits"
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            with resources.as_file(entry) as p:
                out.extend(_read_file(Path(p)))
    return out


def _registry(kits_file=None) -> dict:
    """name (lower case) -> kit dict: shipped kits, then EVFLOW_BEAD_KITS, then ``kits_file``."""
    kits = {}
    sources = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    extra = [] if kits_file is None else ([kits_file] if isinstance(kits_file, (str, Path)) else list(kits_file))
    found = _shipped()
    for src in [*sources, *extra]:
        for f in _files(Path(src).expanduser()):
            found.extend(_read_file(f))
    for k in found:
        kits[k["name"].lower()] = k
    return kits


def _lookup(name: str, kits: dict) -> dict:
    key = str(name).strip().lower()
    if key in kits:
        return kits[key]
    for k in kits.values():
        if key in (a.lower() for a in k["aliases"]):
            return k
    raise CalibrationError(f"no bead kit {name!r}; available: {sorted(k['name'] for k in kits.values())} "
                           f"(add your own with a kits file: {ENV_VAR} or [beads] kits_file)")


def list_bead_kits(kits_file=None) -> dict:
    """Every known bead kit: name -> ``{"product", "kind", "lots", "units", "aliases", "file"}``.

    ``kits_file`` (a TOML file or folder, or a list of them) adds to the shipped
    kits and those of ``EVFLOW_BEAD_KITS``.
    """
    out = {}
    for k in sorted(_registry(kits_file).values(), key=lambda k: k["name"]):
        units = sorted({u for lot in k["lots"] for u in lot["values"]})
        out[k["name"]] = {"product": k["product"], "kind": k["kind"],
                          "lots": [n for lot in k["lots"] for n in lot["lots"]], "units": units,
                          "aliases": list(k["aliases"]), "file": k["file"]}
    return out


def bead_kit(name: str, lot: str | None = None, *, kits_file=None) -> BeadKit:
    """The reference values of bead kit ``name``, lot ``lot``.

    Parameters
    ----------
    name : str
        Kit name or alias (any case), e.g. ``"spherotech-rcp-30-5a"``; see
        :func:`list_bead_kits`.
    lot : str, optional
        Lot number (any case).  Needed when the kit has lots with different
        values (values differ from lot to lot).
    kits_file : str, Path or list, optional
        A user's kits file or folder, in addition to ``EVFLOW_BEAD_KITS``.

    Raises
    ------
    CalibrationError
        Unknown kit or lot (the message lists the available ones), or a
        malformed kits file (naming the file and table).
    """
    k = _lookup(name, _registry(kits_file))
    all_lots = [n for lt in k["lots"] for n in lt["lots"]]
    if lot is None:
        if len(k["lots"]) > 1:
            raise CalibrationError(f"bead kit {k['name']!r} has lots with different values; give lot= "
                                   f"(one of {all_lots})")
        chosen, lot_name = k["lots"][0], k["lots"][0]["lots"][0]
    else:
        want = str(lot).strip().upper()
        match = [lt for lt in k["lots"] if want in (n.upper() for n in lt["lots"])]
        if not match:
            raise CalibrationError(f"bead kit {k['name']!r} has no lot {lot!r}; its lots: {all_lots}")
        chosen = match[0]
        lot_name = next(n for n in chosen["lots"] if n.upper() == want)
    return BeadKit(name=k["name"], lot=lot_name, product=k["product"], kind=k["kind"], source=chosen["source"],
                   values={u: v.copy() for u, v in chosen["values"].items()},
                   diameters_nm=None if chosen["diameters_nm"] is None else chosen["diameters_nm"].copy(),
                   refractive_index=chosen["refractive_index"], populations=k["populations"],
                   lots=tuple(chosen["lots"]), file=k["file"])


def kit_values(mesf_values, units: str, placement: str, *, lot=None, units_given: bool = True, channel=None):
    """(values, units, placement) for :func:`~evflow.flow.calibration.calibrate_mesf` from a kit.

    ``mesf_values`` a :class:`BeadKit` or a kit name (``lot`` then picks the
    lot); ``units`` picks the unit when the kit has several (``units_given``
    False: the caller's default, used only when the kit has it).  A kit list
    shorter than the kit's populations is placed by the ``"best"`` rule.
    """
    kit = mesf_values if isinstance(mesf_values, BeadKit) else bead_kit(mesf_values, lot)
    u = units if units_given or any(x.upper() == str(units).upper() for x in kit.values) else None
    try:
        name = kit.unit_name(u)
    except CalibrationError as exc:
        raise CalibrationError(f"channel {channel!r}: {exc}" if channel else str(exc)) from None
    vals = kit.mesf(name)
    if kit.populations and vals.size < kit.populations and placement == "given":
        placement = "best"
    return vals, name, placement
