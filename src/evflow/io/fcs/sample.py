"""The sample: :class:`FCSSample`, :func:`read_fcs`, :func:`read_fcs_metadata`,
:func:`count_data_sets`, and :func:`as_sample`, the one way a path, a sample or an
``(events, channels)`` pair becomes a sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import FCSError, FCSTextError
from . import scale as _scale, text as _text
from .data import (
    _DataSegment,
    _default_chunk_events,
    _read_delimited_ascii,
    _scale_block,
    _scale_params,
)
from .header import _open_checked, _stat_checked
from .layout import _layout, _segment_lengths
from .offsets import check_choice, data_offsets as _data_offsets
from .text import _MAX_PAR, _channel_names, _data_set_infos, _int_kw, parse_spillover


def _linear_value(v: float, decades: float, log0: float, rng: float, gain: float, step: float) -> float:
    """One raw value on the linear scale, as :func:`~evflow.io.fcs.data._scale_block` computes a column."""
    if step != 1.0:
        v = v * step
    if decades > 0:
        v = log0 * 10.0 ** (decades if v == rng else decades * v / rng)
    if gain != 1.0 and gain != 0.0:
        v = v / gain
    return float(v)


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
        float64 values on the sample's scale policy when read with ``scale=``.  For a
        sample read from a file the dask graph is built on first access and kept
        (:meth:`to_numpy` and :attr:`n_events` do not need it).
    scaled : bool
        Whether ``events`` are already on the scale policy (``scale=`` given to :func:`read_fcs`).
    scale : str
        The scale policy every function that reads the events uses (:meth:`linear_events`,
        :meth:`channel_limits`, gates, thresholds, calibration, plots): ``"raw"``, ``"linear"``
        (``$PnE``, ``$TIMESTEP``) or ``"linear-gain"`` (also divided by ``$PnG``); see
        :mod:`evflow.io.fcs.scale`.  ``"given"`` for a sample built from arrays.
    """

    path: str
    version: str
    data_set: int
    meta: dict
    channels: list
    markers: list
    events: object = field(default=None, repr=False)  # a property (below): built from _segment when None
    scaled: bool = False
    scale: str = _scale.DEFAULT_SCALE
    _segment: _DataSegment | None = field(default=None, repr=False)
    _stored: object = field(default=None, repr=False)  # the stored events when ``events`` are scaled

    @property
    def n_events(self) -> int:
        if self.__dict__.get("_events") is None and self._segment is not None:
            return int(self._segment.n_events)
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
        """The spillover matrix from ``$SPILLOVER``/``$SPILL``/``SPILL``, or None.

        Labels given as parameter numbers (``3,4,5``) are mapped to the channels' ``$PnN``
        (``attrs["labels"]`` says ``"parameter numbers"``); ``attrs["identity"]`` is True for an
        identity matrix (no compensation stored).
        """
        for key in ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP"):
            if key in self.meta and str(self.meta[key]).strip():
                sp = parse_spillover(self.meta[key], self.path, key)
                names = [str(x) for x in sp["source"].values]
                if all(n.isdigit() and 1 <= int(n) <= self.n_channels for n in names) and \
                        not set(names) & set(self.channels):
                    mapped = [self.channels[int(n) - 1] for n in names]
                    sp = sp.assign_coords(source=mapped, detector=mapped)
                    sp.attrs["labels"] = "parameter numbers"
                sp.attrs["identity"] = bool(np.array_equal(sp.values, np.eye(sp.shape[0])))
                return sp
        return None

    @property
    def triggers(self) -> list:
        """``[(channel, level, keyword)]`` from the trigger keywords the instrument records
        (:func:`evflow.io.fcs.acquisition.triggers`); [] when it records none."""
        from .acquisition import triggers

        return triggers(self.meta, self.channels)

    @property
    def flow_rate(self) -> str | None:
        """``$FLOWRATE`` as written (FCS 3.2; e.g. ``"30 uL/min"``), None when absent."""
        v = str(self.meta.get("$FLOWRATE", "") or "").strip()
        return v or None

    def channel_info(self, channel) -> dict:
        """A channel's keywords: ``name`` ($PnN), ``marker`` ($PnS) and, as written (None when absent),
        ``bits`` ($PnB), ``range`` ($PnR), ``log`` ($PnE), ``gain`` ($PnG), ``voltage`` ($PnV),
        ``laser`` ($PnL, excitation nm), ``filter`` ($PnF), ``detector`` ($PnDET, 3.2), ``type`` ($PnTYPE, 3.2)."""
        i = self._column(channel)
        kw = {k: _text.channel_keyword(self.meta, i, letter) for k, letter in (
            ("bits", "B"), ("range", "R"), ("log", "E"), ("gain", "G"), ("voltage", "V"), ("laser", "L"),
            ("filter", "F"), ("detector", "DET"), ("type", "TYPE"))}
        return {"name": self.channels[i], "marker": self.markers[i], **kw}

    @property
    def time_channel(self) -> str | None:
        """Name of the time channel, or None: the first channel whose ``$PnTYPE`` is Time (FCS 3.2),
        else the first without a ``$PnTYPE`` named ``Time`` (or ``HDR-T``, any case)."""
        for i, c in enumerate(self.channels):
            if (_text.channel_keyword(self.meta, i, "TYPE") or "").lower() == "time":
                return c
        for i, c in enumerate(self.channels):
            if _text.is_time_channel(self.meta, i, c):
                return c
        return None

    def channel_index(self, name: str) -> int:
        """Column of ``name``, given as ``$PnN`` or ``$PnS`` (exact, else ignoring case).

        The one resolver of channel names (gates, markers, calibration, plots, experiment files).

        Raises
        ------
        FCSError
            If no channel has that name (with the closest names), or if it names several
            channels (listing the candidates).
        """
        return _text.resolve_channel(name, self.channels, self.markers, self.path)

    @property
    def channel_names(self):
        """``channels`` as a :class:`~evflow.io.fcs.text.ChannelNames` (also answers to ``$PnS``)."""
        return _text.ChannelNames(self.channels, self.markers, self.path)

    def with_scale(self, scale: str) -> FCSSample:
        """A copy of the sample under another scale policy (``"auto"``: the instrument's default)."""
        import dataclasses

        policy = _scale.resolve_scale(scale, self.meta, self.path)
        if self.scale == "given" or (self.scaled and self._stored is None):
            if policy != self.scale:
                raise FCSError(f"sample holds values already scaled ({self.scale}); cannot re-scale to {policy}",
                               self.path)
            return self
        events = self.events
        if self.scaled:  # back to the stored values
            events = self._stored
        return dataclasses.replace(self, events=events, scaled=False, scale=policy, _stored=None)

    def linear_events(self):
        """Events on the sample's scale policy (:attr:`scale`) as a lazy float64 dask array.

        ``"linear-gain"``: ``$PnE`` log decoding (``f2 * 10**(f1 * x / $PnR)``), division by the
        ``$PnG`` gain and ``$TIMESTEP`` on the time channel; ``"linear"``: the same without the
        gain; ``"raw"``: the stored values as float64.  Returns ``events`` unchanged when the
        sample was read with ``scale=``.
        """
        if self.scaled:
            return self.events
        params = _scale.scale_params(_scale_params(self.meta, self.channels, self.path), self.scale)
        n = self.n_channels
        return self.events.map_blocks(_scale_block, params, dtype=np.float64, meta=np.empty((0, n), np.float64))

    def to_numpy(self) -> np.ndarray:
        """All events as a NumPy array (reads the file once, in one pass)."""
        if self._segment is not None and not self.scaled and self.__dict__.get("_own_events", True):
            return self._segment.read_rows(0, self._segment.n_events)
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
            attrs={"path": self.path, "version": self.version, "data_set": self.data_set, "scaled": self.scaled,
                   "scale": self.scale},
        )

    # ------------------------------------------------------------------ channel semantics
    #
    # The one place, with evflow.io.fcs.text, that says what $PnR, $PnB, $PnE, $PnG,
    # $TIMESTEP and $VOL mean.  ``channel`` is a $PnN/$PnS name or a 0-based column.

    def _column(self, channel) -> int:
        if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            i = int(channel)
            if not 0 <= i < self.n_channels:
                raise FCSError(f"channel index {i} out of range: the sample has {self.n_channels} channels", self.path)
            return i
        return self.channel_index(channel)

    def channel_keyword(self, channel, letter: str) -> str | None:
        """The raw ``$Pn<letter>`` value of a channel (``letter`` in N, S, B, E, R, G, V, ...), stripped; None if absent."""
        return _text.channel_keyword(self.meta, self._column(channel), letter)

    def channel_datatype(self, channel) -> str:
        """How the channel is stored: ``"I"``, ``"F"``, ``"D"`` or ``"A"`` (``$PnDATATYPE`` of FCS 3.2,
        else ``$DATATYPE``)."""
        return _text.channel_datatype(self.meta, self._column(channel))

    def channel_type(self, channel) -> str | None:
        """``$PnTYPE`` (FCS 3.2): what the channel measures, e.g. ``"Forward_Scatter"``, ``"Side_Scatter"``,
        ``"Raw_Fluorescence"``, ``"Unmixed_Fluorescence"``, ``"Mass"``, ``"Time"``, ``"Electronic_Volume"``,
        ``"Classification"``, ``"Index"``; None when absent."""
        return _text.channel_keyword(self.meta, self._column(channel), "TYPE")

    def channel_feature(self, channel) -> str | None:
        """``$PnFEATURE`` (FCS 3.2): ``"Area"``, ``"Height"`` or ``"Width"`` of the pulse; None when absent."""
        return _text.channel_keyword(self.meta, self._column(channel), "FEATURE")

    def channel_detector(self, channel) -> str | None:
        """``$PnDET`` (FCS 3.2): the detector's name; None when absent."""
        return _text.channel_keyword(self.meta, self._column(channel), "DET")

    def channel_analyte(self, channel) -> str | None:
        """``$PnANALYTE`` (FCS 3.2): the analyte the channel measures (e.g. ``"CD63"``); None when absent."""
        return _text.channel_keyword(self.meta, self._column(channel), "ANALYTE")

    def channel_tag(self, channel) -> str | None:
        """``$PnTAG`` (FCS 3.2): the reagent's tag (e.g. a fluorochrome or an isotope); None when absent."""
        return _text.channel_keyword(self.meta, self._column(channel), "TAG")

    @property
    def begin_datetime(self):
        """``$BEGINDATETIME`` (FCS 3.2) as a :class:`datetime.datetime`; None when absent.
        A value that is not ISO 8601 raises :class:`FCSTextError`."""
        return _text.datetime_keyword(self.meta, "$BEGINDATETIME", self.path)

    @property
    def end_datetime(self):
        """``$ENDDATETIME`` (FCS 3.2) as a :class:`datetime.datetime`; None when absent."""
        return _text.datetime_keyword(self.meta, "$ENDDATETIME", self.path)

    def channel_range(self, channel, *, default=_text.NOMINAL) -> float | None:
        """``$PnR``: the number of values the stored (raw) channel spans.

        Parameters
        ----------
        default : float or None, optional
            Returned when ``$PnR`` is absent or not a number.  Not given: the nominal range,
            ``2**$PnB`` for integer data, else 262144.
        """
        return _text.channel_range(self.meta, self._column(channel), default=default)

    def channel_bits(self, channel) -> int | None:
        """``$PnB``: bits per stored value; None when absent or ``*`` (delimited ASCII)."""
        return _text.channel_bits(self.meta, self._column(channel))

    def channel_log(self, channel, *, strict: bool = True) -> tuple[float, float]:
        """``$PnE`` as ``(f1, f2)``: log amplification over ``f1`` decades from ``f2``; ``(0.0, 0.0)`` if linear.

        ``strict=False`` reads a malformed ``$PnE`` as linear instead of raising :class:`FCSTextError`.
        """
        return _text.channel_log(self.meta, self._column(channel), self.path, strict=strict)

    def channel_gain(self, channel, *, strict: bool = True) -> float:
        """``$PnG``: the amplifier gain (1.0 when absent, 0 or, with a warning if ``strict``, malformed).

        The linear scale divides by it, except on the time channel.
        """
        return _text.channel_gain(self.meta, self._column(channel), self.path, strict=strict)

    @property
    def timestep(self) -> float:
        """``$TIMESTEP``: seconds per unit of the time channel (1.0 when absent or unusable)."""
        return _text.timestep(self.meta, self.path, strict=False)

    def channel_limits(self, channel, *, scaled: bool = True, top: str = "range", default=_text.NOMINAL,
                       strict: bool = True) -> tuple[float, float] | None:
        """(low, high) a channel's values can take.

        Parameters
        ----------
        scaled : bool
            True: on the sample's scale policy, as :meth:`linear_events` gives values (``"raw"``:
            ``(0, top)``; ``"linear"``: ``$PnE`` decoding, ``$TIMESTEP`` on the time channel;
            ``"linear-gain"``: also divided by ``$PnG``); False: raw stored values, ``(0, top)``.
        top : {"range", "last"}
            The raw value the high end stands for: ``"range"``, ``$PnR`` itself (the edge of the
            scale: density maps, display transforms); ``"last"``, ``$PnR - 1`` (the largest value an
            integer channel stores: saturation limits in calibration).
        default : float or None, optional
            ``$PnR`` to use when it is absent or not a number (None: return None); as in
            :meth:`channel_range`.
        strict : bool
            As in :meth:`channel_log` and :meth:`channel_gain`.

        Returns
        -------
        (float, float), or None when ``$PnR`` is unusable and ``default`` is None.
        """
        i = self._column(channel)
        rng = _text.channel_range(self.meta, i, default=default)
        if rng is None:
            return None
        if top not in ("range", "last"):
            raise FCSError(f"top={top!r}, expected 'range' or 'last'", self.path)
        hi = rng if top == "range" else rng - 1.0
        if not scaled or self.scale == "raw":
            return 0.0, hi
        decades, log0 = _text.channel_log(self.meta, i, self.path, strict=strict)
        if decades > 0 and not rng > 0:
            raise FCSTextError(f"channel {self.channels[i]!r}: log decoding ($PnE) needs a positive $PnR, got {rng!r}",
                               self.path)
        if _text.is_time_channel(self.meta, i, self.channels[i]):
            gain, step = 1.0, self.timestep
        else:
            gain = _text.channel_gain(self.meta, i, self.path, strict=strict) if self.scale == "linear-gain" else 1.0
            step = 1.0
        return (_linear_value(0.0, decades, log0, rng, gain, step),
                _linear_value(hi, decades, log0, rng, gain, step))

    def channel_units(self, channel) -> str:
        """Units of the channel's values on the scale policy: for the time channel ``"s"`` when
        ``$TIMESTEP`` is given (and the policy is not ``"raw"``), else ``"ticks"``; the unit of
        ``$PnCALIBRATION`` when given; else ``"a.u."``."""
        i = self._column(channel)
        if _text.is_time_channel(self.meta, i, self.channels[i]):
            has_step = "$TIMESTEP" in self.meta and str(self.meta["$TIMESTEP"]).strip()
            return "s" if has_step and self.scale != "raw" else "ticks"
        cal = _text.channel_keyword(self.meta, i, "CALIBRATION")
        if cal and "," in cal and cal.split(",", 1)[1].strip():
            return cal.split(",", 1)[1].strip()
        return "a.u."

    def channel_scale(self, channel) -> str:
        """How stored values become the values of the scale policy, in words
        (e.g. ``"log: 4 decades from 1, / gain 8"``; ``"as stored"`` under ``"raw"``)."""
        i = self._column(channel)
        if self.scale in ("raw", "given"):
            return "as stored" if self.scale == "raw" else "as given"
        if _text.is_time_channel(self.meta, i, self.channels[i]):
            return f"time: x {self.timestep:g} s ($TIMESTEP)" if self.timestep != 1.0 else "time"
        decades, log0 = _text.channel_log(self.meta, i, self.path, strict=False)
        gain = _text.channel_gain(self.meta, i, self.path, strict=False)
        out = f"log: {decades:g} decades from {log0:g}" if decades > 0 else "linear"
        if gain != 1.0:
            out += f", / gain {gain:g}" if self.scale == "linear-gain" else f" ($PnG {gain:g} not divided out)"
        return out

    def axis_label(self, channel) -> str:
        """An axis label naming the channel as the file does, with the scale policy and units:
        ``"VSSC1-H [linear, a.u.]"``, ``"FL1-H (CD63) [linear-gain / 8, a.u.]"``, ``"Time [linear, s]"``."""
        i = self._column(channel)
        name, marker = self.channels[i], self.markers[i]
        label = f"{name} ({marker})" if marker and marker != name else name
        pol = self.scale
        if pol == "linear-gain" and not _text.is_time_channel(self.meta, i, name):
            g = _text.channel_gain(self.meta, i, self.path, strict=False)
            pol += f" / {g:g}" if g != 1.0 else ""
        return f"{label} [{pol}, {self.channel_units(i)}]"

    def volume_nl(self) -> float | None:
        """``$VOL``: the analysed volume in nanolitres; None when the file does not say.

        Raises
        ------
        FCSTextError
            When ``$VOL`` is there but not a positive number (``$VOL`` is 0, or not a number).
        """
        return _text.volume_nl(self.meta, self.path)

    def acquisition_seconds(self, time_channel=None) -> tuple[float, str] | None:
        """Acquisition time in seconds and where it came from, or None.

        The span of the time channel's linear-scale values (``time_channel``, default
        :attr:`time_channel`; this reads that column), else ``$ENDDATETIME - $BEGINDATETIME``
        (FCS 3.2), else ``$ETIM - $BTIM``.
        """
        from ...backend import to_numpy

        name = time_channel or self.time_channel
        if name is not None:
            i = self.channel_index(name)
            t = to_numpy(self.linear_events()[:, i]).astype(float)
            if t.size > 1 and np.nanmax(t) > np.nanmin(t):
                return float(np.nanmax(t) - np.nanmin(t)), f"Time channel {name!r}"
        try:
            begin, end = self.begin_datetime, self.end_datetime
            span = (end - begin).total_seconds() if begin is not None and end is not None else None
        except (FCSTextError, TypeError):  # malformed, or one with a time zone and one without
            span = None
        if span is not None and span > 0:
            return span, "$BEGINDATETIME/$ENDDATETIME"
        dt = _text.clock_seconds(self.meta)
        return None if dt is None else (dt, "$BTIM/$ETIM")

    def __repr__(self) -> str:
        return (
            f"FCSSample({self.path!r}, version={self.version!r}, data_set={self.data_set}, "
            f"n_events={self.n_events}, channels={self.channels})"
        )


def _get_events(self):
    ev = self.__dict__.get("_events")
    if ev is None and self._segment is not None:
        ev = self.__dict__["_events"] = self._segment.to_dask()
    return ev


def _set_events(self, value):
    # events given (not None) are the sample's, even when a _segment is kept (dataclasses.replace)
    self.__dict__["_events"] = value
    self.__dict__["_own_events"] = value is None


FCSSample.events = property(_get_events, _set_events, doc="The events (see the class Attributes).")


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


def read_fcs(path, data_set: int = 0, chunk_events: int | None = None, scale: bool | str = False,
             data_offsets: str = "auto") -> FCSSample:
    """Read an FCS file lazily.

    Parameters
    ----------
    path : str or Path
        The FCS file (2.0, 3.0, 3.1 or 3.2).
    data_set : int
        Which data set to read when the file holds several (``$NEXTDATA``).
    chunk_events : int, optional
        Events per dask chunk; default: about 64 MiB of raw data per chunk.
    scale : bool or str
        The sample's scale policy (:attr:`FCSSample.scale`, :mod:`evflow.io.fcs.scale`), and
        whether ``events`` are on it.  False (default): ``events`` hold the values as stored
        (integers after the ``$PnR`` bit mask, floats as floats) and the policy is the
        instrument's default (``"auto"``); True: ``events`` are float64 values on that default
        policy; ``"raw"``, ``"linear"`` (``$PnE`` log decoding ``f2 * 10**(f1 * x / $PnR)``,
        time channel times ``$TIMESTEP``), ``"linear-gain"`` (also divided by ``$PnG``) or
        ``"auto"``: ``events`` on that policy.
    data_offsets : {"auto", "header", "text"}
        Where the DATA segment lies when the HEADER and the TEXT (``$BEGINDATA``/``$ENDDATA``)
        disagree: ``"auto"`` (default) decides from the file (Notes); ``"header"`` or ``"text"``
        reads where that one says, with no judging (for a file the error below calls ambiguous,
        when you know which is right).

    Returns
    -------
    FCSSample
        Only the HEADER and TEXT are read here; DATA is read when the events are
        computed, so ``read_fcs(path)`` is also the way to ask a file's keywords
        (:meth:`FCSSample.channel_range`, :meth:`FCSSample.volume_nl`, ...) cheaply.

    Raises
    ------
    FCSError
        For any file that cannot be read as asked; the message names the file
        and the keyword or byte offset at fault.

    Notes
    -----
    Where the DATA segment lies is decided from the file, never guessed:

    - ``$BEGINDATA``/``$ENDDATA`` missing (FCS 2.0 needs none) or malformed
      (``"   1280F"``): the HEADER's offsets, with one :class:`~evflow.errors.FCSWarning`
      (none for FCS 2.0).  ``$TOT`` missing (FCS 2.0): the number of events is the DATA
      length over the event size when that is a whole number, with a warning; else an error.
    - HEADER and TEXT disagree: a reading must fit (start after the TEXT, hold ``$TOT``
      events inside the file, span ``$TOT`` x event size bytes).  If only one fits it is
      used, with a warning.
    - Both fit (e.g. both ``$TOT`` x ``$PAR`` x 2 bytes long): both are decoded on their
      first and last 2048 events and judged: every integer value within ``$PnR`` (after the
      bit mask), floats finite, each time channel (``$PnN`` Time, HW-Time, "Time MSW", or
      ``$PnTYPE`` Time) non-decreasing, no event in bytes of another segment (TEXT,
      supplemental TEXT, ANALYSIS, the next data set).  The reading that passes is used,
      with a warning naming both offsets and why the other failed; if both pass or neither
      does, :class:`~evflow.errors.FCSDataError` names both offsets and the ``data_offsets=``
      that would read each.  Judging reads a few
      thousand events, so it costs nothing measurable next to reading the file.

    Every ``$DATATYPE`` is read: I (8- to 64-bit, either byte order), F, D, fixed-width and
    delimited A.  FCS 3.2 files may give each parameter its own type (``$PnDATATYPE``: I, F
    and D mixed in one event); their events are decoded column by column to float64 (exact
    for float32 and for integers below 2**53); a file of one type keeps that type.  Integer
    ``$PnB`` that are not a multiple of 8 (10-, 12-, 14-bit values of FC500 ``.LMD``,
    Partec and older Coulter files) are read from whole words whose size the DATA length
    tells (``$TOT`` x row bytes; normally 16 bits), keeping the ``$PnB`` low bits (or the
    narrower ``$PnR`` mask); values packed bit to bit raise :class:`FCSUnsupportedError`.
    FCS 3.2 keywords are exposed by :meth:`FCSSample.channel_type` (``$PnTYPE``; a Time
    channel is the :attr:`FCSSample.time_channel`), :meth:`~FCSSample.channel_feature`,
    :meth:`~FCSSample.channel_detector`, :meth:`~FCSSample.channel_analyte`,
    :meth:`~FCSSample.channel_tag`, :attr:`~FCSSample.begin_datetime`,
    :attr:`~FCSSample.end_datetime` and :attr:`~FCSSample.flow_rate`; ``$MODE`` and
    ``$BEGINSTEXT``/``$ENDSTEXT`` may be absent.
    """
    path, st = _stat_checked(path)
    size = st.st_size
    if not isinstance(data_set, (int, np.integer)) or data_set < 0:
        raise FCSError(f"data_set must be a non-negative integer, got {data_set!r}", path)
    if chunk_events is not None and (not isinstance(chunk_events, (int, np.integer)) or chunk_events < 1):
        raise FCSError(f"chunk_events must be a positive integer, got {chunk_events!r}", path)
    if not isinstance(scale, bool):
        _scale.check_scale(scale, path)
    if data_offsets != "auto":
        check_choice(data_offsets, path)
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
    layout = _layout(meta, n_par, path, segment_lengths=_segment_lengths(info))
    channels, markers = _channel_names(meta, n_par, path)
    offset, n_events = _data_offsets(info, layout, n_tot, path, size, channels, data_offsets)
    if layout.delimited_ascii:
        import dask.array as da

        events_np = _read_delimited_ascii(path, offset, size, n_events if n_tot is not None else None, n_par, info)
        arr = da.from_array(events_np, chunks=(chunk_events or _default_chunk_events(8 * n_par), n_par))
        segment = None
    else:  # the dask graph is built on first use of sample.events (to_numpy() reads without it)
        segment = _DataSegment(path, offset, n_events, layout, chunk_events,
                               key=(st.st_mtime_ns, st.st_size, data_set))
        arr = None
    sample = FCSSample(
        path=path,
        version=info.header.version,
        data_set=int(data_set),
        meta=meta,
        channels=channels,
        markers=markers,
        events=arr,
        scaled=False,
        scale=_scale.resolve_scale(None if isinstance(scale, bool) else scale, meta, path),
        _segment=segment,
    )
    if scale is not False:
        sample._stored = sample.events
        sample.events = sample.linear_events()
        sample.scaled = True
    return sample


# --------------------------------------------------------------------------- path, sample or arrays -> sample


def _wrap_in_memory(events, rows=1 << 24):
    """A dask array over in-memory (NumPy/CuPy) events whose chunks are row slices (views) of them.

    Unlike ``dask.array.from_array`` this neither copies the events (``from_array`` copies every array:
    20 ms for 10M x 2 float64) nor hashes them (a random graph name); large chunks, as each kernel
    launch is parallel over Numba's threads.  The events are not copied: do not modify them while a
    lazy result (``compute=False``) that reads them is pending.
    """
    import uuid

    import dask.array as da

    n, k = events.shape
    step = max(1, min(n, rows))
    starts = list(range(0, n, step)) or [0]
    name = f"events-{uuid.uuid4().hex}"
    dsk = {(name, i, 0): events[a:min(a + step, n)] for i, a in enumerate(starts)}
    chunks = (tuple(min(a + step, n) - a for a in starts), (k,))
    return da.Array(dsk, name, chunks, meta=events[:0])


def _is_events_pair(obj) -> bool:
    return (
        isinstance(obj, tuple)
        and len(obj) == 2
        and hasattr(obj[0], "shape")
        and not isinstance(obj[1], (str, bytes))
        and hasattr(obj[1], "__iter__")
    )


def _array_sample(events, channels, name, error):
    """An in-memory FCSSample of linear-scale events (NumPy, CuPy or dask array)."""
    import dask.array as da

    channels = [str(c) for c in channels]
    if getattr(events, "ndim", 0) != 2 or events.shape[1] != len(channels):
        raise error(
            f"sample {name!r}: events have shape {tuple(getattr(events, 'shape', ()))} but {len(channels)} channel names"
        )
    if isinstance(events, np.ndarray) or type(events).__module__.split(".")[0] == "cupy":
        events = _wrap_in_memory(events)
    elif not isinstance(events, da.Array):  # other array-likes: dask's own wrapping (a copy, random name)
        events = da.from_array(events, chunks=(max(1, min(events.shape[0], 1 << 24)), -1), asarray=False, name=False)
    return FCSSample(path=str(name), version="", data_set=0, meta={}, channels=channels,
                     markers=[None] * len(channels), events=events, scaled=True, scale="given")


def as_sample(obj, *, what: str = "sample", name: str | None = None, scale: bool | str = True,
              error=FCSError) -> FCSSample:
    """The :class:`FCSSample` for a path, a sample, or an ``(events, channels)`` pair.

    Parameters
    ----------
    obj : str, os.PathLike, FCSSample or (array, sequence of str)
        A path is read with ``read_fcs(path, scale=scale)`` (lazily: only HEADER and TEXT);
        an FCSSample (or any object with ``events``, ``channels`` and ``meta``) is returned
        as is; ``(events, channels)`` becomes an in-memory sample of linear-scale events
        (NumPy and CuPy arrays are wrapped as dask row views, not copied).
    what : str
        What the caller calls the object, for the error message (e.g. ``"beads"``).
    name : str, optional
        Name (``path``) of a sample built from arrays; default ``"events"``.
    scale : bool
        ``scale=`` of :func:`read_fcs` for a path.
    error : type
        The :class:`evflow.EvflowError` subclass raised for anything else (the caller's own:
        ``GatingError``, ``CalibrationError``).
    """
    if isinstance(obj, (str, os.PathLike)):
        return read_fcs(obj, scale=scale)
    if isinstance(obj, FCSSample) or all(hasattr(obj, a) for a in ("events", "channels", "meta")):
        return obj
    if _is_events_pair(obj):
        return _array_sample(obj[0], obj[1], name or "events", error)
    raise error(f"{what}: expected an FCSSample, a path or (events, channels), got {type(obj).__name__}")
