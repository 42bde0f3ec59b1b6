"""One test body over every implementation: numpy, numba, cupy, dask+numpy, dask+cupy.

As xarray-spatial's ``tests/general_checks.py``: input builders for each
array backend and kernel implementation, and one assertion that an
implementation gives what the NumPy reference (or a given expectation) gives.

An :class:`Impl` says which array type the inputs become (``numpy`` or
``cupy``), whether they are wrapped in dask arrays, and the kernel the
selector keyword chooses:

============  ======  =====  =======
name          array   dask   kernel
============  ======  =====  =======
numpy         numpy   no     numpy (the reference)
numba         numpy   no     numba
cupy          cupy    no     cupy
dask+numpy    numpy   yes    numba
dask+cupy     cupy    yes    cupy
============  ======  =====  =======

Parametrise a test with :func:`impl_params` (cupy cases carry the ``gpu``
mark, which ``conftest.py`` turns into a clean skip without CuPy and a CUDA
device) and call :func:`assert_same_across_impls` in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

#: the keyword that selects a kernel implementation; one place to change it
IMPL_KEYWORD = "impl"


@dataclasses.dataclass(frozen=True)
class Impl:
    name: str
    array: str  # "numpy" or "cupy"
    dask: bool
    kernel: str  # value of the selector keyword: "numpy", "numba" or "cupy"

    @property
    def gpu(self) -> bool:
        return self.array == "cupy"

    def __str__(self):
        return self.name


IMPLS = {
    "numpy": Impl("numpy", "numpy", False, "numpy"),
    "numba": Impl("numba", "numpy", False, "numba"),
    "cupy": Impl("cupy", "cupy", False, "cupy"),
    "dask+numpy": Impl("dask+numpy", "numpy", True, "numba"),
    "dask+cupy": Impl("dask+cupy", "cupy", True, "cupy"),
}

REFERENCE = IMPLS["numpy"]


def impl_params(*names: str) -> list:
    """``pytest.param`` per implementation (all but the reference by default); cupy ones marked ``gpu``."""
    names = names or tuple(n for n in IMPLS if n != REFERENCE.name)
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; expected among {list(IMPLS)}")
    return [pytest.param(IMPLS[n], id=n, marks=[pytest.mark.gpu] if IMPLS[n].gpu else []) for n in names]


@pytest.fixture(params=impl_params())
def impl(request) -> Impl:
    """Every implementation but the reference (cupy ones skipped without a GPU)."""
    return request.param


# ----------------------------------------------------------------------------
# input builders
# ----------------------------------------------------------------------------


def create_test_array(data, impl: Impl | str = "numpy", chunks=None):
    """``data`` (array-like) as the array type of ``impl``.

    ``chunks``: dask chunks for the dask implementations (default: ``'auto'``
    along the first axis, whole along the others).  Fortran-ordered data stays
    Fortran-ordered on the device.
    """
    impl = IMPLS[impl] if isinstance(impl, str) else impl
    a = np.asarray(data)
    if impl.array == "cupy":
        import cupy

        a = cupy.asfortranarray(a) if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous else cupy.asarray(a)
    if impl.dask:
        import dask.array as da

        if chunks is None:
            chunks = ("auto",) + (-1,) * (a.ndim - 1) if a.ndim else ()
        a = da.from_array(a, chunks=chunks, asarray=False, meta=a[:0] if a.ndim else None)
    return a


def build_inputs(inputs, impl: Impl | str, chunks=None, prepare: Callable | None = None):
    """Every NumPy array in ``inputs`` (nested tuples, lists, dicts) converted for ``impl``.

    ``prepare(array)`` is applied after conversion (e.g. ``lambda a: a[::3]``
    for strided device views); other values pass through unchanged.
    """
    if isinstance(inputs, np.ndarray):
        out = create_test_array(inputs, impl, chunks)
        return prepare(out) if prepare is not None else out
    if isinstance(inputs, tuple):
        return tuple(build_inputs(v, impl, chunks, prepare) for v in inputs)
    if isinstance(inputs, list):
        return [build_inputs(v, impl, chunks, prepare) for v in inputs]
    if isinstance(inputs, dict):
        return {k: build_inputs(v, impl, chunks, prepare) for k, v in inputs.items()}
    return inputs


def as_numpy(value):
    """Results brought back to NumPy: dask computed, CuPy copied to the host, containers recursed."""
    if hasattr(value, "dask") and hasattr(value, "compute") and not hasattr(value, "dims"):
        value = value.compute()
    if type(value).__module__.split(".")[0] == "cupy":
        return value.get()
    if hasattr(value, "dims") and hasattr(value, "compute"):  # xarray: compute, keep dims/coords/attrs
        value = value.compute()
        return value.copy(data=as_numpy(value.data)) if hasattr(value, "data") and not hasattr(value, "data_vars") else value
    if isinstance(value, tuple):
        return tuple(as_numpy(v) for v in value)
    if isinstance(value, list):
        return [as_numpy(v) for v in value]
    if isinstance(value, dict):
        return {k: as_numpy(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------
# the assertion
# ----------------------------------------------------------------------------


def assert_equal(expected, actual, *, rtol=0.0, atol=0.0, path="result"):
    """Arrays (and xarray objects, dataclasses, mappings, sequences, scalars) equal, or within rtol/atol.

    ``rtol``/``atol`` of 0 ask for exact equality (NaN equal to NaN);
    dtypes and shapes must agree.
    """
    if hasattr(expected, "dims") and hasattr(expected, "attrs"):
        assert type(actual) is type(expected), f"{path}: {type(actual).__name__}, expected {type(expected).__name__}"
        if hasattr(expected, "data_vars"):
            assert set(actual.data_vars) == set(expected.data_vars), f"{path}: data variables differ"
            for k in expected.data_vars:
                assert_equal(expected[k], actual[k], rtol=rtol, atol=atol, path=f"{path}[{k!r}]")
        else:
            assert actual.dims == expected.dims, f"{path}: dims {actual.dims}, expected {expected.dims}"
            assert_equal(np.asarray(expected.values), np.asarray(actual.values), rtol=rtol, atol=atol, path=path)
        for c in expected.coords:
            assert_equal(np.asarray(expected[c].values), np.asarray(actual[c].values), path=f"{path}.coords[{c!r}]")
        return
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(actual) is type(expected), f"{path}: {type(actual).__name__}, expected {type(expected).__name__}"
        for f in dataclasses.fields(expected):
            assert_equal(getattr(expected, f.name), getattr(actual, f.name), rtol=rtol, atol=atol, path=f"{path}.{f.name}")
        return
    if isinstance(expected, Mapping):
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)}, expected {sorted(expected)}"
        for k in expected:
            assert_equal(expected[k], actual[k], rtol=rtol, atol=atol, path=f"{path}[{k!r}]")
        return
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)}, expected {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_equal(e, a, rtol=rtol, atol=atol, path=f"{path}[{i}]")
        return
    if expected is None or isinstance(expected, str):
        assert actual == expected, f"{path}: {actual!r}, expected {expected!r}"
        return
    e, a = np.asarray(expected), np.asarray(actual)
    assert a.shape == e.shape, f"{path}: shape {a.shape}, expected {e.shape}"
    if e.dtype.kind in "fc" or a.dtype.kind in "fc":
        if rtol == 0 and atol == 0:
            np.testing.assert_array_equal(a, e, err_msg=path)
        else:
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=path)
    else:
        assert a.dtype == e.dtype, f"{path}: dtype {a.dtype}, expected {e.dtype}"
        np.testing.assert_array_equal(a, e, err_msg=path)


def run_impl(func: Callable, inputs: Sequence, impl: Impl | str, *, keyword: str | None = IMPL_KEYWORD,
             values: Mapping[str, Any] | None = None, chunks=None, prepare: Callable | None = None,
             kwargs: Mapping | None = None):
    """``func(*inputs converted for impl, **kwargs, keyword=kernel)``, the result as NumPy.

    ``keyword=None`` passes no selector (the function dispatches on the array
    type); ``values`` maps an implementation name (or its kernel) to the
    selector value when a function spells it differently (e.g. ``{"numpy": "reference"}``).
    """
    impl = IMPLS[impl] if isinstance(impl, str) else impl
    kw = dict(kwargs or {})
    if keyword is not None:
        values = values or {}
        kw[keyword] = values.get(impl.name, values.get(impl.kernel, impl.kernel))
    args = build_inputs(tuple(inputs), impl, chunks, prepare)
    return as_numpy(func(*args, **kw))


def assert_same_across_impls(func: Callable, inputs: Sequence, impls=None, *, reference: Impl | str = REFERENCE,
                             expected=None, keyword: str | None = IMPL_KEYWORD,
                             values: Mapping[str, Any] | None = None, chunks=None, prepare: Callable | None = None,
                             kwargs: Mapping | None = None, rtol=0.0, atol=0.0,
                             compare: Callable | None = None):
    """Assert that every implementation in ``impls`` gives what ``reference`` (or ``expected``) gives.

    Parameters
    ----------
    func : callable
        Called as ``func(*inputs, **kwargs, **{keyword: kernel})``.
    inputs : sequence
        Positional arguments; NumPy arrays in them (also inside tuples, lists
        and dicts) are converted for each implementation (:func:`build_inputs`).
    impls : Impl, str or sequence of them
        Implementations to check (default: every one but the reference; the
        cupy ones are skipped when no GPU is present).  A parametrised test
        passes its one :class:`Impl`.
    reference : Impl or str
        What the others must equal (default: the NumPy reference on NumPy inputs).
    expected : optional
        The expected result itself instead of a reference run.
    keyword, values, chunks, prepare, kwargs
        As in :func:`run_impl`; ``chunks`` only applies to dask implementations.
    rtol, atol : float
        Tolerances of :func:`assert_equal` (0: exact).
    compare : callable, optional
        ``compare(expected, actual, impl)`` instead of :func:`assert_equal`.

    Returns
    -------
    (expected, {impl name: result}), all as NumPy.
    """
    if impls is None:
        impls = [n for n in IMPLS if n != (reference if isinstance(reference, str) else reference.name)]
    if isinstance(impls, (str, Impl)):
        impls = [impls]
    impls = [IMPLS[i] if isinstance(i, str) else i for i in impls]
    if any(i.gpu for i in impls) and not _gpu():
        if len(impls) == 1:
            pytest.skip("needs CuPy and a working CUDA device")
        impls = [i for i in impls if not i.gpu]
    common = dict(keyword=keyword, values=values, chunks=chunks, prepare=prepare, kwargs=kwargs)
    if expected is None:
        expected = run_impl(func, inputs, reference, **common)
    results = {}
    for i in impls:
        got = run_impl(func, inputs, i, **common)
        if compare is not None:
            compare(expected, got, i)
        else:
            assert_equal(expected, got, rtol=rtol, atol=atol, path=f"{i.name} result")
        results[i.name] = got
    return expected, results


def _gpu() -> bool:
    from evflow.backend import gpu_available

    return gpu_available()
