"""Writing FCS 3.1 and 3.2 list-mode files: float32 by default; I, F, D per channel in FCS 3.2."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import FCSError
from .header import HEADER_SIZE

_STRUCTURAL = re.compile(
    r"^\$(BEGINDATA|ENDDATA|BEGINANALYSIS|ENDANALYSIS|BEGINSTEXT|ENDSTEXT|NEXTDATA|PAR|TOT|DATATYPE|BYTEORD|MODE|"
    r"P\d+[NSBERG]|P\d+DATATYPE|SPILLOVER_PLACEHOLDER)$"
)

#: bytes of a stored value per datatype (I: 16, 32 or 64 bits, from the channel's range)
_FLOAT_BYTES = {"F": 4, "D": 8}
#: FCS 3.2 $PnFEATURE values
_FEATURES = ("Area", "Height", "Width")
#: FCS 3.2 $PnTYPE values (others are written as given)
_TYPES = ("Forward_Scatter", "Side_Scatter", "Raw_Fluorescence", "Unmixed_Fluorescence", "Mass", "Time",
          "Electronic_Volume", "Classification", "Index", "Other")


def _escape(s: str) -> str:
    return s.replace("/", "//")


def write_fcs(path, data, channels: Sequence[str], markers: Sequence[str | None] | None = None,
              meta: Mapping[str, object] | None = None, *, ranges: Sequence[float] | None = None,
              version: str = "3.1", datatypes: str | Sequence[str] | None = None,
              types: Sequence[str | None] | None = None, features: Sequence[str | None] | None = None,
              detectors: Sequence[str | None] | None = None, analytes: Sequence[str | None] | None = None,
              tags: Sequence[str | None] | None = None) -> Path:
    """Write events to an FCS 3.1 or 3.2 file (list mode, little-endian; float32 unless ``datatypes`` says).

    Parameters
    ----------
    path : str or Path
        Output file; written to a temporary file beside it, then renamed, so a
        failed write never leaves a file that looks complete.
    data : array-like, (n_events, n_channels)
        NumPy, CuPy or dask array; dask arrays are written chunk by chunk.
    channels : sequence of str
        ``$PnN`` names (unique, non-empty).
    markers : sequence of str or None, optional
        ``$PnS`` names.
    meta : mapping, optional
        Extra TEXT keywords (e.g. ``{"$CYT": "...", "SAMPLE_ID": "..."}``).
        Structural keywords (``$PAR``, ``$TOT``, ``$PnB`` ...) are computed by
        the writer and ignored if given.
    ranges : sequence of float, optional
        ``$PnR`` per channel; default: the channel's maximum, rounded up (integer channels: the
        maximum + 1, as ``$PnR`` is one past the largest integer stored).
    version : {"3.1", "3.2"}
        The FCS version in the HEADER.
    datatypes : str or sequence of str, optional
        How each channel is stored: ``"I"`` (unsigned integers, 16, 32 or 64 bits as the range
        needs), ``"F"`` (float32) or ``"D"`` (float64); one letter for all channels, or one per
        channel.  Mixed types need ``version="3.2"`` (written as ``$PnDATATYPE``, the most common
        type as ``$DATATYPE``).  Values of an ``"I"`` channel must be integers in ``[0, $PnR)``.
        Default: all ``"F"``.
    types, features, detectors, analytes, tags : sequence of str or None, optional
        FCS 3.2 channel keywords ``$PnTYPE`` (e.g. ``"Forward_Scatter"``, ``"Raw_Fluorescence"``,
        ``"Time"``), ``$PnFEATURE`` (``"Area"``, ``"Height"`` or ``"Width"``), ``$PnDET``,
        ``$PnANALYTE`` and ``$PnTAG``, one per channel (None: not written).  File-level 3.2
        keywords (``$BEGINDATETIME``, ``$ENDDATETIME``, ``$FLOWRATE``) go in ``meta``.

    Returns
    -------
    Path
    """
    from ...backend import to_numpy

    path = Path(path)
    channels = [str(c) for c in channels]
    nch = len(channels)
    if nch == 0:
        raise FCSError("write_fcs needs at least one channel", path)
    if any(not c.strip() for c in channels):
        raise FCSError(f"channel names must be non-empty, got {channels}", path)
    if len(set(channels)) != nch:
        raise FCSError(f"channel names must be unique, got {channels}", path)
    if markers is not None and len(markers) != nch:
        raise FCSError(f"{len(markers)} markers given for {nch} channels", path)
    is_dask = type(data).__module__.split(".")[0] == "dask"
    if not is_dask:
        data = to_numpy(data)
    if data.ndim != 2 or data.shape[1] != nch:
        raise FCSError(f"data has shape {tuple(data.shape)}, expected (n_events, {nch})", path)
    n = int(data.shape[0])
    given_r = ranges
    if ranges is None:
        if is_dask:
            import dask.array as da

            mx = np.asarray(da.nanmax(data, axis=0).compute()) if n else np.zeros(nch)
        else:
            mx = np.nanmax(data, axis=0) if n else np.zeros(nch)
        ranges = [max(1, int(math.ceil(float(v)))) if np.isfinite(v) else 262144 for v in mx]
    elif len(ranges) != nch:
        raise FCSError(f"{len(ranges)} ranges given for {nch} channels", path)
    ranges = list(ranges)

    version = str(version).upper().removeprefix("FCS")
    if version not in ("3.1", "3.2"):
        raise FCSError(f"version={version!r}, expected '3.1' or '3.2'", path)
    kinds = _kinds(datatypes, channels, version, path)
    widths = [_FLOAT_BYTES.get(k, 0) for k in kinds]
    for i, k in enumerate(kinds):
        if k == "I":
            if given_r is None:  # $PnR is one past the largest integer stored
                ranges[i] = max(1, int(math.ceil(float(mx[i]))) + 1) if np.isfinite(mx[i]) else 65536
            r = float(ranges[i])
            if not (math.isfinite(r) and r >= 1):
                raise FCSError(f"channel {channels[i]!r} ($P{i + 1}DATATYPE I): range {ranges[i]!r}, expected >= 1", path)
            widths[i] = 2 if r <= 2**16 else 4 if r <= 2**32 else 8
    common = max(("F", "D", "I"), key=lambda k: (kinds.count(k), k == kinds[0]))
    per_channel = {
        "TYPE": _per_channel(types, "types", nch, path, _TYPES),
        "FEATURE": _per_channel(features, "features", nch, path, _FEATURES, strict=True),
        "DET": _per_channel(detectors, "detectors", nch, path),
        "ANALYTE": _per_channel(analytes, "analytes", nch, path),
        "TAG": _per_channel(tags, "tags", nch, path),
    }

    kw: dict[str, str] = {
        "$BYTEORD": "1,2,3,4",
        "$DATATYPE": common,
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(nch),
        "$TOT": str(n),
    }
    for i, c in enumerate(channels, start=1):
        kw[f"$P{i}N"] = c
        if markers is not None and markers[i - 1]:
            kw[f"$P{i}S"] = str(markers[i - 1])
        kw[f"$P{i}B"] = str(8 * widths[i - 1])
        if kinds[i - 1] != common:
            kw[f"$P{i}DATATYPE"] = kinds[i - 1]
        kw[f"$P{i}E"] = "0,0"
        r = ranges[i - 1]
        kw[f"$P{i}R"] = str(int(r)) if float(r) == int(r) else repr(float(r))
        for key, values in per_channel.items():
            if values is not None and values[i - 1]:
                kw[f"$P{i}{key}"] = values[i - 1]
    for k, v in (meta or {}).items():
        key = str(k).strip().upper()
        if not key or _STRUCTURAL.match(key):
            continue
        val = str(v)
        kw[key] = val if val.strip() else " "

    row_bytes = sum(widths)
    data_bytes = n * row_bytes

    def text_for(begin: int, end: int) -> bytes:
        items = dict(kw)
        items["$BEGINDATA"] = str(begin if n else 0)
        items["$ENDDATA"] = str(end if n else 0)
        items["$BEGINANALYSIS"] = "0"
        items["$ENDANALYSIS"] = "0"
        items["$BEGINSTEXT"] = "0"
        items["$ENDSTEXT"] = "0"
        body = "/" + "".join(f"{_escape(k)}/{_escape(v)}/" for k, v in items.items())
        return body.encode("utf-8")

    text_begin = HEADER_SIZE
    data_begin = 0
    for _ in range(10):  # offsets are written in TEXT, whose length depends on them
        text = text_for(data_begin, data_begin + data_bytes - 1 if n else 0)
        new_begin = text_begin + len(text)
        if new_begin == data_begin:
            break
        data_begin = new_begin
    text = text_for(data_begin, data_begin + data_bytes - 1 if n else 0)
    text_end = text_begin + len(text) - 1
    data_end = data_begin + data_bytes - 1 if n else 0
    big = data_end > 99_999_999

    def f8(v: int) -> bytes:
        return f"{v:>8d}".encode("ascii")

    header = f"FCS{version}    ".encode("ascii") + f8(text_begin) + f8(text_end)
    header += (f8(0) + f8(0)) if (big or not n) else (f8(data_begin) + f8(data_end))
    header += f8(0) + f8(0)
    assert len(header) == HEADER_SIZE

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(text)
            if is_dask:
                for block in data.rechunk({1: -1}).to_delayed().ravel():
                    f.write(_encode(to_numpy(block.compute()), kinds, widths, ranges, channels, path))
            else:
                f.write(_encode(data, kinds, widths, ranges, channels, path))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


def _kinds(datatypes, channels, version, path) -> list[str]:
    nch = len(channels)
    if datatypes is None:
        return ["F"] * nch
    kinds = [str(datatypes)] * nch if isinstance(datatypes, str) else [str(d) for d in datatypes]
    if len(kinds) != nch:
        raise FCSError(f"{len(kinds)} datatypes given for {nch} channels", path)
    kinds = [k.strip().upper() for k in kinds]
    for c, k in zip(channels, kinds):
        if k not in ("I", "F", "D"):
            raise FCSError(f"datatype of channel {c!r} is {k!r}, expected 'I', 'F' or 'D'", path)
    if len(set(kinds)) > 1 and version != "3.2":
        raise FCSError(f"datatypes {kinds} mix types, which only FCS 3.2 can store ($PnDATATYPE): "
                       "pass version='3.2'", path)
    return kinds


def _per_channel(values, what, nch, path, known=(), strict=False):
    """One stripped value (or None) per channel, known names in their standard spelling."""
    if values is None:
        return None
    if isinstance(values, str) or len(values) != nch:
        raise FCSError(f"{what}: expected a sequence of {nch} values (one per channel), got {values!r}", path)
    out = []
    for v in values:
        s = "" if v is None else str(v).strip()
        canon = next((k for k in known if k.lower() == s.lower()), None)
        if s and strict and canon is None:
            raise FCSError(f"{what}: {s!r}, expected one of {list(known)}", path)
        out.append(canon or s or None)
    return out


def _encode(arr, kinds, widths, ranges, channels, path) -> bytes:
    """DATA bytes of a block of events (little-endian rows)."""
    arr = np.asarray(arr)
    if all(k == "F" for k in kinds):
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    fmt = [("<u" if k == "I" else "<f") + str(w) for k, w in zip(kinds, widths)]
    rec = np.empty(arr.shape[0], dtype=np.dtype({"names": [f"c{i}" for i in range(len(kinds))], "formats": fmt}))
    for i, k in enumerate(kinds):
        col = arr[:, i]
        if k == "I":
            col = np.asarray(col, dtype=np.float64) if col.dtype.kind == "f" else col
            top = float(ranges[i])
            bad = ~np.isfinite(col) | (col < 0) | (col >= top) | (col != np.floor(col)) if col.dtype.kind == "f" \
                else (col < 0) | (col >= top)
            if np.any(bad):
                v = col[np.argmax(bad)]
                raise FCSError(f"channel {channels[i]!r} is stored as integers ($P{i + 1}DATATYPE I, $P{i + 1}R="
                               f"{ranges[i]}) but holds {float(v):.10g}; expected integers 0 .. {ranges[i]} - 1", path)
        rec[f"c{i}"] = col
    return rec.tobytes()
