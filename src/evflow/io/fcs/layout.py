"""The byte layout of one event (row) of the DATA segment, and the decoding of whole rows.

Every ``$DATATYPE`` (I, F, D, fixed-width A), FCS 3.2's per-parameter ``$PnDATATYPE`` (I, F and D
mixed in one row: a record layout), and integer ``$PnB`` that are not a whole number of bytes
(10-, 12- or 14-bit values of Beckman Coulter FC500 ``.LMD``, Partec and older Coulter files): those
are stored in whole words, whose size is inferred from the DATA length (``$TOT`` x the row size),
and keep their ``$PnB`` low bits (or the ``$PnR`` bit mask, when narrower).

Output dtype: a file of one type decodes to that type (unsigned integers of the stored width,
float32 or float64); a row of mixed types decodes every column to float64, which holds every
stored float32 and every integer below 2**53 exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.recfunctions import structured_to_unstructured

from ...errors import FCSDataError, FCSTextError, FCSUnsupportedError, FCSWarning
from .text import _float_kw, _int_kw, channel_datatypes

#: word sizes (bytes) that integer values whose $PnB is not a multiple of 8 may be stored in
_WORDS = (1, 2, 4, 8)


@dataclass(frozen=True)
class _Layout:
    """How one event (row) of the DATA segment is laid out in bytes."""

    datatype: str  # 'I', 'F', 'D' or 'A' when every column has that type; 'M' for mixed ($PnDATATYPE)
    order: str  # '<' or '>'
    widths: tuple[int, ...]  # bytes per channel (I/F/D), characters for fixed-width A
    masks: tuple[int | None, ...]  # bit masks for I columns ($PnB low bits / $PnR; None: no mask)
    delimited_ascii: bool = False
    kinds: tuple[str, ...] = ()  # per-column type ('I', 'F', 'D'); empty: every column is `datatype`

    @property
    def row_bytes(self) -> int:
        return int(sum(self.widths))

    @property
    def n_channels(self) -> int:
        return len(self.widths)

    @property
    def column_kinds(self) -> tuple[str, ...]:
        return self.kinds or (self.datatype,) * self.n_channels

    @property
    def direct(self) -> bool:
        """True when the stored bytes are already the output array (after an optional byte swap)."""
        if self.datatype in ("F", "D"):
            return True
        return self.datatype == "I" and len(set(self.widths)) == 1 and self.widths[0] in (1, 2, 4, 8)

    @property
    def dtype(self) -> np.dtype:
        if self.datatype == "F":
            return np.dtype(np.float32)
        if self.datatype in ("D", "A", "M"):
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


def _segment_lengths(info) -> tuple[int, ...]:
    """The DATA lengths in bytes the TEXT ($BEGINDATA/$ENDDATA) and the HEADER announce (positive ones only)."""
    out = []
    try:
        tb = _int_kw(info.meta, "$BEGINDATA", None, required=False, default=None)
        te = _int_kw(info.meta, "$ENDDATA", None, required=False, default=None)
    except FCSTextError:
        tb = te = None
    for b, e in ((tb, te), tuple(info.header.data)):
        if b is not None and e is not None and b > 0 and e >= b and e - b + 1 not in out:
            out.append(e - b + 1)
    return tuple(out)


def _range_mask(meta, i: int, bits: int, path) -> int | None:
    """The ``$PnR`` bit mask when it needs fewer bits than ``bits`` (as FlowIO and fcsparser mask)."""
    rng = _float_kw(meta, f"$P{i}R", path, default=None)
    if rng is not None and math.isfinite(rng) and rng >= 1:
        nbits = max(1, math.ceil(math.log2(rng))) if rng > 1 else 1
        if nbits < bits:
            return (1 << nbits) - 1
    return None


def _word_bytes(meta, odd: Sequence[tuple[int, int]], fixed: int, n_par: int, lengths: Sequence[int], path) -> int:
    """Bytes per stored word of the integer columns whose ``$PnB`` is not a multiple of 8.

    ``odd`` lists (1-based parameter, bits); ``fixed`` is the byte total of the other columns.  The
    word is the one that makes ``$TOT`` rows fill the DATA segment (or one byte less: a common
    off-by-one ``$ENDDATA``); a segment of exactly the bit-packed size raises.
    """
    first, first_bits = odd[0]
    maxbits = max(b for _, b in odd)
    fits = [w for w in _WORDS if 8 * w >= maxbits]
    default = next(w for w in (1, 2, 4, 8) if 8 * w >= maxbits)
    try:
        n_tot = _int_kw(meta, "$TOT", path, required=False, default=None, minimum=0)
    except FCSTextError:
        n_tot = None
    if n_tot == 0:
        return default
    if n_tot and lengths:
        k = len(odd)
        for delta in (0, 1):
            for length in lengths:
                row, rem = divmod(length - delta, n_tot)
                if rem == 0 and row > fixed and (row - fixed) % k == 0 and (row - fixed) // k in fits:
                    return (row - fixed) // k
        packed = math.ceil(n_tot * (8 * fixed + sum(b for _, b in odd)) / 8)
        if any(length - delta == packed for length in lengths for delta in (0, 1)):
            raise FCSUnsupportedError(
                f"keyword $P{first}B is {first_bits}: the DATA segment ({lengths[0]} bytes) holds $TOT={n_tot} "
                f"events of {n_par} values packed bit to bit; evflow reads integers whose $PnB is not a "
                f"multiple of 8 only when each value fills a whole word of {', '.join(str(8 * w) for w in fits)} "
                f"bits (the DATA would then be $TOT x row bytes)",
                path,
            )
    warnings.warn(
        f"{path}: $P{first}B is {first_bits}, not a whole number of bytes, and the DATA length "
        f"({', '.join(map(str, lengths)) or 'not given'} bytes for $TOT={meta.get('$TOT')!r}) does not tell "
        f"the word size; reading {8 * default}-bit words",
        FCSWarning,
        stacklevel=5,
    )
    return default


def _layout(meta: Mapping[str, str], n_par: int, path, *, segment_lengths: Sequence[int] = ()) -> _Layout:
    """The row layout from ``$DATATYPE``, ``$PnDATATYPE``, ``$PnB``, ``$PnR``, ``$BYTEORD`` and ``$MODE``.

    ``segment_lengths``: the DATA lengths the file announces (:func:`_segment_lengths`), used only to
    infer the word size of integer values whose ``$PnB`` is not a multiple of 8.
    """
    datatype = str(meta.get("$DATATYPE", "")).strip().upper()
    if datatype not in ("I", "F", "D", "A"):
        raise FCSTextError(f"keyword $DATATYPE is {meta.get('$DATATYPE')!r}, expected I, F, D or A", path)
    mode = str(meta.get("$MODE", "L")).strip().upper() or "L"  # FCS 3.2: $MODE may be absent
    if mode != "L":
        raise FCSUnsupportedError(
            f"keyword $MODE is {mode!r}: only list-mode data ($MODE L) can be read as events; "
            "correlated (C) and uncorrelated (U) histogram modes are deprecated since FCS 3.1",
            path,
        )
    kinds = channel_datatypes(meta, n_par)
    for i, k in enumerate(kinds):
        if k not in ("I", "F", "D", "A") or (k == "A") != (datatype == "A"):
            raise FCSTextError(
                f"keyword $P{i + 1}DATATYPE is {meta.get(f'$P{i + 1}DATATYPE')!r}, expected I, F or D"
                + (" (ASCII data, $DATATYPE A, takes no $PnDATATYPE)" if datatype == "A" else ""),
                path,
            )
    if datatype == "A":
        return _ascii_layout(meta, n_par, path)
    order = _byte_order(meta, path)
    widths: list[int] = []
    masks: list[int | None] = []
    odd: list[tuple[int, int]] = []
    for i, kind in enumerate(kinds, start=1):
        bits = _int_kw(meta, f"$P{i}B", path, minimum=1)
        if kind in ("F", "D"):
            expected = 32 if kind == "F" else 64
            if bits != expected:
                warnings.warn(
                    f"{path}: $P{i}B is {bits} but {'$P%dDATATYPE' % i if kind != datatype else '$DATATYPE'} "
                    f"{kind} stores {expected}-bit values; reading {expected} bits",
                    FCSWarning,
                    stacklevel=4,
                )
            widths.append(expected // 8)
            masks.append(None)
            continue
        if bits > 64:
            raise FCSUnsupportedError(
                f"keyword $P{i}B is {bits}: integer values of more than 64 bits cannot be read", path
            )
        if bits % 8:
            odd.append((i, bits))
            widths.append(0)  # the word size, filled in below
            mask = _range_mask(meta, i, bits, path)
            masks.append(mask if mask is not None else (1 << bits) - 1)
            continue
        widths.append(bits // 8)
        masks.append(_range_mask(meta, i, bits, path))
    if odd:
        word = _word_bytes(meta, odd, sum(widths), n_par, tuple(segment_lengths), path)
        widths = [word if w == 0 else w for w in widths]
    common = kinds[0] if len(set(kinds)) == 1 else "M"
    return _Layout(common, order, tuple(widths), tuple(masks), kinds=tuple(kinds) if common == "M" else ())


def _ascii_layout(meta, n_par, path) -> _Layout:
    widths = []
    for i in range(1, n_par + 1):
        if str(meta.get(f"$P{i}B", "")).strip() == "*":
            widths.append(0)
        else:
            widths.append(_int_kw(meta, f"$P{i}B", path, minimum=1))  # characters per value
    delimited = any(w == 0 for w in widths)
    if delimited and not all(w == 0 for w in widths):
        raise FCSUnsupportedError("ASCII data mixes fixed-width and delimited ($PnB '*') columns", path)
    return _Layout("A", "<", tuple(widths), (None,) * n_par, delimited_ascii=delimited)


def _decode_rows(buf, layout: _Layout) -> np.ndarray:
    """Decode whole rows of raw DATA bytes into a native-endian (rows, channels) array."""
    buf = np.frombuffer(buf, dtype=np.uint8)
    nch, rb = layout.n_channels, layout.row_bytes
    nrows = buf.size // rb if rb else 0
    buf = buf[: nrows * rb]
    if layout.datatype == "A":
        return _decode_ascii_fixed(buf, nrows, layout)
    if layout.direct:
        kind = "u" if layout.datatype == "I" else "f"
        src = buf.view(np.dtype(f"{layout.order}{kind}{layout.widths[0]}")).reshape(nrows, nch)
        out = src.astype(src.dtype.newbyteorder("="), copy=True)
        if layout.datatype == "I":
            out = out.astype(layout.dtype, copy=False)
            _apply_masks(out, layout)
        return out
    # A record layout: mixed types ($PnDATATYPE), mixed integer widths, or 3-, 5-, 6-, 7-byte integers.
    out = np.empty((nrows, nch), dtype=layout.dtype)
    names, formats, offsets, odd = [], [], [], []
    pos = 0
    for c, (kind, w) in enumerate(zip(layout.column_kinds, layout.widths)):
        if kind == "I" and w not in (1, 2, 4, 8):
            odd.append((c, pos, w))
        else:
            names.append(f"c{c}")
            formats.append(f"{layout.order}{'u' if kind == 'I' else 'f'}{w}")
            offsets.append(pos)
        pos += w
    if names:
        rec = buf.view(np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": rb}))
        cols = [int(name[1:]) for name in names]
        if not odd:  # one cast of the whole record array (3x faster than column by column)
            out = structured_to_unstructured(rec, dtype=layout.dtype, copy=True)
        for name, c in zip(names, cols):
            mask = layout.masks[c]
            if mask is not None:  # masked on the stored integers, then cast
                col = rec[name].astype(rec.dtype[name].newbyteorder("="))
                col &= col.dtype.type(mask)
                out[:, c] = col
            elif odd:
                out[:, c] = rec[name]
    if odd:
        rows = buf.reshape(nrows, rb)
        for c, p, w in odd:
            raw = rows[:, p : p + w].astype(np.uint64)
            acc = np.zeros(nrows, dtype=np.uint64)
            for shift, k in enumerate(range(w) if layout.order == "<" else range(w - 1, -1, -1)):
                acc |= raw[:, k] << np.uint64(8 * shift)
            if layout.masks[c] is not None:
                acc &= np.uint64(layout.masks[c])
            out[:, c] = acc
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
