"""Scatter calibration: scatter <-> particle diameter through Mie theory and a fitted instrument gain.

:func:`calibrate_scatter` fits the gain between measured scatter and the Mie
cross-section (:mod:`evflow.flow.mie`) of size beads; the resulting
:class:`ScatterCalibration` converts scatter to a diameter (nm) for a particle
model (e.g. an EV as a core-shell sphere) and flags values outside the range
where the relation is unique.  :func:`size_gate` turns a diameter range into a
rectangle gate on the scatter channel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ...backend import array_module
from ...errors import CalibrationError
from ._table import _apply_elementwise, _as_table
from .clustering import _count_modes, _display, bead_populations

__all__ = ["ScatterCalibration", "calibrate_scatter", "fit_scatter_gain", "size_gate", "size_gate_limits"]


# --------------------------------------------------------------------------- scatter -> diameter


def _interp_chunk(values, xp_grid, fp_grid, log_x):
    xp = array_module(values)
    g = xp.asarray(xp_grid)
    f = xp.asarray(fp_grid)
    v = values.astype(xp.float64)
    if log_x:
        with np.errstate(divide="ignore", invalid="ignore"):
            lv = xp.log(xp.where(v > 0, v, xp.nan))
        out = xp.exp(xp.interp(lv, g, f, left=xp.nan, right=xp.nan))
    else:
        out = xp.interp(v, g, f, left=xp.nan, right=xp.nan)
    return out


def _flag_chunk(values, lo, hi):
    xp = array_module(values)
    v = values.astype(xp.float64)
    out = xp.zeros(v.shape, dtype=xp.int8)
    out = xp.where(v < lo, xp.int8(-1), out)
    out = xp.where(v > hi, xp.int8(1), out)
    out = xp.where(xp.isnan(v), xp.int8(2), out)
    return out.astype(xp.int8)


@dataclass
class ScatterCalibration:
    """Scatter channel <-> particle diameter, through Mie theory and a fitted instrument gain.

    ``scatter = gain * C(d)``, with ``C(d)`` the cross-section (nm^2)
    collected by ``detector`` for the particle model.

    Attributes
    ----------
    channel : str
        The scatter channel.
    gain : float
        Scatter units per nm^2 of collected cross-section.
    particle : Sphere or CoatedSphere
        Model the diameters are computed for (e.g. :data:`evflow.flow.mie.VESICLE`).
    wavelength_nm, medium_index : float
    detector : Detector
    bead_model : Sphere or CoatedSphere
        Model of the size beads the gain was fitted on.
    bead_diameters_nm, bead_scatter, bead_cross_section : ndarray
        The beads: nominal diameters, measured peak medians, computed cross-sections (nm^2).
    residuals : ndarray
        ``log(measured / (gain * C))`` per bead (natural log).
    r2 : float
        Coefficient of determination of ``log(measured)`` vs ``log(gain * C)``.
    diameter_grid_nm, cross_section_grid : ndarray
        The particle's computed curve.
    unique_range_nm : (float, float)
        Diameters over which scatter determines the diameter uniquely (the
        rising part of the curve below any Mie oscillation).
    unique_scatter_range : (float, float)
        The same range in scatter units.
    """

    channel: str
    gain: float
    particle: object
    wavelength_nm: float
    medium_index: float
    detector: object
    bead_model: object
    bead_diameters_nm: np.ndarray
    bead_scatter: np.ndarray
    bead_cross_section: np.ndarray
    residuals: np.ndarray
    r2: float
    diameter_grid_nm: np.ndarray
    cross_section_grid: np.ndarray
    unique_range_nm: tuple
    unique_scatter_range: tuple
    source: str = ""

    def scatter_of(self, diameter_nm):
        """Expected scatter (channel units) of a particle of ``diameter_nm`` (nm)."""
        d = np.asarray(diameter_nm, float)
        lg = np.log(self.diameter_grid_nm)
        ls = np.log(self.cross_section_grid)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.gain * np.exp(np.interp(np.log(d), lg, ls, left=np.nan, right=np.nan))
        return out if out.ndim else float(out)

    def _inverse_grid(self):
        lo_d, hi_d = self.unique_range_nm
        sel = (self.diameter_grid_nm >= lo_d) & (self.diameter_grid_nm <= hi_d)
        return np.log(self.gain * self.cross_section_grid[sel]), np.log(self.diameter_grid_nm[sel])

    def to_diameter(self, values):
        """Scatter (channel units, linear scale) -> diameter (nm), elementwise.

        Values outside :attr:`unique_scatter_range` give NaN (see
        :meth:`diameter_flags`).  NumPy, CuPy, dask (lazy) and xarray inputs
        give the same type back.
        """
        xg, fg = self._inverse_grid()
        lo, hi = self.unique_scatter_range

        def fn(v, xg, fg):
            xp = array_module(v)
            out = _interp_chunk(v, xg, fg, True)
            return xp.where((v >= lo) & (v <= hi), out, xp.nan)

        return _apply_elementwise(values, fn, xg, fg)

    def diameter_flags(self, values):
        """Per event: 0 = diameter determined, -1 = below the range, 1 = above (not unique), 2 = NaN."""
        lo, hi = self.unique_scatter_range
        if hasattr(values, "dims") and hasattr(values, "data") and hasattr(values, "copy"):
            return values.copy(data=self.diameter_flags(values.data))
        if type(values).__module__.split(".")[0] == "dask":
            meta = values._meta.astype(np.int8)
            return values.map_blocks(_flag_chunk, lo, hi, dtype=np.int8, meta=meta)
        if array_module(values) is np:
            values = np.asarray(values, dtype=np.float64)
        return _flag_chunk(values, lo, hi)

    def for_particle(self, particle, diameter_range_nm=None) -> ScatterCalibration:
        """The same instrument gain applied to another particle model (e.g. silica beads, other EV indices)."""
        rng = diameter_range_nm or (float(self.diameter_grid_nm[0]), float(self.diameter_grid_nm[-1]))
        return _scatter_calibration(
            self.channel, self.gain, particle, self.wavelength_nm, self.medium_index, self.detector,
            self.bead_model, self.bead_diameters_nm, self.bead_scatter, self.bead_cross_section,
            self.residuals, self.r2, rng, self.source,
        )

    def summary(self) -> dict:
        """Plain-Python summary (for reports and provenance)."""
        return {
            "channel": self.channel,
            "gain_per_nm2": self.gain,
            "particle": repr(self.particle),
            "bead_model": repr(self.bead_model),
            "wavelength_nm": self.wavelength_nm,
            "medium_index": self.medium_index,
            "detector": repr(self.detector),
            "bead_diameters_nm": [float(v) for v in self.bead_diameters_nm],
            "bead_scatter": [float(v) for v in self.bead_scatter],
            "residuals": [float(v) for v in self.residuals],
            "r2": self.r2,
            "unique_range_nm": [float(v) for v in self.unique_range_nm],
            "unique_scatter_range": [float(v) for v in self.unique_scatter_range],
            "source": self.source,
        }

    _ARRAYS = ("bead_diameters_nm", "bead_scatter", "bead_cross_section", "residuals", "diameter_grid_nm",
               "cross_section_grid")
    _MODELS = ("particle", "bead_model", "detector")

    def to_dict(self) -> dict:
        """Everything needed to rebuild this calibration, for storage (no Mie computation or refit needed).

        Returns
        -------
        dict
            ``"type": "ScatterCalibration"``, ``"version": 1``, float64 NumPy
            arrays for the beads and the particle curve (``bead_diameters_nm``,
            ``bead_scatter``, ``bead_cross_section``, ``residuals``,
            ``diameter_grid_nm``, ``cross_section_grid``) and plain JSON values
            for the rest: the particle, bead and detector models as dicts
            (``{"type": "CoatedSphere", "core_index": 1.38, ...}``, a complex
            refractive index as ``{"real": ..., "imag": ...}``), the ranges as
            two-element lists.  :meth:`from_dict` of it converts values exactly
            as this calibration does.

        Raises
        ------
        CalibrationError
            If the particle, bead or detector model is not a
            :class:`~evflow.flow.mie.Sphere`, :class:`~evflow.flow.mie.CoatedSphere`
            or :class:`~evflow.flow.mie.Detector`.
        """
        out = {"type": "ScatterCalibration", "version": 1}
        out.update(
            channel=str(self.channel),
            gain=float(self.gain),
            wavelength_nm=float(self.wavelength_nm),
            medium_index=float(self.medium_index),
            r2=float(self.r2),
            unique_range_nm=[float(v) for v in self.unique_range_nm],
            unique_scatter_range=[float(v) for v in self.unique_scatter_range],
            source=str(self.source),
        )
        for key in self._MODELS:
            out[key] = _model_to_dict(getattr(self, key), key)
        for key in self._ARRAYS:
            out[key] = np.array(getattr(self, key), dtype=np.float64)
        return out

    @classmethod
    def from_dict(cls, d) -> ScatterCalibration:
        """Rebuild a calibration from :meth:`to_dict` output (arrays may also be lists, as after JSON).

        Raises
        ------
        CalibrationError
            If ``d`` is not a stored scatter calibration, misses a key or holds an unknown model.
        """
        from ._table import _check_stored, _stored_array

        plain = ("channel", "gain", "wavelength_nm", "medium_index", "r2", "unique_range_nm",
                 "unique_scatter_range", "source")
        _check_stored(d, "ScatterCalibration", cls._ARRAYS + cls._MODELS + plain)
        arrays = {k: _stored_array(d, k, np.float64, "ScatterCalibration") for k in cls._ARRAYS}
        for k in ("diameter_grid_nm", "cross_section_grid"):
            arrays[k].setflags(write=False)  # as the computed curve, which is shared between calibrations
        ranges = {}
        for k in ("unique_range_nm", "unique_scatter_range"):
            v = list(d[k])
            if len(v) != 2:
                raise CalibrationError(f"ScatterCalibration.from_dict: {k!r} must be (low, high), got {d[k]!r}")
            ranges[k] = (float(v[0]), float(v[1]))
        return cls(
            channel=str(d["channel"]),
            gain=float(d["gain"]),
            particle=_model_from_dict(d["particle"], "particle"),
            wavelength_nm=float(d["wavelength_nm"]),
            medium_index=float(d["medium_index"]),
            detector=_model_from_dict(d["detector"], "detector"),
            bead_model=_model_from_dict(d["bead_model"], "bead_model"),
            r2=float(d["r2"]),
            source=str(d["source"]),
            **arrays,
            **ranges,
        )


def _number_to_json(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (complex, np.complexfloating)):
        return {"real": float(v.real), "imag": float(v.imag)}
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v)


def _number_from_json(v):
    if hasattr(v, "keys"):
        return complex(float(v["real"]), float(v["imag"]))
    return v


def _model_classes():
    from ..mie import CoatedSphere, Detector, Sphere

    return {"Sphere": Sphere, "CoatedSphere": CoatedSphere, "Detector": Detector}


def _model_to_dict(model, what):
    """A Sphere, CoatedSphere or Detector (frozen dataclasses) as a JSON-able dict."""
    import dataclasses

    classes = _model_classes()
    if type(model) not in classes.values():
        raise CalibrationError(
            f"ScatterCalibration.to_dict: {what} is a {type(model).__name__}; only {sorted(classes)} "
            "(evflow.flow.mie) can be stored"
        )
    out = {"type": type(model).__name__}
    for f in dataclasses.fields(model):
        out[f.name] = _number_to_json(getattr(model, f.name))
    return out


def _model_from_dict(d, what):
    classes = _model_classes()
    kind = d.get("type") if hasattr(d, "get") else None
    if kind not in classes:
        raise CalibrationError(
            f"ScatterCalibration.from_dict: {what} is {d!r}, expected a dict with 'type' one of {sorted(classes)}"
        )
    try:
        return classes[kind](**{k: _number_from_json(v) for k, v in d.items() if k != "type"})
    except TypeError as exc:
        raise CalibrationError(f"ScatterCalibration.from_dict: {what} {d!r} does not describe a {kind}: {exc}") from None


def _unique_range(d, c):
    """Rising part of the curve ``c(d)`` whose values no larger diameter repeats."""
    rising = np.diff(c) > 0
    if not rising[0]:
        raise CalibrationError(
            f"the scatter cross-section does not increase at the smallest diameter {d[0]:g} nm; "
            "no diameter range maps one-to-one to scatter"
        )
    stop = int(np.argmin(rising)) if not rising.all() else c.size - 1  # first local maximum
    if stop == c.size - 1:
        return 0, c.size - 1
    upper = float(c[stop:].min())  # below this value, only the first rising branch reaches
    last = int(np.nonzero(c[: stop + 1] <= upper)[0][-1])
    return 0, last


@functools.lru_cache(maxsize=64)
def _particle_curve(particle, wavelength_nm, medium_index, detector, d_lo, d_hi, n_grid=200):
    """Collected cross-section on a log-spaced diameter grid (cached: models and detectors are frozen)."""
    from ..mie import collected_cross_section

    grid = np.geomspace(d_lo, d_hi, n_grid)
    cs = collected_cross_section(particle, grid, wavelength_nm, medium_index, detector)
    grid.setflags(write=False)
    cs.setflags(write=False)
    return grid, cs


def _scatter_calibration(channel, gain, particle, wavelength_nm, medium_index, detector, bead_model,
                         bead_d, bead_s, bead_c, residuals, r2, diameter_range_nm, source):
    d_lo, d_hi = (float(v) for v in diameter_range_nm)
    if not 0 < d_lo < d_hi:
        raise CalibrationError(f"diameter_range_nm must be (low, high) with 0 < low < high, got {diameter_range_nm}")
    grid, cs = _particle_curve(particle, float(wavelength_nm), float(medium_index), detector, d_lo, d_hi)
    i0, i1 = _unique_range(grid, cs)
    return ScatterCalibration(
        channel=channel,
        gain=float(gain),
        particle=particle,
        wavelength_nm=float(wavelength_nm),
        medium_index=float(medium_index),
        detector=detector,
        bead_model=bead_model,
        bead_diameters_nm=np.asarray(bead_d, float),
        bead_scatter=np.asarray(bead_s, float),
        bead_cross_section=np.asarray(bead_c, float),
        residuals=np.asarray(residuals, float),
        r2=float(r2),
        diameter_grid_nm=grid,
        cross_section_grid=cs,
        unique_range_nm=(float(grid[i0]), float(grid[i1])),
        unique_scatter_range=(float(gain * cs[i0]), float(gain * cs[i1])),
        source=source,
    )


def fit_scatter_gain(
    bead_scatter,
    bead_diameters_nm,
    *,
    bead_model=None,
    particle=None,
    channel: str = "SSC",
    wavelength_nm: float = 488.0,
    medium_index: float = 1.333,
    detector=None,
    diameter_range_nm=(30.0, 1000.0),
    source: str = "",
) -> ScatterCalibration:
    """Fit the instrument gain from size-bead peaks and build a scatter -> diameter calibration.

    ``gain = exp(mean(log(measured / C_bead(d))))`` (least squares in log
    space), with ``C_bead`` the Mie cross-section of the beads collected by
    ``detector``.

    Parameters
    ----------
    bead_scatter : array (n_beads,)
        Measured scatter of each bead population (median, linear scale).
    bead_diameters_nm : array (n_beads,)
        Their nominal diameters (nm).
    bead_model : Sphere, optional
        Bead material (default polystyrene, n = 1.59).
    particle : Sphere or CoatedSphere, optional
        Particles to size (default an EV: core 1.38, 5 nm shell 1.48).
    channel : str
        Name of the scatter channel.
    wavelength_nm, medium_index : float
        Laser vacuum wavelength (nm) and medium refractive index.
    detector : Detector, optional
        Collection geometry (default side scatter, 53 deg half-angle).
    diameter_range_nm : (float, float)
        Diameters the particle curve is computed over (nm).

    Returns
    -------
    ScatterCalibration
    """
    from ..mie import POLYSTYRENE, VESICLE, Detector, collected_cross_section

    bead_model = POLYSTYRENE if bead_model is None else bead_model
    particle = VESICLE if particle is None else particle
    detector = Detector.side_scatter() if detector is None else detector
    s = np.asarray(bead_scatter, float)
    d = np.asarray(bead_diameters_nm, float)
    if s.shape != d.shape or s.ndim != 1 or s.size < 1:
        raise CalibrationError(f"bead scatter {s.shape} and bead diameters {d.shape} must be equal non-empty 1-D arrays")
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise CalibrationError(f"bead scatter values must be finite and > 0, got {s.tolist()}")
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise CalibrationError(f"bead diameters must be finite and > 0 nm, got {d.tolist()}")
    c = np.atleast_1d(collected_cross_section(bead_model, d, wavelength_nm, medium_index, detector))
    lr = np.log(s) - np.log(c)
    log_gain = float(lr.mean())
    residuals = lr - log_gain
    ls = np.log(s)
    sst = float(((ls - ls.mean()) ** 2).sum())
    r2 = 1.0 - float(residuals @ residuals) / sst if sst > 0 and s.size > 1 else float("nan")
    return _scatter_calibration(
        channel, math.exp(log_gain), particle, wavelength_nm, medium_index, detector, bead_model,
        d, s, c, residuals, r2, diameter_range_nm, source,
    )


def calibrate_scatter(
    beads,
    channel: str,
    diameters_nm,
    *,
    bead_model=None,
    particle=None,
    wavelength_nm: float = 488.0,
    medium_index: float = 1.333,
    detector=None,
    diameter_range_nm=(30.0, 1000.0),
    max_residual: float = 0.5,
) -> ScatterCalibration:
    """Scatter -> diameter calibration from a file of mixed size beads.

    The bead populations are found with a Gaussian mixture (one component per
    diameter) on the log-like scale of ``channel``; they are matched to the
    diameters in the order of their computed cross-sections (which is the
    order of size wherever the Mie curve rises), and the gain is fitted by
    :func:`fit_scatter_gain`.

    Parameters
    ----------
    beads : path, FCSSample, pandas.DataFrame or xarray.DataArray
    channel : str
        The scatter channel (e.g. ``"SSC-H"``).
    diameters_nm : sequence of float
        Nominal diameters of the bead populations in the file (nm).
    max_residual : float
        A bead whose measured scatter departs from the fitted curve by more
        than this (natural-log units; 0.5 = a factor 1.65) raises an error:
        wrong sizes, wrong refractive index or wrong optics.

    Other parameters are those of :func:`fit_scatter_gain`.
    """
    from ..mie import POLYSTYRENE, Detector, collected_cross_section

    bead_model = POLYSTYRENE if bead_model is None else bead_model
    det = Detector.side_scatter() if detector is None else detector
    d = np.asarray(diameters_nm, float)
    if d.ndim != 1 or d.size < 1:
        raise CalibrationError(f"diameters_nm must list the bead sizes, got {diameters_nm!r}")
    table = _as_table(beads, [channel], what="size beads")
    v = table.data[:, 0]
    v = v[np.isfinite(v)]
    k = d.size
    c = np.atleast_1d(collected_cross_section(bead_model, d, wavelength_nm, medium_index, det))
    if k == 1:
        medians = np.array([np.median(v)])
    else:
        n_modes = _count_modes(_display(v, table.ranges[0, 1]))
        if n_modes < k:
            labels, dip, counts = None, np.full(k - 1, np.nan), None
        else:
            labels, w, mu, cov, dip = bead_populations(v[:, None], k, [table.ranges[0, 1]])
            counts = np.bincount(labels, minlength=k)
        if n_modes < k or np.any(counts == 0) or np.any(dip >= 0.95):
            raise CalibrationError(
                f"{table.source}: {k} size-bead populations expected in {channel} ({d.tolist()} nm) but they "
                f"cannot be resolved (histogram peaks: {n_modes}, valley ratios {np.round(dip, 2).tolist()})"
            )
        medians = np.array([np.median(v[labels == j]) for j in range(k)])
    order = np.argsort(c, kind="stable")
    if np.unique(np.round(c / c.max(), 6)).size < k:
        raise CalibrationError(f"bead sizes {d.tolist()} nm give equal computed scatter; they cannot be told apart")
    sorted_d = d[order]
    cal = fit_scatter_gain(
        medians, sorted_d, bead_model=bead_model, particle=particle, channel=table.names[0],
        wavelength_nm=wavelength_nm, medium_index=medium_index, detector=det,
        diameter_range_nm=diameter_range_nm, source=table.source,
    )
    worst = int(np.argmax(np.abs(cal.residuals)))
    if abs(cal.residuals[worst]) > max_residual:
        raise CalibrationError(
            f"{table.source}: the {sorted_d[worst]:g} nm beads scatter {math.exp(cal.residuals[worst]):.2f}x what the "
            f"Mie model predicts after fitting the gain (bead medians {medians.tolist()}); check the bead sizes, "
            "refractive index, wavelength and collection angles"
        )
    return cal


def size_gate_limits(calibration: ScatterCalibration, min_nm: float, max_nm: float) -> tuple[float, float]:
    """Scatter limits (channel units) of a diameter range, through the monotonic part of the Mie curve.

    Raises
    ------
    CalibrationError
        If the range is empty or leaves the range where scatter determines the diameter uniquely.
    """
    lo_d, hi_d = calibration.unique_range_nm
    if not min_nm < max_nm:
        raise CalibrationError(f"size gate: min_nm ({min_nm}) must be below max_nm ({max_nm})")
    if min_nm < lo_d * (1 - 1e-9) or max_nm > hi_d * (1 + 1e-9):
        raise CalibrationError(
            f"size gate {min_nm:g}-{max_nm:g} nm leaves the range where {calibration.channel} determines the "
            f"diameter uniquely ({lo_d:.1f}-{hi_d:.1f} nm)"
        )
    return float(calibration.scatter_of(min_nm)), float(calibration.scatter_of(max_nm))


def size_gate(calibration: ScatterCalibration, min_nm: float, max_nm: float, gate_id: str = "size", parent=None):
    """A rectangle gate on the scatter channel selecting diameters ``min_nm``..``max_nm`` (nm).

    The gate is a range on the scatter channel whose limits are the scatter
    of particles of those diameters (:func:`size_gate_limits`).  This is
    exact because scatter rises monotonically with diameter over the gate
    (checked), so it can be a parent gate in any gating strategy.  The
    scatter channel is used on its linear scale (no transform).

    Returns
    -------
    evflow.flow.gates.RectangleGate
    """
    lo, hi = size_gate_limits(calibration, min_nm, max_nm)
    from ..gates import Dimension, RectangleGate

    return RectangleGate(gate_id, [Dimension(calibration.channel)], [lo], [hi], parent=parent)
