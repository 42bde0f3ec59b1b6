"""Marker phenotypes and the result schema shared by flow and imaging.

A phenotype is a combination of positive/negative calls for ``k`` markers,
encoded as a bitmask: bit ``i`` is set when marker ``i`` (in the order the
markers were given) is positive.  Phenotype index ``j`` in every result is the
bitmask value ``j``, so there are ``2**k`` phenotypes, labelled like
``"CD63+ EpCAM-"`` (markers in the given order).

Results are :class:`xarray.Dataset` objects with one schema for both
modalities:

dims
    ``sample``, ``phenotype``, ``marker`` and, for imaging, ``fov``.
data variables
    ``count`` (int64; ``sample x phenotype`` or ``sample x fov x phenotype``),
    ``fraction_of_parent``, ``fraction_of_total`` (float64, 0..1),
    ``n_parent``, ``n_total`` (int64 per sample [and fov]),
    ``threshold`` (float64, ``sample x marker``), and any per-marker
    statistics passed in (e.g. ``median_positive``, ``mean_positive``).
coords
    ``phenotype`` (labels), ``bitmask`` (int, along ``phenotype``),
    ``marker``, ``sample``, ``fov``; one boolean coord per marker along
    ``phenotype`` (``<marker>_positive``) for easy selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from .errors import ConfigError

__all__ = ["phenotype_labels", "phenotype_bits", "counts_dataset", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1"


def phenotype_labels(markers: Sequence[str]) -> list[str]:
    """Labels of all ``2**k`` phenotypes, index = bitmask.

    >>> phenotype_labels(["CD63", "EpCAM"])
    ['CD63- EpCAM-', 'CD63+ EpCAM-', 'CD63- EpCAM+', 'CD63+ EpCAM+']
    """
    markers = list(markers)
    if len(set(markers)) != len(markers):
        raise ConfigError(f"marker names must be unique, got {markers}")
    if len(markers) > 16:
        raise ConfigError(f"at most 16 markers can be combined into phenotypes, got {len(markers)}")
    return [
        " ".join(f"{m}{'+' if (j >> i) & 1 else '-'}" for i, m in enumerate(markers))
        for j in range(1 << len(markers))
    ]


def phenotype_bits(markers: Sequence[str]) -> np.ndarray:
    """Boolean table (phenotype x marker): is marker ``i`` positive in phenotype ``j``."""
    k = len(markers)
    j = np.arange(1 << k)[:, None]
    return ((j >> np.arange(k)[None, :]) & 1).astype(bool)


def counts_dataset(
    counts,
    markers: Sequence[str],
    samples: Sequence[str],
    *,
    n_parent=None,
    n_total=None,
    thresholds=None,
    marker_stats: Mapping[str, object] | None = None,
    fovs: Sequence | None = None,
    attrs: Mapping | None = None,
) -> xr.Dataset:
    """Build the shared counts Dataset.

    Parameters
    ----------
    counts : array of int, (sample, phenotype) or (sample, fov, phenotype)
        Events (flow) or vesicles (imaging) per phenotype.
    markers : sequence of str
        Marker names, in bit order.
    samples : sequence of str
        Sample names.
    n_parent : array of int, optional
        Events in the parent population; defaults to ``counts.sum(-1)``.
    n_total : array of int, optional
        All events/spots; defaults to ``n_parent``.
    thresholds : array (sample, marker), optional
        Positivity thresholds used, in the channel's units.
    marker_stats : mapping of name -> array (sample, marker), optional
        Extra per-marker statistics, e.g. ``median_positive``.
    fovs : sequence, optional
        Field-of-view labels (imaging): adds the ``fov`` dim.
    attrs : mapping, optional
        Dataset attributes (units, provenance).
    """
    counts = np.asarray(counts, dtype=np.int64)
    markers = list(markers)
    labels = phenotype_labels(markers)
    lead = ["sample"] + (["fov"] if fovs is not None else [])
    expected = (len(samples),) + ((len(fovs),) if fovs is not None else ()) + (len(labels),)
    if counts.shape != expected:
        raise ConfigError(f"counts has shape {counts.shape}, expected {expected} ({', '.join(lead)}, phenotype)")
    n_parent = counts.sum(-1) if n_parent is None else np.asarray(n_parent, dtype=np.int64)
    n_total = n_parent if n_total is None else np.asarray(n_total, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_parent = np.where(n_parent[..., None] > 0, counts / np.maximum(n_parent, 1)[..., None], np.nan)
        frac_total = np.where(n_total[..., None] > 0, counts / np.maximum(n_total, 1)[..., None], np.nan)
    coords = {
        "sample": list(samples),
        "phenotype": labels,
        "bitmask": ("phenotype", np.arange(len(labels), dtype=np.int64)),
        "marker": markers,
    }
    bits = phenotype_bits(markers)
    for i, m in enumerate(markers):
        coords[f"{m}_positive"] = ("phenotype", bits[:, i])
    if fovs is not None:
        coords["fov"] = list(fovs)
    dims = tuple(lead) + ("phenotype",)
    data = {
        "count": (dims, counts, {"long_name": "count", "units": "1"}),
        "fraction_of_parent": (dims, frac_parent, {"units": "1"}),
        "fraction_of_total": (dims, frac_total, {"units": "1"}),
        "n_parent": (tuple(lead), n_parent, {"units": "1"}),
        "n_total": (tuple(lead), n_total, {"units": "1"}),
    }
    if thresholds is not None:
        data["threshold"] = (("sample", "marker"), np.asarray(thresholds, dtype=np.float64))
    for name, value in (marker_stats or {}).items():
        value = np.asarray(value, dtype=np.float64)
        data[name] = (tuple(lead[: value.ndim - 1]) + ("marker",), value)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"evflow_schema": SCHEMA_VERSION})
    ds.attrs.update(dict(attrs or {}))
    return ds
