"""Where the DATA segment lies: the HEADER and TEXT offsets reconciled, and judged on the events.

The rule (:func:`data_offsets`):

1. Offsets come from the HEADER and from ``$BEGINDATA``/``$ENDDATA``.  A TEXT offset that is
   missing (FCS 2.0 needs none) or malformed (``"   1280F"``) leaves the HEADER's, with one
   :class:`~evflow.errors.FCSWarning` per data set (none for FCS 2.0 without them).
2. When they disagree, a reading must *fit*: start after the TEXT, hold ``$TOT`` events inside
   the file, and (if one does) span ``$TOT`` x event size bytes (or one more, a known
   ``$ENDDATA`` off-by-one).  If exactly one fits it is used, with a warning.
3. If more than one fits, each is decoded on a bounded sample (the first and last
   :data:`JUDGE_ROWS` events) and judged: every integer value within ``$PnR`` (after the bit
   mask), every float finite, each clock (``$PnTYPE`` Time, or ``$PnN`` Time/HDR-T/HW-Time or a
   "Time MSW" word: :func:`~evflow.io.fcs.text.is_clock_channel`) non-decreasing, and no event
   in bytes that belong to another segment (TEXT, supplemental TEXT, ANALYSIS, the next data set).  The one reading
   that passes is used, with a warning naming both offsets and why the other failed; if both
   pass or neither does, :class:`~evflow.errors.FCSDataError` names both offsets.
4. Without ``$TOT`` (FCS 2.0) the number of events is inferred from the DATA length when that
   is a whole number of events, with a warning; otherwise it is an error.

The user can decide instead (``read_fcs(path, data_offsets=...)``, :data:`DATA_OFFSETS`):
``"header"`` reads the DATA where the HEADER says, ``"text"`` where ``$BEGINDATA``/``$ENDDATA``
say, with no judging and no warning about the other; the reading is still checked against
the file size and ``$TOT`` (:func:`_finish`).  ``"auto"`` (the default) is the rule above.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ...errors import FCSDataError, FCSError, FCSWarning
from .data import _decode_rows, _Layout
from .header import HEADER_SIZE
from .text import _DataSetInfo, channel_range, is_clock_channel, parse_int

#: events decoded at each end of the DATA segment when two readings must be judged
JUDGE_ROWS = 2048

_TEXT_KEYS = ("$BEGINDATA", "$ENDDATA")

#: what ``read_fcs(data_offsets=)`` accepts: the rule of this module, or the HEADER's or the TEXT's offsets
DATA_OFFSETS = ("auto", "header", "text")


def check_choice(value, path=None) -> str:
    """``value`` if it is one of :data:`DATA_OFFSETS`, else :class:`FCSError` naming them."""
    if not isinstance(value, str) or value not in DATA_OFFSETS:
        raise FCSError(f"data_offsets={value!r}; expected one of {', '.join(map(repr, DATA_OFFSETS))}", path)
    return value


def _undecided(what: str, h: _Reading, t: _Reading, path) -> FCSDataError:
    """The error for offsets evflow cannot decide between: ``what``, then how to choose with ``read_fcs``.

    The error also carries ``reason`` (``what``) and ``choices`` (``{"header": (begin, end), "text": (begin,
    end)}``, the bytes each ``data_offsets`` reads), so that a caller which chooses some other way (an
    experiment-file key, a command-line option) can say so instead.
    """
    exc = FCSDataError(f"{what}; if you know which is right, choose it: read_fcs(path, data_offsets='header') "
                       f"reads bytes {h.begin}-{h.end}, data_offsets='text' reads bytes {t.begin}-{t.end}", path)
    exc.reason, exc.choices = what, {"header": (h.begin, h.end), "text": (t.begin, t.end)}
    return exc


@dataclass(frozen=True)
class _Reading:
    source: str  # "HEADER" or "$BEGINDATA/$ENDDATA"
    begin: int
    end: int

    def describe(self) -> str:
        return f"{self.source} (bytes {self.begin}-{self.end})"


def _lenient_int(meta, key):
    """(value, problem): the keyword as a non-negative int, or None with a reason when it is not one."""
    raw = meta.get(key)
    if raw is None or not str(raw).strip():
        return None, None
    v = parse_int(str(raw).strip())
    if v is None:
        return None, f"{key} is {raw!r}, expected an integer"
    if v < 0:
        return None, f"{key} is {v}, expected a non-negative byte offset"
    return v, None


def _other_segments(info: _DataSetInfo, size: int) -> list[tuple[str, int, int]]:
    """Absolute byte ranges (name, first, last) of the segments DATA must not run into."""
    meta, base = info.meta, info.base
    out = [("TEXT", base + info.header.text[0], base + info.header.text[1])]
    sb, _ = _lenient_int(meta, "$BEGINSTEXT")
    se, _ = _lenient_int(meta, "$ENDSTEXT")
    if sb and se and se >= sb:
        out.append(("supplemental TEXT", base + sb, base + se))
    ab, ae = info.header.analysis
    tb, _ = _lenient_int(meta, "$BEGINANALYSIS")
    te, _ = _lenient_int(meta, "$ENDANALYSIS")
    same = (tb, te) == (ab, ae)
    if ab and ae >= ab:
        out.append(("ANALYSIS" if same else "ANALYSIS (HEADER)", base + ab, base + ae))
    if tb and te and te >= tb and not same:
        out.append(("ANALYSIS ($BEGINANALYSIS/$ENDANALYSIS)", base + tb, base + te))
    if info.next_offset:
        out.append(("next data set", base + info.next_offset, base + info.next_offset + HEADER_SIZE - 1))
    return [s for s in out if s[1] < size]


def _read_block(path, start: int, n: int, layout: _Layout) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(start)
        buf = f.read(n * layout.row_bytes)
    return _decode_rows(buf, layout)


def _judge(r: _Reading, n_events: int, info: _DataSetInfo, layout: _Layout, channels, path, size) -> list[str]:
    """Why the events read from ``r.begin`` cannot be right (an empty list: nothing against them)."""
    reasons: list[str] = []
    meta, rb = info.meta, layout.row_bytes
    first, last = info.base + r.begin, info.base + r.begin + n_events * rb - 1
    for name, lo, hi in _other_segments(info, size):
        if lo <= last and hi >= first:
            reasons.append(f"its events run into the {name} segment (bytes {lo}-{hi})")
    k = min(n_events, JUDGE_ROWS)
    tail_start = max(k, n_events - JUDGE_ROWS)
    try:
        head = _read_block(path, first, k, layout)
        tail = _read_block(path, first + tail_start * rb, n_events - tail_start, layout)
    except FCSDataError as exc:  # fixed-width ASCII that is not numbers
        return reasons + [str(exc)]
    blocks = [(0, head), (tail_start, tail)] if tail.size else [(0, head)]
    for c in range(layout.n_channels):
        name = channels[c]
        if layout.datatype in ("I", "A"):
            rng = channel_range(meta, c, default=None)
            if rng is not None and math.isfinite(rng) and rng >= 1:
                for off, b in blocks:
                    bad = np.flatnonzero(b[:, c] > rng)
                    if bad.size:
                        reasons.append(f"channel {name!r} holds {b[bad[0], c]:g} at event {off + int(bad[0])}, "
                                       f"above $P{c + 1}R={rng:g}")
                        break
        elif layout.datatype in ("F", "D"):
            for off, b in blocks:
                bad = np.flatnonzero(~np.isfinite(b[:, c]))
                if bad.size:
                    reasons.append(f"channel {name!r} holds {b[bad[0], c]} at event {off + int(bad[0])}")
                    break
        if is_clock_channel(meta, c, name):
            t = np.concatenate([b[:, c] for _, b in blocks]).astype(np.float64)
            idx = np.concatenate([off + np.arange(b.shape[0]) for off, b in blocks])
            down = np.flatnonzero(np.diff(t) < 0)
            if down.size:
                j = int(down[0])
                reasons.append(f"time channel {name!r} decreases from {t[j]:g} (event {idx[j]}) to "
                               f"{t[j + 1]:g} (event {idx[j + 1]})")
    return reasons


def _warn(msg: str) -> None:
    warnings.warn(msg, FCSWarning, stacklevel=4)


def _text_reading(info: _DataSetInfo, path) -> tuple[_Reading | None, list[str]]:
    meta = info.meta
    vals, problems = [], []
    for key in _TEXT_KEYS:
        v, p = _lenient_int(meta, key)
        vals.append(v)
        if p:
            problems.append(p)
    tb, te = vals
    if problems or tb is None or te is None or tb == 0:
        return None, problems
    return _Reading("$BEGINDATA/$ENDDATA", tb, te), []


def _count_without_tot(r: _Reading, rb: int, avail: int, path) -> int:
    """Events in a DATA segment when ``$TOT`` is absent (FCS 2.0): its length must be whole events."""
    seg = r.end - r.begin + 1 if r.end >= r.begin else 0
    nbytes = min(seg, avail) if seg > 0 else avail
    if not rb:
        return 0
    n, extra = divmod(nbytes, rb)
    if extra and not (extra == 1 and seg == nbytes):
        raise FCSDataError(
            f"$TOT is absent and the DATA segment ({r.describe()}, {nbytes} bytes in the file) is not a whole "
            f"number of {rb}-byte events, so the number of events cannot be inferred; expected a multiple of {rb}",
            path,
        )
    _warn(f"{path}: $TOT is absent; inferring {n} events from the DATA length ({nbytes} bytes from {r.source}, "
          f"{rb} bytes per event)")
    return n


def data_offsets(info: _DataSetInfo, layout: _Layout, n_tot: int | None, path, size: int, channels=None,
                 choice: str = "auto"):
    """Resolve the DATA segment of one data set: (absolute start offset, number of events).

    See the module docstring for the rule.  ``channels`` are the ``$PnN`` names (for the time
    channel and messages); default ``P1``, ``P2``, ...  ``choice``: one of :data:`DATA_OFFSETS`.
    """
    meta, header, base = info.meta, info.header, info.base
    channels = list(channels) if channels is not None else [f"P{i + 1}" for i in range(layout.n_channels)]
    hb, he = header.data
    head = _Reading("HEADER", hb, he) if hb > 0 and he >= hb else None
    text, problems = _text_reading(info, path)
    rb = layout.row_bytes
    if n_tot == 0:
        return base, 0
    if choice != "auto":
        return _finish(_asked(choice, head, text, problems, info, path), info, layout, n_tot, path, size)
    if text is None and head is None:
        raise FCSDataError(
            f"no DATA offsets: HEADER gives {hb}-{he} and $BEGINDATA/$ENDDATA are "
            f"{meta.get('$BEGINDATA')!r}/{meta.get('$ENDDATA')!r}"
            + (f" ({'; '.join(problems)})" if problems else "")
            + "; expected byte offsets of the DATA segment in one of them",
            path,
        )
    if text is None:
        if problems:
            _warn(f"{path}: {'; '.join(problems)}; using the HEADER's DATA offsets ({hb}-{he})")
        elif not header.version.startswith("FCS2") and head is not None:
            missing = [k for k in _TEXT_KEYS if not str(meta.get(k, "") or "").strip()]
            if missing:
                _warn(f"{path}: {header.version} requires {'/'.join(_TEXT_KEYS)} but TEXT lacks "
                      f"{', '.join(missing)}; using the HEADER's DATA offsets ({hb}-{he})")
    candidates = [c for c in (text, head) if c is not None]
    text_end = header.text[1]

    def fits(c: _Reading) -> bool:
        # DATA cannot start inside the HEADER or the primary TEXT, and must hold $TOT events
        avail = size - (base + c.begin)
        return c.begin > text_end and avail >= 0 and (n_tot is None or n_tot * rb <= avail)

    chosen = candidates[0]
    if len(candidates) == 2 and candidates[0] != candidates[1]:
        t, h = candidates
        if t.begin != h.begin:
            chosen = _choose_begin(t, h, fits, info, layout, n_tot, channels, path, size)
        elif t.end != h.end and h.end != 0:
            if n_tot is not None and h.end - h.begin + 1 == n_tot * rb and t.end - t.begin + 1 != n_tot * rb:
                chosen = h
            elif n_tot is None and rb:
                chosen = _choose_end(t, h, info, rb, path, size)
            _warn(f"{path}: DATA end differs between HEADER ({h.end}) and $ENDDATA ({t.end}); "
                  f"using {chosen.source} ({chosen.end})")
    return _finish(chosen, info, layout, n_tot, path, size)


def _asked(choice: str, head: _Reading | None, text: _Reading | None, problems, info, path) -> _Reading:
    """The reading ``data_offsets=choice`` names, or :class:`FCSDataError` when the file gives none there."""
    chosen = head if choice == "header" else text
    other = "text" if choice == "header" else "header"
    if chosen is not None:
        tb, te = info.header.text
        if chosen.begin <= te:  # a DATA segment cannot begin inside the HEADER or the primary TEXT
            raise FCSDataError(f"data_offsets={choice!r} asked for, but that DATA segment (bytes {chosen.begin}-"
                               f"{chosen.end}) begins inside the {'HEADER' if chosen.begin < tb else 'TEXT'} "
                               f"(TEXT is bytes {tb}-{te}); read with data_offsets='auto' or {other!r}", path)
        return chosen
    if choice == "header":
        hb, he = info.header.data
        found = f"the HEADER gives DATA offsets {hb}-{he}"
    else:
        found = ("; ".join(problems) if problems else
                 f"$BEGINDATA/$ENDDATA are {info.meta.get('$BEGINDATA')!r}/{info.meta.get('$ENDDATA')!r}")
    raise FCSDataError(f"data_offsets={choice!r} asked for, but {found}; expected byte offsets of the DATA "
                       f"segment there (read with data_offsets='auto' or {other!r})", path)


def _choose_end(t: _Reading, h: _Reading, info, rb, path, size) -> _Reading:
    """FCS 2.0 without ``$TOT``, ends that differ: the end that is whole events, inside the file and
    clear of other segments."""
    others = _other_segments(info, size)

    def ok(r):
        last = info.base + r.end
        return (last < size and (r.end - r.begin + 1) % rb in (0, 1)
                and not any(lo <= last and hi >= info.base + r.begin for _, lo, hi in others))

    good = [r for r in (t, h) if ok(r)]
    if len(good) == 1:
        return good[0]
    raise FCSDataError(
        f"$TOT is absent and the DATA end differs between {h.describe()} and {t.describe()}; "
        f"{'both' if good else 'neither'} give a whole number of {rb}-byte events inside the file, "
        "so the number of events cannot be inferred; expected $TOT or agreeing offsets",
        path,
    )


def _choose_begin(t, h, fits, info, layout, n_tot, channels, path, size) -> _Reading:
    rb = layout.row_bytes
    fitting = [c for c in (t, h) if fits(c)]
    if n_tot is not None:
        consistent = [c for c in fitting if c.end - c.begin + 1 in (n_tot * rb, n_tot * rb + 1)]
        pool = consistent or fitting
    else:
        pool = fitting
    if len(pool) < 2:
        chosen = pool[0] if pool else t
        _warn(f"{path}: DATA begin differs between HEADER ({h.begin}) and $BEGINDATA ({t.begin}); "
              f"using {chosen.source} ({chosen.begin})"
              + ("" if not pool else ", the only one that fits the file and $TOT"))
        return chosen
    if rb == 0:
        raise _undecided(
            f"DATA offsets disagree: {h.describe()} and {t.describe()} both fit the file, and delimited ASCII "
            "DATA cannot be judged event by event; expected HEADER and TEXT to agree", h, t, path)
    avail = {c: size - (info.base + c.begin) for c in pool}
    counts = {c: n_tot if n_tot is not None else _quiet_count(c, rb, avail[c]) for c in pool}
    verdicts = {c: _judge(c, counts[c], info, layout, channels, path, size) for c in pool}
    passed = [c for c in pool if not verdicts[c]]
    both = f"{h.describe()} and {t.describe()}"
    if len(passed) == 1:
        good = passed[0]
        bad = t if good is h else h
        _warn(f"{path}: DATA offsets disagree: {both} both fit $TOT x {rb}-byte events; judged on "
              f"{_sample_words(counts[good])}, the {bad.source} reading fails ({'; '.join(verdicts[bad])}); "
              f"using {good.source} (DATA at byte {good.begin})")
        return good
    if not passed:
        why = "; ".join(f"{c.source}: {', '.join(verdicts[c])}" for c in pool)
        raise _undecided(
            f"DATA offsets disagree ({both}) and neither reading passes the checks on its events ({why}); "
            "expected one whose integer values lie within $PnR, whose time channel does not decrease and "
            "which stays clear of other segments", h, t, path)
    raise _undecided(
        f"DATA offsets disagree ({both}) and both readings pass the checks on their events (values within "
        "$PnR, time channel non-decreasing, clear of other segments), so evflow cannot tell which is right; "
        "expected HEADER and TEXT to agree", h, t, path)


def _sample_words(n: int) -> str:
    return f"all {n} events" if n <= 2 * JUDGE_ROWS else f"the first and last {JUDGE_ROWS} of {n} events"


def _quiet_count(c: _Reading, rb: int, avail: int) -> int:
    seg = c.end - c.begin + 1 if c.end >= c.begin else 0
    nbytes = min(seg, avail) if seg > 0 else avail
    return max(0, nbytes // rb)


def _finish(chosen: _Reading, info, layout: _Layout, n_tot, path, size):
    """Check the chosen reading against the file size and ``$TOT``: (absolute offset, events)."""
    base, name, begin, end = info.base, chosen.source, chosen.begin, chosen.end
    rb = layout.row_bytes
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
        if layout.delimited_ascii or not rb:
            return base + begin, 0
        return base + begin, _count_without_tot(chosen, rb, avail, path)
    need = n_tot * rb
    if need > avail:
        raise FCSDataError(
            f"$TOT={n_tot} events of {rb} bytes need {need} bytes from byte {base + begin}, but only "
            f"{avail} remain in the file (truncated file, or $TOT/$PAR/$PnB disagree with the data)",
            path,
        )
    if seg_bytes != need:
        if seg_bytes == need + 1:
            _warn(f"{path}: {name} says the DATA segment is {seg_bytes} bytes, one more than $TOT x event "
                  f"size = {need} (a known off-by-one in some instruments' $ENDDATA); reading {n_tot} events")
        else:
            _warn(f"{path}: {name} says the DATA segment is {seg_bytes} bytes, but $TOT x event size is {need} "
                  f"bytes; reading the {n_tot} events $TOT announces")
    return base + begin, n_tot
