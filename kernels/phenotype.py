"""Fused gating + marker-phenotype counting kernels.

One pass over a chunk of events (rows = events, columns = channels) that, per
event,

1. loads the channel values it needs ("slots"), optionally compensated
   (``comp[j] = sum_i raw[comp_cols[i]] * comp_matrix[i, j]``, summed in
   ``i`` order),
2. applies range conditions ``lo <= value < hi`` on slots (rectangle and range
   gates over monotone transforms are turned into conditions on the
   untransformed value by the caller),
3. computes transformed dimensions (identity, affine ``(x + p0) / p1`` or a
   monotone lookup table with linear interpolation) and tests polygons
   (even-odd rule) and ellipsoids (``(y - mean)' C^-1 (y - mean) <= d2``),
4. for events in the parent population, builds the marker bitmask (bit ``k``
   set when ``value_k > threshold_k``) and accumulates the histogram of
   bitmasks, the fine histogram of ``value_k - threshold_k`` of positive events
   (for medians), the float64 sum of positive values (for means), and an
   optional 2-D histogram of two dimensions (density plots).

Three implementations give identical integer results: :func:`fused_numpy`
(the reference, vectorised NumPy, ``phenotype_numpy.py``), :func:`fused_numba`
(parallel Numba, ``phenotype_numba.py``) and :func:`fused_cupy` (a CUDA kernel
from ``phenotype.cu``, ``phenotype_cupy.py``, compiled with
``--fmad=false`` so that every floating-point operation rounds exactly as in
NumPy).  Only exactly-rounded IEEE operations (+, -, *, /, comparisons,
``frexp``) are used per event, in the same order everywhere, so no libm
difference between backends can move an event across a gate edge.  The plan
(:class:`FusedPlan`, its packed layout and the constants ``phenotype.cu`` is
compiled with) is in ``phenotype_plan.py``; :func:`fused` picks an
implementation through the kernel registry (family ``phenotype``).

Fine histogram (medians of positive events)
-------------------------------------------
For a positive event, ``d = value - threshold > 0`` is binned on a
logarithmic grid of :data:`FINE_SUB` bins per octave over
``[2**(FINE_EMIN-1), 2**(FINE_EMIN-1+FINE_OCT))`` (64 octaves, about
6e-8 .. 1.1e12 channel units above the threshold), plus an underflow bin 0
(``d`` below that) and an overflow bin (``d`` above it, or infinite), i.e.
``2**16 + 2`` bins.  A bin spans at most 1/1024 of its lower edge, so the
median of ``d`` (and hence of the value) is exact to 0.1 %.
"""

from __future__ import annotations

from . import _registry
from ._numba import numba  # noqa: F401  (None without Numba)
from .phenotype_cupy import (  # noqa: F401
    _CUDA_TYPES,
    _device_plan,
    fused_cupy,
    launch_cupy,
)
from .phenotype_numba import (  # noqa: F401
    EDGE_BITS,
    EDGE_OCTAVES,
    _density_only_columns,
    _display_bin_position,
    _edge_codes,
    _edge_plan,
    _from_keys,
    _get_numba_kernel,
    _nb_density_only,
    _nb_edge_bin,
    _nb_edge_code,
    _nb_event,
    _nb_fine_bin,
    _nb_fused,
    _nb_table_eval,
    _ordered_keys,
    density_edges,
    edge_index,
    edge_steps,
    fused_numba,
)
from .phenotype_numpy import (  # noqa: F401
    fine_bin,
    fine_bin_edges,
    fine_median,
    fused_numpy,
    points_in_polygon,
    slot_values,
    table_eval,
)
from .phenotype_plan import (  # noqa: F401  (the packed layout)
    _D_COMP,
    _D_DIM_PARAM,
    _D_ELL_D2,
    _D_ELL_MEAN,
    _D_H2,
    _D_MK_THR,
    _D_POLY,
    _D_RNG_HI,
    _D_RNG_LO,
    _FINE_HI,
    _FINE_LO,
    _H_D,
    _H_DX,
    _H_DY,
    _H_E,
    _H_K,
    _H_M,
    _H_NOUT,
    _H_NX,
    _H_NY,
    _H_P,
    _H_R,
    _H_S,
    _HEADER_LEN,
    _O_COMP_COLS,
    _O_DIM_KIND,
    _O_DIM_SLOT,
    _O_ELL_DIMS,
    _O_ELL_ICOV_OFF,
    _O_ELL_OFF,
    _O_MK_SLOT,
    _O_POLY_DIMS,
    _O_POLY_OFF,
    _O_RNG_SLOT,
    _O_SLOT_INDEX,
    _O_SLOT_KIND,
    _O_TAB,
    DIM_AFFINE,
    DIM_IDENTITY,
    DIM_TABLE,
    FINE_EMIN,
    FINE_NBINS,
    FINE_OCT,
    FINE_SUB,
    LAYOUT,
    MAX_DIMS,
    MAX_SLOTS,
    FusedPlan,
    Partial,
    _check_events,
    _pack,
    cuda_defines,
    cuda_preamble,
)

__all__ = [
    "FINE_SUB",
    "FINE_EMIN",
    "FINE_OCT",
    "FINE_NBINS",
    "FusedPlan",
    "Partial",
    "fine_bin",
    "fine_bin_edges",
    "fine_median",
    "table_eval",
    "points_in_polygon",
    "fused_numpy",
    "fused_numba",
    "fused_cupy",
    "launch_cupy",
    "fused",
    "slot_values",
]


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _host(a, what):
    if not _is_cupy(a):
        return a
    from evflow.backend import to_host

    return to_host(a, what=what)


def fused(events, plan: FusedPlan, mask=None, impl: str = "auto", n_threads: int | None = None,
          on_device: bool = False) -> Partial:
    """Run the fused kernel on one in-memory chunk.

    ``impl``: 'numpy' (reference), 'numba', 'cupy', or 'auto' (CuPy for a CuPy
    chunk, Numba otherwise; see :mod:`evflow.kernels._registry`).  A CuPy chunk
    given to 'numpy' or 'numba' is copied to the host.  ``n_threads``: Numba
    threads for this chunk (default: all).  ``on_device``: the CUDA kernel's
    partial stays on the GPU (CuPy arrays that add up there; bring the sum back
    with :meth:`Partial.to_host`); the CPU kernels' partials are NumPy anyway.
    """
    name = _registry.phenotype.resolve(impl, events)
    if name == "cupy" and on_device:
        from .phenotype_cupy import partial_cupy

        return partial_cupy(events, plan, mask)
    fn = _registry.phenotype.get(name)
    if name == "cupy":
        return fn(events, plan, mask)
    events = _host(events, "events chunk")
    mask = None if mask is None else _host(mask, "mask chunk")
    if name == "numba":
        return fn(events, plan, mask, n_threads=n_threads)
    return fn(events, plan, mask)
