"""density2d on transformed axes: the fast CPU kernel bins by exact data-space bin edges and must give the
reference's histogram bit for bit, for events exactly on the edges, their float neighbours, zeros, signs,
NaN and infinities, with and without a transformed parent polygon, at several chunkings."""

from __future__ import annotations

import numpy as np
import pytest
from general_checks import assert_equal, assert_same_across_impls

from evflow.flow import gates as G, transforms as T
from evflow.flow.phenotypes import density2d
from evflow.kernels import phenotype as K

#: density2d on the NumPy array backend (the implementation chosen by the selector keyword)
DENSITY_SELECTOR = dict(kwargs={"backend": "numpy"})


def density_of(**kw):
    return lambda ev, **selector: density2d((ev, ["A", "B", "C"]), "A", "B", **kw, **selector)


def same_density(ref, got, impl):
    assert_equal(ref, got, path=f"{impl} density")
    assert got.attrs["n_outside"] == ref.attrs["n_outside"]
    assert got.attrs["n_parent"] == ref.attrs["n_parent"]


TRANSFORMS = [
    T.LogicleTransform(262144, 0.5, 4.5, 0),
    T.HyperlogTransform(262144, 1.0, 4.5, 0),
    T.LogTransform(262144, 4.5),
    T.AsinhTransform(262144, 4.5, 0.5),
]


def _plan_for(tr, bins):
    """The density plan density2d builds (captured from the kernel call)."""
    seen = []
    orig = K.fused_numba

    def spy(events, plan, mask=None, n_threads=None):
        seen.append(plan)
        return orig(events, plan, mask, n_threads)

    K.fused_numba = spy
    try:
        density2d((np.ones((10, 2)), ["A", "B"]), "A", "B", bins=bins, transforms=tr, impl="numba")
    finally:
        K.fused_numba = orig
    return seen[0]


def _events(tr, bins, rng):
    plan = _plan_for(tr, bins)
    ex = K._edge_plan(plan)[1]
    fin = ex[np.isfinite(ex)]
    on = np.concatenate([fin, np.nextafter(fin, np.inf), np.nextafter(fin, -np.inf)])
    rand = np.concatenate([rng.lognormal(5, 2.5, 6000), -rng.lognormal(2, 2.5, 3000), rng.normal(0, 3, 3000)])
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e300, -1e300, 5e-324, -5e-324])
    a = np.concatenate([on, rand, special])
    b = np.concatenate([rng.permutation(on), rng.permutation(rand), special[::-1]])
    return np.column_stack([a, b, rng.normal(size=a.size)]), ex, plan


@pytest.mark.parametrize("tr", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_edges_are_the_reference_bin_boundaries(tr):
    plan = _plan_for(tr, 64)
    _ip, ex, ey, *_ = K._edge_plan(plan)
    dx = plan.density[0]
    ip, dp = plan.packed()
    lox, sx = dp[ip[K._D_H2]], dp[ip[K._D_H2] + 1]
    f = K._display_bin_position(ex, plan, dx, lox, sx)
    below = K._display_bin_position(np.nextafter(ex, -np.inf), plan, dx, lox, sx)
    j = np.arange(ex.size)
    assert np.all(f >= j) and np.all(below < j)
    assert np.all(np.diff(ex) >= 0) and np.isfinite(ex[0])


@pytest.mark.parametrize("tr", TRANSFORMS, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("bins", [64, 512])
def test_fast_density_identical_to_reference(tr, bins):
    rng = np.random.default_rng(bins)
    ev, _ex, _plan = _events(tr, bins, rng)
    ref, _ = assert_same_across_impls(density_of(bins=bins, transforms=tr), [ev], "numba", compare=same_density,
                                      **DENSITY_SELECTOR)
    assert 0.15 * len(ev) < int(ref.sum()) < len(ev)
    for chunk in (len(ev), 4099, 1000):
        assert_same_across_impls(density_of(bins=bins, transforms=tr), [ev], "dask+numpy", expected=ref,
                                 chunks=(chunk, -1), compare=same_density, **DENSITY_SELECTOR)


def test_transformed_parent_polygon_keeps_its_transform():
    """A parent polygon on the same channels and transform as the plot is evaluated as before."""
    tr = TRANSFORMS[0]
    rng = np.random.default_rng(5)
    ev, _ex, _plan = _events(tr, 128, rng)
    ya, yb = tr.apply(np.array([50.0, 20000.0])), tr.apply(np.array([30.0, 50000.0]))
    verts = [[ya[0], yb[0]], [ya[1], yb[0]], [ya[1], yb[1]], [ya[0], yb[1]]]
    st = G.GatingStrategy([G.PolygonGate("P", [G.Dimension("A", tr), G.Dimension("B", tr)], verts)])
    kw = dict(bins=128, transforms=tr, parent="P", strategy=st)
    ref, _ = assert_same_across_impls(density_of(**kw), [ev], ["numba", "dask+numpy"], chunks=(4099, -1),
                                      compare=same_density, **DENSITY_SELECTOR)
    assert 100 < int(ref.sum()) < len(ev) // 2


def test_edge_index_start_never_passes_the_bin():
    rng = np.random.default_rng(2)
    edges = np.sort(np.concatenate([-np.geomspace(1e-3, 1e4, 200), np.geomspace(1e-6, 1e5, 300), [0.0]]))
    lut, (base, q) = K.edge_index(edges)
    x = np.concatenate([rng.uniform(edges[0], edges[-1], 2000), np.nextafter(edges[:-1], np.inf), edges[:-1]])
    x = x[(x >= edges[0]) & (x < edges[-1])]
    codes = K._edge_codes(x, base, q)
    true = np.searchsorted(edges, x, side="right") - 1
    assert np.all(lut[codes] <= true)
    # the scan from the start is short: a few edges per bucket at most here
    assert np.max(true - lut[codes]) <= 8
