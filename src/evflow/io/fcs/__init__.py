"""Chunked reader and writer for Flow Cytometry Standard (FCS 2.0, 3.0, 3.1, 3.2) files.

:func:`read_fcs` parses the HEADER and TEXT segments itself and exposes the
DATA segment as a dask array (events x channels) built from row-chunked reads
of the file, so a file larger than memory can be streamed.  :func:`write_fcs`
writes FCS 3.1 list-mode float32 files, and FCS 3.2 files of mixed types
(``$PnDATATYPE``) with the 3.2 channel keywords.

Reading is defensive: offsets, sizes and keywords are checked against each
other and against the file size before anything is allocated, and every
problem raises an :class:`evflow.FCSError` subclass naming the file, the
keyword or byte offset, what was found and what was expected.  Departures from
the standard that real instruments produce (off-by-one ``$ENDDATA``, HEADER
and TEXT offsets that disagree, odd trailing delimiters) are worked around and
reported as :class:`evflow.errors.FCSWarning`.  When HEADER and TEXT give DATA
offsets that both fit the file, both readings are decoded on their first and
last events and judged (values within ``$PnR``, a non-decreasing time channel,
no bytes of another segment); one that passes is used, else an error names both
(:mod:`.offsets`, and the Notes of :func:`read_fcs`).

What the channel keywords mean (``$PnR``, ``$PnB``, ``$PnE``, ``$PnG``,
``$TIMESTEP``, ``$VOL``) is answered in one place: the methods of
:class:`FCSSample` (``channel_range``, ``channel_bits``, ``channel_log``,
``channel_gain``, ``channel_limits``, ``channel_units``, ``channel_scale``,
``timestep``, ``volume_nl``, ``acquisition_seconds``; FCS 3.2's ``channel_datatype``,
``channel_type``, ``channel_feature``, ``channel_detector``, ``channel_analyte``,
``channel_tag``, ``begin_datetime``, ``end_datetime``, ``flow_rate``), built on the functions
of :mod:`evflow.io.fcs.text`.

Modules: :mod:`.header` (HEADER), :mod:`.text` (TEXT, supplemental TEXT,
keywords, spillover), :mod:`.layout` (the byte layout of an event: every
``$DATATYPE``, ``$PnDATATYPE``, integer ``$PnB`` that are not a multiple of 8),
:mod:`.data` (row-chunked DATA reads, linear scale), :mod:`.offsets` (where the
DATA segment lies), :mod:`.sample` (:class:`FCSSample`, :func:`read_fcs`, :func:`as_sample`),
:mod:`.write` (:func:`write_fcs`).
"""

from __future__ import annotations

from .data import (
    DEFAULT_CHUNK_BYTES,
    _apply_masks,
    _byte_order,
    _DataSegment,
    _decode_ascii_fixed,
    _decode_rows,
    _default_chunk_events,
    _is_number,
    _Layout,
    _layout,
    _read_delimited_ascii,
    _scale_block,
    _scale_params,
)
from .header import _VERSION_RE, HEADER_SIZE, _Header, _open_checked, _read_header
from .offsets import data_offsets as _data_offsets
from .sample import FCSSample, _wrap_in_memory, as_sample, count_data_sets, read_fcs, read_fcs_metadata
from .text import (
    _MAX_PAR,
    _TIME_NAMES,
    NOMINAL_RANGE,
    _channel_names,
    _data_set_infos,
    _DataSetInfo,
    _decode,
    _float_kw,
    _int_kw,
    _parse_text,
    _read_data_set_info,
    _walk_data_sets,
    chain_cache,
    channel_keyword,
    parse_spillover,
)
from .write import _STRUCTURAL, _escape, write_fcs

__all__ = [
    "read_fcs",
    "write_fcs",
    "read_fcs_metadata",
    "count_data_sets",
    "FCSSample",
    "parse_spillover",
    "as_sample",
    "channel_keyword",
    "NOMINAL_RANGE",
]
