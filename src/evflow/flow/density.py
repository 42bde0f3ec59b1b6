"""2-D density histograms of two (transformed) channels of a parent population, in one fused pass per chunk.

Same gating and kernels as :func:`evflow.flow.phenotypes.count_phenotypes`
(see that module for the exactness of transformed axes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import GatingError
from ._events import (
    _block_partial,
    _chunk_threads,
    _kernel_name,
    _prepare_events,
    _renamed_kernel,
    _sample_total,
    _samples,
)
from ._plan import _compile, _make_plan, _names, _parent_gates, _Unsupported

__all__ = ["density2d"]


def _axis(t, name):
    from .transforms import Transform

    if t is None or isinstance(t, Transform):
        return t
    raise GatingError(f"density2d: transform for {name!r} must be a Transform or None, got {type(t).__name__}")


def _default_range(sample, channel, transform):
    """(0, top) of a channel for density2d without range=: the sample's ``$PnR`` on its scale policy
    (:meth:`~evflow.FCSSample.channel_limits`), the scale the events are counted on."""
    from ..errors import FCSError

    if transform is not None:
        return (0.0, 1.0)
    sample.channel_index(channel)  # an unknown channel is an FCSError, as before
    scaled = getattr(sample, "scale", "linear-gain") != "raw"
    try:
        limits = sample.channel_limits(channel, scaled=scaled, default=None)
        f1 = sample.channel_log(channel)[0] if limits is not None else 0.0
    except FCSError:
        limits = None
    if limits is None:
        raise GatingError(f"density2d: no range= given and channel {channel!r} has no usable range ($PnR)") from None
    if f1 != 0 and scaled:
        raise GatingError(f"density2d: channel {channel!r} is log-amplified; pass range= or a transform")
    return (0.0, limits[1])


@_renamed_kernel
def density2d(
    sample,
    x: str,
    y: str,
    bins=512,
    range=None,
    transforms=None,
    *,
    parent=None,
    strategy=None,
    compensation=None,
    backend: str | None = None,
    impl: str = "auto",
):
    """2-D histogram of two (transformed) channels of the parent population.

    Parameters
    ----------
    sample : FCSSample or path
    x, y : str
        Channels (``$PnN`` or ``$PnS``).
    bins : int or (int, int)
        Number of bins along x and y.
    range : ((xmin, xmax), (ymin, ymax)), optional
        Half-open ranges on the display scale ``[min, max)``; default (0, 1)
        for a transformed axis, ``[0, $PnR)`` for a plain one.
    transforms : Transform or (Transform, Transform) or dict channel -> Transform, optional
        Display scales of the axes (evaluated as for polygon gates).
    parent, strategy, compensation, backend, impl
        As in :func:`count_phenotypes` (compensation default: the gates' own).

    Returns
    -------
    xarray.DataArray
        ``(x, y)`` event counts (int64) with bin-centre coords ``x``, ``y``,
        edges in ``attrs`` (``x_edges``, ``y_edges``), ``n_parent`` and
        ``n_outside`` (parent events outside the range) in ``attrs``.
    """
    import dask
    import xarray as xr

    from ..backend import resolve_backend

    be = resolve_backend(backend)
    kname = _kernel_name(impl, be)
    (sname, smp), = _samples(sample)
    if isinstance(transforms, Mapping):
        tx, ty = transforms.get(x), transforms.get(y)
    elif isinstance(transforms, (tuple, list)):
        tx, ty = transforms
    else:
        tx = ty = transforms
    tx, ty = _axis(tx, x), _axis(ty, y)
    nx, ny = (int(bins), int(bins)) if np.ndim(bins) == 0 else (int(bins[0]), int(bins[1]))
    if nx < 1 or ny < 1:
        raise GatingError(f"density2d: bins={bins!r} must be positive")
    if range is None:
        rx, ry = _default_range(smp, x, tx), _default_range(smp, y, ty)
    else:
        (rx, ry) = range
    rx, ry = (float(rx[0]), float(rx[1])), (float(ry[0]), float(ry[1]))
    if not (np.all(np.isfinite(rx + ry)) and rx[1] > rx[0] and ry[1] > ry[0]):
        raise GatingError(f"density2d: range={range!r} must be finite with max > min")
    chain, mask_gate, parent_desc = _parent_gates(parent, strategy)
    spec = [(x, x, 0.0), (y, y, 0.0)]
    comp, use_mask, fcs_comp, (sx, sy) = _compile(smp, sname, chain, mask_gate, strategy, spec, compensation)
    try:
        dx = comp.dim(sx, tx, *rx)
        dy = comp.dim(sy, ty, *ry)
    except _Unsupported as exc:
        raise GatingError(f"density2d: {exc}") from None
    plan = _make_plan(comp, [], [], density=(dx, dy, nx, ny, rx, ry))
    ev = _prepare_events(smp, sname, be)
    mask_info = None if use_mask is None else (strategy, _names(smp), use_mask, fcs_comp)
    nt = _chunk_threads(ev)
    parts = [dask.delayed(_block_partial)(b, plan, kname, mask_info, nt, be) for b in ev.to_delayed().ravel()]
    (total,) = dask.compute(_sample_total(parts))
    xe = np.linspace(rx[0], rx[1], nx + 1)
    ye = np.linspace(ry[0], ry[1], ny + 1)
    n_parent = int(total.counts.sum())
    return xr.DataArray(
        total.density,
        dims=("x", "y"),
        coords={"x": 0.5 * (xe[:-1] + xe[1:]), "y": 0.5 * (ye[:-1] + ye[1:])},
        name="density",
        attrs={
            "x_channel": x,
            "y_channel": y,
            "x_transform": repr(tx),
            "y_transform": repr(ty),
            "x_edges": xe.tolist(),
            "y_edges": ye.tolist(),
            "n_parent": n_parent,
            "n_outside": n_parent - int(total.density.sum()),
            "n_total": int(total.n_events),
            "parent": "" if parent_desc is None else str(parent_desc),
            "sample": sname,
            "units": "events per bin",
        },
    )
