"""Gating-ML 2.0 transforms and compensation: formulas, inverses, lookup tables, backends."""

from __future__ import annotations

import numpy as np
import pytest

from evflow import GatingError
from evflow.flow.compensation import Compensation, parse_spillover_string
from evflow.flow.transforms import (
    AsinhTransform,
    HyperlogTransform,
    LinearTransform,
    LogicleTransform,
    LogTransform,
    RatioTransform,
)

BIEX_PARAMS = [
    (10000, 0.5, 4.5, 0),
    (10000, 1, 4, 0.5),
    (262144, 0.5, 4.5, 0),
    (262144, 1.0, 4.5, 1.0),
    (1e4, 2, 4.5, -1),
    (1000, 0.25, 3, 0.2),
]


def _grid(T):
    rng = np.random.default_rng(7)
    return np.concatenate(
        [
            np.linspace(-T, 3 * T, 4001),
            np.logspace(-6, 14, 400),
            -np.logspace(-6, 14, 400),
            rng.normal(0, T / 50, 2000),
            [0.0, -0.0, T, -T, 1e300, -1e300],
        ]
    )


# --------------------------------------------------------------------------- closed forms


def test_linear_values_and_inverse():
    t = LinearTransform(10000, 500)
    x = np.array([-500.0, 0.0, 10000.0, 4750.0])
    np.testing.assert_allclose(t.apply(x), [0.0, 500 / 10500, 1.0, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(t.inverse(t.apply(x)), x, atol=1e-9)


def test_log_values_nonpositive_is_nan_and_inverse():
    t = LogTransform(10000, 5)
    y = t.apply(np.array([10000.0, 1.0, 100.0, 0.0, -3.0]))
    np.testing.assert_allclose(y[:3], [1.0, 0.2, 0.6], atol=1e-15)
    assert np.isnan(y[3]) and np.isnan(y[4])
    x = np.logspace(-3, 6, 50)
    np.testing.assert_allclose(t.inverse(t.apply(x)), x, rtol=1e-13)


def test_asinh_values_and_inverse():
    t = AsinhTransform(10000, 4, 1)
    y = t.apply(np.array([10000.0, 0.0, -10000.0]))
    # T -> 1, 0 -> A/(M+A), symmetric about A/(M+A)
    np.testing.assert_allclose(y, [1.0, 0.2, 2 * 0.2 - 1.0], atol=1e-14)
    x = _grid(10000)[:4000]
    np.testing.assert_allclose(t.inverse(t.apply(x)), x, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("T,W,M,A", BIEX_PARAMS)
@pytest.mark.parametrize("cls", [LogicleTransform, HyperlogTransform])
def test_biex_anchor_points(cls, T, W, M, A):
    t = cls(T, W, M, A)
    x1 = (W + A) / (M + A)
    y = t.apply(np.array([0.0, T, -T]))
    assert abs(y[0] - x1) < 1e-12  # zero maps to x1 = (W + A) / (M + A)
    assert abs(y[1] - 1.0) < 1e-7  # top of scale maps to 1
    assert abs((y[1] + y[2]) / 2 - x1) < 1e-7  # mirror symmetry about x1
    np.testing.assert_allclose(t.inverse(np.array([x1, 1.0])), [0.0, T], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("T,M,A", [(10000, 4, 1), (262144, 4.5, 0), (1000, 3, 0.5)])
def test_logicle_with_zero_width_is_asinh(T, M, A):
    """Gating-ML: fasinh(T, M, A) equals logicle(T, W=0, M, A)."""
    x = _grid(T)
    x = x[np.abs(x) < 1e12]
    a = AsinhTransform(T, M, A).apply(x)
    np.testing.assert_allclose(LogicleTransform(T, 0, M, A).apply_exact(x), a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(LogicleTransform(T, 0, M, A).apply(x), a, rtol=0, atol=1e-7)


@pytest.mark.parametrize("T,W,M,A", BIEX_PARAMS)
@pytest.mark.parametrize("cls", [LogicleTransform, HyperlogTransform])
def test_biex_table_matches_exact_root(cls, T, W, M, A):
    t = cls(T, W, M, A)
    x = _grid(T)
    exact = t.apply_exact(x)
    fast = t.apply(x, impl="numpy")
    err = np.abs(fast - exact)
    assert np.all(np.isfinite(exact))
    assert err.max() < 1e-6, err.max()
    # and the exact root really solves B(y) = x
    back = t.inverse(exact)
    ok = np.abs(x) < 1e13
    np.testing.assert_allclose(back[ok], x[ok], rtol=1e-9, atol=1e-9 * T)
    # monotone non-decreasing in x
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(fast[order]) >= 0)


@pytest.mark.parametrize("cls", [LogicleTransform, HyperlogTransform])
def test_biex_special_values(cls):
    t = cls(10000, 0.5, 4.5, 0)
    y = t.apply(np.array([np.nan, np.inf, -np.inf, 1e200]))
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == -np.inf
    assert np.isfinite(y[3]) and abs(y[3] - t.apply_exact(np.array([1e200]))[0]) < 1e-9


@pytest.mark.parametrize("cls", [LogicleTransform, HyperlogTransform])
def test_biex_numba_equals_numpy_bitwise(cls):
    t = cls(262144, 0.5, 4.5, 0.3)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 2000, 100000), rng.lognormal(8, 3, 100000), [np.nan, 1e14, -1e15]])
    a = t.apply(x, impl="numpy")
    b = t.apply(x, impl="numba")
    np.testing.assert_array_equal(a, b)


def test_table_is_built_once_per_parameter_set():
    t1 = LogicleTransform(10000, 0.5, 4.5, 0)
    t2 = LogicleTransform(10000, 0.5, 4.5, 0, id="other")
    assert t1.table()[0] is t2.table()[0]
    knots, y0, h = t1.table()
    assert np.all(np.diff(knots) > 0) and h == 2.0**-13
    # knots sit on the uniform display grid
    k = 12345
    np.testing.assert_allclose(t1.inverse(np.array([y0 + k * h])), knots[k : k + 1], rtol=1e-15)


def test_equality_and_hash_by_parameters():
    a = LogicleTransform(10000, 0.5, 4.5, 0, id="a")
    b = LogicleTransform(10000.0, 0.5, 4.5, 0.0, id="b")
    assert a == b and hash(a) == hash(b)
    assert a != HyperlogTransform(10000, 0.5, 4.5, 0)
    assert a != LogicleTransform(10000, 0.5, 4.5, 0.1)
    assert len({a, b, LinearTransform(10, 1)}) == 2
    assert a.parameters == {"T": 10000.0, "W": 0.5, "M": 4.5, "A": 0.0}


@pytest.mark.parametrize(
    "make,word",
    [
        (lambda: LogicleTransform(10000, 3, 4.5, 0, id="L"), "W=3"),
        (lambda: LogicleTransform(-1, 0.5, 4.5, 0, id="L"), "T=-1"),
        (lambda: LogicleTransform(10000, 0.5, 4.5, -1, id="L"), "A=-1"),
        (lambda: HyperlogTransform(10000, 0, 4.5, 0, id="H"), "W=0"),
        (lambda: LogTransform(10000, 0, id="G"), "M=0"),
        (lambda: LinearTransform(100, 200, id="N"), "A=200"),
        (lambda: AsinhTransform(100, 4, float("nan"), id="S"), "not finite"),
        (lambda: LogTransform("x", 4, id="G"), "not a number"),
    ],
)
def test_invalid_parameters_raise(make, word):
    with pytest.raises(GatingError) as e:
        make()
    assert word in str(e.value)
    assert "transformation" in str(e.value)


def test_ratio_transform():
    r = RatioTransform(["FL2-H", "FL2-A"], 2.7, -100, -300, id="R")
    x = np.array([[10.0, 20.0], [0.0, -300.0]])
    y = r.apply(x)
    assert y[0] == pytest.approx(2.7 * 110 / 320)
    assert np.isinf(y[1])
    with pytest.raises(GatingError):
        RatioTransform(["a"], id="R1")


# --------------------------------------------------------------------------- compensation


def test_parse_spillover_string():
    m, names = parse_spillover_string("2,FL1-H,FL2-H,1,0.1,0.2,1")
    assert names == ["FL1-H", "FL2-H"]
    np.testing.assert_array_equal(m, [[1, 0.1], [0.2, 1]])
    for bad in ["x,FL1", "2,FL1-H,FL2-H,1,0.1,0.2", "2,a,b,1,0,0,zz"]:
        with pytest.raises(GatingError):
            parse_spillover_string(bad)


def test_compensation_recovers_unmixed_signal():
    rng = np.random.default_rng(3)
    S = np.array([[1.0, 0.02, 0.06], [0.11, 1.0, 0.07], [0.09, 0.01, 1.0]])
    truth = rng.lognormal(3, 1, (500, 3))
    other = rng.normal(0, 1, (500, 1))
    observed = np.hstack([other, truth @ S])
    comp = Compensation(S, ["FL1-H", "FL2-H", "FL3-H"], id="M", fluorochromes=["FITC", "PE", "PerCP"])
    out = comp.apply(observed, ["FSC-H", "FL1-H", "FL2-H", "FL3-H"])
    np.testing.assert_array_equal(out[:, 0], other[:, 0])
    np.testing.assert_allclose(out[:, 1:], truth, rtol=1e-12)
    assert comp.output_index("PE") == 1 and comp.output_index("FL3-H") == 2
    assert comp.output_index("FSC-H") is None
    with pytest.raises(GatingError, match="FL3-H"):
        comp.apply(observed[:, :3], ["FSC-H", "FL1-H", "FL2-H"])


def test_compensation_non_square_least_squares():
    rng = np.random.default_rng(4)
    S = np.array([[1.0, 0.3, 0.1, 0.05], [0.05, 0.2, 1.0, 0.4]])
    truth = rng.uniform(10, 1000, (200, 2))
    det = truth @ S
    comp = Compensation(S, ["A", "B", "C", "D"], fluorochromes=["F1", "F2"], id="spec")
    np.testing.assert_allclose(comp.unmix(det), truth, rtol=1e-10)


@pytest.mark.parametrize(
    "args,word",
    [
        (([[1, 1], [1, 1]], ["a", "b"]), "singular"),
        (([[1, np.nan], [0, 1]], ["a", "b"]), "non-finite"),
        (([[1, 0], [0, 1]], ["a"]), "detectors"),
        (([[1, 0], [0, 1]], ["a", "a"]), "repeated"),
        (([[1, 0, 0]], ["a", "b", "c"]), "fluorochrome names"),
    ],
)
def test_compensation_bad_matrix(args, word):
    with pytest.raises(GatingError, match=word):
        Compensation(*args, id="bad")


def test_compensation_from_real_spillover():
    from conftest import shared_path

    import evflow

    s = evflow.read_fcs(shared_path("fcs", "flowio", "100715.fcs"), scale=True)
    comp = Compensation.from_sample(s)
    assert comp.id == "FCS" and len(comp.channels_in) == 13
    ev = s.to_numpy()[:2000]
    out = comp.apply(ev, s.channels)
    cols = [s.channels.index(c) for c in comp.channels_in]
    expected = np.linalg.solve(comp.matrix.T, ev[:, cols].T).T
    np.testing.assert_allclose(out[:, cols], expected, rtol=1e-9, atol=1e-9)
    untouched = [i for i in range(len(s.channels)) if i not in cols]
    np.testing.assert_array_equal(out[:, untouched], ev[:, untouched])
    # the string form gives the same matrix
    comp2 = Compensation.from_spillover(s.meta["$SPILLOVER"] if "$SPILLOVER" in s.meta else s.meta["SPILL"])
    assert comp2 == comp


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize(
    "t",
    [
        LinearTransform(10000, 500),
        LogTransform(10000, 5),
        AsinhTransform(10000, 4, 1),
        LogicleTransform(10000, 0.5, 4.5, 0),
        HyperlogTransform(10000, 1, 4.5, 0),
    ],
    ids=lambda t: type(t).__name__,
)
def test_transforms_on_cupy(t):
    import cupy

    x = _grid(10000)
    y_np = t.apply(x) if not hasattr(t, "table") else t.apply(x, impl="numpy")
    y_cp = t.apply(cupy.asarray(x))
    assert isinstance(y_cp, cupy.ndarray)
    if hasattr(t, "table"):
        # table lookup uses exactly rounded operations only: bit-identical inside the table
        inside = np.abs(x) < 1e12
        np.testing.assert_array_equal(cupy.asnumpy(y_cp)[inside], y_np[inside])
    np.testing.assert_allclose(cupy.asnumpy(y_cp), y_np, rtol=1e-12, atol=1e-12, equal_nan=True)
    xi = t.inverse(cupy.asarray(y_np[np.isfinite(y_np)][:1000]))
    np.testing.assert_allclose(cupy.asnumpy(xi), t.inverse(y_np[np.isfinite(y_np)][:1000]), rtol=1e-12)


@pytest.mark.gpu
def test_compensation_on_cupy():
    import cupy

    S = np.array([[1.0, 0.2], [0.1, 1.0]])
    x = np.random.default_rng(0).uniform(0, 100, (1000, 3))
    comp = Compensation(S, ["a", "b"], id="c")
    out = comp.apply(cupy.asarray(x), ["z", "a", "b"])
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out), comp.apply(x, ["z", "a", "b"]), rtol=1e-13)
