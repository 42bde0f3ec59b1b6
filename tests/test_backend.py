"""Backend selection, lazy imports, and the package's light import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from evflow import backend
from evflow.errors import BackendError, ConfigError


def test_numpy_backend_explicit_and_env(monkeypatch):
    assert backend.resolve_backend("numpy") == "numpy"
    assert backend.resolve_backend(" NumPy ") == "numpy"
    monkeypatch.setenv("EVFLOW_BACKEND", "numpy")
    assert backend.resolve_backend() == "numpy"
    assert backend.get_xp() is np
    import scipy.ndimage

    from evflow.kernels.minmax import HOST_NDIMAGE

    ndi = backend.get_ndi("numpy")  # scipy.ndimage, with its square max/min filters compiled
    assert ndi is HOST_NDIMAGE and ndi.gaussian_filter is scipy.ndimage.gaussian_filter


def test_bad_backend_names(monkeypatch):
    with pytest.raises(ConfigError, match="backend='tpu'"):
        backend.resolve_backend("tpu")
    monkeypatch.setenv("EVFLOW_BACKEND", "gpu")
    with pytest.raises(ConfigError, match="EVFLOW_BACKEND"):
        backend.resolve_backend()


def test_auto_matches_probe():
    assert backend.resolve_backend("auto") == ("cupy" if backend.gpu_available() else "numpy")


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_cupy_without_gpu_is_a_clear_error():
    with pytest.raises(BackendError, match="backend 'cupy' was requested") as err:
        backend.resolve_backend("cupy")
    assert "backend='numpy'" in str(err.value)


def test_array_helpers_on_numpy_and_dask():
    import dask.array as da

    a = np.arange(10.0)
    d = da.from_array(a, chunks=3)
    assert backend.array_backend(a) == "numpy" and backend.array_backend(d) == "numpy"
    assert backend.array_module(d) is np
    np.testing.assert_array_equal(backend.to_numpy(d), a)
    assert backend.to_backend(d, "numpy") is d
    np.testing.assert_array_equal(backend.to_backend(a, "numpy"), a)


@pytest.mark.gpu
def test_cupy_round_trip():
    import cupy
    import dask.array as da

    a = np.arange(10.0)
    c = backend.to_backend(a, "cupy")
    assert isinstance(c, cupy.ndarray) and backend.array_backend(c) == "cupy"
    d = backend.to_backend(da.from_array(a, chunks=4), "cupy")
    assert backend.array_backend(d) == "cupy"
    assert isinstance(d.blocks[0].compute(), cupy.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(d), a)


def test_import_evflow_is_light():
    code = (
        "import sys, evflow\n"
        "names = [n for n in evflow.__all__ if n != '__version__']\n"
        "for n in names: getattr(evflow, n)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'cupy', 'cupyx', 'napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'vispy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import evflow pulled in {out.stdout.strip()}"


def test_kernel_sources_ship_with_the_package():
    from importlib import resources

    import evflow.kernels as k

    cu = [p.name for p in resources.files(k).iterdir() if p.name.endswith(".cu")]
    assert {"phenotype.cu", "gaussfit.cu", "steps.cu"} <= set(cu), cu
    for name in cu:
        src = k.read_source(name)
        assert "__global__" in src or "extern" in src, name
