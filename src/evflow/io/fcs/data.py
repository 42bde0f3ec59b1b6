"""The DATA segment: byte layout of an event for every ``$DATATYPE`` (I, F, D, fixed-width and
delimited A), row-chunked reads and the linear-scale decoding (``$PnE``, ``$PnG``, ``$TIMESTEP``).
Where the segment lies (HEADER and TEXT offsets, ``$TOT``) is :mod:`.offsets`."""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...errors import FCSDataError, FCSTextError, FCSUnsupportedError, FCSWarning
from .text import _float_kw, _int_kw, channel_log, is_time_name

#: default number of bytes per dask chunk when ``chunk_events`` is not given
DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class _Layout:
    """How one event (row) of the DATA segment is laid out in bytes."""

    datatype: str  # 'I', 'F', 'D' or 'A'
    order: str  # '<' or '>'
    widths: tuple[int, ...]  # bytes per channel (I/F/D), characters for fixed-width A
    masks: tuple[int | None, ...]  # $PnR bit masks for I data (None: no mask)
    delimited_ascii: bool = False

    @property
    def row_bytes(self) -> int:
        return int(sum(self.widths))

    @property
    def n_channels(self) -> int:
        return len(self.widths)

    @property
    def dtype(self) -> np.dtype:
        if self.datatype == "F":
            return np.dtype(np.float32)
        if self.datatype in ("D", "A"):
            return np.dtype(np.float64)
        w = max(self.widths)
        return np.dtype({1: np.uint8, 2: np.uint16, 3: np.uint32, 4: np.uint32}.get(w, np.uint64))


def _byte_order(meta, path) -> str:
    bo = str(meta.get("$BYTEORD", "")).replace(" ", "")
    if bo in ("1,2,3,4", "1,2", "1", "1,2,3,4,5,6,7,8", "1,2,3"):
        return "<"
    if bo in ("4,3,2,1", "2,1", "8,7,6,5,4,3,2,1", "3,2,1"):
        return ">"
    raise FCSUnsupportedError(
        f"keyword $BYTEORD is {meta.get('$BYTEORD')!r}; evflow reads little-endian (1,2,3,4) "
        "and big-endian (4,3,2,1) data",
        path,
    )


def _layout(meta: Mapping[str, str], n_par: int, path) -> _Layout:
    datatype = str(meta.get("$DATATYPE", "")).strip().upper()
    if datatype not in ("I", "F", "D", "A"):
        raise FCSTextError(f"keyword $DATATYPE is {meta.get('$DATATYPE')!r}, expected I, F, D or A", path)
    mode = str(meta.get("$MODE", "L")).strip().upper() or "L"
    if mode != "L":
        raise FCSUnsupportedError(
            f"keyword $MODE is {mode!r}: only list-mode data ($MODE L) can be read as events; "
            "correlated (C) and uncorrelated (U) histogram modes are deprecated since FCS 3.1",
            path,
        )
    order = _byte_order(meta, path) if datatype != "A" else "<"
    widths, masks = [], []
    for i in range(1, n_par + 1):
        raw_b = str(meta.get(f"$P{i}B", "")).strip()
        if datatype == "A" and raw_b == "*":
            widths.append(0)
            masks.append(None)
            continue
        bits = _int_kw(meta, f"$P{i}B", path, minimum=1)
        if datatype == "A":
            widths.append(bits)  # characters per value
            masks.append(None)
            continue
        if datatype in ("F", "D"):
            expected = 32 if datatype == "F" else 64
            if bits != expected:
                warnings.warn(
                    f"{path}: $P{i}B is {bits} but $DATATYPE {datatype} stores {expected}-bit values; "
                    f"reading {expected} bits",
                    FCSWarning,
                    stacklevel=4,
                )
            widths.append(expected // 8)
            masks.append(None)
            continue
        if bits % 8 or bits > 64:
            raise FCSUnsupportedError(
                f"keyword $P{i}B is {bits}: integer data must be stored in whole bytes "
                "(8, 16, 24, 32 or 64 bits) for evflow to read it",
                path,
            )
        widths.append(bits // 8)
        rng = _float_kw(meta, f"$P{i}R", path, default=None)
        mask = None
        if rng is not None and math.isfinite(rng) and rng >= 1:
            # FCS: values are masked to the next power of two of $PnR when it
            # needs fewer bits than $PnB (as FlowIO and fcsparser do).
            nbits = max(1, math.ceil(math.log2(rng))) if rng > 1 else 1
            if nbits < bits:
                mask = (1 << nbits) - 1
        masks.append(mask)
    if datatype == "A":
        delimited = any(w == 0 for w in widths)
        if delimited and not all(w == 0 for w in widths):
            raise FCSUnsupportedError("ASCII data mixes fixed-width and delimited ($PnB '*') columns", path)
        return _Layout("A", "<", tuple(widths), tuple(masks), delimited_ascii=delimited)
    return _Layout(datatype, order, tuple(widths), tuple(masks))


def _decode_rows(buf, layout: _Layout) -> np.ndarray:
    """Decode whole rows of raw DATA bytes into a native-endian (rows, channels) array."""
    buf = np.frombuffer(buf, dtype=np.uint8)
    nch, rb = layout.n_channels, layout.row_bytes
    nrows = buf.size // rb if rb else 0
    buf = buf[: nrows * rb]
    if layout.datatype in ("F", "D") or (
        layout.datatype == "I" and len(set(layout.widths)) == 1 and layout.widths[0] in (1, 2, 4, 8)
    ):
        kind = {"F": "f", "D": "f", "I": "u"}[layout.datatype]
        w = layout.widths[0]
        src = buf.view(np.dtype(f"{layout.order}{kind}{w}")).reshape(nrows, nch)
        out = src.astype(src.dtype.newbyteorder("="), copy=True)
        if layout.datatype == "I":
            out = out.astype(layout.dtype, copy=False)
            _apply_masks(out, layout)
        return out
    if layout.datatype == "A":
        return _decode_ascii_fixed(buf, nrows, layout)
    # Integer data of mixed or 24-bit widths: assemble each column from its bytes.
    rows = buf.reshape(nrows, rb)
    out = np.empty((nrows, nch), dtype=layout.dtype)
    pos = 0
    for c, w in enumerate(layout.widths):
        cols = rows[:, pos : pos + w].astype(out.dtype)
        order = range(w) if layout.order == "<" else range(w - 1, -1, -1)
        acc = np.zeros(nrows, dtype=out.dtype)
        for shift, k in enumerate(order):
            acc |= cols[:, k] << out.dtype.type(8 * shift)
        out[:, c] = acc
        pos += w
    _apply_masks(out, layout)
    return out


def _apply_masks(out: np.ndarray, layout: _Layout) -> None:
    if any(m is not None for m in layout.masks):
        full = np.iinfo(out.dtype).max
        mask = np.array([full if m is None else m for m in layout.masks], dtype=out.dtype)
        np.bitwise_and(out, mask, out=out)


def _decode_ascii_fixed(buf: np.ndarray, nrows: int, layout: _Layout) -> np.ndarray:
    fields = {"names": [f"c{i}" for i in range(layout.n_channels)], "formats": [f"S{w}" for w in layout.widths]}
    rec = buf.view(np.dtype(fields))
    out = np.empty((nrows, layout.n_channels), dtype=np.float64)
    for i in range(layout.n_channels):
        try:
            out[:, i] = rec[f"c{i}"].astype(np.float64)
        except ValueError:
            bad = next((v for v in rec[f"c{i}"] if not _is_number(v)), b"")
            raise FCSDataError(f"fixed-width ASCII DATA: parameter {i + 1} ($P{i + 1}B={layout.widths[i]}) holds "
                               f"{bad[:20]!r}, expected a number") from None
    return out


def _is_number(v: bytes) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


class _DataSegment:
    """Array-like view of a DATA segment that reads only the rows asked for.

    Handed to :func:`dask.array.from_array`; it holds a path and offsets, not an
    open file, so it pickles to worker processes.
    """

    def __init__(self, path: str, offset: int, n_events: int, layout: _Layout):
        self.path = path
        self.offset = offset
        self.n_events = n_events
        self.layout = layout
        self.shape = (n_events, layout.n_channels)
        self.dtype = layout.dtype
        self.ndim = 2

    @property
    def _direct(self) -> bool:
        """True when the stored bytes are already the output array (after an optional byte swap)."""
        lay = self.layout
        if lay.datatype in ("F", "D"):
            return True
        return lay.datatype == "I" and len(set(lay.widths)) == 1 and lay.widths[0] in (1, 2, 4, 8)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        rb = self.layout.row_bytes
        n = max(0, stop - start)
        if n == 0:
            return np.empty((0, self.layout.n_channels), dtype=self.dtype)
        if self._direct:
            # read straight into the output array: one copy from the page cache, no temporaries
            out = np.empty((n, self.layout.n_channels), dtype=self.dtype)
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * rb)
                got = f.readinto(memoryview(out).cast("B"))
            if got == n * rb:
                if self.layout.order != ("<" if sys.byteorder == "little" else ">"):
                    out.byteswap(inplace=True)
                if self.layout.datatype == "I":
                    _apply_masks(out, self.layout)
                return out
        else:
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * rb)
                buf = bytearray(n * rb)
                got = f.readinto(buf)
        if got != n * rb:
            raise FCSDataError(
                f"DATA segment ends early: rows {start}-{stop - 1} need bytes {self.offset + start * rb}-"
                f"{self.offset + stop * rb - 1} but the file has only {got} of them (was it truncated "
                "after opening?)",
                self.path,
            )
        try:
            return _decode_rows(buf, self.layout)
        except FCSDataError as exc:
            raise FCSDataError(str(exc), self.path) from None

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        rows = key[0] if key else slice(None)
        rest = key[1:]
        if isinstance(rows, slice) and rows.step in (None, 1):
            start, stop, _ = rows.indices(self.n_events)
            out = self.read_rows(start, max(start, stop))
        else:
            idx = np.arange(self.n_events)[rows]
            lo, hi = (int(idx.min()), int(idx.max()) + 1) if np.size(idx) else (0, 0)
            out = self.read_rows(lo, hi)[np.asarray(idx) - lo]
        return out[(slice(None),) + rest] if rest else out


def _scale_block(block: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Linear-scale values: rows of ``params`` are (decades, log0, range, gain, timestep)."""
    xp_out = block.astype(np.float64)
    for c in range(block.shape[1]):
        decades, log0, rng, gain, step = params[c]
        col = xp_out[:, c]
        if step != 1.0:
            col *= step
        if decades > 0:
            col[:] = log0 * np.power(10.0, decades * col / rng)
        if gain != 1.0 and gain != 0.0:
            col /= gain
    return xp_out


def _scale_params(meta, channels, path) -> np.ndarray:
    """Rows of (decades, log0, range, gain, timestep) per channel, as :func:`_scale_block` applies them.

    The same reading of the keywords as :func:`~evflow.io.fcs.text.channel_log`,
    :func:`~evflow.io.fcs.text.channel_gain` and :func:`~evflow.io.fcs.text.timestep`, strict
    (a malformed ``$PnE`` raises; a malformed ``$PnG``/``$TIMESTEP`` warns and counts as 1).
    """
    params = np.zeros((len(channels), 5))
    step = _float_kw(meta, "$TIMESTEP", path, default=1.0) or 1.0
    for i, name in enumerate(channels, start=1):
        decades, log0 = channel_log(meta, i - 1, path, strict=True)
        rng = _float_kw(meta, f"$P{i}R", path, default=None)
        if decades > 0 and (rng is None or rng <= 0):
            raise FCSTextError(f"keyword $P{i}R is {meta.get(f'$P{i}R')!r}; log decoding ($P{i}E) needs a positive range", path)
        is_time = is_time_name(name)
        gain = 1.0 if is_time else (_float_kw(meta, f"$P{i}G", path, default=1.0) or 1.0)
        params[i - 1] = (decades, log0, rng or 1.0, gain, step if is_time else 1.0)
    return params


def _default_chunk_events(row_bytes: int) -> int:
    return max(1024, DEFAULT_CHUNK_BYTES // max(row_bytes, 1))


def _read_delimited_ascii(path, offset, size, n_events, n_par, info):
    he = info.header.data[1]
    end = min(size, info.base + he + 1) if he else size
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(max(0, end - offset))
    try:
        vals = np.array(re.split(rb"[\s,]+", raw.strip()), dtype=np.float64) if raw.strip() else np.empty(0)
    except ValueError:
        raise FCSDataError("delimited ASCII DATA holds a value that is not a number", path) from None
    if n_events is None:  # no $TOT (FCS 2.0): the events are what the DATA holds
        n_events = vals.size // n_par
        if vals.size % n_par:
            warnings.warn(f"{path}: delimited ASCII DATA holds {vals.size} values, not a multiple of $PAR={n_par} "
                          f"and $TOT is absent; reading {n_events} whole events", FCSWarning, stacklevel=3)
    if vals.size < n_events * n_par:
        raise FCSDataError(f"delimited ASCII DATA holds {vals.size} values, expected $TOT x $PAR = {n_events * n_par}", path)
    return vals[: n_events * n_par].reshape(n_events, n_par)

