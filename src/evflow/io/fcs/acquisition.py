"""What a file says about its acquisition: trigger (threshold) keywords and whether ``$VOL`` is plausible.

Trigger keywords differ by instrument; read here:

- ``THRESHOLD``: ``(FSC,200).AND.(SSC,200)`` (BD FACSDiva), ``(FSC,50000)`` (Cytek Aurora), ``SSC,600``;
- ``#PRIMARYTHRESHOLD``, ``#SECONDARYTHRESHOLD``: ``FSC-H,12000`` (BD Accuri C6);
- ``P<n>THRESVOL`` (BD FACSCalibur, CellQuest): the level on parameter ``n``;
- ``CH<n>TH`` (CytoFLEX, CytExpert), ``$P<n>TH``: the level on parameter ``n``.

Levels are in the instrument's own units (as it triggered on the stored signal), not on a scale policy.

The analysed volume over the acquisition time is a flow rate; flow cytometers run samples at
:data:`PLAUSIBLE_FLOW_UL_PER_MIN` (Apogee A60-Micro from 0.75 uL/min, CytoFLEX and BD 10-240 uL/min,
Attune NxT up to 1 mL/min).  A ``$VOL`` implying a rate outside it is in other units than the
standard's nanolitres (Cytek Aurora writes microlitres: ``$VOL`` 36.6 over 123 s), and every
concentration computed from it would be off by as much.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["PLAUSIBLE_FLOW_UL_PER_MIN", "triggers", "implied_flow_ul_per_min", "flow_rate_problem"]

#: (min, max) sample flow rate in uL/min that a flow cytometer can run
PLAUSIBLE_FLOW_UL_PER_MIN = (0.5, 1000.0)

_TERM = re.compile(r"\(?\s*([^(),]+?)\s*,\s*([-+0-9.eE]+)\s*\)?")
_PER_PARAM = re.compile(r"^\$?(?:P(\d+)THRESVOL|CH(\d+)TH|P(\d+)TH)$", re.IGNORECASE)


def triggers(meta: Mapping, channels) -> list[tuple[str, str, str]]:
    """``[(channel, level, keyword)]`` of the trigger/threshold keywords the file records ([] if none).

    ``channel`` is the name as the keyword gives it (``FSC``) or, for per-parameter keywords, the
    ``$PnN`` of parameter ``n``.
    """
    out = []
    for key, raw in meta.items():
        k = str(key).upper()
        val = str(raw).strip()
        if not val:
            continue
        if k in ("THRESHOLD", "$THRESHOLD", "#PRIMARYTHRESHOLD", "#SECONDARYTHRESHOLD", "#THRESHOLD"):
            terms = [t for t in re.split(r"\.(?:AND|OR)\.", val, flags=re.IGNORECASE) if t.strip()]
            for t in terms:
                m = _TERM.fullmatch(t.strip())
                out.append((m.group(1), m.group(2), str(key)) if m else ("", val, str(key)))
            continue
        m = _PER_PARAM.match(k)
        if m:
            n = int(next(g for g in m.groups() if g))
            name = channels[n - 1] if 1 <= n <= len(channels) else f"parameter {n}"
            out.append((name, val, str(key)))
    return out


def implied_flow_ul_per_min(volume_nl: float, seconds: float) -> float:
    """The flow rate ``$VOL`` implies: nanolitres over seconds, in uL/min."""
    return volume_nl / 1000.0 / (seconds / 60.0)


def flow_rate_problem(volume_nl, seconds) -> str | None:
    """Why ``$VOL`` over the acquisition time is implausible, or None when it is plausible (or unknown)."""
    if volume_nl is None or not seconds or seconds <= 0:
        return None
    rate = implied_flow_ul_per_min(volume_nl, seconds)
    lo, hi = PLAUSIBLE_FLOW_UL_PER_MIN
    if lo <= rate <= hi:
        return None
    return (f"$VOL {volume_nl:g} nL over {seconds:g} s of acquisition implies a flow rate of {rate:.3g} uL/min, "
            f"outside what flow cytometers run ({lo:g}-{hi:g} uL/min): $VOL is probably not in nanolitres "
            f"(x{1000 if rate < lo else 0.001:g} would give {rate * (1000 if rate < lo else 0.001):.3g} uL/min)")
