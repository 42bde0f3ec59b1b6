"""The plan of the fused phenotype kernel: what to compute, packed into two flat arrays.

:class:`FusedPlan` holds the gates, transforms, markers and density of one
count as plain lists and arrays, and :meth:`FusedPlan.packed` packs them into
an int64 array ``ip`` (a header of counts and section offsets, then the
sections) and a float64 array ``dp``; the Numba kernel and ``phenotype.cu``
read that layout.  :func:`cuda_defines` gives the constants of the layout and
of the fine histogram as the ``#define`` lines the CUDA source is compiled
with, so they are written once, here.  :class:`Partial` is the result of one
chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FINE_SUB = 1024
FINE_EMIN = -23
FINE_OCT = 64
FINE_NBINS = FINE_SUB * FINE_OCT + 2
_FINE_LO = math.ldexp(1.0, FINE_EMIN - 1)
_FINE_HI = math.ldexp(1.0, FINE_EMIN - 1 + FINE_OCT)

MAX_SLOTS = 32  # per-event registers in the CUDA kernel
MAX_DIMS = 16

# dimension kinds
DIM_IDENTITY = 0
DIM_AFFINE = 1
DIM_TABLE = 2


# ----------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------


@dataclass
class FusedPlan:
    """What the fused kernel computes, as plain arrays (see the module docstring).

    Parameters
    ----------
    n_columns : int
        Number of columns of the event chunks.
    slots : list of (kind, index)
        ``(0, column)`` for a raw column, ``(1, j)`` for output ``j`` of the
        compensation.
    comp_cols, comp_matrix : compensation inputs (detector columns) and the
        unmixing matrix ``M`` (detectors x outputs; the inverse of a square
        spillover matrix), ``comp = raw[:, comp_cols] @ M``.
    ranges : list of (slot, lo, hi)
        ``lo <= value < hi``; ``-inf``/``inf`` for open ends.
    dims : list of (slot, kind, p0, p1, table)
        Transformed dimensions: kind 0 identity, 1 affine ``(x + p0) / p1``,
        2 table: ``table`` holds increasing knots ``x_k`` of ``y_k = p0 + k * p1``.
    polygons : list of (dim_x, dim_y, vertices (v, 2))
    ellipses : list of (dims, mean, inverse covariance, distance_square)
    markers : list of (slot, threshold); positive when ``value > threshold``.
    density : None or (dim_x, dim_y, nx, ny, (lo_x, hi_x), (lo_y, hi_y))
        2-D histogram of two dimensions over half-open ranges ``[lo, hi)``.
    """

    n_columns: int
    slots: list = field(default_factory=list)
    comp_cols: list = field(default_factory=list)
    comp_matrix: np.ndarray | None = None
    ranges: list = field(default_factory=list)
    dims: list = field(default_factory=list)
    polygons: list = field(default_factory=list)
    ellipses: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    density: tuple | None = None

    def __post_init__(self):
        self.validate()
        self._packed = None

    # -- validation (programming errors of the plan builder, not user input) --
    def validate(self):
        S = len(self.slots)
        m = len(self.comp_cols)
        for kind, idx in self.slots:
            if kind == 0 and not (0 <= idx < self.n_columns):
                raise ValueError(f"slot column {idx} out of range 0..{self.n_columns - 1}")
            if kind == 1 and not (0 <= idx < self.n_comp_out):
                raise ValueError(f"slot compensation output {idx} out of range 0..{self.n_comp_out - 1}")
        for c in self.comp_cols:
            if not (0 <= c < self.n_columns):
                raise ValueError(f"compensation column {c} out of range")
        if m and (np.asarray(self.comp_matrix).ndim != 2 or np.asarray(self.comp_matrix).shape[0] != m):
            raise ValueError("comp_matrix must have len(comp_cols) rows")
        for s, _lo, _hi in self.ranges:
            if not (0 <= s < S):
                raise ValueError(f"range slot {s} out of range")
        for s, kind, _p0, _p1, table in self.dims:
            if not (0 <= s < S):
                raise ValueError(f"dimension slot {s} out of range")
            if kind == DIM_TABLE:
                t = np.asarray(table, dtype=np.float64)
                if t.ndim != 1 or t.size < 2 or not np.all(np.diff(t) > 0) or not np.all(np.isfinite(t)):
                    raise ValueError("a transform table must hold >= 2 finite, strictly increasing knots")
        D = len(self.dims)
        for dx, dy, verts in self.polygons:
            if not (0 <= dx < D and 0 <= dy < D):
                raise ValueError("polygon dimension out of range")
            if np.asarray(verts).ndim != 2 or np.asarray(verts).shape[1] != 2 or len(verts) < 3:
                raise ValueError("polygon needs (v >= 3, 2) vertices")
        for dims, mean, icov, _d2 in self.ellipses:
            k = len(dims)
            if any(not (0 <= d < D) for d in dims) or np.asarray(mean).shape != (k,) or np.asarray(icov).shape != (k, k):
                raise ValueError("ellipse dims/mean/inverse covariance do not agree")
        for s, thr in self.markers:
            if not (0 <= s < S):
                raise ValueError(f"marker slot {s} out of range")
            if not np.isfinite(thr):
                raise ValueError("marker thresholds must be finite")
        if len(self.markers) > 16:
            raise ValueError("at most 16 markers")
        if self.density is not None:
            dx, dy, nx, ny, (lox, hix), (loy, hiy) = self.density
            if not (0 <= dx < D and 0 <= dy < D) or nx < 1 or ny < 1 or not (hix > lox and hiy > loy):
                raise ValueError("invalid density specification")

    @property
    def n_comp_out(self) -> int:
        return 0 if not self.comp_cols else int(np.asarray(self.comp_matrix).shape[1])

    @property
    def n_markers(self) -> int:
        return len(self.markers)

    @property
    def n_phenotypes(self) -> int:
        return 1 << len(self.markers)

    def density_shape(self):
        return (0, 0) if self.density is None else (int(self.density[2]), int(self.density[3]))

    # -- packed form read by the Numba and CUDA kernels --
    def packed(self):
        """``(ip, dp)``: int64 and float64 arrays with the whole plan (layout in ``_HEADER``)."""
        if self._packed is None:
            self._packed = _pack(self)
        return self._packed


# header of the packed int array: counts, then offsets of each section
_H_S, _H_M, _H_R, _H_D, _H_P, _H_E, _H_K, _H_NX, _H_NY, _H_DX, _H_DY = range(11)
(
    _O_SLOT_KIND, _O_SLOT_INDEX, _O_COMP_COLS, _O_RNG_SLOT, _O_DIM_SLOT, _O_DIM_KIND, _O_TAB,
    _O_POLY_DIMS, _O_POLY_OFF, _O_ELL_OFF, _O_ELL_DIMS, _O_ELL_ICOV_OFF, _O_MK_SLOT,
    _D_COMP, _D_RNG_LO, _D_RNG_HI, _D_DIM_PARAM, _D_POLY, _D_ELL_MEAN, _D_ELL_D2, _D_MK_THR, _D_H2,
) = range(11, 33)
_H_NOUT = 33
_HEADER_LEN = 34


def _pack(plan: FusedPlan):
    ints: list[int] = [0] * _HEADER_LEN
    dbls: list[float] = []
    S, m, R, D = len(plan.slots), len(plan.comp_cols), len(plan.ranges), len(plan.dims)
    P, E, K = len(plan.polygons), len(plan.ellipses), len(plan.markers)
    nx, ny = plan.density_shape()
    ints[:11] = [S, m, R, D, P, E, K, nx, ny, 0, 0]
    ints[_H_NOUT] = plan.n_comp_out
    if plan.density is not None:
        ints[_H_DX], ints[_H_DY] = int(plan.density[0]), int(plan.density[1])

    def isec(key, values):
        ints[key] = len(ints)
        ints.extend(int(v) for v in values)

    def dsec(key, values):
        ints[key] = len(dbls)
        dbls.extend(float(v) for v in values)

    isec(_O_SLOT_KIND, [k for k, _ in plan.slots])
    isec(_O_SLOT_INDEX, [i for _, i in plan.slots])
    isec(_O_COMP_COLS, plan.comp_cols)
    isec(_O_RNG_SLOT, [r[0] for r in plan.ranges])
    isec(_O_DIM_SLOT, [d[0] for d in plan.dims])
    isec(_O_DIM_KIND, [d[1] for d in plan.dims])
    dsec(_D_COMP, np.asarray(plan.comp_matrix, dtype=np.float64).ravel() if m else [])
    dsec(_D_RNG_LO, [r[1] for r in plan.ranges])
    dsec(_D_RNG_HI, [r[2] for r in plan.ranges])
    params = []
    for d in plan.dims:
        params += [d[2], d[3]]
    dsec(_D_DIM_PARAM, params)
    # tables: ip[_O_TAB + d] = start in dp, ip[_O_TAB + D + d] = number of knots
    tab_start, tab_len = [], []
    for d in plan.dims:
        if d[1] == DIM_TABLE:
            t = np.asarray(d[4], dtype=np.float64)
            tab_start.append(len(dbls))
            tab_len.append(t.size)
            dbls.extend(t.tolist())
        else:
            tab_start.append(0)
            tab_len.append(0)
    isec(_O_TAB, tab_start + tab_len)
    isec(_O_POLY_DIMS, [v for p in plan.polygons for v in (p[0], p[1])])
    poly_off = [0]
    verts = []
    for p in plan.polygons:
        vv = np.asarray(p[2], dtype=np.float64)
        verts.extend(vv.ravel().tolist())
        poly_off.append(poly_off[-1] + len(vv))
    isec(_O_POLY_OFF, poly_off)
    dsec(_D_POLY, verts)
    ell_off, ell_dims, icov_off, means, icovs, d2s = [0], [], [0], [], [], []
    for dims, mean, icov, d2 in plan.ellipses:
        ell_dims.extend(dims)
        ell_off.append(ell_off[-1] + len(dims))
        icov_off.append(icov_off[-1] + len(dims) ** 2)
        means.extend(np.asarray(mean, dtype=np.float64).tolist())
        icovs.extend(np.asarray(icov, dtype=np.float64).ravel().tolist())
        d2s.append(float(d2))
    isec(_O_ELL_OFF, ell_off)
    isec(_O_ELL_DIMS, ell_dims)
    isec(_O_MK_SLOT, [s for s, _ in plan.markers])
    dsec(_D_ELL_MEAN, means)
    d_icov = len(dbls)
    dbls.extend(icovs)
    isec(_O_ELL_ICOV_OFF, [d_icov + o for o in icov_off])
    dsec(_D_ELL_D2, d2s)
    dsec(_D_MK_THR, [t for _, t in plan.markers])
    h2 = [0.0, 0.0, 0.0, 0.0]
    if plan.density is not None:
        _dx, _dy, nx, ny, (lox, hix), (loy, hiy) = plan.density
        h2 = [lox, nx / (hix - lox), loy, ny / (hiy - loy)]
    dsec(_D_H2, h2)
    ints.append(0)  # padding: every (possibly empty) section start is a valid index
    dbls.append(0.0)
    ip = np.asarray(ints, dtype=np.int64)
    dp = np.asarray(dbls, dtype=np.float64)
    return ip, dp


#: names of the packed-plan header slots as the CUDA source spells them (``_H_S`` -> ``H_S``)
LAYOUT = {name[1:]: value for name, value in list(globals().items())
          if name.startswith(("_H_", "_O_", "_D_")) and name != "_HEADER_LEN"}


def cuda_defines() -> dict:
    """``{macro: value}`` of every constant ``phenotype.cu`` uses, from the Python that owns it."""
    out = {
        "FINE_SUB": FINE_SUB,
        "FINE_EMIN": FINE_EMIN,
        "FINE_OCT": FINE_OCT,
        "FINE_NBINS": FINE_NBINS,
        "FINE_LO": _FINE_LO,
        "FINE_HI": _FINE_HI,
        "MAX_SLOTS": MAX_SLOTS,
        "MAX_DIMS": MAX_DIMS,
        "DIM_IDENTITY": DIM_IDENTITY,
        "DIM_AFFINE": DIM_AFFINE,
        "DIM_TABLE": DIM_TABLE,
    }
    out.update(sorted(LAYOUT.items(), key=lambda kv: kv[1]))
    return out


def cuda_preamble() -> str:
    """The ``#define`` lines of :func:`cuda_defines`, prepended to ``phenotype.cu`` when it is compiled."""
    lines = ["// generated from evflow.kernels.phenotype_plan (cuda_defines); do not edit"]
    for name, value in cuda_defines().items():
        text = float(value).hex() if isinstance(value, float) else str(int(value))  # hex: exact (C++17)
        lines.append(f"#define {name} ({text})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# results of one chunk
# ----------------------------------------------------------------------------


@dataclass
class Partial:
    """Per-chunk partial result; partials of chunks add up (``a + b``)."""

    n_events: int
    counts: np.ndarray  # int64 (2**k,): parent events per bitmask
    pos_hist: np.ndarray  # int64 (k, FINE_NBINS)
    pos_sum: np.ndarray  # float64 (k,)
    density: np.ndarray  # int64 (nx, ny) or (0, 0)

    def __add__(self, other: Partial) -> Partial:
        return Partial(
            self.n_events + other.n_events,
            self.counts + other.counts,
            self.pos_hist + other.pos_hist,
            self.pos_sum + other.pos_sum,
            self.density + other.density,
        )

    def to_host(self, what: str = "partial") -> Partial:
        """This partial with NumPy arrays: one crossing (:func:`evflow.backend.to_host`) of one packed int64
        buffer (counts, positive histograms, ``pos_sum`` bit for bit, density), whichever backend holds it."""
        from evflow.backend import array_module, to_host

        xp = array_module(self.counts)
        k, nb = self.pos_hist.shape
        dshape = tuple(int(v) for v in self.density.shape)
        packed = xp.concatenate([
            xp.asarray(self.counts, dtype=xp.int64).ravel(),
            xp.asarray(self.pos_hist, dtype=xp.int64).ravel(),
            xp.ascontiguousarray(xp.asarray(self.pos_sum, dtype=xp.float64)).view(xp.int64).ravel(),
            xp.asarray(self.density, dtype=xp.int64).ravel(),
        ])
        h = to_host(packed, what=what)
        n_c, n_h = int(self.counts.shape[0]), k * nb
        return Partial(
            int(self.n_events),
            h[:n_c].copy(),
            h[n_c:n_c + n_h].reshape(k, nb).copy(),
            h[n_c + n_h:n_c + n_h + k].view(np.float64).copy(),
            h[n_c + n_h + k:].reshape(dshape).copy(),
        )

    @property
    def n_parent(self) -> int:
        return int(self.counts.sum())

    @property
    def n_positive(self) -> np.ndarray:
        return self.pos_hist.sum(axis=1)

    @classmethod
    def empty(cls, plan: FusedPlan) -> Partial:
        k = plan.n_markers
        return cls(
            0,
            np.zeros(plan.n_phenotypes, np.int64),
            np.zeros((k, FINE_NBINS), np.int64),
            np.zeros(k, np.float64),
            np.zeros(plan.density_shape(), np.int64),
        )



def _check_events(events, plan):
    if events.ndim != 2 or events.shape[1] != plan.n_columns:
        raise ValueError(f"events chunk has shape {events.shape}, expected (n, {plan.n_columns})")

