"""phenotype.cu executed on the CPU (tests/cuda_cpu) against the NumPy reference.

The CUDA source is the one evflow.kernels hands to NVRTC, compiled with g++
under a CPU implementation of the CUDA execution model and launched with the
Launch that kernels/launch.py builds for the CuPy path (grid, block, shared
memory, typed arguments).  Integer outputs must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_cpu import runner
from test_kernels_phenotype import _assert_same, _events, _plan

from evflow.kernels import launch as L, phenotype as ph

pytestmark = pytest.mark.cuda_cpu

ALL_KERNELS = tuple(f"fused_phenotype<{t}>" for t in L.CUDA_TYPES.values())
DTYPES = [np.dtype(d) for d in L.CUDA_TYPES]


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    runner.require_gxx()
    launch = _launch(np.zeros((0, 4), np.float32), _edge_plan(), None, 1, np)
    runner.build(launch.source(), launch.options, ALL_KERNELS)  # every instantiation in one g++ run


def _launch(events, plan, mask, n_sm, xp):
    """What launch_cupy does before the launch, with NumPy arrays."""
    ev = np.asarray(events)
    if ev.dtype not in L.CUDA_TYPES:
        ev = ev.astype(np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=np.bool_)
        assert mask.shape == (ev.shape[0],)
    ip, dp = plan.packed()
    return L.phenotype_launch(xp, ev, plan, mask, ip, dp, n_sm=n_sm)


def fused_cpu(events, plan, mask=None, *, n_sm=2, sanitize=None) -> ph.Partial:
    """fused_cupy with phenotype.cu executed on the CPU."""
    xp = runner.GuardedNumpy()
    launch = _launch(events, plan, mask, n_sm, xp)
    if events.shape[0]:
        runner.run(launch, kernels=ALL_KERNELS if sanitize is None else None, sanitize=sanitize)
    xp.check()
    k = plan.n_markers
    nx, ny = plan.density_shape()
    return ph.Partial(
        int(events.shape[0]),
        launch.arg("counts").astype(np.int64),
        launch.arg("pos_hist").astype(np.int64)[:k],
        launch.arg("pos_sum")[:k],
        launch.arg("density").astype(np.int64)[: nx * ny].reshape(nx, ny),
    )


def _edge_plan(markers=((1, 40.0), (2, 50.0), (3, 7.0))):
    """Gates and thresholds on integers, so that integer-valued events sit exactly on them.

    Every edge decides: the range [30, 60) on x0 lies inside the polygon's x
    extent, the ellipse (x0 - 50)^2 + (y2 - 10)^2 <= 425 is met exactly at
    x0 = 30, x2 = 25 or 75, the density covers [34, 58) x [-2, 30) in bins of 4.
    """
    knots = np.arange(0.0, 101.0, 5.0)  # table: y = k at x = 5 k
    return ph.FusedPlan(
        n_columns=4,
        slots=[(0, 0), (0, 1), (0, 2), (0, 3)],
        ranges=[(0, 30.0, 60.0)],
        dims=[(0, 0, 0, 0, None), (1, 1, -20.0, 2.0, None), (2, 2, 0.0, 1.0, knots)],
        polygons=[(0, 1, [[20, -4], [80, -4], [80, 30], [50, 36], [20, 30]])],
        ellipses=[([0, 2], [50.0, 10.0], np.eye(2), 425.0)],
        markers=list(markers),
        density=(0, 1, 6, 8, (34.0, 58.0), (-2.0, 30.0)),
    )


def _edge_events(dtype, n=6000, seed=0):
    """Integers 0..100; every gate edge and threshold of _edge_plan is hit many times."""
    rng = np.random.default_rng(seed)
    ev = rng.integers(0, 101, size=(n, 4))
    # every combination of the values on and next to the edges of x0 and x1
    edges0 = np.array([29, 30, 31, 33, 34, 35, 49, 50, 51, 57, 58, 59, 60, 61])
    edges1 = np.array([11, 12, 13, 15, 16, 17, 20, 21, 39, 40, 41, 79, 80, 81, 86, 87, 92, 93])
    g0, g1 = np.meshgrid(edges0, edges1)
    m = g0.size
    ev[:m, 0], ev[:m, 1] = g0.ravel(), g1.ravel()
    ev[:m, 2] = 50
    ev[:m, 3] = 7 + (np.arange(m) % 3) - 1
    # on, inside and outside the ellipse and the last table knot
    e2 = np.array([24, 25, 26, 74, 75, 76, 99, 100])
    ev[m : m + 4 * e2.size, 0] = np.repeat([29, 30, 31, 33], e2.size)
    ev[m : m + 4 * e2.size, 1] = 40
    ev[m : m + 4 * e2.size, 2] = np.tile(e2, 4)
    return ev.astype(dtype)


def test_edge_inputs_select_events_exactly_on_edges():
    # the edge data put events exactly on thresholds and edges that decide their fate
    ev = _edge_events(np.float64)
    ref = ph.fused_numpy(ev, _edge_plan())
    assert ref.n_parent > 500 and (ref.counts > 0).all()
    assert ((ev[:, 1] == 40) | (ev[:, 2] == 50) | (ev[:, 3] == 7)).sum() > 300
    flipped = ph.fused_numpy(ev, _edge_plan(((1, 39.5), (2, 49.5), (3, 6.5))))  # what x >= thr would count
    assert not np.array_equal(ref.counts, flipped.counts)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edges_every_input_dtype(dtype):
    ev = _edge_events(dtype)
    plan = _edge_plan()
    _assert_same(ph.fused_numpy(ev, plan), fused_cpu(ev, plan))  # pos_sum: sums of integers, exact


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_events_every_input_dtype(dtype):
    if dtype.itemsize == 1:
        ev = _edge_events(dtype, seed=3)
        plan = _edge_plan(((1, 40.0), (2, 50.0)))
    else:
        ev = _events(5000, dtype)
        plan = _plan()
    ref = ph.fused_numpy(ev, plan)
    assert ref.n_parent > 100
    _assert_same(ref, fused_cpu(ev, plan), sum_rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.int16], ids=str)
def test_mask_and_strided_chunks(dtype):
    ev = _events(4000, dtype, seed=2)
    plan = _plan()
    mask = np.random.default_rng(0).random(len(ev)) < 0.5
    _assert_same(ph.fused_numpy(ev, plan, mask), fused_cpu(ev, plan, mask), sum_rtol=1e-12)
    f = np.asfortranarray(np.concatenate([ev, ev], axis=1))[:, 3:9]
    _assert_same(ph.fused_numpy(f, plan), fused_cpu(f, plan), sum_rtol=1e-12)
    _assert_same(ph.fused_numpy(ev[::3], plan), fused_cpu(ev[::3], plan), sum_rtol=1e-12)


def test_float_thresholds_and_edges_between_integers():
    # float32 events at exact halves and at one float32 ulp either side of 40.5
    ev = _edge_events(np.float32, seed=4)
    ev[::2, 1] = np.float32(40.5)
    ev[1::4, 1] = np.nextafter(np.float32(40.5), np.float32(0))
    ev[3::4, 1] = np.nextafter(np.float32(40.5), np.float32(100))
    plan = _edge_plan(((1, 40.5), (2, 50.0)))
    _assert_same(ph.fused_numpy(ev, plan), fused_cpu(ev, plan))


def test_grid_stride_loop_partial_blocks_and_tiny_chunks():
    plan = _plan()
    for n, n_sm in ((5000, 1), (257, 132), (1, 4), (255, 1)):
        ev = _events(n, np.float64, seed=n)
        launch = _launch(ev, plan, None, n_sm, np)
        assert launch.grid[0] == max(1, min(-(-n // 256), 8 * n_sm))
        _assert_same(ph.fused_numpy(ev, plan), fused_cpu(ev, plan, n_sm=n_sm), sum_rtol=1e-12)
    empty = _events(0, np.float32)
    _assert_same(ph.fused_numpy(empty, plan), fused_cpu(empty, plan))


@pytest.mark.parametrize("k", [0, 12, 13])
def test_shared_and_global_counts(k):
    # 2**12 phenotypes are the last counted in shared memory, 2**13 go to global memory
    rng = np.random.default_rng(9)
    ev = rng.normal(size=(6000, max(k, 1))).astype(np.float32)
    plan = ph.FusedPlan(
        n_columns=max(k, 1),
        slots=[(0, c) for c in range(max(k, 1))],
        ranges=[(0, -1.5, np.inf)],
        markers=[(c, 0.1 * c - 0.5) for c in range(k)],
    )
    launch = _launch(ev, plan, None, 2, np)
    nph = 1 << k
    assert launch.shared_bytes == ((nph * 4 + 7) // 8 * 8 if nph <= 4096 else 0) + 8 * max(k, 1)
    _assert_same(ph.fused_numpy(ev, plan), fused_cpu(ev, plan), sum_rtol=1e-12)


@pytest.mark.parametrize("sanitize", ["thread", "address"])
def test_under_sanitizer(sanitize):
    # races inside a block (a missing __syncthreads) and reads/writes past the
    # dynamic shared memory or the arrays are reported by the sanitizers
    ev = _edge_events(np.float32, n=3000, seed=5)
    plan = _edge_plan()
    _assert_same(ph.fused_numpy(ev, plan), fused_cpu(ev, plan, n_sm=1, sanitize=sanitize))
