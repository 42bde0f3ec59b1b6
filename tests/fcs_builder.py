"""An independent, deliberately simple FCS file builder for tests.

It shares no code with evflow's writer, so files it builds exercise the
reader on layouts the writer never produces (integer widths, byte orders,
ASCII data, several data sets, supplemental TEXT, blank HEADER offsets).
"""

from __future__ import annotations

import numpy as np


def encode_values(values: np.ndarray, datatype: str, bits: list[int], order: str) -> bytes:
    """Row-major DATA bytes for ``values`` (events x channels), written value by value."""
    out = bytearray()
    n, p = values.shape
    for i in range(n):
        for j in range(p):
            v = values[i, j]
            if datatype == "F":
                out += np.array([v], dtype=order + "f4").tobytes()
            elif datatype == "D":
                out += np.array([v], dtype=order + "f8").tobytes()
            elif datatype == "A":
                out += f"{int(v):>{bits[j]}d}".encode("ascii")
            else:
                nbytes = bits[j] // 8
                out += int(v).to_bytes(nbytes, "little" if order == "<" else "big")
    return bytes(out)


def text_segment(keywords: dict[str, str], delim: str = "/") -> bytes:
    d = delim
    body = d + "".join(f"{k.replace(d, d + d)}{d}{str(v).replace(d, d + d)}{d}" for k, v in keywords.items())
    return body.encode("latin-1")


def build_data_set(
    values: np.ndarray,
    *,
    datatype: str = "I",
    bits: list[int] | None = None,
    order: str = "<",
    ranges: list[int] | None = None,
    names: list[str] | None = None,
    extra: dict[str, str] | None = None,
    version: str = "FCS3.0",
    delim: str = "/",
    header_data_offsets: bool = True,
    enddata_off_by: int = 0,
    stext: dict[str, str] | None = None,
    data_bytes: bytes | None = None,
) -> tuple[bytes, dict]:
    """Bytes of one data set (HEADER + TEXT [+ STEXT] + DATA), offsets relative to its start."""
    values = np.asarray(values)
    n, p = values.shape
    if bits is None:
        bits = [{"F": 32, "D": 64, "A": 8}.get(datatype, 16)] * p
    names = names or [f"CH{i + 1}" for i in range(p)]
    ranges = ranges or [1024] * p
    data = data_bytes if data_bytes is not None else encode_values(values, datatype, bits, order)
    kw = {
        "$BYTEORD": "1,2,3,4" if order == "<" else "4,3,2,1",
        "$DATATYPE": datatype,
        "$MODE": "L",
        "$PAR": str(p),
        "$TOT": str(n),
        "$NEXTDATA": "0",
    }
    for i in range(p):
        kw[f"$P{i + 1}N"] = names[i]
        kw[f"$P{i + 1}B"] = str(bits[i])
        kw[f"$P{i + 1}E"] = "0,0"
        kw[f"$P{i + 1}R"] = str(ranges[i])
    kw.update(extra or {})
    stext_bytes = text_segment(stext, delim) if stext else b""
    # fixed-width offsets so that the TEXT length does not depend on them
    kw["$BEGINDATA"] = "0" * 12
    kw["$ENDDATA"] = "0" * 12
    kw["$BEGINSTEXT"] = "0" * 12
    kw["$ENDSTEXT"] = "0" * 12
    text_len = len(text_segment(kw, delim))
    text_begin = 58
    text_end = text_begin + text_len - 1
    stext_begin = text_end + 1 if stext_bytes else 0
    stext_end = stext_begin + len(stext_bytes) - 1 if stext_bytes else 0
    data_begin = (stext_end if stext_bytes else text_end) + 1
    data_end = data_begin + len(data) - 1 + enddata_off_by
    kw["$BEGINDATA"] = f"{data_begin:012d}"
    kw["$ENDDATA"] = f"{data_end:012d}"
    kw["$BEGINSTEXT"] = f"{stext_begin:012d}"
    kw["$ENDSTEXT"] = f"{stext_end:012d}"
    text = text_segment(kw, delim)
    assert len(text) == text_len

    def f8(v):
        return f"{v:>8d}".encode()

    hd = (f8(data_begin) + f8(data_end)) if header_data_offsets else b" " * 16
    header = version.encode() + b"    " + f8(text_begin) + f8(text_end) + hd + f8(0) + f8(0)
    assert len(header) == 58
    return header + text + stext_bytes + data, kw


def build_fcs(values, **kwargs) -> bytes:
    return build_data_set(values, **kwargs)[0]


def build_multi(datasets: list[dict]) -> bytes:
    """Several data sets chained by $NEXTDATA (relative to each data set's start)."""
    blobs = []
    for spec in datasets:
        blobs.append(spec)
    out = b""
    parts = []
    # first pass: sizes with a placeholder NEXTDATA of fixed width
    for spec in blobs:
        spec = dict(spec)
        extra = dict(spec.pop("extra", {}) or {})
        extra["$NEXTDATA"] = "0" * 12
        b, _ = build_data_set(extra=extra, **spec)
        parts.append((spec, extra, len(b)))
    for i, (spec, extra, size) in enumerate(parts):
        extra = dict(extra)
        nxt = size if i + 1 < len(parts) else 0
        extra["$NEXTDATA"] = f"{nxt:012d}"
        b, _ = build_data_set(extra=extra, **spec)
        assert len(b) == size
        out += b
    return out


# --------------------------------------------------------------------------- byte edits of offsets

HEADER_FIELDS = ("TEXT begin", "TEXT end", "DATA begin", "DATA end", "ANALYSIS begin", "ANALYSIS end")


def set_header_field(blob: bytes, field: str, value: int | str) -> bytes:
    """Overwrite one 8-character HEADER offset field (``field`` from :data:`HEADER_FIELDS`)."""
    lo = 10 + 8 * HEADER_FIELDS.index(field)
    s = f"{value:>8d}" if isinstance(value, int) else f"{value:>8s}"
    assert len(s) == 8
    return blob[:lo] + s.encode() + blob[lo + 8 :]


def header_field(blob: bytes, field: str) -> int:
    lo = 10 + 8 * HEADER_FIELDS.index(field)
    return int(blob[lo : lo + 8].strip() or 0)


def set_text_value(blob: bytes, key: str, value: int | str, delim: str = "/") -> bytes:
    """Overwrite the value of TEXT keyword ``key`` keeping its width (numbers zero-padded, strings
    right-justified with spaces), so no other offset moves."""
    d = delim.encode()
    k = d + key.encode() + d
    i = blob.index(k) + len(k)
    j = blob.index(d, i)
    width = j - i
    s = f"{value:0{width}d}" if isinstance(value, int) else f"{value:>{width}s}"
    assert len(s) == width, (key, value, width)
    return blob[:i] + s.encode() + blob[j:]


def text_value(blob: bytes, key: str, delim: str = "/") -> str:
    d = delim.encode()
    k = d + key.encode() + d
    i = blob.index(k) + len(k)
    return blob[i : blob.index(d, i)].decode()


def shift_offsets(blob: bytes, where: str, delta: int, *, delim: str = "/") -> bytes:
    """Move the DATA offsets of ``where`` ("HEADER" or "TEXT") by ``delta`` bytes."""
    if where == "HEADER":
        for f in ("DATA begin", "DATA end"):
            blob = set_header_field(blob, f, header_field(blob, f) + delta)
        return blob
    for key in ("$BEGINDATA", "$ENDDATA"):
        blob = set_text_value(blob, key, int(text_value(blob, key, delim)) + delta, delim)
    return blob


def with_analysis(blob: bytes, analysis: bytes, *, text_keywords: bool = True) -> bytes:
    """Append an ANALYSIS segment and point the HEADER (and, when the builder left room for them,
    ``$BEGINANALYSIS``/``$ENDANALYSIS``) at it."""
    begin, end = len(blob), len(blob) + len(analysis) - 1
    blob = set_header_field(set_header_field(blob, "ANALYSIS begin", begin), "ANALYSIS end", end)
    if text_keywords and b"$BEGINANALYSIS" in blob:
        blob = set_text_value(set_text_value(blob, "$BEGINANALYSIS", begin), "$ENDANALYSIS", end)
    return blob + analysis


def build_mixed_32(n: int = 20) -> bytes:
    """An FCS 3.2 file whose events mix types ($PnDATATYPE I, F, D), big-endian, without $MODE."""
    import struct

    raw = b"".join(struct.pack(">HfdH", i % 1024, i * 0.5, -1e200 * i, 65535 - i) for i in range(n))
    blob = build_fcs(np.zeros((n, 4)), datatype="I", bits=[16, 32, 64, 16], order=">", version="FCS3.2",
                     names=["FSC-A", "FL1-A", "FL2-A", "clock"], ranges=[1024, 262144, 262144, 65536],
                     extra={"$P2DATATYPE": "F", "$P3DATATYPE": "D", "$P4TYPE": "Time", "$P1TYPE": "Forward_Scatter",
                            "$P2FEATURE": "Area", "$BEGINDATETIME": "2026-01-02T03:04:05Z"},
                     data_bytes=raw)
    return blob.replace(b"/$MODE/L/", b"/$XMOD/L/")


def build_odd_bits(n: int = 20, bits: tuple[int, ...] = (10, 12, 14)) -> bytes:
    """Integer values whose $PnB is not a multiple of 8, in 16-bit little-endian words (high bits set)."""
    words = (np.arange(n * len(bits), dtype=np.uint32) * 2654435761 % 65536).astype("<u2")
    return build_fcs(np.zeros((n, len(bits))), bits=list(bits), ranges=[2**b for b in bits], data_bytes=words.tobytes())
