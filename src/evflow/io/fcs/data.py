"""The DATA segment: row-chunked reads, delimited ASCII and the linear-scale decoding (``$PnE``,
``$PnG``, ``$TIMESTEP``).  The byte layout of an event (every ``$DATATYPE``, ``$PnDATATYPE``, odd
``$PnB``) is :mod:`.layout`; where the segment lies (HEADER and TEXT offsets, ``$TOT``) is :mod:`.offsets`."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np

from ...errors import FCSDataError, FCSTextError, FCSWarning
from .layout import (  # noqa: F401  (re-exported: the row layout lives in .layout)
    _apply_masks,
    _byte_order,
    _decode_ascii_fixed,
    _decode_rows,
    _is_number,
    _Layout,
    _layout,
)
from .text import _float_kw, channel_log, is_time_channel

#: default number of bytes per dask chunk when ``chunk_events`` is not given
DEFAULT_CHUNK_BYTES = 64 * 2**20


class _DataSegment:
    """Array-like view of a DATA segment that reads only the rows asked for.

    Handed to :func:`dask.array.from_array` by :meth:`to_dask`; it holds a path and offsets,
    not an open file, so it pickles to worker processes.  ``chunk_events`` (default: about
    :data:`DEFAULT_CHUNK_BYTES` per chunk) and ``key`` (what, besides the offsets and layout,
    names the file's version in the graph: modification time, size, data set) are for
    :meth:`to_dask`.
    """

    def __init__(self, path: str, offset: int, n_events: int, layout: _Layout, chunk_events: int | None = None,
                 key: tuple = ()):
        self.path = path
        self.offset = offset
        self.n_events = n_events
        self.layout = layout
        self.shape = (n_events, layout.n_channels)
        self.dtype = layout.dtype
        self.ndim = 2
        self.chunk_events = chunk_events or _default_chunk_events(layout.row_bytes)
        self.key = key

    def to_dask(self):
        """The segment as a dask array of row chunks (its graph name fixed by the file, offsets and chunks)."""
        import dask.array as da
        from dask.base import tokenize

        n_par, ce = self.layout.n_channels, self.chunk_events
        name = "fcs-" + tokenize(self.path, *self.key, self.offset, self.n_events, self.layout, ce)
        return da.from_array(self, chunks=(min(ce, max(self.n_events, 1)), n_par), name=name, asarray=False,
                             fancy=False, meta=np.empty((0, n_par), dtype=self.layout.dtype))

    @property
    def _direct(self) -> bool:
        """True when the stored bytes are already the output array (after an optional byte swap)."""
        return self.layout.direct

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
                buf = np.empty(n * rb, dtype=np.uint8)  # not a bytearray: no zero-filling
                got = f.readinto(memoryview(buf))
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
        is_time = is_time_channel(meta, i - 1, name)
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

