"""Fused gating/phenotype kernels: NumPy reference vs Numba vs CuPy, chunkings, helpers."""

from __future__ import annotations

import numpy as np
import pytest
from general_checks import assert_same_across_impls, impl_params

from evflow.kernels import phenotype as ph

#: the kernel implementations of ph.fused (in-memory chunks, no dask)
FUSED_IMPLS = impl_params("numba", "cupy")


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def test_fine_bin_edges_contain_values():
    rng = np.random.default_rng(1)
    d = np.concatenate([
        10.0 ** rng.uniform(-9, 13, 20000),
        [2.0**-24, 2.0**-24 * (1 - 2**-30), 1.0, 1.5, 2.0**40, 2.0**40 * (1 - 2**-40), np.inf],
    ])
    b = ph.fine_bin(d)
    lower, upper = ph.fine_bin_edges()
    assert len(lower) == ph.FINE_NBINS == 2**16 + 2
    assert np.all(lower[b] <= d) and np.all((d < upper[b]) | (b == ph.FINE_NBINS - 1))
    assert b[-1] == ph.FINE_NBINS - 1 and ph.fine_bin([2.0**40])[0] == ph.FINE_NBINS - 1
    assert ph.fine_bin([2.0**-24])[0] == 1 and ph.fine_bin([2.0**-25])[0] == 0
    # bins are at most 1/1024 of their lower edge wide, and contiguous
    inner = slice(1, -1)
    assert np.all((upper[inner] - lower[inner]) <= lower[inner] / 1024 * (1 + 1e-12))
    assert np.array_equal(upper[:-1], lower[1:])


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_fine_median_is_exact_to_the_bin(n):
    rng = np.random.default_rng(n)
    thr = 123.25
    x = thr + 10.0 ** rng.uniform(-1, 4, n)
    hist = np.bincount(ph.fine_bin(x - thr), minlength=ph.FINE_NBINS)
    med = ph.fine_median(hist, thr)
    true = np.median(x)
    lower, upper = ph.fine_bin_edges()
    srt = np.sort(x)
    lo_edge = thr + lower[ph.fine_bin(srt[(n - 1) // 2] - thr)]
    hi_edge = thr + upper[ph.fine_bin(srt[n // 2] - thr)]
    assert lo_edge <= true < hi_edge
    assert lo_edge <= med < hi_edge
    assert abs(med - true) <= (true - thr) / 1024
    assert np.isnan(ph.fine_median(np.zeros(ph.FINE_NBINS, np.int64), thr))


def test_fine_median_overflow_is_nan():
    hist = np.zeros(ph.FINE_NBINS, np.int64)
    hist[-1] = 3
    hist[100] = 1
    assert np.isnan(ph.fine_median(hist, 0.0))


def test_table_eval_matches_transform_and_is_infinite_outside():
    y = np.linspace(-2.0, 10.0, 2**14 + 1)
    knots = np.sinh(y)
    h = y[1] - y[0]
    x = np.sinh(np.random.default_rng(2).uniform(-2, 10, 5000))
    got = ph.table_eval(x, knots, y[0], h)
    np.testing.assert_allclose(got, np.arcsinh(x), atol=2e-8)
    # knots map exactly onto their y
    np.testing.assert_array_equal(ph.table_eval(knots[::97], knots, y[0], h), y[0] + h * np.arange(0, knots.size, 97))
    out = ph.table_eval([np.sinh(-2.1), np.sinh(10.1), np.nan, -np.inf, np.inf], knots, y[0], h)
    assert list(out) == [-np.inf, np.inf, -np.inf, -np.inf, np.inf]


def test_polygon_even_odd_on_non_simple_polygon():
    # pentagram: the central pentagon is crossed twice -> outside under the even-odd rule
    ang = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = np.c_[np.cos(ang), np.sin(ang)]
    px = np.array([0.0, 0.0, 0.0, 2.0, np.nan, np.inf])
    py = np.array([0.0, 0.8, -0.5, 0.0, 0.0, 0.0])
    got = ph.points_in_polygon(px, py, star)
    assert list(got) == [False, True, False, False, False, False]
    square = [[0, 0], [2, 0], [2, 2], [0, 2]]
    gx, gy = np.meshgrid(np.linspace(-1, 3, 41), np.linspace(-1, 3, 41))
    inside = ph.points_in_polygon(gx.ravel(), gy.ravel(), square)
    strict = (gx.ravel() > 0) & (gx.ravel() < 2) & (gy.ravel() > 0) & (gy.ravel() < 2)
    border = ((gx.ravel() == 0) | (gx.ravel() == 2) | (gy.ravel() == 0) | (gy.ravel() == 2))
    assert np.array_equal(inside[~border], strict[~border])


# ----------------------------------------------------------------------------
# plans and data
# ----------------------------------------------------------------------------


def _events(n, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    ev = rng.normal(size=(n, 6)) * [1000, 1000, 300, 300, 300, 10] + [5000, 4000, 200, 100, 50, 0]
    if np.dtype(dtype).kind in "iu":
        ev = np.clip(np.abs(ev), 0, np.iinfo(dtype).max)
    ev = ev.astype(dtype)
    if np.dtype(dtype).kind == "f":
        ev[::997, 2] = np.nan  # non-finite values are never in a gate
        ev[::1999, 0] = np.inf
    return ev


def _plan(density=True, markers=3, comp=True):
    y = np.linspace(-3.0, 12.0, 4097)
    return ph.FusedPlan(
        n_columns=6,
        slots=[(0, 0), (0, 1)] + ([(1, 0), (1, 1), (1, 2)] if comp else [(0, 2), (0, 3), (0, 4)]),
        comp_cols=[2, 3, 4] if comp else [],
        comp_matrix=np.array([[1, -0.1, 0.0], [-0.05, 1, -0.02], [0, -0.1, 1.0]]) if comp else None,
        ranges=[(0, 1000.0, np.inf), (1, -np.inf, 9000.0)],
        dims=[(0, 0, 0, 0, None), (1, 1, 10.0, 2.0, None), (2, 2, y[0], y[1] - y[0], np.sinh(y))],
        polygons=[(0, 1, [[3000, 500], [7000, 800], [8000, 2500], [4000, 2800], [2500, 1500], [5000, 1800]])],
        ellipses=[([0, 2], [5000, 5.5], np.linalg.inv([[1e6, 10], [10, 4]]), 4.0)],
        markers=[(2, 300.0), (3, 150.0), (4, 0.0)][:markers],
        density=(0, 2, 64, 32, (2000.0, 9000.0), (-2.0, 9.0)) if density else None,
    )


def _assert_same(a: ph.Partial, b: ph.Partial, sum_rtol=0.0):
    assert a.n_events == b.n_events
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.pos_hist, b.pos_hist)
    np.testing.assert_array_equal(a.density, b.density)
    if sum_rtol == 0.0:
        np.testing.assert_array_equal(a.pos_sum, b.pos_sum)
    else:
        np.testing.assert_allclose(a.pos_sum, b.pos_sum, rtol=sum_rtol)


def _fused(plan):
    """``ph.fused`` on one chunk (and an optional mask), the implementation chosen by keyword."""

    def run(ev, mask=None, **selector):
        return ph.fused(ev, plan, mask, **selector)

    return run


def _same(sum_rtol=0.0):
    """``_assert_same`` as a comparison for :func:`assert_same_across_impls`."""
    return lambda ref, got, _impl: _assert_same(ref, got, sum_rtol=sum_rtol)


def _brute_force(ev, plan):
    """Per-event Python loop straight from the definitions (independent of both kernels)."""
    ev = np.asarray(ev, dtype=np.float64)
    M = np.asarray(plan.comp_matrix) if plan.comp_cols else None
    counts = np.zeros(plan.n_phenotypes, np.int64)
    for row in ev:
        vals = []
        for kind, idx in plan.slots:
            vals.append(row[idx] if kind == 0 else sum(row[c] * M[q, idx] for q, c in enumerate(plan.comp_cols)))
        if not all(lo <= vals[s] < hi for s, lo, hi in plan.ranges):
            continue
        ys = []
        for s, kind, p0, p1, _t in plan.dims:
            x = vals[s]
            ys.append(x if kind == 0 else (x + p0) / p1 if kind == 1 else (np.arcsinh(x) if np.isfinite(x) else np.nan))
        ok = True
        for dx, dy, verts in plan.polygons:
            ok &= bool(ph.points_in_polygon([ys[dx]], [ys[dy]], verts)[0])
        for dims, mean, icov, d2 in plan.ellipses:
            diff = np.array([ys[d] for d in dims]) - mean
            ok &= bool(diff @ icov @ diff <= d2)
        if ok:
            counts[sum(1 << k for k, (s, t) in enumerate(plan.markers) if vals[s] > t)] += 1
    return counts


def test_reference_matches_brute_force_definition():
    ev = _events(3000, np.float64, seed=5)
    plan = _plan()
    ref = ph.fused_numpy(ev, plan)
    assert ref.n_parent > 300 and (ref.counts > 0).sum() >= 6  # the gates select something non-trivial
    np.testing.assert_array_equal(ref.counts, _brute_force(ev, plan))


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_known_phenotype_counts(impl):
    # a grid of events with exactly known marker calls: column c is positive when > 0.5
    k = 3
    codes = np.repeat(np.arange(8), [5, 10, 20, 40, 80, 160, 320, 640])
    ev = np.zeros((codes.size, 4), np.float64)
    for i in range(k):
        ev[:, i] = ((codes >> i) & 1) * 2.0 - 0.25 * (i + 1)
    ev[:, 3] = np.arange(codes.size) % 2  # gate: column 3 in [0.5, inf) keeps odd rows
    plan = ph.FusedPlan(
        n_columns=4,
        slots=[(0, 0), (0, 1), (0, 2), (0, 3)],
        ranges=[(3, 0.5, np.inf)],
        markers=[(0, 0.5), (1, 0.5), (2, 0.5)],
    )
    keep = ev[:, 3] >= 0.5
    want = np.bincount(codes[keep], minlength=8)

    def check(_expected, got, _impl):
        np.testing.assert_array_equal(got.counts, want)
        np.testing.assert_array_equal(got.n_positive, [want[[b for b in range(8) if b >> i & 1]].sum() for i in range(3)])
        np.testing.assert_allclose(got.pos_sum, [(2.0 - 0.25 * (i + 1)) * got.n_positive[i] for i in range(3)])

    assert_same_across_impls(_fused(plan), [ev], ["numpy", impl], expected=want, compare=check)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16, np.int32, ">f4"])
def test_same_as_numpy_reference(dtype, impl):
    if impl.gpu and np.dtype(dtype) in (np.dtype(np.int32), np.dtype(">f4")):
        pytest.skip("device chunks are native-endian float32/float64/int16/uint16")
    ev = _events(40_000 if not impl.gpu else 100_000, dtype)
    plan = _plan()
    ref = ph.fused_numpy(ev, plan)
    assert ref.n_parent > 1000
    expected, _ = assert_same_across_impls(_fused(plan), [ev], impl, compare=_same(1e-12))
    _assert_same(ref, expected)  # the reference run through the selector is fused_numpy
    mask = np.random.default_rng(0).random(len(ev)) < 0.5
    assert_same_across_impls(_fused(plan), [ev, mask], impl, compare=_same(1e-12))
    # Fortran-ordered and strided (device) chunks
    assert_same_across_impls(_fused(plan), [np.asfortranarray(ev)], impl, expected=ref, compare=_same(1e-12))
    assert_same_across_impls(_fused(plan), [ev], impl, prepare=lambda a: a[::3], compare=_same(1e-12))


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_same_as_numpy_with_mask_and_views(impl):
    ev = _events(30_000, np.float64, seed=3)
    plan = _plan(density=False, markers=2, comp=False)
    mask = np.random.default_rng(3).random(len(ev)) < 0.6
    assert_same_across_impls(_fused(plan), [ev, mask], impl, compare=_same(1e-12))
    # Fortran-ordered and strided chunks give the same counts
    big = np.asfortranarray(np.concatenate([ev, ev], axis=1))[:, :6]
    assert_same_across_impls(_fused(plan), [big], impl, expected=ph.fused_numpy(ev, plan), compare=_same(1e-12))
    assert_same_across_impls(_fused(plan), [ev], impl, prepare=lambda a: a[::3], compare=_same(1e-12))


def test_partials_add_up_over_any_chunking():
    ev = _events(50_000, np.float32, seed=4)
    plan = _plan()
    for n, step in ((50_000, 4096), (50_000, 12_345), (50_000, 49_999), (50_000, 3), (1400, 7)):
        whole = ph.fused_numpy(ev[:n], plan)
        if step == 3:
            parts = [ph.fused_numba(ev[:3], plan), ph.fused_numba(ev[3:n], plan)]
        else:
            parts = [ph.fused_numba(ev[i : min(i + step, n)], plan) for i in range(0, n, step)]
        total = ph.Partial.empty(plan)
        for p in parts:
            total = total + p
        _assert_same(whole, total, sum_rtol=1e-12)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_no_markers_and_empty_chunk(impl):
    plan = _plan(markers=0)
    ev = _events(5000)
    a, _ = assert_same_across_impls(_fused(plan), [ev], impl, compare=_same())
    assert a.counts.shape == (1,) and a.counts[0] == a.n_parent > 0
    assert 0 < a.density.sum() <= a.counts[0] and a.pos_hist.shape == (0, ph.FINE_NBINS)
    empty = ev[:0]
    e1, _ = assert_same_across_impls(_fused(_plan()), [empty], impl, compare=_same())
    assert e1.n_events == 0 and e1.counts.sum() == 0


def test_density_matches_numpy_histogram2d():
    ev = _events(20_000, np.float64, seed=6)
    plan = ph.FusedPlan(
        n_columns=6,
        slots=[(0, 0), (0, 1)],
        dims=[(0, 0, 0, 0, None), (1, 0, 0, 0, None)],
        density=(0, 1, 50, 40, (2000.0, 8000.0), (1000.0, 7000.0)),
    )
    got = ph.fused_numba(ev, plan).density
    x, y = ev[:, 0], ev[:, 1]
    ok = np.isfinite(x) & np.isfinite(y)
    want, _, _ = np.histogram2d(x[ok], y[ok], bins=(50, 40), range=((2000, 8000), (1000, 7000)))
    # np.histogram2d closes the last bin on the right; no event sits exactly on 8000/7000 here
    np.testing.assert_array_equal(got, want.astype(np.int64))
    np.testing.assert_array_equal(got, ph.fused_numpy(ev, plan).density)


def test_plan_validation():
    with pytest.raises(ValueError, match="slot column"):
        ph.FusedPlan(n_columns=2, slots=[(0, 3)])
    with pytest.raises(ValueError, match="strictly increasing"):
        ph.FusedPlan(n_columns=1, slots=[(0, 0)], dims=[(0, 2, 0.0, 1.0, [1.0, 1.0, 2.0])])
    with pytest.raises(ValueError, match="finite"):
        ph.FusedPlan(n_columns=1, slots=[(0, 0)], markers=[(0, np.nan)])
    with pytest.raises(ValueError, match="expected"):
        ph.fused_numpy(np.zeros((3, 2)), ph.FusedPlan(n_columns=3, slots=[(0, 0)]))


# ----------------------------------------------------------------------------
# many markers (GPU: global-memory counts)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_many_markers(impl):
    # 13 markers: 8192 phenotypes, more than the CUDA kernel keeps in shared memory (global counts)
    rng = np.random.default_rng(9)
    ev = rng.normal(size=(50_000, 13)).astype(np.float32)
    plan = ph.FusedPlan(
        n_columns=13,
        slots=[(0, c) for c in range(13)],
        markers=[(c, 0.1 * c - 0.5) for c in range(13)],
    )
    ref, _ = assert_same_across_impls(_fused(plan), [ev], impl, compare=_same(1e-12))
    assert ref.counts.shape == (2**13,) and (ref.counts > 0).sum() > 1000
