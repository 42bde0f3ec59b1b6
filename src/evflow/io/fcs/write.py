"""Writing FCS 3.1 list-mode float32 files."""

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
    r"P\d+[NSBERG]|SPILLOVER_PLACEHOLDER)$"
)


def _escape(s: str) -> str:
    return s.replace("/", "//")


def write_fcs(path, data, channels: Sequence[str], markers: Sequence[str | None] | None = None,
              meta: Mapping[str, object] | None = None, *, ranges: Sequence[float] | None = None) -> Path:
    """Write events to an FCS 3.1 file (list mode, float32, little-endian).

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
        ``$PnR`` per channel; default: the channel's maximum, rounded up.

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
    if ranges is None:
        if is_dask:
            import dask.array as da

            mx = np.asarray(da.nanmax(data, axis=0).compute()) if n else np.zeros(nch)
        else:
            mx = np.nanmax(data, axis=0) if n else np.zeros(nch)
        ranges = [max(1, int(math.ceil(float(v)))) if np.isfinite(v) else 262144 for v in mx]
    elif len(ranges) != nch:
        raise FCSError(f"{len(ranges)} ranges given for {nch} channels", path)

    kw: dict[str, str] = {
        "$BYTEORD": "1,2,3,4",
        "$DATATYPE": "F",
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(nch),
        "$TOT": str(n),
    }
    for i, c in enumerate(channels, start=1):
        kw[f"$P{i}N"] = c
        if markers is not None and markers[i - 1]:
            kw[f"$P{i}S"] = str(markers[i - 1])
        kw[f"$P{i}B"] = "32"
        kw[f"$P{i}E"] = "0,0"
        r = ranges[i - 1]
        kw[f"$P{i}R"] = str(int(r)) if float(r) == int(r) else repr(float(r))
    for k, v in (meta or {}).items():
        key = str(k).strip().upper()
        if not key or _STRUCTURAL.match(key):
            continue
        val = str(v)
        kw[key] = val if val.strip() else " "

    row_bytes = 4 * nch
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

    header = b"FCS3.1    " + f8(text_begin) + f8(text_end)
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
                    arr = to_numpy(block.compute())
                    f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
            else:
                f.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
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
