"""Fluorescence calibration: MESF/MEFL bead standard curves.

:func:`calibrate_mesf` finds the populations of a multi-peak bead file (a
density gate on the singlet beads in FSC/SSC, then a Gaussian mixture on the
peaks in a log-like scale), drops saturated or unresolved peaks, fits the
standard curve ``m*log(rfi) + b = log(mesf_auto + mesf)`` (the model of
FlowCal's ``fit_beads_autofluorescence``) and returns a :class:`MESFCalibration`
whose :meth:`~MESFCalibration.to_mesf` converts any array (NumPy, CuPy, dask)
of that channel to MESF, lazily.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...backend import array_module
from ...errors import CalibrationError
from ._table import _apply_elementwise, _as_table
from .beadkits import BeadKit, kit_values
from .clustering import (
    _count_modes,
    _display,
    _find_bead_peaks,
    count_populations,
    density_gate,
)
from .curve import fit_mesf_curve
from .placement import CalibrationWarning, place_values, qc_flags, warn_qc
from .roles import channel_roles, fluorescence_channels, scatter_pair

__all__ = ["MESFCalibration", "calibrate_mesf", "fit_mesf_curve"]


# --------------------------------------------------------------------------- MESF fit



def _std_curve(x, m, b):
    xp = array_module(x)
    return xp.sign(x) * math.exp(b) * xp.abs(x) ** m


def _inverse_curve(y, m, b):
    xp = array_module(y)
    return xp.sign(y) * (xp.abs(y) / math.exp(b)) ** (1.0 / m)


@dataclass
class MESFCalibration:
    """A fitted fluorescence standard curve for one channel.

    Attributes
    ----------
    channel : str
        The calibrated channel ($PnN).
    units : str
        Calibrated unit name, e.g. ``"MEFL"`` or ``"MESF"``.
    mesf_values : ndarray (n_peaks,)
        The manufacturer's values, dimmest first (NaN = unknown).
    peaks : ndarray (n_peaks,)
        Median of each bead peak on the channel's linear scale; NaN for a peak
        not used in the fit (see ``peak_status``).
    peak_medians : ndarray (n_peaks,)
        Median of every peak found, used or not.
    peak_status : list of str
        ``"used"``, ``"saturated"`` (too close to the top of the range),
        ``"below range"``, or ``"no MESF value"``.
    peak_events : ndarray of int (n_peaks,)
        Events in each peak.
    params : dict
        ``m`` (slope), ``b`` (intercept), ``mesf_auto`` (bead
        autofluorescence, MESF) of ``m*log(x) + b = log(mesf_auto + mesf)``.
    r2 : float
        Coefficient of determination of the fit (log space, used peaks).
    residuals : ndarray (n_peaks,)
        Fit residuals in natural-log units (NaN for unused peaks).
    relative_error : ndarray (n_peaks,)
        Bead model vs manufacturer, ``(to_mesf(peak) - mesf_auto) / mesf - 1``,
        for used peaks with a positive value.
    resolution : ndarray (n_peaks - 1,)
        Valley depth between neighbouring peaks (1 = no valley).
    source : str
        The bead file.
    n_events, n_gated : int
        Events in the file and events in the singlet gate.
    histogram_edges, histogram_counts : ndarray
        Log-spaced bin edges (linear scale) and per-population counts of the
        gated events in ``channel``, for :meth:`plot` (empty when not kept).
    qc : dict
        Quality flags (``blank_brighter``, ``non_monotone``, ``large_residuals``,
        ``ambiguous_placement``; a :class:`CalibrationWarning` was raised for
        each one set), ``n_populations`` found, ``n_values`` given,
        ``placement`` (population of each value) and ``placement_rule``.
    """

    channel: str
    units: str
    mesf_values: np.ndarray
    peaks: np.ndarray
    peak_medians: np.ndarray
    peak_status: list
    peak_events: np.ndarray
    params: dict
    r2: float
    residuals: np.ndarray
    relative_error: np.ndarray
    resolution: np.ndarray
    source: str = ""
    n_events: int = 0
    n_gated: int = 0
    clustering_channels: list = field(default_factory=list)
    scatter_channels: list = field(default_factory=list)
    model: str = "m*log(x) + b = log(mesf_auto + mesf)"
    qc: dict = field(default_factory=dict)
    histogram_edges: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    histogram_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64), repr=False)

    @property
    def histogram(self) -> dict | None:
        """``{"edges", "counts"}`` of the gated events per population in ``channel`` (None if not kept)."""
        if self.histogram_edges.size == 0:
            return None
        return {"edges": self.histogram_edges, "counts": self.histogram_counts}

    def plot(self, fig=None):
        """Diagnostic figure (populations, assigned values, standard curve, residuals); see :mod:`.plot`."""
        from .plot import plot_calibration

        return plot_calibration(self, fig)

    def to_mesf(self, values):
        """Channel values (linear scale) -> calibrated units (MESF), elementwise.

        ``mesf = sign(x) * exp(b) * |x|**m`` (the bead autofluorescence term
        is not part of the conversion).  NumPy, CuPy, dask (lazy, chunk type
        kept) and xarray inputs give the same type back.
        """
        return _apply_elementwise(values, _std_curve, self.params["m"], self.params["b"])

    def to_channel(self, mesf):
        """Calibrated units (MESF) -> channel values on the linear scale (the inverse of :meth:`to_mesf`)."""
        return _apply_elementwise(mesf, _inverse_curve, self.params["m"], self.params["b"])

    def summary(self) -> dict:
        """Plain-Python summary (for reports and provenance)."""
        return {
            "channel": self.channel,
            "units": self.units,
            "source": self.source,
            "model": self.model,
            "params": dict(self.params),
            "r2": self.r2,
            "mesf_values": [None if not np.isfinite(v) else float(v) for v in self.mesf_values],
            "peaks": [None if not np.isfinite(v) else float(v) for v in self.peaks],
            "peak_status": list(self.peak_status),
            "peak_events": [int(v) for v in self.peak_events],
            "relative_error": [None if not np.isfinite(v) else float(v) for v in self.relative_error],
            "n_events": self.n_events,
            "n_gated": self.n_gated,
            "clustering_channels": list(self.clustering_channels),
            "scatter_channels": list(self.scatter_channels),
            "qc": dict(self.qc),
        }

    _ARRAYS = {"mesf_values": np.float64, "peaks": np.float64, "peak_medians": np.float64, "peak_events": np.int64,
               "residuals": np.float64, "relative_error": np.float64, "resolution": np.float64,
               "histogram_edges": np.float64, "histogram_counts": np.int64}
    _OPTIONAL = ("histogram_edges", "histogram_counts")
    _PLAIN = ("channel", "units", "model", "source", "params", "r2", "peak_status", "n_events", "n_gated",
              "clustering_channels", "scatter_channels")

    def to_dict(self) -> dict:
        """Everything needed to rebuild this calibration, for storage (no refit needed).

        Returns
        -------
        dict
            ``"type": "MESFCalibration"``, ``"version": 1``, NumPy arrays for the
            per-peak fields (``mesf_values``, ``peaks``, ``peak_medians``,
            ``peak_events``, ``residuals``, ``relative_error``, ``resolution``; ``histogram_edges`` and
            ``histogram_counts`` flattened to 1-D, population-major) and
            plain JSON values (str, float, int, lists, ``params`` as a dict of
            floats) for the rest.  :meth:`from_dict` of it converts values
            exactly as this calibration does.
        """
        out = {"type": "MESFCalibration", "version": 1}
        out.update(
            channel=str(self.channel),
            units=str(self.units),
            model=str(self.model),
            source=str(self.source),
            params={str(k): float(v) for k, v in self.params.items()},
            r2=float(self.r2),
            peak_status=[str(s) for s in self.peak_status],
            n_events=int(self.n_events),
            n_gated=int(self.n_gated),
            clustering_channels=[str(c) for c in self.clustering_channels],
            scatter_channels=[str(c) for c in self.scatter_channels],
            qc=dict(self.qc),
        )
        for key, dtype in self._ARRAYS.items():
            out[key] = np.array(getattr(self, key), dtype=dtype).ravel()  # histogram_counts: (k * bins,)
        return out

    @classmethod
    def from_dict(cls, d) -> MESFCalibration:
        """Rebuild a calibration from :meth:`to_dict` output (arrays may also be lists, as after JSON).

        Raises
        ------
        CalibrationError
            If ``d`` is not a stored MESF calibration or misses a key.
        """
        from ._table import _check_stored, _stored_array

        _check_stored(d, "MESFCalibration", tuple(k for k in cls._ARRAYS if k not in cls._OPTIONAL) + cls._PLAIN)
        params = d["params"]
        if not hasattr(params, "items") or not {"m", "b"} <= set(params):
            raise CalibrationError(f"MESFCalibration.from_dict: 'params' must hold 'm' and 'b', got {params!r}")
        arrays = {k: _stored_array(d, k, dtype, "MESFCalibration") for k, dtype in cls._ARRAYS.items() if k in d}
        if "histogram_counts" in arrays and arrays["histogram_counts"].ndim != 2:
            arrays["histogram_counts"] = arrays["histogram_counts"].reshape(len(arrays["mesf_values"]), -1)
        return cls(
            channel=str(d["channel"]),
            units=str(d["units"]),
            params={str(k): float(v) for k, v in params.items()},
            r2=float(d["r2"]),
            peak_status=[str(s) for s in d["peak_status"]],
            source=str(d["source"]),
            n_events=int(d["n_events"]),
            n_gated=int(d["n_gated"]),
            clustering_channels=[str(c) for c in d["clustering_channels"]],
            scatter_channels=[str(c) for c in d["scatter_channels"]],
            model=str(d["model"]),
            qc=dict(d.get("qc", {}) or {}),
            **arrays,
        )


def _default_scatter_channels(names: Sequence[str]) -> list:
    """Two scatter channels of ``names`` for the singlet gate (see :mod:`.roles`), or []."""
    return scatter_pair(channel_roles(list(names)))


def _fluorescence_channels(names: Sequence[str]) -> list:
    """Channels that are neither scatter, width nor time (see :mod:`.roles`)."""
    return fluorescence_channels(channel_roles(list(names)))


def calibrate_mesf(
    beads,
    channel: str,
    mesf_values=None,
    clustering_channels: Sequence[str] | None = None,
    scatter_channels: Sequence[str] | None = None,
    *,
    kit=None,
    lot: str | None = None,
    units: str = "MESF",
    trim_events: tuple[int, int] = (250, 100),
    gate_fraction: float = 0.3,
    gate_sigma: float = 5.0,
    n_std: float = 2.5,
    min_valley: float = 0.95,
    min_r2: float = 0.99,
    on_unresolved: str = "raise",
    placement: str = "given",
) -> MESFCalibration:
    """Fit a MESF/MEFL standard curve from a multi-peak bead file.

    Steps (the procedure of FlowCal's ``analyze_mef`` example and
    ``mef.get_transform_fxn``): (0) the first and last events
    (``trim_events``) are dropped (fluidics transients); (1) events saturated
    on the scatter channels are dropped and the densest ``gate_fraction`` of
    the FSC/SSC plot is kept (singlet beads); (2) a Gaussian mixture with one
    component per entry of ``mesf_values`` is fitted to the clustering
    channels on a log-like scale; (3) the median of ``channel`` in each
    population is the peak position; peaks whose mean lies within ``n_std``
    standard deviations of the bottom or top 1.5 % of the channel's range
    (saturated) and peaks with a NaN MESF value are not used; (4)
    ``m*log(x) + b = log(mesf_auto + mesf)`` is fitted to the used peaks.

    Parameters
    ----------
    beads : path, FCSSample, pandas.DataFrame or xarray.DataArray
        The bead sample; FCS input is read on the linear scale (``scale=True``)
        and the detector range comes from ``$PnR``/``$PnE``/``$PnG``; for a
        DataFrame/DataArray it comes from ``.attrs["ranges"]`` (``{channel:
        (low, high)}``) or else spans 0 to the largest value.
    channel : str
        Channel to calibrate ($PnN or $PnS).
    mesf_values : sequence of float, BeadKit or str
        Manufacturer's value of every bead peak, dimmest (blank: 0) first;
        NaN for a peak with no value.  Or a bead kit
        (:func:`~evflow.flow.calibration.beadkits.bead_kit`, or its name with
        ``lot=``), whose values in ``units`` are used.
    clustering_channels : sequence of str, optional
        Channels the peaks are found in.  Default: ``[channel]``, and when
        its peaks are not all resolved there, ``channel`` plus the file's
        other fluorescence channels (multi-peak beads are bright in all of
        them; e.g. FL1 alone merges the blank and the dimmest peak of the
        FlowCal beads, FL1+FL3 separates them).  The channels used are in
        ``.clustering_channels``.
    scatter_channels : sequence of two str, optional
        FSC and SSC for the singlet gate.  Default: the channels named
        FSC/SSC (FSC-H/SSC-H, ...) when present; pass ``[]`` for no gate.
    kit, lot : BeadKit or str, str, optional
        The same as passing the kit as ``mesf_values`` (not both).
    units : str
        Name of the calibrated unit (``"MEFL"``, ``"MESF"``, ``"MEPE"``...);
        with a kit, the kit's values in that unit (a kit with one unit needs
        none).  A kit list shorter than the kit's populations is placed by
        the ``"best"`` rule.
    trim_events : (int, int)
        Events dropped at the start and the end of the acquisition (skipped
        when the file has fewer than 4 times as many events).
    gate_fraction, gate_sigma : float
        Fraction of events kept by the singlet density gate, and its
        smoothing in histogram bins.
    n_std : float
        Saturation margin in standard deviations (display scale).
    min_valley : float
        Neighbouring peaks whose fitted densities have a valley shallower
        than this (valley / lower peak >= ``min_valley``) are unresolved.
    min_r2 : float
        A fit with a lower R^2 (log space) is rejected.
    on_unresolved : {"raise", "drop"}
        Raise :class:`CalibrationError` for unresolved peaks (default), or
        leave both peaks of an unresolved pair out of the fit and mark them
        ``"unresolved"``.
    placement : {"given", "best"}
        ``"given"`` (default): one value per population, dimmest first (NaN
        for a population without a value); a different number of populations
        in the data is an error that names both counts.  ``"best"``: when
        fewer values are given than populations are found, place them by the
        rule of :mod:`.placement` (blank first when a 0 is given, the other
        values on the best-fitting run of consecutive unsaturated
        populations); the placement is in ``cal.qc["placement"]``.

    Channel roles (scatter, fluorescence, width, time) come from ``$PnTYPE``
    or the channel names (:func:`~evflow.flow.calibration.roles.channel_roles`);
    clustering never uses scatter or width channels.  Populations are ordered
    by their median in ``channel``.  Doubtful results (blank brighter than a
    bead, non-monotone curve, a peak more than 5 % off the curve, an
    ambiguous placement) raise a :class:`CalibrationWarning` and set a flag
    in ``cal.qc``.

    Returns
    -------
    MESFCalibration

    Raises
    ------
    CalibrationError
        Unresolvable peaks (e.g. fewer peaks in the data than MESF values),
        fewer than 3 usable peaks, peaks not increasing with their MESF
        values, a fit with a non-positive slope or an R^2 below ``min_r2``.
    """
    if kit is not None or isinstance(mesf_values, (str, BeadKit)):
        if kit is not None and mesf_values is not None:
            raise CalibrationError("give the bead values either as mesf_values or as kit=, not both")
        mesf_values, units, placement = kit_values(kit if kit is not None else mesf_values, units, placement,
                                                   lot=lot, units_given=units != "MESF", channel=channel)
    if mesf_values is None:
        raise CalibrationError("calibrate_mesf needs the beads' values: mesf_values=[...] or kit=")
    mesf = np.asarray(
        [np.nan if v is None else v for v in np.atleast_1d(np.asarray(mesf_values, dtype=object))], dtype=float
    )
    if mesf.ndim != 1 or mesf.size < 3:
        raise CalibrationError(f"mesf_values must list at least 3 bead peaks, got {mesf.size}")
    finite = mesf[np.isfinite(mesf)]
    if np.any(finite < 0):
        raise CalibrationError(f"mesf_values must be >= 0, got {mesf.tolist()}")
    if np.any(np.diff(finite) <= 0):
        raise CalibrationError(f"mesf_values must increase from the dimmest peak to the brightest, got {mesf.tolist()}")
    if on_unresolved not in ("raise", "drop"):
        raise CalibrationError(f"on_unresolved={on_unresolved!r}, expected 'raise' or 'drop'")
    if placement not in ("given", "best"):
        raise CalibrationError(f"placement={placement!r}, expected 'given' or 'best'")
    n_values = k = mesf.size
    roles = channel_roles(beads, scatter_channels)
    names = list(roles)
    fluor = fluorescence_channels(roles)
    if clustering_channels is None:
        candidates = [[channel]]
        extra = [c for c in fluor if c != channel]
        if extra:
            candidates.append([channel] + extra)
    else:
        given = list(clustering_channels)
        if not given:
            raise CalibrationError("clustering_channels is empty; give at least one channel")
        dropped = [c for c in given if roles.get(c) in ("scatter", "width", "time")]
        kept = [c for c in given if c not in dropped]
        if dropped:
            if not kept:
                raise CalibrationError(
                    f"clustering_channels {given} are all scatter, width or time channels "
                    f"({ {c: roles[c] for c in dropped} }); bead populations are found in fluorescence channels"
                )
            warnings.warn(f"clustering_channels: {dropped} are scatter/width/time channels and are not used "
                          "for clustering", CalibrationWarning, stacklevel=2)
        candidates = [kept]
    if scatter_channels is None:
        scatter = scatter_pair(roles)
        if not scatter and names:
            warnings.warn(
                f"no two scatter channels recognised among {names}; no singlet gate. Pass "
                "scatter_channels=[forward, side] (or [] to silence this)", CalibrationWarning, stacklevel=2)
    else:
        scatter = list(scatter_channels)
    if scatter and len(scatter) != 2:
        raise CalibrationError(f"scatter_channels must name two channels (FSC, SSC), got {scatter}")
    wanted = [channel]
    for c in [c for cand in candidates for c in cand] + scatter:
        if c not in wanted:
            wanted.append(c)
    table = _as_table(beads, wanted, what="beads")
    col = {c: i for i, c in enumerate(wanted)}
    data = table.data
    n_events = data.shape[0]
    ok = np.all(np.isfinite(data), axis=1)
    # (0) fluidics transients
    t0, t1 = (int(v) for v in trim_events)
    if t0 < 0 or t1 < 0:
        raise CalibrationError(f"trim_events must be two counts >= 0, got {trim_events}")
    if n_events >= 4 * (t0 + t1):
        ok[:t0] = False
        ok[n_events - t1 :] = False
    # (1) singlet gate
    if scatter:
        s_idx = [col[c] for c in scatter]
        lo, hi = table.ranges[s_idx, 0], table.ranges[s_idx, 1]
        sv = data[:, s_idx]
        ok &= np.all((sv > lo) & (sv < hi), axis=1)  # drop events saturated on scatter
        gate = np.zeros(n_events, bool)
        sub = np.nonzero(ok)[0]
        gate[sub] = density_gate(sv[sub, 0], sv[sub, 1], gate_fraction, sigma=gate_sigma, x_max=hi[0], y_max=hi[1])
    else:
        gate = ok
    n_gated = int(gate.sum())
    if n_gated < 10 * k:
        raise CalibrationError(
            f"{table.source}: only {n_gated} bead events left after the scatter gate on {scatter}, "
            f"too few to find {k} peaks"
        )
    gated = data[gate]
    fl = gated[:, col[channel]]
    all_idx = [col[c] for c in dict.fromkeys(c for cand in candidates for c in cand)]
    n_found = count_populations(gated[:, all_idx], table.ranges[all_idx, 1])
    counts_msg = f"found {n_found} bead populations, {n_values} reference values given"
    rlo, rhi = table.ranges[col[channel]]
    s_lo = _display(rlo, rhi) + 0.015 * (_display(rhi, rhi) - _display(rlo, rhi))
    s_hi = _display(rlo, rhi) + 0.985 * (_display(rhi, rhi) - _display(rlo, rhi))
    place_info = None
    if placement == "best" and n_found > n_values:
        if np.any(~np.isfinite(mesf)):
            raise CalibrationError(f"{table.source}: {counts_msg}; placement='best' takes finite values only "
                                   f"(got {mesf.tolist()})")
        k = n_found
    elif placement == "best" and n_found < n_values:
        raise CalibrationError(f"{table.source}: {counts_msg}; cannot place more values than populations")

    # (2) clustering
    for clustering in candidates:
        c_idx = [col[c] for c in clustering]
        labels, dip, bad, n_modes = _find_bead_peaks(gated[:, c_idx], table.ranges[c_idx, 1], k, min_valley,
                                                     order_values=fl)
        if not bad:
            break
    # (3) peak statistics and selection
    medians = np.full(k, np.nan)
    counts = np.zeros(k, np.int64)
    range_status = []
    for j in range(k):
        pop = fl[labels == j]
        counts[j] = pop.size
        if pop.size == 0:
            range_status.append("empty")
            continue
        medians[j] = float(np.median(pop))
        s = _display(pop, rhi)
        m_, sd = float(s.mean()), max(float(s.std(ddof=0)), 0.005)
        range_status.append("below range" if m_ - n_std * sd <= s_lo else "saturated" if m_ + n_std * sd >= s_hi
                            else "used")
    if k != n_values:
        if bad and on_unresolved == "raise":
            raise CalibrationError(
                f"{table.source}: {counts_msg}, but {k} populations in {clustering} cannot all be resolved "
                f"(neighbours {[(j, j + 1) for j in bad]}); give one value per population (NaN-padded)"
            )
        in_range = np.array([st == "used" for st in range_status])
        for j in bad:
            in_range[j] = in_range[j + 1] = False
        mesf, place_info = place_values(mesf, medians, in_range, source=f"{table.source}: {channel}")
    status = []
    for j in range(k):
        if range_status[j] == "empty":
            status.append("empty")
        elif not np.isfinite(mesf[j]):
            status.append("no MESF value")
        else:
            status.append(range_status[j])
    if bad:
        pairs = ", ".join(
            f"peaks {j} and {j + 1} (MESF {mesf[j]:g} and {mesf[j + 1]:g}; valley ratio {dip[j]:.2f}, "
            f"medians {medians[j]:.4g} and {medians[j + 1]:.4g})"
            for j in bad
        )
        modes = f"; the histogram of {channel} shows {n_modes} peaks" if n_modes is not None else ""
        if on_unresolved == "raise":
            raise CalibrationError(
                f"{table.source}: bead peaks in {clustering} cannot be resolved: {pairs}{modes}; expected {k} "
                f"separate populations (one per MESF value; {counts_msg}). Check the number of MESF values, the "
                f"clustering channels, or pass on_unresolved='drop'"
            )
        for j in bad:
            for jj in (j, j + 1):
                status[jj] = "unresolved"
    merged = [j for j in range(k) if counts[j] > 0 and _count_modes(_display(fl[labels == j], rhi), min_prominence=0.1) > 1]
    if merged:
        msg = (
            f"{table.source}: population(s) {merged} of {channel} hold more than one peak: the data show more "
            f"bead peaks than the {k} MESF values given ({mesf.tolist()}; {counts_msg}); give one value per peak "
            "(NaN for a peak without a value) or pass placement='best'"
        )
        if on_unresolved == "raise":
            raise CalibrationError(msg)
        for j in merged:
            if status[j] == "used":
                status[j] = "several peaks"
    if not bad and not merged:
        n_found = max(n_found, k)  # k populations resolved: at least k are there
        counts_msg = f"found {n_found} bead populations, {n_values} reference values given"
    used = np.array([s == "used" for s in status])
    if used.sum() < 3:
        raise CalibrationError(
            f"{table.source}: only {int(used.sum())} usable bead peaks in {channel} (status per peak: "
            f"{status}; {counts_msg}); the standard curve needs at least 3"
        )
    x_used, y_used = medians[used], mesf[used]
    if np.any(np.diff(x_used) <= 0):
        raise CalibrationError(
            f"{table.source}: bead peak medians in {channel} do not increase with their MESF values "
            f"(medians {x_used.tolist()} for MESF {y_used.tolist()}; {counts_msg}); the standard curve would "
            "not be monotonic"
        )
    # (4) fit
    fit = fit_mesf_curve(x_used, y_used)
    if not fit["m"] > 0:
        raise CalibrationError(
            f"{table.source}: the fitted standard curve for {channel} has slope m={fit['m']:.4g} <= 0 "
            f"({counts_msg}); a calibration must increase with fluorescence"
        )
    if not fit["r2"] >= min_r2:
        raise CalibrationError(
            f"{table.source}: the standard curve for {channel} fits poorly (R^2 = {fit['r2']:.4f} < {min_r2}; "
            f"peaks {x_used.tolist()} for MESF {y_used.tolist()}; {counts_msg}); check the MESF values and the "
            "peaks found"
        )
    peaks = np.where(used, medians, np.nan)
    residuals = np.full(k, np.nan)
    residuals[used] = fit["residuals"]
    rel = np.full(k, np.nan)
    pos = used & (mesf > 0)
    rel[pos] = (_std_curve(medians[pos], fit["m"], fit["b"]) - fit["mesf_auto"]) / mesf[pos] - 1.0
    qc = qc_flags(mesf, medians, used, residuals, curve_increasing=fit["m"] > 0)
    qc.update(n_populations=int(n_found), n_values=int(n_values), placement_rule=placement,
              placement=[int(j) for j in (place_info["placement"] if place_info else np.nonzero(np.isfinite(mesf))[0])],
              ambiguous_placement=bool(place_info["ambiguous"]) if place_info else False,
              placement_rms=float(place_info["rms"]) if place_info else None,
              placement_rms_second=(None if not place_info or place_info["rms_second"] is None
                                    else float(place_info["rms_second"])))
    if table.labels:
        qc["axis_label"] = table.labels[0]  # the channel as the file names it, its scale policy and units
    warn_qc(qc, table.source, channel)
    return MESFCalibration(
        channel=table.names[0],
        units=units,
        mesf_values=mesf,
        peaks=peaks,
        peak_medians=medians,
        peak_status=status,
        peak_events=counts,
        params={"m": fit["m"], "b": fit["b"], "mesf_auto": fit["mesf_auto"]},
        r2=fit["r2"],
        residuals=residuals,
        relative_error=rel,
        resolution=dip,
        source=table.source,
        n_events=n_events,
        n_gated=n_gated,
        clustering_channels=list(clustering),
        scatter_channels=scatter,
        qc=qc,
        **_histogram(fl, labels, k, rlo, rhi),
    )


def _histogram(fl, labels, k, rlo, rhi, bins=200):
    """Per-population histogram of the calibrated channel on log-spaced edges (for the diagnostic plot)."""
    pos = fl[fl > 0]
    lo = max(float(pos.min()) if pos.size else 1.0, 1e-3, float(rlo) if rlo > 0 else 1e-3)
    hi = max(float(rhi), lo * 10)
    edges = np.geomspace(lo, hi, bins + 1)
    counts = np.stack([np.histogram(fl[labels == j], bins=edges)[0] for j in range(k)])
    return {"histogram_edges": edges, "histogram_counts": counts.astype(np.int64)}
