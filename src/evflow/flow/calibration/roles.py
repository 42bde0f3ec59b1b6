"""Channel roles of a bead file on any instrument: scatter, fluorescence, width, time, other.

The role of each channel comes, in this order, from

1. the user (``scatter_channels=`` of :func:`channel_roles`),
2. ``$PnTYPE`` (FCS 3.2: ``Forward_Scatter``, ``Side_Scatter``, ``Raw_Fluorescence``,
   ``Unmixed_Fluorescence``, ``Time``, ...),
3. the channel name: scatter is FSC/SSC (with -A/-H suffixes), VSSC/BSSC/SSC-B
   (violet/blue side scatter) and SALS/LALS/MALS/WALS/LS (small/large/medium/wide
   angle light scatter, e.g. Apogee's ``405SALS``, ``638LS``); width is a name ending
   in ``-W`` or holding ``WIDTH`` (or FSCW/SSC-W...); time is ``Time``/``TIME``/``HDR-T``; event counters
   (``Event``, ``EVENT_COUNT``...) are "other"; the rest is fluorescence.

Bead clustering uses fluorescence channels only; the singlet gate uses two
scatter channels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["channel_roles", "scatter_pair", "fluorescence_channels"]

_TYPE_ROLES = {
    "FORWARD_SCATTER": "scatter",
    "SIDE_SCATTER": "scatter",
    "RAW_FLUORESCENCE": "fluorescence",
    "UNMIXED_FLUORESCENCE": "fluorescence",
    "MASS": "fluorescence",
    "TIME": "time",
    "ELECTRONIC_VOLUME": "scatter",
    "INDEX_SORTING_LOCATIONS": "other",
    "EVENT_SOURCE_ID": "other",
    "CLASSIFICATION": "other",
}

_SCATTER = re.compile(r"(^|[^A-Z])(FSC|SSC|FS|SS|VSSC|BSSC|SSC-B|SALS|LALS|MALS|WALS|LS|SC)([^A-Z]|$)")
_SCATTER_GLUED = re.compile(r"(FSC|SSC|SALS|LALS|MALS|WALS|LS)(-[AHW])?$")
_WIDTH = re.compile(r"(-W$|WIDTH|(^|[^A-Z])W$|^(FSC|SSC|FS|SS)[ _-]?W)")
_OTHER = re.compile(r"^(EVENT|EVENT[ _-]?(COUNT|NUMBER|ID)|HDR-CE|INDEX|SAMPLEID)")


def _pntype(meta, i: int) -> str:
    """``$PnTYPE`` of column ``i`` (0-based), upper case, or "" (the one place the keyword is read)."""
    if not meta:
        return ""
    return str(meta.get(f"$P{i + 1}TYPE", "") or "").strip().upper()


def _role_from_name(name: str) -> str:
    u = name.strip().upper()
    if u.startswith(("TIME", "HDR-T")):
        return "time"
    if _OTHER.match(u):
        return "other"
    if _WIDTH.search(u):
        return "width"
    if _SCATTER.search(u) or _SCATTER_GLUED.search(u) or u.startswith(("FSC", "SSC")) or u in ("FS", "SS", "SC"):
        return "scatter"
    return "fluorescence"


def _names_and_meta(beads):
    if isinstance(beads, (str, Path)):
        from ...io.fcs import read_fcs_metadata

        meta = read_fcs_metadata(beads)
        n = int(meta.get("$PAR", 0))
        return [str(meta.get(f"$P{i}N", "")).strip() for i in range(1, n + 1)], meta
    if hasattr(beads, "channels") and not hasattr(beads, "dims"):
        return list(beads.channels), getattr(beads, "meta", None)
    if hasattr(beads, "columns"):
        return [str(c) for c in beads.columns], None
    if hasattr(beads, "dims") and "channel" in beads.dims:
        return [str(c) for c in beads["channel"].values], None
    if isinstance(beads, Sequence):
        return [str(c) for c in beads], None
    return [], None


def channel_roles(beads, scatter_channels: Sequence[str] | None = None) -> dict:
    """Role of every channel: ``{"name": "scatter" | "fluorescence" | "width" | "time" | "other"}``.

    ``beads`` is a path, an FCSSample, a DataFrame, a DataArray or a list of
    names.  Channels named in ``scatter_channels`` are scatter whatever their
    type or name.
    """
    names, meta = _names_and_meta(beads)
    forced = set(scatter_channels or ())
    roles = {}
    for i, name in enumerate(names):
        if name in forced:
            roles[name] = "scatter"
            continue
        t = _pntype(meta, i)
        role = _TYPE_ROLES.get(t.replace(" ", "_"))
        if role is None:
            role = _role_from_name(name)
        elif role == "fluorescence" and _role_from_name(name) == "width":
            role = "width"
        roles[name] = role
    return roles


def scatter_pair(roles: dict) -> list:
    """Two scatter channels for the singlet gate: forward-like first, side-like second ([] if fewer than 2).

    Among several detectors of one kind the height (-H) or plain one is preferred
    over the area (-A).
    """
    sc = [c for c, r in roles.items() if r == "scatter"]
    if len(sc) < 2:
        return []

    def rank(c):
        u = c.upper()
        return (0 if u.endswith("-H") or not re.search(r"-[AHW]$", u) else 1)

    fwd = [c for c in sc if re.search(r"FSC|^FS($|[^A-Z])|SALS", c.upper())]
    side = [c for c in sc if c not in fwd]
    fwd.sort(key=rank)
    side.sort(key=rank)
    if fwd and side:
        return [fwd[0], side[0]]
    both = sorted(sc, key=rank)
    return both[:2]


def fluorescence_channels(roles: dict) -> list:
    """Channels whose role is fluorescence, in file order."""
    return [c for c, r in roles.items() if r == "fluorescence"]
