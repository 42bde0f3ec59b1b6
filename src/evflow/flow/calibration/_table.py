"""Event tables for calibration: linear-scale columns of a bead sample with the detector range per column,
and elementwise conversion that keeps the input's array type (NumPy, CuPy, dask, xarray)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...backend import array_module
from ...errors import CalibrationError

# --------------------------------------------------------------------------- event tables


@dataclass
class _Table:
    """Selected columns of a sample, linear scale, with the detector range per column."""

    data: np.ndarray  # (n_events, n_columns) float64
    names: list
    ranges: np.ndarray  # (n_columns, 2): lowest and highest value the detector can report
    source: str
    labels: list | None = None  # axis labels of the columns (channel, scale policy, units), when known


def _channel_range(sample, i: int) -> tuple[float, float] | None:
    """(low, high) linear-scale range of column ``i`` (0-based), or None without a usable ``$PnR``.

    The sample's answer with calibration's lenient reading: the high end is the largest stored
    value, ``$PnR - 1``, after ``$PnE``/``$PnG``; a malformed ``$PnE`` counts as linear and a
    malformed ``$PnG`` as 1, silently.
    """
    limits = getattr(sample, "channel_limits", None)
    if limits is None:
        return None
    return limits(i, top="last", default=None, strict=False)


def _as_table(sample, channels: Sequence[str], what: str = "beads") -> _Table:
    """Columns ``channels`` of ``sample`` as a linear-scale float64 table.

    ``sample`` is a path, an :class:`evflow.FCSSample` (its linear-scale
    events), a pandas DataFrame, or an xarray DataArray with dims (event, channel).
    """
    from ...backend import to_numpy

    channels = list(channels)
    if isinstance(sample, (str, os.PathLike, tuple)):
        from ...io.fcs import as_sample

        sample = as_sample(sample, what=what, error=CalibrationError)
    if hasattr(sample, "channel_index") and hasattr(sample, "events"):
        idx = [sample.channel_index(c) for c in channels]
        data = to_numpy(sample.linear_events()[:, idx]).astype(np.float64)
        ranges = []
        for j, i in enumerate(idx):
            r = _channel_range(sample, i)
            col = data[:, j]
            ranges.append(r if r is not None else (float(np.nanmin(col)), float(np.nanmax(col))))
        labels = [sample.axis_label(i) for i in idx] if hasattr(sample, "axis_label") else None
        return _Table(data, [sample.channels[i] for i in idx], np.asarray(ranges, float), str(sample.path), labels)
    if hasattr(sample, "columns") and hasattr(sample, "to_numpy"):  # pandas DataFrame
        missing = [c for c in channels if c not in sample.columns]
        if missing:
            raise CalibrationError(f"{what}: no column(s) {missing}; columns are {list(sample.columns)}")
        data = np.asarray(sample[channels].to_numpy(), dtype=np.float64)
        source = str(getattr(sample, "attrs", {}).get("source", "DataFrame"))
    elif hasattr(sample, "dims") and "channel" in getattr(sample, "dims", ()):
        names = [str(c) for c in sample["channel"].values]
        missing = [c for c in channels if c not in names]
        if missing:
            raise CalibrationError(f"{what}: no channel(s) {missing}; channels are {names}")
        data = to_numpy(sample.sel(channel=channels).transpose(..., "channel").data).astype(np.float64)
        source = str(sample.attrs.get("path", sample.name or "DataArray"))
    else:
        raise CalibrationError(
            f"{what}: expected a path, an FCSSample, a pandas DataFrame or an xarray DataArray, "
            f"got {type(sample).__name__}"
        )
    if data.ndim != 2 or data.shape[0] == 0:
        raise CalibrationError(f"{what} ({source}): no events")
    # no detector range in the input: attrs["ranges"] = {channel: (low, high)} if given, else
    # from zero (or the lowest value, if negative) to the largest value
    given = dict(getattr(sample, "attrs", {}).get("ranges", {}) or {})
    ranges = np.stack([np.minimum(np.nanmin(data, axis=0), 0.0), np.nanmax(data, axis=0)], axis=1)
    for j, c in enumerate(channels):
        if c in given:
            ranges[j] = [float(v) for v in given[c]]
    return _Table(data, channels, ranges, source)


def _channel_names(beads) -> list:
    if isinstance(beads, (str, os.PathLike)):
        from ...io.fcs import as_sample

        return list(as_sample(beads, what="beads", scale=False, error=CalibrationError).channels)
    if hasattr(beads, "channels") and not hasattr(beads, "dims"):
        return list(beads.channels)
    if hasattr(beads, "columns"):
        return [str(c) for c in beads.columns]
    if hasattr(beads, "dims") and "channel" in beads.dims:
        return [str(c) for c in beads["channel"].values]
    return []


def _apply_elementwise(values, fn, *args):
    """Apply an elementwise function to numpy, cupy, dask or xarray input, keeping its type and laziness."""
    if hasattr(values, "dims") and hasattr(values, "data") and hasattr(values, "copy"):  # xarray
        return values.copy(data=_apply_elementwise(values.data, fn, *args))
    if type(values).__module__.split(".")[0] == "dask":
        meta = values._meta.astype(np.float64)
        return values.astype(np.float64).map_blocks(fn, *args, dtype=np.float64, meta=meta)
    if array_module(values) is np:
        values = np.asarray(values, dtype=np.float64)
    else:
        values = values.astype(np.float64, copy=False)
    return fn(values, *args)


# --------------------------------------------------------------------------- stored results


def _check_stored(d, type_name: str, keys) -> None:
    """Check that ``d`` is a stored ``type_name`` (``to_dict()`` output) holding every key in ``keys``."""
    if not hasattr(d, "keys") or not hasattr(d, "__getitem__"):
        raise CalibrationError(f"{type_name}.from_dict: expected a dict (from {type_name}.to_dict()), got {type(d).__name__}")
    found = d.get("type", type_name)
    if found != type_name:
        raise CalibrationError(f"{type_name}.from_dict: the dict holds a {found!r}, expected {type_name!r}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise CalibrationError(f"{type_name}.from_dict: missing key(s) {missing}; the dict has {sorted(d.keys())}")


def _stored_array(d, key: str, dtype, type_name: str) -> np.ndarray:
    """``d[key]`` as a new 1-D array of ``dtype`` (stored as an array or a list; None in a list = NaN)."""
    v = d[key]
    if isinstance(v, (list, tuple)):
        v = [np.nan if x is None else x for x in v]
    try:
        a = np.array(v, dtype=dtype)
    except (TypeError, ValueError):
        raise CalibrationError(f"{type_name}.from_dict: {key!r} is not an array of numbers ({v!r})") from None
    if a.ndim != 1:
        raise CalibrationError(f"{type_name}.from_dict: {key!r} has shape {a.shape}, expected a 1-D array")
    return a
