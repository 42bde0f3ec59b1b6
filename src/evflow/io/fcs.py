"""Chunked reader and writer for Flow Cytometry Standard (FCS 2.0, 3.0, 3.1, 3.2) files.

:func:`read_fcs` parses the HEADER and TEXT segments itself and exposes the
DATA segment as a dask array (events x channels) built from row-chunked reads
of the file, so a file larger than memory can be streamed.  :func:`write_fcs`
writes FCS 3.1 list-mode float32 files.

Reading is defensive: offsets, sizes and keywords are checked against each
other and against the file size before anything is allocated, and every
problem raises an :class:`evflow.FCSError` subclass naming the file, the
keyword or byte offset, what was found and what was expected.  Departures from
the standard that real instruments produce (off-by-one ``$ENDDATA``, HEADER
and TEXT offsets that disagree, odd trailing delimiters) are worked around and
reported as :class:`evflow.errors.FCSWarning`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import (
    FCSDataError,
    FCSError,
    FCSHeaderError,
    FCSTextError,
    FCSUnsupportedError,
    FCSWarning,
)

__all__ = ["read_fcs", "write_fcs", "read_fcs_metadata", "count_data_sets", "FCSSample", "parse_spillover"]

HEADER_SIZE = 58
#: default number of bytes per dask chunk when ``chunk_events`` is not given
DEFAULT_CHUNK_BYTES = 64 * 2**20
_MAX_PAR = 100_000
_VERSION_RE = re.compile(rb"FCS\d\.\d")
_TIME_NAMES = ("time", "hdr-t")


# --------------------------------------------------------------------------- HEADER


@dataclass(frozen=True)
class _Header:
    version: str
    text: tuple[int, int]
    data: tuple[int, int]
    analysis: tuple[int, int]


def _read_header(buf: bytes, path, base: int) -> _Header:
    if len(buf) < HEADER_SIZE:
        raise FCSHeaderError(
            f"HEADER at byte {base} is truncated: {len(buf)} bytes, expected at least {HEADER_SIZE}", path
        )
    version = buf[:6]
    if not _VERSION_RE.fullmatch(version):
        raise FCSHeaderError(
            f"not an FCS file: HEADER at byte {base} starts with "
            f"{repr(version) if version.startswith(b'FCS') else 'other bytes'}, expected 'FCS2.0', "
            "'FCS3.0', 'FCS3.1' or 'FCS3.2'",
            path,
        )
    names = ("TEXT begin", "TEXT end", "DATA begin", "DATA end", "ANALYSIS begin", "ANALYSIS end")
    values = []
    for i, name in enumerate(names):
        lo = 10 + 8 * i
        raw = buf[lo : lo + 8]
        s = raw.strip()
        if not s:
            values.append(0)
            continue
        if not s.isdigit():
            if i >= 4:  # ANALYSIS offsets are optional and often garbage; ignore them
                values.append(0)
                continue
            raise FCSHeaderError(
                f"HEADER field '{name}' (bytes {base + lo}-{base + lo + 7}) is {raw!r}, expected a "
                "right-justified ASCII integer",
                path,
            )
        values.append(int(s))
    return _Header(version.decode("ascii"), (values[0], values[1]), (values[2], values[3]), (values[4], values[5]))


# --------------------------------------------------------------------------- TEXT


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _parse_text(raw: bytes, path, where: str) -> dict[str, str]:
    """Parse a TEXT (or supplemental TEXT) segment into an ordered dict of keywords.

    The first byte is the delimiter; a doubled delimiter inside a keyword or
    value stands for one literal delimiter.  Keys are upper-cased (the standard
    makes them case-insensitive).
    """
    if len(raw) < 2:
        raise FCSTextError(f"{where} segment is {len(raw)} bytes long; expected a delimiter and keyword pairs", path)
    delim = raw[:1]
    if delim.isalnum():
        raise FCSTextError(
            f"{where} segment starts with {delim!r}; expected a delimiter character (not a letter or digit)", path
        )
    tokens: list[bytes] = []
    cur = bytearray()
    i, n = 1, len(raw)
    d = delim[0]
    while i < n:
        j = raw.find(delim, i)
        if j < 0:
            cur += raw[i:]
            i = n
            break
        cur += raw[i:j]
        if j + 1 < n and raw[j + 1] == d:
            cur += delim  # escaped (doubled) delimiter
            i = j + 2
            continue
        tokens.append(bytes(cur))
        cur = bytearray()
        i = j + 1
    tail = bytes(cur)
    if tail.strip(b" \x00\r\n\t"):
        # The segment did not end with a delimiter: keep the last value anyway.
        tokens.append(tail)
    if len(tokens) % 2 and raw.rstrip(b" \x00\r\n\t").endswith(delim * 2) and tokens[-1].endswith(delim):
        # 'KEY//' at the very end: an empty last value followed by the final
        # delimiter, not an escaped delimiter (seen in real FCS 2.0 files).
        tokens[-1] = tokens[-1][:-1]
        tokens.append(b"")
    if len(tokens) % 2:
        last = tokens[-1]
        if not last.strip(b" \x00\r\n\t"):
            tokens.pop()
        else:
            warnings.warn(
                f"{path}: {where} segment has an odd number of fields ({len(tokens)}); "
                f"ignoring the last one ({_decode(last)[:40]!r})",
                FCSWarning,
                stacklevel=4,
            )
            tokens.pop()
    out: dict[str, str] = {}
    for k, v in zip(tokens[::2], tokens[1::2]):
        key = _decode(k).strip().upper()
        if not key:
            continue
        if key not in out:
            out[key] = _decode(v)
    return out


def _int_kw(meta: Mapping[str, str], key: str, path, *, required=True, default=None, minimum=None):
    val = meta.get(key)
    if val is None or not str(val).strip():
        if required:
            raise FCSTextError(f"required keyword {key} is missing", path)
        return default
    s = str(val).strip()
    try:
        out = int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            raise FCSTextError(f"keyword {key} is {val!r}, expected an integer", path) from None
        if not math.isfinite(f) or f != int(f):
            raise FCSTextError(f"keyword {key} is {val!r}, expected an integer", path) from None
        out = int(f)
    if minimum is not None and out < minimum:
        raise FCSTextError(f"keyword {key} is {out}, expected an integer >= {minimum}", path)
    return out


def _float_kw(meta, key, path, default=None):
    val = meta.get(key)
    if val is None or not str(val).strip():
        return default
    try:
        return float(str(val).strip())
    except ValueError:
        warnings.warn(f"{path}: keyword {key} is {val!r}, not a number; using {default}", FCSWarning, stacklevel=4)
        return default


# --------------------------------------------------------------------------- DATA layout


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


# --------------------------------------------------------------------------- the sample


def parse_spillover(value: str, path=None, key: str = "$SPILLOVER"):
    """Parse a ``$SPILLOVER``/``$SPILL``/``SPILL`` keyword value.

    Returns
    -------
    xarray.DataArray
        ``n x n`` spillover matrix with dims ``("source", "detector")``, both
        labelled with the channel names listed in the keyword: row ``i`` is
        the fraction of fluorochrome ``i``'s signal seen in each detector.
        Compensated events are ``events @ inv(matrix)``.
    """
    import xarray as xr

    parts = [p.strip() for p in str(value).split(",")]
    try:
        n = int(float(parts[0]))
    except (ValueError, IndexError, OverflowError):
        raise FCSTextError(f"keyword {key} starts with {parts[:1]}, expected the number of channels", path) from None
    if n < 1 or len(parts) != 1 + n + n * n:
        raise FCSTextError(
            f"keyword {key} lists {len(parts)} fields for n={n}; expected 1 + n + n*n = {1 + n + n * n}", path
        )
    names = parts[1 : 1 + n]
    try:
        vals = np.array([float(x) for x in parts[1 + n :]], dtype=np.float64).reshape(n, n)
    except ValueError:
        raise FCSTextError(f"keyword {key} has non-numeric matrix entries", path) from None
    if not np.all(np.isfinite(vals)):
        raise FCSTextError(f"keyword {key} has non-finite matrix entries", path)
    return xr.DataArray(
        vals,
        dims=("source", "detector"),
        coords={"source": names, "detector": names},
        attrs={"keyword": key},
    )


@dataclass
class FCSSample:
    """One data set of an FCS file: keywords and (lazily read) events.

    Attributes
    ----------
    path : str
        The file.
    version : str
        ``"FCS3.1"`` etc., from the HEADER.
    data_set : int
        Index of the data set in the file (``$NEXTDATA`` chain).
    meta : dict
        All TEXT (and supplemental TEXT) keywords, keys upper-case (``"$TOT"``).
    channels : list of str
        ``$PnN`` short names.
    markers : list of str or None
        ``$PnS`` names (the stain or marker), None where absent.
    events : dask.array.Array
        ``(n_events, n_channels)``, chunked by rows; raw stored values, or
        linear-scale float64 when read with ``scale=True``.
    scaled : bool
        Whether ``events`` are on the linear scale (``$PnE``, ``$PnG``, ``$TIMESTEP`` applied).
    """

    path: str
    version: str
    data_set: int
    meta: dict
    channels: list
    markers: list
    events: object = field(repr=False)
    scaled: bool = False
    _segment: _DataSegment | None = field(default=None, repr=False)

    @property
    def n_events(self) -> int:
        return int(self.events.shape[0])

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def name(self) -> str:
        """A short sample name: ``$FIL`` if present, else the file stem."""
        return Path(self.path).stem

    @property
    def spillover(self):
        """The spillover matrix from ``$SPILLOVER``/``$SPILL``/``SPILL``, or None."""
        for key in ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP"):
            if key in self.meta and str(self.meta[key]).strip():
                return parse_spillover(self.meta[key], self.path, key)
        return None

    @property
    def time_channel(self) -> str | None:
        """Name of the time channel, or None."""
        for c in self.channels:
            if c.strip().lower() in _TIME_NAMES:
                return c
        return None

    def channel_index(self, name: str) -> int:
        """Column of ``name``, given as ``$PnN`` or, if unambiguous, ``$PnS``.

        Raises
        ------
        FCSError
            If no channel (or more than one marker) has that name.
        """
        if name in self.channels:
            return self.channels.index(name)
        hits = [i for i, m in enumerate(self.markers) if m is not None and m == name]
        if len(hits) == 1:
            return hits[0]
        lower = [c.lower() for c in self.channels]
        if lower.count(str(name).lower()) == 1:
            return lower.index(str(name).lower())
        if len(hits) > 1:
            raise FCSError(f"marker {name!r} names several channels ({[self.channels[i] for i in hits]})", self.path)
        raise FCSError(
            f"no channel {name!r}; channels ($PnN) are {self.channels}, markers ($PnS) are "
            f"{[m for m in self.markers if m]}",
            self.path,
        )

    def linear_events(self):
        """Events on the linear scale as a lazy float64 dask array.

        ``$PnE`` log decoding (``f2 * 10**(f1 * x / $PnR)``), division by the
        ``$PnG`` gain and ``$TIMESTEP`` on the time channel, as with
        ``read_fcs(..., scale=True)``; returns ``events`` unchanged when the
        sample was read that way.
        """
        if self.scaled:
            return self.events
        params = _scale_params(self.meta, self.channels, self.path)
        n = self.n_channels
        return self.events.map_blocks(_scale_block, params, dtype=np.float64, meta=np.empty((0, n), np.float64))

    def to_numpy(self) -> np.ndarray:
        """All events as a NumPy array (reads the file once, in one pass)."""
        if self._segment is not None and not self.scaled:
            return self._segment.read_rows(0, self.n_events)
        return np.asarray(self.events.compute())

    def to_xarray(self):
        """Events as an ``xarray.DataArray`` (dims ``event``, ``channel``), still lazy.

        The ``channel`` coordinate holds ``$PnN``; ``marker`` holds ``$PnS`` ('' where absent).
        """
        import xarray as xr

        return xr.DataArray(
            self.events,
            dims=("event", "channel"),
            coords={
                "channel": list(self.channels),
                "marker": ("channel", [m or "" for m in self.markers]),
            },
            name=self.name,
            attrs={"path": self.path, "version": self.version, "data_set": self.data_set, "scaled": self.scaled},
        )

    def __repr__(self) -> str:
        return (
            f"FCSSample({self.path!r}, version={self.version!r}, data_set={self.data_set}, "
            f"n_events={self.n_events}, channels={self.channels})"
        )


# --------------------------------------------------------------------------- reading


@dataclass
class _DataSetInfo:
    header: _Header
    base: int
    meta: dict
    next_offset: int


def _read_data_set_info(f, path, size: int, base: int) -> _DataSetInfo:
    f.seek(base)
    header = _read_header(f.read(HEADER_SIZE), path, base)
    tb, te = header.text
    if tb < HEADER_SIZE or te < tb:
        raise FCSHeaderError(
            f"HEADER gives TEXT at bytes {tb}-{te}; expected {HEADER_SIZE} <= begin <= end", path
        )
    if base + te >= size:
        raise FCSHeaderError(
            f"HEADER gives TEXT ending at byte {base + te}, but the file has only {size} bytes (truncated?)", path
        )
    f.seek(base + tb)
    meta = _parse_text(f.read(te - tb + 1), path, "TEXT")
    # supplemental TEXT (FCS 3.x)
    try:
        sb = _int_kw(meta, "$BEGINSTEXT", path, required=False, default=0)
        se = _int_kw(meta, "$ENDSTEXT", path, required=False, default=0)
    except FCSTextError as exc:
        warnings.warn(f"{exc}; ignoring the supplemental TEXT", FCSWarning, stacklevel=3)
        sb = se = 0
    if HEADER_SIZE <= sb < se and base + se < size and (sb, se) != (tb, te):
        f.seek(base + sb)
        try:
            extra = _parse_text(f.read(se - sb + 1), path, "supplemental TEXT")
        except FCSTextError as exc:
            warnings.warn(f"{exc}; ignoring the supplemental TEXT", FCSWarning, stacklevel=3)
            extra = {}
        for k, v in extra.items():
            meta.setdefault(k, v)
    nxt = _int_kw(meta, "$NEXTDATA", path, required=False, default=0, minimum=0)
    return _DataSetInfo(header, base, meta, nxt)


_CHAIN_CACHE: dict | None = None  # {(path, size): infos} inside chain_cache()


@contextlib.contextmanager
def chain_cache():
    """Within this context each file's ``$NEXTDATA`` chain is walked once (reading data set k of n is then
    not a walk of k data sets each time: ``evflow info`` on a long chain stays linear)."""
    global _CHAIN_CACHE
    prev, _CHAIN_CACHE = _CHAIN_CACHE, {}
    try:
        yield
    finally:
        _CHAIN_CACHE = prev


def _data_set_infos(f, path, size: int, upto: int | None = None) -> list[_DataSetInfo]:
    if _CHAIN_CACHE is not None:
        key = (str(path), size)
        if key not in _CHAIN_CACHE:
            _CHAIN_CACHE[key] = _walk_data_sets(f, path, size, None)
        return _CHAIN_CACHE[key]
    return _walk_data_sets(f, path, size, upto)


def _walk_data_sets(f, path, size: int, upto: int | None) -> list[_DataSetInfo]:
    infos = [_read_data_set_info(f, path, size, 0)]
    seen = {0}
    while infos[-1].next_offset and (upto is None or len(infos) <= upto):
        base = infos[-1].base + infos[-1].next_offset
        if base in seen or base + HEADER_SIZE > size:
            warnings.warn(
                f"{path}: $NEXTDATA of data set {len(infos) - 1} points to byte {base}, "
                f"{'already visited' if base in seen else 'beyond the end of the file'}; ignoring it",
                FCSWarning,
                stacklevel=3,
            )
            break
        seen.add(base)
        try:
            infos.append(_read_data_set_info(f, path, size, base))
        except FCSHeaderError as exc:
            warnings.warn(f"{exc}; ignoring $NEXTDATA of data set {len(infos) - 1}", FCSWarning, stacklevel=3)
            break
    return infos


def _data_offsets(info: _DataSetInfo, layout: _Layout, n_tot: int | None, path, size: int):
    """Resolve the DATA segment: absolute start offset and number of events."""
    meta, header, base = info.meta, info.header, info.base
    hb, he = header.data
    tb_ = _int_kw(meta, "$BEGINDATA", path, required=False, default=None)
    te_ = _int_kw(meta, "$ENDDATA", path, required=False, default=None)
    text_ok = tb_ is not None and te_ is not None and tb_ > 0
    head_ok = hb > 0 and he >= hb
    rb = layout.row_bytes
    if n_tot == 0:
        return base, 0
    if not text_ok and not head_ok:
        raise FCSDataError(
            f"no DATA offsets: HEADER gives {hb}-{he} and $BEGINDATA/$ENDDATA are "
            f"{meta.get('$BEGINDATA')!r}/{meta.get('$ENDDATA')!r}",
            path,
        )
    candidates = []
    if text_ok:
        candidates.append(("$BEGINDATA/$ENDDATA", tb_, te_))
    if head_ok:
        candidates.append(("HEADER", hb, he))

    text_end = header.text[1]

    def fits(begin):
        # DATA cannot start inside the HEADER or the primary TEXT, and must hold $TOT events
        avail = size - (base + begin)
        return begin > text_end and avail >= 0 and (n_tot is None or n_tot * rb <= avail)

    name, begin, end = candidates[0]
    if len(candidates) == 2 and candidates[0][1:] != candidates[1][1:]:
        (n0, b0, e0), (n1, b1, e1) = candidates
        if b0 != b1:
            if n_tot is not None:
                # pick the begin that makes the segment exactly $TOT rows long, else one that fits
                good = [c for c in candidates if c[2] - c[1] + 1 == n_tot * rb and fits(c[1])]
                good = good or [c for c in candidates if c[2] - c[1] + 1 in (n_tot * rb, n_tot * rb + 1) and fits(c[1])]
                good = good or [c for c in candidates if fits(c[1])]
                name, begin, end = good[0] if good else candidates[0]
            warnings.warn(
                f"{path}: DATA begin differs between HEADER ({b1}) and $BEGINDATA ({b0}); using {name} ({begin})",
                FCSWarning,
                stacklevel=3,
            )
        elif e0 != e1 and e1 != 0:
            if n_tot is not None and e1 - b1 + 1 == n_tot * rb and e0 - b0 + 1 != n_tot * rb:
                name, begin, end = candidates[1]
            warnings.warn(
                f"{path}: DATA end differs between HEADER ({e1}) and $ENDDATA ({e0}); using {name} ({end})",
                FCSWarning,
                stacklevel=3,
            )
    if base + begin >= size and (n_tot is None or n_tot > 0):
        raise FCSDataError(
            f"the DATA segment should start at byte {base + begin} ({name}) but the file ends at byte "
            f"{size}: it holds HEADER and TEXT only (read its keywords with read_fcs_metadata)",
            path,
        )
    if begin < HEADER_SIZE or base + begin > size:
        raise FCSDataError(
            f"DATA begins at byte {base + begin} ({name}); expected an offset between {HEADER_SIZE} and the "
            f"file size {size}",
            path,
        )
    seg_bytes = end - begin + 1
    avail = size - (base + begin)
    if n_tot is None:
        nbytes = min(seg_bytes, avail) if seg_bytes > 0 else avail
        n_events = nbytes // rb if rb else 0
        if rb and nbytes % rb:
            warnings.warn(
                f"{path}: DATA segment of {nbytes} bytes is not a whole number of {rb}-byte events and "
                "$TOT is absent; reading the whole events only",
                FCSWarning,
                stacklevel=3,
            )
        return base + begin, n_events
    need = n_tot * rb
    if need > avail:
        raise FCSDataError(
            f"$TOT={n_tot} events of {rb} bytes need {need} bytes from byte {base + begin}, but only "
            f"{avail} remain in the file (truncated file, or $TOT/$PAR/$PnB disagree with the data)",
            path,
        )
    if seg_bytes != need:
        if seg_bytes == need + 1:
            warnings.warn(
                f"{path}: {name} says the DATA segment is {seg_bytes} bytes, one more than $TOT x event "
                f"size = {need} (a known off-by-one in some instruments' $ENDDATA); reading {n_tot} events",
                FCSWarning,
                stacklevel=3,
            )
        else:
            warnings.warn(
                f"{path}: {name} says the DATA segment is {seg_bytes} bytes, but $TOT x event size is {need} "
                f"bytes; reading the {n_tot} events $TOT announces",
                FCSWarning,
                stacklevel=3,
            )
    return base + begin, n_tot


def _channel_names(meta, n_par, path):
    channels, markers = [], []
    for i in range(1, n_par + 1):
        pnn = meta.get(f"$P{i}N")
        if pnn is None or not str(pnn).strip():
            warnings.warn(f"{path}: required keyword $P{i}N is missing; naming the channel 'P{i}'", FCSWarning, stacklevel=3)
            pnn = f"P{i}"
        channels.append(str(pnn).strip())
        pns = meta.get(f"$P{i}S")
        markers.append(str(pns).strip() if pns is not None and str(pns).strip() else None)
    return channels, markers


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
    params = np.zeros((len(channels), 5))
    step = _float_kw(meta, "$TIMESTEP", path, default=1.0) or 1.0
    for i, name in enumerate(channels, start=1):
        decades, log0 = 0.0, 0.0
        pne = meta.get(f"$P{i}E")
        if pne is not None and str(pne).strip():
            try:
                decades, log0 = (float(x) for x in str(pne).split(","))
            except ValueError:
                raise FCSTextError(f"keyword $P{i}E is {pne!r}, expected 'f1,f2' (e.g. '4.0,1.0' or '0,0')", path) from None
        if decades > 0 and log0 == 0:
            log0 = 1.0  # the standard's rule for an invalid 0
        rng = _float_kw(meta, f"$P{i}R", path, default=None)
        if decades > 0 and (rng is None or rng <= 0):
            raise FCSTextError(f"keyword $P{i}R is {meta.get(f'$P{i}R')!r}; log decoding ($P{i}E) needs a positive range", path)
        is_time = name.strip().lower() in _TIME_NAMES
        gain = 1.0 if is_time else (_float_kw(meta, f"$P{i}G", path, default=1.0) or 1.0)
        params[i - 1] = (decades, log0, rng or 1.0, gain, step if is_time else 1.0)
    return params


def _default_chunk_events(row_bytes: int) -> int:
    return max(1024, DEFAULT_CHUNK_BYTES // max(row_bytes, 1))


def _open_checked(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FCSError(f"file not found: {path}", path)
    if os.path.isdir(path):
        raise FCSError(f"{path} is a directory, expected an FCS file", path)
    return path, os.path.getsize(path)


def count_data_sets(path) -> int:
    """Number of data sets in an FCS file (following ``$NEXTDATA``)."""
    path, size = _open_checked(path)
    with open(path, "rb") as f:
        return len(_data_set_infos(f, path, size))


def read_fcs_metadata(path, data_set: int = 0) -> dict:
    """Only the TEXT keywords of one data set (no DATA segment is touched)."""
    path, size = _open_checked(path)
    with open(path, "rb") as f:
        infos = _data_set_infos(f, path, size, upto=data_set)
    if data_set >= len(infos):
        raise FCSError(f"data_set={data_set} asked for, but the file holds {len(infos)} data set(s)", path)
    return dict(infos[data_set].meta)


def read_fcs(path, data_set: int = 0, chunk_events: int | None = None, scale: bool = False) -> FCSSample:
    """Read an FCS file lazily.

    Parameters
    ----------
    path : str or Path
        The FCS file (2.0, 3.0, 3.1 or 3.2).
    data_set : int
        Which data set to read when the file holds several (``$NEXTDATA``).
    chunk_events : int, optional
        Events per dask chunk; default: about 64 MiB of raw data per chunk.
    scale : bool
        If True, return linear-scale float64 values: ``$PnE`` log decoding
        (``f2 * 10**(f1 * x / $PnR)``), division by ``$PnG`` gain, and the time
        channel multiplied by ``$TIMESTEP``.  Default: raw values as stored
        (integers after the ``$PnR`` bit mask, floats as floats).

    Returns
    -------
    FCSSample

    Raises
    ------
    FCSError
        For any file that cannot be read as asked; the message names the file
        and the keyword or byte offset at fault.
    """
    import dask.array as da
    from dask.base import tokenize

    path, size = _open_checked(path)
    if not isinstance(data_set, (int, np.integer)) or data_set < 0:
        raise FCSError(f"data_set must be a non-negative integer, got {data_set!r}", path)
    if chunk_events is not None and (not isinstance(chunk_events, (int, np.integer)) or chunk_events < 1):
        raise FCSError(f"chunk_events must be a positive integer, got {chunk_events!r}", path)
    with open(path, "rb") as f:
        infos = _data_set_infos(f, path, size, upto=data_set)
    if data_set >= len(infos):
        raise FCSError(f"data_set={data_set} asked for, but the file holds {len(infos)} data set(s)", path)
    info = infos[data_set]
    meta = info.meta
    n_par = _int_kw(meta, "$PAR", path, minimum=1)
    if n_par > _MAX_PAR:
        raise FCSTextError(f"keyword $PAR is {n_par}; expected at most {_MAX_PAR} parameters", path)
    n_tot = _int_kw(meta, "$TOT", path, required=not info.header.version.startswith("FCS2"), default=None, minimum=0)
    layout = _layout(meta, n_par, path)
    channels, markers = _channel_names(meta, n_par, path)
    offset, n_events = _data_offsets(info, layout, n_tot, path, size)
    if layout.delimited_ascii:
        events_np = _read_delimited_ascii(path, offset, size, n_events if n_tot is not None else None, n_par, info)
        arr = da.from_array(events_np, chunks=(chunk_events or _default_chunk_events(8 * n_par), n_par))
        segment = None
    else:
        segment = _DataSegment(path, offset, n_events, layout)
        ce = chunk_events or _default_chunk_events(layout.row_bytes)
        stat = os.stat(path)
        name = "fcs-" + tokenize(path, stat.st_mtime_ns, stat.st_size, data_set, offset, n_events, layout, ce)
        arr = da.from_array(
            segment,
            chunks=(min(ce, max(n_events, 1)), n_par),
            name=name,
            asarray=False,
            fancy=False,
            meta=np.empty((0, n_par), dtype=layout.dtype),
        )
    sample = FCSSample(
        path=path,
        version=info.header.version,
        data_set=int(data_set),
        meta=meta,
        channels=channels,
        markers=markers,
        events=arr,
        scaled=False,
        _segment=segment,
    )
    if scale:
        sample.events = sample.linear_events()
        sample.scaled = True
    return sample


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


# --------------------------------------------------------------------------- writing

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
    from ..backend import to_numpy

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
