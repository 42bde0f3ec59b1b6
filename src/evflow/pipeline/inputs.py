"""What the experiment's input files hold, for validation (FCS channels, events and ``$VOL``, TIFF channel
counts), and the settings about reading FCS files (``[flow] scale``; ``data_offsets`` of ``[flow]``, of each
``[[samples]]`` table and of each ``[flow.calibration.*]`` table)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["fcs_sample", "fcs_without_volume", "check_channels", "check_calibration_file", "check_flow_files",
           "check_flow_reading", "sample_offsets", "flow_offsets", "offsets_entry", "offsets_message",
           "calibration_channels", "flow_scale", "read_flow", "tiff_channels", "FLOW_KEYS"]

_OFFSETS = "auto, header or text: where the DATA segment lies when the FCS HEADER and TEXT disagree"
_OWN = (str, None, "", f"{_OFFSETS}, for this file (default: [flow] data_offsets)")
#: keys read here (made config Keys in config.SCHEMA): section -> name -> (type, default, unit, what is expected)
FLOW_KEYS = {
    "flow": {
        "scale": (str, "auto", "", "auto, raw, linear or linear-gain (what the event values are; see "
                                   "evflow.io.fcs.scale)"),
        "data_offsets": (str, "auto", "", f"{_OFFSETS} (see evflow.read_fcs); the default of every flow file"),
    },
    "flow.calibration.fluorescence": {"data_offsets": _OWN},
    "flow.calibration.size": {"data_offsets": _OWN},
    "samples": {"data_offsets": _OWN},
}


def flow_scale(flow_s) -> str:
    """The ``[flow] scale`` setting (default ``"auto"``: each file's instrument default)."""
    return str((flow_s or {}).get("scale", FLOW_KEYS["flow"]["scale"][1]))


def flow_offsets(table, flow_s) -> str:
    """Where the DATA of a flow file lies (``read_fcs(data_offsets=)``): the ``data_offsets`` of its own table
    (a ``[[samples]]`` or ``[flow.calibration.*]`` table), else of ``[flow]``, else ``"auto"``."""
    for t in (table, flow_s):
        v = t.get("data_offsets") if isinstance(t, Mapping) else None
        if v is not None:
            return str(v)
    return "auto"


def offsets_entry(choice: str) -> dict:
    """``{"data_offsets": choice}``, or ``{}`` for ``"auto"`` (what item fingerprints and provenance hold, so a
    file read as by default fingerprints as it did before the setting existed)."""
    return {} if choice == "auto" else {"data_offsets": choice}


def _valid_offsets(choice) -> bool:
    from ..io.fcs.offsets import DATA_OFFSETS

    return choice in DATA_OFFSETS


def _check_offsets(table, key, src, problems) -> None:
    v = table.get("data_offsets") if isinstance(table, Mapping) else None
    if isinstance(v, str) and not _valid_offsets(v):
        problems.append(f"{src}: '{key}.data_offsets' is {v!r}, expected one of auto, header, text")


def sample_offsets(s, flow_s, key, src, problems) -> str:
    """The ``data_offsets`` of the ``[[samples]]`` table ``s`` (at ``key``), else of ``[flow]``; a value that
    is not auto, header or text is a problem."""
    _check_offsets(s, key, src, problems)
    return flow_offsets(s, flow_s)


def check_flow_reading(flow_s, src, problems) -> None:
    """``flow.scale`` must name a scale policy, and ``data_offsets`` (of ``[flow]`` and its calibrations) be
    auto, header or text."""
    from ..io.fcs.scale import SCALE_CHOICES

    v = (flow_s or {}).get("scale")
    if isinstance(v, str) and v not in SCALE_CHOICES:
        problems.append(f"{src}: 'flow.scale' is {v!r}, expected one of {', '.join(SCALE_CHOICES)}")
    _check_offsets(flow_s, "flow", src, problems)
    cal = flow_s.get("calibration") if isinstance(flow_s, Mapping) else None
    for kind in ("fluorescence", "size"):
        _check_offsets(cal.get(kind) if isinstance(cal, Mapping) else None, f"flow.calibration.{kind}", src,
                       problems)


def offsets_message(exc, who: str, key: str) -> str | None:
    """For an error of ``read_fcs`` that cannot decide between the HEADER's and the TEXT's DATA offsets: its
    reason and the experiment-file ``key`` that chooses for ``who`` (e.g. ``"sample 'S1'"``); else None."""
    choices = getattr(exc, "choices", None)
    if not choices:
        return None
    (hb, he), (tb, te) = choices["header"], choices["text"]
    return (f"{exc.reason}; if you know which is right, choose it for {who} in the experiment file: "
            f"'{key}' = \"header\" reads bytes {hb}-{he}, \"text\" reads bytes {tb}-{te}")


def read_flow(path, flow_s, chunk_events=None, data_offsets="auto", who=None):
    """An FCS file of the experiment, its events on the experiment's scale policy (``[flow] scale``) and its DATA
    where ``data_offsets`` says.  ``who``: (what the file is, its ``data_offsets`` key), which an error about
    offsets that cannot be decided names instead of ``read_fcs(data_offsets=)``."""
    from ..errors import FCSDataError
    from ..io.fcs import read_fcs

    pol = flow_scale(flow_s)
    try:
        return read_fcs(path, scale=True if pol == "auto" else pol, chunk_events=chunk_events,
                        data_offsets=data_offsets)
    except FCSDataError as exc:
        msg = offsets_message(exc, *who) if who else None
        if msg is None:
            raise
        raise FCSDataError(msg, path) from None


def calibration_channels(cal, kind) -> dict:
    """channel -> key of the channels a ``[flow.calibration.<kind>]`` table reads from its bead file."""
    out = {cal["channel"]: f"flow.calibration.{kind}.channel"}
    for ch in cal.get("clustering_channels") or []:
        if isinstance(ch, str):
            out.setdefault(ch, f"flow.calibration.{kind}.clustering_channels")
    return out

_SAMPLE_CACHE: dict = {}


def fcs_sample(path: Path, data_offsets: str = "auto"):
    """The FCSSample of ``path`` with its DATA where ``data_offsets`` says, HEADER and TEXT only (cached by path,
    mtime, size and ``data_offsets``), or None when unreadable."""
    try:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size, data_offsets)
        if key not in _SAMPLE_CACHE:
            from ..io.fcs import read_fcs

            _SAMPLE_CACHE[key] = read_fcs(path, data_offsets=data_offsets)
        return _SAMPLE_CACHE[key]
    except Exception:
        return None


def fcs_without_volume(path: Path, data_offsets: str = "auto") -> bool:
    """True when ``path`` reads as FCS and has no ``$VOL``.  A ``$VOL`` that is there but unusable
    (0, not a number) is not flagged here: running the sample reports it."""
    from ..errors import FCSError

    fcs = fcs_sample(path, data_offsets)
    if fcs is None:
        return False
    try:
        return fcs.volume_nl() is None
    except FCSError:
        return False


def _missing(s, needed):
    """``[(channel, key, reason)]`` of the channels of ``needed`` the sample ``s`` cannot resolve."""
    from ..errors import FCSError

    out = []
    for ch, key in needed.items():
        try:
            s.channel_index(ch)
        except FCSError as exc:
            msg = str(exc)[len(str(s.path)) + 2:] if str(exc).startswith(f"{s.path}: ") else str(exc)
            out.append((ch, key, msg.split("; channels ($PnN")[0]))
    return out


def check_channels(path: Path, needed: Mapping[str, str], problems: list, src: str, sample_key=None,
                   data_offsets="auto", who=None):
    """Append a problem for each channel of ``needed`` (channel -> key that needs it) that ``path`` lacks
    (with the closest names), and the file's channels once.  ``data_offsets`` and ``who``: as for
    :func:`read_flow`."""
    from ..io.fcs import read_fcs
    from ..io.fcs.text import describe_channels

    try:
        s = read_fcs(path, data_offsets=data_offsets)
    except Exception as exc:
        why = (offsets_message(exc, *who) if who else None) or exc
        problems.append(f"{src}: '{sample_key or 'file'}' {path.name} cannot be read as FCS: {why}")
        return
    if s.n_events == 0:
        problems.append(f"{src}: '{next(iter(needed.values()), sample_key or 'file')}' file {path.name} holds "
                        "0 events (an empty data set)")
    miss = _missing(s, needed)
    for ch, key, why in miss:
        problems.append(f"{src}: '{key}' {_why(ch, why, (sample_key + ' ' if sample_key else '') + path.name)}")
    if miss:
        problems.append(f"{src}: {path.name}: {describe_channels(s.channels, s.markers)}")


def _why(ch, why, where) -> str:
    """``channel 'X' is not in a.fcs (did you mean 'Y'?)``, or the ambiguity, for a problem line."""
    if why.startswith("no channel"):
        hint = why[len(f"no channel {ch!r}"):]
        return f"channel {ch!r} is not in {where}{hint}"
    return f"channel {ch!r} cannot be used in {where}: {why}"


def check_calibration_file(c, kind, flow_s, resolve, check_files, problems, src) -> None:
    """The bead file of ``[flow.calibration.<kind>]`` (``c``): there, readable where its ``data_offsets`` says,
    and holding the channels the calibration reads."""
    if not isinstance(c.get("file"), str):
        return
    bp = resolve(c["file"])
    if check_files and not bp.is_file():
        problems.append(f"{src}: 'flow.calibration.{kind}.file' {c['file']!r} not found (looked at {bp})")
    elif check_files and isinstance(c.get("channel"), str) and _valid_offsets(flow_offsets(c, flow_s)):
        check_channels(bp, calibration_channels(c, kind), problems, src, data_offsets=flow_offsets(c, flow_s),
                       who=(f"the {kind} beads", f"flow.calibration.{kind}.data_offsets"))


#: roles whose events other samples' numbers derive from (buffer subtraction, thresholds, calibration):
#: an empty file of one of these stops the run at validation; any other empty file fails only itself
_NEEDED_ROLES = ("buffer", "unstained", "isotype", "beads")


def check_flow_files(flow_s, samples, flow_samples, needed_channels, src, problems):
    """For every flow file: readable, not empty, the channels the gates and markers use (each missing
    channel once, naming every file that lacks it; each distinct channel list once), and an analysed
    volume that is there and plausible (:data:`evflow.io.fcs.acquisition.PLAUSIBLE_FLOW_UL_PER_MIN`)."""
    from ..errors import FCSError
    from ..io.fcs.acquisition import flow_rate_problem
    from ..io.fcs.text import clock_seconds, describe_channels

    missing: dict = {}  # (channel, key, reason) -> [file keys]
    listings: dict = {}  # channel list -> first file
    for i, s in enumerate(samples):
        if s.flow is None or not s.flow.is_file() or not _valid_offsets(s.data_offsets):
            continue  # (a data_offsets that is not a choice is a problem already)
        where = f"samples[{i}].flow"
        fcs = fcs_sample(s.flow, s.data_offsets)
        if fcs is None:
            try:
                from ..io.fcs import read_fcs

                read_fcs(s.flow, data_offsets=s.data_offsets)
                why = "unreadable"
            except Exception as exc:  # the reader's own words, or the key that decides where its DATA lies
                choose = offsets_message(exc, f"sample {s.name!r}", f"samples[{i}].data_offsets")
                if choose:
                    problems.append(f"{src}: 'samples[{i}]' ({s.name}): {s.flow.name}: {choose}")
                    continue
                why = str(exc)
            problems.append(f"{src}: '{where}' {s.flow.name} cannot be read as FCS: {why}")
            continue
        if fcs.n_events == 0:
            msg = f"{src}: 'samples[{i}]' ({s.name}): {s.flow.name} holds 0 events (an empty data set)"
            if s.role not in _NEEDED_ROLES:
                # a per-sample problem: no other sample's numbers derive from it, so the run reports it as
                # failed and completes the others; a control the others need stops the run here
                import warnings

                from ..errors import EvflowWarning

                warnings.warn(f"{msg}; the run will report {s.name!r} as failed and complete the others",
                              EvflowWarning, stacklevel=2)
            else:
                problems.append(f"{msg}: the {s.role} control is needed by the other samples")
        miss = _missing(fcs, needed_channels)
        for m in miss:
            missing.setdefault(m, []).append(f"{where} {s.flow.name}")
        if miss:
            listings.setdefault(describe_channels(fcs.channels, fcs.markers), s.flow.name)
        if s.role == "beads" or s.volume_ul is not None or "flow_rate_ul_per_min" in flow_s:
            continue  # $VOL is not used
        raw = str(fcs.meta.get("$VOL", "") or "").strip()
        try:
            vol = fcs.volume_nl()
        except FCSError:
            problems.append(f"{src}: 'samples[{i}]' ({s.name}): $VOL is {raw} in {s.flow.name}, not a usable "
                            "volume: give 'volume_ul' or 'flow.flow_rate_ul_per_min'")
            continue
        if vol is None:
            problems.append(f"{src}: 'samples[{i}]' ({s.name}): no analysed volume: give 'volume_ul', "
                            "'flow.flow_rate_ul_per_min', or a file with $VOL")
            continue
        why = flow_rate_problem(vol, clock_seconds(fcs.meta))
        if why:
            problems.append(f"{src}: 'samples[{i}]' ({s.name}): {s.flow.name}: {why}; give 'volume_ul' "
                            "(or 'flow.flow_rate_ul_per_min')")
    for (ch, key, why), files in missing.items():
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        problems.append(f"{src}: '{key}' {_why(ch, why, shown)}")
    for listing, name in listings.items():
        problems.append(f"{src}: {name}{' and the other flow files' if len(listings) == 1 else ''}: {listing}")


def tiff_channels(path: Path):
    """Number of channels of a TIFF's first series (None when unreadable)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            shape = tf.series[0].shape
        return 1 if len(shape) == 2 else int(shape[-3])
    except Exception:
        return None
