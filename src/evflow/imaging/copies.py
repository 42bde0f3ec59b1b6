"""Unit brightness from bleaching steps and copies (fluorophores, antibodies) per vesicle.

The photons of one fluorophore are the median height of the single steps
(multiplicity 1) of the counted bleaching traces, with a bootstrap interval.
Any spot's photons divided by that unit give fluorophores; divided further by
the dye-to-antibody ratio (degree of labelling), antibodies per vesicle.
Photons scale with exposure, so still images taken with another exposure
than the bleaching movie pass ``exposure_ratio = still / bleaching``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import CalibrationError, ConfigError

__all__ = ["unit_brightness", "UnitBrightness", "copies_per_vesicle", "copies_summary", "fluorophores_from_mesf"]


@dataclass(frozen=True)
class UnitBrightness:
    """Photons per fluorophore per frame (bleaching exposure) of one channel.

    ``photons`` is the median single-step height, ``ci_low``/``ci_high`` its
    bootstrap interval (``level``), ``n_steps`` the single steps used and
    ``n_traces`` the counted traces they came from.
    """

    photons: float
    ci_low: float
    ci_high: float
    n_steps: int
    n_traces: int
    channel: str | None = None
    level: float = 0.95

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("photons", "ci_low", "ci_high", "n_steps", "n_traces", "channel", "level")}


def unit_brightness(steps, *, channel: str | None = None, level: float = 0.95, n_boot: int = 2000,
                    seed: int = 0) -> UnitBrightness:
    """Photons per fluorophore from counted bleaching traces.

    Parameters
    ----------
    steps : BleachingSteps
        From :func:`evflow.count_bleaching_steps` on traces in photons.
    channel : str, optional
        Name kept in the result.
    level : float
        Confidence level of the bootstrap interval of the median.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling (the interval is reproducible).

    Raises
    ------
    CalibrationError
        No counted trace has a single step.
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    hs, n_tr = [], 0
    for n, h, m in zip(steps.n_steps, steps.heights, steps.multiplicity):
        if n > 0:
            sel = np.asarray(h)[np.asarray(m) == 1]
            if sel.size:
                hs.append(sel)
                n_tr += 1
    if not hs:
        raise CalibrationError(f"unit_brightness{'' if channel is None else f' ({channel})'}: no counted trace "
                               "has a single bleaching step")
    h = np.concatenate(hs)
    rng = np.random.default_rng(seed)
    boots = np.median(h[rng.integers(0, h.size, (n_boot, h.size))], axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return UnitBrightness(float(np.median(h)), float(lo), float(hi), int(h.size), n_tr, channel, float(level))


def _per_marker(value, markers, name):
    if isinstance(value, Mapping):
        missing = [m for m in markers if m not in value]
        if missing:
            raise ConfigError(f"{name} has no entry for marker(s) {missing}; has {list(value)}")
        return {m: value[m] for m in markers}
    return dict.fromkeys(markers, value)


def _unit_value(u, marker):
    v = u.photons if isinstance(u, UnitBrightness) else u
    try:
        v = float(v)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"unit_photons for {marker!r} must be a number or a UnitBrightness, got {u!r}") from exc
    if not (np.isfinite(v) and v > 0):
        raise ConfigError(f"unit_photons for {marker!r} must be > 0, got {v}")
    return v


def copies_per_vesicle(spots: pd.DataFrame, unit_photons, dye_per_antibody=None, *, markers=None,
                       exposure_ratio=1.0) -> pd.DataFrame:
    """Fluorophores (and antibodies) per vesicle from its photons.

    Parameters
    ----------
    spots : DataFrame
        Per-vesicle table with ``photons_<marker>`` columns (as from
        :func:`evflow.count_vesicles`), or one ``photons`` column.
    unit_photons : float, UnitBrightness or mapping marker -> either
        Photons per fluorophore per frame of the bleaching movie.
    dye_per_antibody : float or mapping, optional
        Degree of labelling (dyes per antibody); adds ``antibodies_<marker>``.
    markers : sequence of str, optional
        Default: every ``photons_<marker>`` column.
    exposure_ratio : float or mapping
        Still-image exposure over bleaching-movie exposure (same laser power).

    Returns
    -------
    DataFrame
        A copy of ``spots`` with ``fluorophores_<marker>`` (and
        ``antibodies_<marker>``), or ``fluorophores`` (``antibodies``) for a
        single ``photons`` column.
    """
    if not isinstance(spots, pd.DataFrame):
        raise ConfigError(f"spots must be a pandas DataFrame, got {type(spots).__name__}")
    single = markers is None and "photons" in spots.columns
    if single:
        cols = {None: "photons"}
    else:
        if markers is None:
            markers = [c[len("photons_"):] for c in spots.columns if c.startswith("photons_")]
        if not markers:
            raise ConfigError(f"spots has no photons_<marker> or photons column; columns: {list(spots.columns)}")
        missing = [m for m in markers if f"photons_{m}" not in spots.columns]
        if missing:
            raise ConfigError(f"spots has no photons column for marker(s) {missing}")
        cols = {m: f"photons_{m}" for m in markers}
    keys = list(cols)
    units = _per_marker(unit_photons, keys, "unit_photons") if not single else {None: unit_photons}
    expo = _per_marker(exposure_ratio, keys, "exposure_ratio") if not single else {None: exposure_ratio}
    dol = None
    if dye_per_antibody is not None:
        dol = _per_marker(dye_per_antibody, keys, "dye_per_antibody") if not single else {None: dye_per_antibody}
    out = spots.copy()
    for m, col in cols.items():
        u = _unit_value(units[m], m)
        r = float(expo[m])
        if not (np.isfinite(r) and r > 0):
            raise ConfigError(f"exposure_ratio for {m!r} must be > 0, got {expo[m]}")
        suffix = "" if m is None else f"_{m}"
        fl = out[col].to_numpy(dtype=np.float64) / (u * r)
        out[f"fluorophores{suffix}"] = fl
        if dol is not None:
            d = float(dol[m])
            if not (np.isfinite(d) and d > 0):
                raise ConfigError(f"dye_per_antibody for {m!r} must be > 0, got {dol[m]}")
            out[f"antibodies{suffix}"] = fl / d
    return out


def copies_summary(table: pd.DataFrame, *, by: str = "bitmask", quantity: str = "fluorophores") -> pd.DataFrame:
    """Median and quartiles of ``<quantity>_<marker>`` per group (default: per phenotype bitmask).

    Returns a DataFrame indexed by ``by`` with columns ``<marker>_copies_median``,
    ``<marker>_q25``, ``<marker>_q75`` and ``n`` (vesicles).
    """
    cols = [c for c in table.columns if c.startswith(quantity + "_")]
    if not cols:
        raise ConfigError(f"table has no {quantity}_<marker> columns (run copies_per_vesicle first)")
    if by not in table.columns:
        raise ConfigError(f"table has no column {by!r} to group by")
    g = table.groupby(by)
    out = pd.DataFrame({"n": g.size()})
    for c in cols:
        m = c[len(quantity) + 1:]
        out[f"{m}_copies_median"] = g[c].median()
        out[f"{m}_q25"] = g[c].quantile(0.25)
        out[f"{m}_q75"] = g[c].quantile(0.75)
    return out


def fluorophores_from_mesf(mesf, mesf_per_fluorophore, dye_per_antibody=None):
    """Flow cytometry on the same scale: fluorophores (and antibodies) per event from MESF.

    Parameters
    ----------
    mesf : array-like or DataFrame
        MESF per event (from :func:`evflow.calibrate_mesf`); a DataFrame's
        ``mesf_<marker>`` columns are converted to ``fluorophores_<marker>``.
    mesf_per_fluorophore : float or mapping marker -> float
        MESF equivalence of one dye molecule (given per dye: the bead's
        reference fluorochrome units one conjugated dye is worth).
    dye_per_antibody : float or mapping, optional
        Degree of labelling; adds antibodies.

    Returns
    -------
    ndarray (or (fluorophores, antibodies)) for an array, a DataFrame copy for a DataFrame.
    """
    if isinstance(mesf, pd.DataFrame):
        markers = [c[len("mesf_"):] for c in mesf.columns if c.startswith("mesf_")]
        if not markers:
            raise ConfigError(f"table has no mesf_<marker> columns; columns: {list(mesf.columns)}")
        eq = _per_marker(mesf_per_fluorophore, markers, "mesf_per_fluorophore")
        dol = None if dye_per_antibody is None else _per_marker(dye_per_antibody, markers, "dye_per_antibody")
        out = mesf.copy()
        for m in markers:
            fl = out[f"mesf_{m}"].to_numpy(dtype=np.float64) / _unit_value(eq[m], m)
            out[f"fluorophores_{m}"] = fl
            if dol is not None:
                out[f"antibodies_{m}"] = fl / _unit_value(dol[m], m)
        return out
    fl = np.asarray(mesf, dtype=np.float64) / _unit_value(mesf_per_fluorophore, "mesf_per_fluorophore")
    if dye_per_antibody is None:
        return fl
    return fl, fl / _unit_value(dye_per_antibody, "dye_per_antibody")
