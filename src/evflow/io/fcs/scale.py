"""Scale policies: what numbers a sample's events are, chosen once per sample.

An FCS file stores channel values; what they mean depends on ``$PnE`` (log amplification)
and ``$PnG`` (gain), and instruments disagree on ``$PnG``.  A sample has one *scale policy*,
used by every function that reads its events (gates, thresholds, calibration, densities,
plots):

``"raw"``
    The stored values (integers after the bit mask), as ``read_fcs(path).to_numpy()`` gives
    them; the time channel in ticks.
``"linear"``
    ``$PnE`` log decoding (``f2 * 10**(f1 * x / $PnR)``) and ``$TIMESTEP`` on the time channel
    (seconds); ``$PnG`` is left alone.
``"linear-gain"``
    As ``"linear"``, then divided by ``$PnG`` (the FCS 3.1 rule for linear channels: scale
    value = channel value / ``$PnG``).

``"auto"`` (the default) picks by instrument (``$CYT``), see :data:`INSTRUMENT_SCALES`:
CytoFLEX and CytoFLEX nano (CytExpert) write the detector gain setting in ``$PnG`` (e.g. 120
for VSSC1) over values that already carry it, the values CytExpert shows and sets trigger
levels in, so they get ``"linear"``; every other instrument gets the standard's
``"linear-gain"``.  BD (FACSDiva, FACSCalibur, Accuri), Cytek, Apogee and NanoFCM files fall
under the standard rule; BD FACSDiva writes ``$PnG`` 1.0, Cytek xP5 writes 1.0 and Aurora none,
so for them ``"linear"`` and ``"linear-gain"`` agree; a FACSCalibur stores amplifier gains
(3.67, 8) that the Gating-ML 2.0 compliance results divide out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...errors import FCSError

__all__ = ["SCALES", "SCALE_CHOICES", "INSTRUMENT_SCALES", "DEFAULT_SCALE", "check_scale", "default_scale",
           "scale_params"]

#: the scale policies a sample can have
SCALES = ("raw", "linear", "linear-gain")
#: what ``scale=`` and ``[flow] scale`` accept
SCALE_CHOICES = ("auto",) + SCALES
#: the policy of an instrument not in :data:`INSTRUMENT_SCALES` (the FCS 3.1 rule)
DEFAULT_SCALE = "linear-gain"
#: (lower-case substring of ``$CYT``, policy, why): the instruments whose ``$PnG`` is not a gain to divide out
INSTRUMENT_SCALES = (
    ("cytoflex", "linear", "CytExpert writes the detector gain setting in $PnG; stored values already carry it"),
)


def check_scale(value, path=None) -> str:
    """``value`` if it is one of :data:`SCALE_CHOICES`, else :class:`FCSError` naming them."""
    if not isinstance(value, str) or value not in SCALE_CHOICES:
        raise FCSError(f"scale {value!r} is not a scale policy; expected one of {', '.join(SCALE_CHOICES)}", path)
    return value


def default_scale(meta: Mapping) -> tuple[str, str]:
    """(policy, why) for a file's keywords under ``"auto"``: by ``$CYT``, else :data:`DEFAULT_SCALE`."""
    cyt = str(meta.get("$CYT", "") or "").strip()
    for key, policy, why in INSTRUMENT_SCALES:
        if key in cyt.lower():
            return policy, f"$CYT {cyt!r}: {why}"
    return DEFAULT_SCALE, "FCS 3.1 rule: linear channels divided by $PnG"


def resolve_scale(value, meta: Mapping, path=None) -> str:
    """The policy ``value`` stands for (``"auto"`` or None: :func:`default_scale`)."""
    if value is None or check_scale(value, path) == "auto":
        return default_scale(meta)[0]
    return value


def scale_params(params: np.ndarray, policy: str) -> np.ndarray:
    """The rows (decades, log0, range, gain, timestep) of ``_scale_params`` restricted to ``policy``."""
    out = np.array(params, dtype=float, copy=True)
    if policy == "raw":
        out[:, 0] = 0.0
        out[:, 4] = 1.0
    if policy in ("raw", "linear"):
        out[:, 3] = 1.0
    return out
