"""Fast density binning: branch-free edge search (a bounded number of forward steps from the bucket
index) and the density-only kernel give the reference's histogram bit for bit, also on mixed linear /
table axes (many edges per bucket), float32 events, with a gate (the general kernel), and in-memory
events wrapped without a copy."""

from __future__ import annotations

import numpy as np
import pytest
from general_checks import assert_same_across_impls
from test_flow_density import DENSITY_SELECTOR, density_of, same_density

from evflow.flow import gates as G, transforms as T
from evflow.flow.phenotypes import _wrap_in_memory
from evflow.kernels import phenotype as K

TOP = 262144.0


def _scan(edges, lut, index, steps, x):
    """NumPy emulation of ``_nb_edge_bin`` for x inside [edges[0], edges[-1])."""
    j = lut[K._edge_codes(x, *index[:2])].copy()
    for _ in range(steps):
        j += edges[j + 1] <= x
    return j


@pytest.mark.parametrize("edges", [
    np.linspace(0.0, TOP, 513),  # a linear axis: many edges in the top buckets
    np.sort(np.concatenate([-np.geomspace(1e-3, 1e4, 200), np.geomspace(1e-6, 1e5, 300), [0.0]])),
    np.linspace(-100.0, 100.0, 65),
], ids=["linear", "log-both-signs", "small-linear"])
def test_edge_steps_reach_every_bin(edges):
    rng = np.random.default_rng(3)
    lut, index = K.edge_index(edges)
    steps = K.edge_steps(edges, lut, index)
    x = np.concatenate([rng.uniform(edges[0], edges[-1], 20000), edges[:-1], np.nextafter(edges[1:], -np.inf),
                        np.nextafter(edges[:-1], np.inf)])
    x = x[(x >= edges[0]) & (x < edges[-1])]
    true = np.searchsorted(edges, x, side="right") - 1
    np.testing.assert_array_equal(_scan(edges, lut, index, steps, x), true)
    assert steps <= (12 if edges.size > 100 else 40)  # a few edges per bucket


def _events(rng, n=60000):
    a = np.concatenate([rng.lognormal(5, 2.5, n), -rng.lognormal(2, 2.5, n // 4), rng.uniform(0, TOP, n // 4),
                        [0.0, -0.0, np.nan, np.inf, -np.inf, TOP, np.nextafter(TOP, 0)]])
    b = rng.permutation(a)
    return np.column_stack([a, b, rng.normal(100, 50, a.size)])


PAIRS = [(T.LinearTransform(TOP), T.AsinhTransform(TOP, 4.5, 0.5)),
         (T.LogicleTransform(TOP, 0.5, 4.5, 0), T.LogTransform(TOP, 4.5)),
         (T.AsinhTransform(TOP, 4.5, 0.0), T.LinearTransform(TOP))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(type(t).__name__ for t in p))
def test_density_only_and_gated_identical_to_reference(pair, dtype):
    rng = np.random.default_rng(7)
    ev = _events(rng).astype(dtype)
    kw = dict(bins=256, range=((0, 1), (0, 1)), transforms=pair)
    ref, _ = assert_same_across_impls(density_of(**kw), [ev], "numba", compare=same_density, **DENSITY_SELECTOR)
    assert 0.5 * len(ev) < int(ref.sum()) < len(ev)
    assert ref.attrs["n_parent"] == len(ev)
    # with a gate on the third channel the general kernel bins (same steps), same as the reference
    st = G.GatingStrategy([G.RectangleGate("R", [G.Dimension("C")], mins=[80.0], maxs=[None])])
    kw.update(parent="R", strategy=st)
    ref, _ = assert_same_across_impls(density_of(**kw), [ev], "numba", compare=same_density, **DENSITY_SELECTOR)
    assert 0.3 * len(ev) < ref.attrs["n_parent"] < 0.9 * len(ev)


def test_in_memory_events_wrapped_without_copy():
    ev = np.arange(22.0).reshape(11, 2)
    d = _wrap_in_memory(ev, rows=4)
    assert d.chunks == ((4, 4, 3), (2,))
    np.testing.assert_array_equal(d.compute(), ev)
    blocks = [b.compute() for b in d.to_delayed().ravel()]
    assert all(np.shares_memory(b, ev) for b in blocks)
