"""TEXT and supplemental TEXT segments: keyword parsing, the ``$NEXTDATA`` chain, spillover,
and the meaning of the channel keywords.

The functions at the end (:func:`channel_keyword`, :func:`channel_range`, :func:`channel_bits`,
:func:`channel_log`, :func:`channel_gain`, :func:`timestep`, :func:`volume_nl`,
:func:`clock_seconds`) are the one place that reads ``$PnR``, ``$PnB``, ``$PnE``, ``$PnG``,
``$TIMESTEP``, ``$VOL`` and ``$BTIM``/``$ETIM``; :class:`~evflow.io.fcs.FCSSample` answers
through them and the DATA decoding uses them.  ``i`` is always the 0-based column.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...errors import FCSHeaderError, FCSTextError, FCSWarning
from .header import HEADER_SIZE, _Header, _read_header

_MAX_PAR = 100_000
_TIME_NAMES = ("time", "hdr-t")


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
    d = delim[0]
    if d < 0x80 and raw.find(delim + delim, 1) < 0:
        fast = _parse_plain(raw, chr(d), path, where)
        if fast is not None:
            return fast
    tokens: list[bytes] = []
    cur = bytearray()
    i, n = 1, len(raw)
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
    return _keywords([_decode(t) for t in tokens], path, where, stacklevel=5)


def _keywords(tokens: list[str], path, where: str, stacklevel: int) -> dict[str, str]:
    """TEXT fields (decoded, in order) as ``{KEY: value}``: keys upper-cased and stripped, the first of a
    repeated key kept, empty keys skipped; an odd last field is dropped (with a warning unless blank)."""
    if len(tokens) % 2:
        last = tokens.pop()
        if last.strip(" \x00\r\n\t"):
            warnings.warn(
                f"{path}: {where} segment has an odd number of fields ({len(tokens) + 1}); "
                f"ignoring the last one ({last[:40]!r})",
                FCSWarning,
                stacklevel=stacklevel,
            )
    out: dict[str, str] = {}
    for k, v in zip(tokens[::2], tokens[1::2]):
        key = k.strip().upper()
        if key and key not in out:
            out[key] = v
    return out


def _parse_plain(raw: bytes, delim: str, path, where: str) -> dict[str, str] | None:
    """:func:`_parse_text` of the usual TEXT: an ASCII delimiter that is never doubled, and UTF-8 throughout
    (None for any other).  Splitting the decoded text at the delimiter gives the same tokens, decoded the
    same way, as the byte-by-byte walk, in a fraction of its time."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    tokens = text[1:].split(delim)
    tail = tokens.pop()
    if tail.strip(" \x00\r\n\t"):
        tokens.append(tail)  # the segment did not end with a delimiter: keep the last value anyway
    return _keywords(tokens, path, where, stacklevel=6)


def parse_int(s: str) -> int | None:
    """An integer keyword value (``"12"``, ``"12.0"``, ``"1e3"``), or None when it is not one."""
    try:
        return int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f == int(f) else None


def _int_kw(meta: Mapping[str, str], key: str, path, *, required=True, default=None, minimum=None):
    val = meta.get(key)
    if val is None or not str(val).strip():
        if required:
            raise FCSTextError(f"required keyword {key} is missing", path)
        return default
    out = parse_int(str(val).strip())
    if out is None:
        raise FCSTextError(f"keyword {key} is {val!r}, expected an integer", path)
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


# --------------------------------------------------------------------------- data sets


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


# --------------------------------------------------------------------------- channel keywords

#: Range assumed for a channel without a usable ``$PnR`` when its values are not integers
#: (2**18, the range of most digital cytometers, and what :func:`write_fcs` writes for a
#: channel without finite values).  Integer channels fall back to ``2**$PnB``.
NOMINAL_RANGE = 262144.0


class _Nominal:
    """Marker default of :func:`channel_range`: fall back to the nominal range."""

    def __repr__(self):
        return "NOMINAL"


NOMINAL = _Nominal()


def is_time_name(name) -> bool:
    """Whether a ``$PnN`` names the time channel (``Time``, ``HDR-T``, any case)."""
    return str(name).strip().lower() in _TIME_NAMES


def is_time_channel(meta: Mapping, i: int, name=None) -> bool:
    """Whether column ``i`` is the time channel: ``$PnTYPE`` Time (FCS 3.2) when the channel has a
    ``$PnTYPE``, else by its ``$PnN`` (``name``, default the keyword) as :func:`is_time_name`."""
    kind = channel_keyword(meta, i, "TYPE")
    if kind is not None:
        return kind.lower() == "time"
    return is_time_name(meta.get(f"$P{i + 1}N", "") if name is None else name)


def is_clock_name(name) -> bool:
    """Whether a ``$PnN`` names a clock whose values never decrease: a time channel's name
    (:func:`is_time_name`), ``HW-Time``, or the high word of a clock split in two (``Time MSW``;
    its low word wraps round)."""
    low = str(name).strip().lower()
    return low in _TIME_NAMES or low == "hw-time" or (low.startswith("time") and "msw" in low)


def is_clock_channel(meta: Mapping, i: int, name=None) -> bool:
    """Whether column ``i`` counts time, so that its values never decrease: the time channel
    (:func:`is_time_channel`) or a channel named as a clock (:func:`is_clock_name`, whatever its
    ``$PnTYPE``).  A superset of :func:`is_time_channel`, used to judge DATA offsets
    (:mod:`evflow.io.fcs.offsets`); only :func:`is_time_channel` picks the sample's time channel."""
    name = meta.get(f"$P{i + 1}N", "") if name is None else name
    return is_time_channel(meta, i, name) or is_clock_name(name)


def channel_datatype(meta: Mapping, i: int) -> str:
    """The stored type of column ``i``: FCS 3.2's ``$PnDATATYPE`` when given, else ``$DATATYPE``
    (upper-case, as written: 'I', 'F', 'D' or 'A' in a valid file)."""
    return channel_datatypes(meta, i + 1, first=i)[0]


def channel_datatypes(meta: Mapping, n: int, first: int = 0) -> list[str]:
    """:func:`channel_datatype` of the columns ``first`` to ``n - 1``, in one pass."""
    common = str(meta.get("$DATATYPE", "")).strip()
    out = []
    for i in range(first + 1, n + 1):
        own = meta.get(f"$P{i}DATATYPE")
        own = str(own).strip() if own is not None else ""
        out.append((own or common).upper())
    return out


def datetime_keyword(meta: Mapping, key: str, path=None):
    """``$BEGINDATETIME``/``$ENDDATETIME`` (FCS 3.2, ISO 8601 ``yyyy-mm-ddThh:mm:ss[.ss][TZD]``) as a
    :class:`datetime.datetime` (time-zone aware when the keyword gives a zone); None when absent or blank.

    Raises
    ------
    FCSTextError
        When the value is not an ISO 8601 date and time.
    """
    import datetime as _dt

    raw = meta.get(key)
    if raw is None or not str(raw).strip():
        return None
    s = str(raw).strip()
    try:
        return _dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise FCSTextError(f"keyword {key} is {s!r}, expected an ISO 8601 date and time "
                           "(e.g. '2024-03-01T14:05:22+01:00')", path) from None


def channel_keyword(meta: Mapping, i: int, letter: str) -> str | None:
    """The raw value of ``$P<i+1><letter>`` (e.g. ``letter="R"``), stripped; None when absent or blank."""
    val = meta.get(f"$P{i + 1}{letter.upper()}")
    if val is None:
        return None
    s = str(val).strip()
    return s or None


def _number(raw) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def channel_bits(meta: Mapping, i: int) -> int | None:
    """``$PnB`` as an int; None when absent, ``*`` (delimited ASCII) or not an integer."""
    v = _number(channel_keyword(meta, i, "B"))
    if v is None or not math.isfinite(v) or v != int(v):
        return None
    return int(v)


def nominal_range(meta: Mapping, i: int) -> float:
    """The range of a channel without a usable ``$PnR``: ``2**$PnB`` for integer data, else :data:`NOMINAL_RANGE`."""
    if channel_datatype(meta, i) == "I":
        bits = channel_bits(meta, i)
        if bits is not None and 1 <= bits <= 64:
            return float(2**bits)
    return NOMINAL_RANGE


def channel_range(meta: Mapping, i: int, *, default=NOMINAL) -> float | None:
    """``$PnR`` as a float.

    When it is absent or not a number: ``default`` if one is given (None included),
    else :func:`nominal_range`.
    """
    r = _number(channel_keyword(meta, i, "R"))
    if r is not None:
        return r
    if default is not NOMINAL:
        return default
    return nominal_range(meta, i)


def channel_log(meta: Mapping, i: int, path=None, *, strict: bool = True) -> tuple[float, float]:
    """``$PnE`` as ``(f1, f2)``: ``f1`` decades from ``f2``; ``(0.0, 0.0)`` for linear or absent.

    An ``f2`` of 0 on a log channel is read as 1 (the standard's rule).  A value that is not
    ``f1,f2`` raises :class:`FCSTextError` if ``strict``, else counts as linear.
    """
    raw = meta.get(f"$P{i + 1}E")
    if raw is None or not str(raw).strip():
        return 0.0, 0.0
    try:
        f1, f2 = (float(x) for x in str(raw).split(","))
    except ValueError:
        if strict:
            raise FCSTextError(
                f"keyword $P{i + 1}E is {raw!r}, expected 'f1,f2' (e.g. '4.0,1.0' or '0,0')", path
            ) from None
        return 0.0, 0.0
    if f1 > 0 and f2 == 0:
        f2 = 1.0
    return f1, f2


def channel_gain(meta: Mapping, i: int, path=None, *, strict: bool = True) -> float:
    """``$PnG`` as a float; 1.0 when absent, blank or 0.

    A value that is not a number counts as 1.0, with an :class:`FCSWarning` if ``strict``.
    """
    key = f"$P{i + 1}G"
    if strict:
        return _float_kw(meta, key, path, default=1.0) or 1.0
    return _number(channel_keyword(meta, i, "G")) or 1.0


def timestep(meta: Mapping, path=None, *, strict: bool = True) -> float:
    """``$TIMESTEP`` (seconds per time-channel unit); 1.0 when absent, blank, 0 or not a number
    (with an :class:`FCSWarning` if ``strict``)."""
    if strict:
        return _float_kw(meta, "$TIMESTEP", path, default=1.0) or 1.0
    raw = meta.get("$TIMESTEP")
    return _number(None if raw is None else str(raw)) or 1.0


def volume_nl(meta: Mapping, path=None) -> float | None:
    """``$VOL`` in nanolitres; None when the keyword is absent or blank.

    Raises
    ------
    FCSTextError
        When ``$VOL`` is there but not a positive number (e.g. ``$VOL`` is 0).
    """
    raw = meta.get("$VOL")
    if raw is None or not str(raw).strip():
        return None
    v = _number(str(raw).strip())
    if v is None:
        raise FCSTextError(f"keyword $VOL is {raw!r}, expected a number of nanolitres", path)
    if not (math.isfinite(v) and v > 0):
        raise FCSTextError(
            f"keyword $VOL is {str(raw).strip()!r}: the analysed volume must be a positive number of nanolitres", path
        )
    return v


def clock_seconds(meta: Mapping) -> float | None:
    """Seconds from ``$BTIM`` to ``$ETIM`` (``hh:mm:ss[.cc]``, across midnight); None if unusable."""
    bt, et = str(meta.get("$BTIM", "") or ""), str(meta.get("$ETIM", "") or "")
    if not (bt and et):
        return None

    def secs(s):
        parts = s.strip().replace(".", ":").split(":")
        h, m, sec = (float(x) for x in parts[:3])
        frac = float("0." + parts[3]) if len(parts) > 3 and parts[3] else 0.0
        return h * 3600 + m * 60 + sec + frac

    try:
        dt = secs(et) - secs(bt)
    except ValueError:
        return None
    if dt < 0:
        dt += 86400
    return dt if dt > 0 else None


# --------------------------------------------------------------------------- names users type


def channel_candidates(name, channels, markers) -> list[tuple[int, str]]:
    """Columns a typed name can mean, as ``(column, how)``: ``$PnN`` or ``$PnS`` matches, exact first;
    case-insensitive matches only when there is no exact one."""
    for fold in (str, str.lower):
        key = fold(str(name).strip())
        hits: dict[int, str] = {}
        for i, c in enumerate(channels):
            if fold(str(c)) == key:
                hits.setdefault(i, "$PnN")
        for i, m in enumerate(markers or ()):
            if m is not None and fold(str(m)) == key:
                hits.setdefault(i, "$PnS")
        if hits:
            return sorted(hits.items())
    return []


def resolve_channel(name, channels, markers=None, path=None) -> int:
    """The column a channel is named by: its ``$PnN`` or its ``$PnS`` (exact, else ignoring case).

    Raises
    ------
    FCSError
        When no channel has that name (listing the channels once, with the closest names), or
        when it names several (listing the candidates).
    """
    from ...errors import FCSError

    hits = channel_candidates(name, channels, markers)
    if len(hits) == 1:
        return hits[0][0]
    if hits:
        cand = ", ".join(f"{channels[i]!r} ({how}{'' if how == '$PnN' else ' ' + repr(markers[i])})"
                         for i, how in hits)
        raise FCSError(f"channel name {name!r} is ambiguous: it names {cand}; use the $PnN name", path)
    raise FCSError(f"no channel {name!r}{did_you_mean(name, channels, markers)}; "
                   f"{describe_channels(channels, markers)}", path)


def did_you_mean(name, channels, markers=None) -> str:
    """``" (did you mean 'VSSC1-W'?)"``, or '' when no name is close."""
    import difflib

    names = list(channels) + [m for m in (markers or ()) if m]
    close = difflib.get_close_matches(str(name), names, n=2, cutoff=0.6)
    if not close:
        low = {n.lower(): n for n in names}
        close = [low[c] for c in difflib.get_close_matches(str(name).lower(), list(low), n=2, cutoff=0.6)]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def describe_channels(channels, markers=None) -> str:
    """``"channels ($PnN): FSC-H, FL1-H, ...; markers ($PnS): FL1-H=CD63, ..."``."""
    marked = [f"{c}={m}" for c, m in zip(channels, markers or [None] * len(channels)) if m and m != c]
    return f"channels ($PnN): {', '.join(map(str, channels))}" + (f"; markers ($PnS): {', '.join(marked)}"
                                                                 if marked else "")


class ChannelNames(tuple):
    """A sample's ``$PnN`` names that also answer to its ``$PnS`` names (:func:`resolve_channel`)."""

    def __new__(cls, channels, markers=None, path=None):
        self = super().__new__(cls, [str(c) for c in channels])
        self.markers = tuple(markers) if markers is not None else (None,) * len(self)
        self.path = path
        return self

    def column(self, name) -> int:
        return resolve_channel(name, self, self.markers, self.path)

    def has(self, name) -> bool:
        return len(channel_candidates(name, self, self.markers)) == 1


def column_of(channels, name):
    """Column of ``name`` in a list of channel names (a :class:`ChannelNames` also by ``$PnS``), or None."""
    if isinstance(channels, ChannelNames):
        hits = channel_candidates(name, channels, channels.markers)
        if len(hits) > 1:
            channels.column(name)  # raises: ambiguous
        return hits[0][0] if hits else None
    channels = list(channels)
    return channels.index(name) if name in channels else None
