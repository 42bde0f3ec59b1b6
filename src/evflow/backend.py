"""Array backend selection: NumPy on the CPU, CuPy on a CUDA GPU.

One implementation of every algorithm is written against ``xp`` (``numpy`` or
``cupy``) and ``ndi`` (``scipy.ndimage`` or ``cupyx.scipy.ndimage``).  CuPy is
imported lazily, only when the ``cupy`` backend is asked for or probed, never
by ``import evflow``.

The backend comes from, in order: an explicit ``backend=`` argument, the
``EVFLOW_BACKEND`` environment variable (``auto``, ``numpy`` or ``cupy``), and
``auto``.  ``auto`` picks CuPy only when a CUDA device really works: importing
``cupy`` succeeds on machines without a GPU, so a tiny computation is run on
the device to make sure.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType

from .errors import BackendError

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "get_xp",
    "get_ndi",
    "gpu_available",
    "array_backend",
    "array_module",
    "to_numpy",
    "to_backend",
]

BACKENDS = ("auto", "numpy", "cupy")


@functools.lru_cache(maxsize=1)
def _probe_cupy() -> str | None:
    """Return None when CuPy works on a CUDA device, else the reason it does not."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install
        return f"CuPy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return "no CUDA device is visible"
        x = cupy.arange(4, dtype=cupy.float32)
        if float((x * 2).sum()) != 12.0:
            return "a test computation on the CUDA device gave a wrong result"
    except Exception as exc:
        return f"no working CUDA device ({type(exc).__name__}: {exc})"
    return None


def gpu_available() -> bool:
    """True when CuPy is installed and a CUDA device runs a test computation."""
    return _probe_cupy() is None


def resolve_backend(backend: str | None = None) -> str:
    """Resolve ``backend`` (None, 'auto', 'numpy', 'cupy') to 'numpy' or 'cupy'.

    Raises
    ------
    ConfigError
        If the name is not one of :data:`BACKENDS`.
    BackendError
        If 'cupy' is asked for and no working CUDA device is there.
    """
    from .errors import ConfigError

    source = "backend="
    if backend is None:
        backend = os.environ.get("EVFLOW_BACKEND", "auto") or "auto"
        source = "EVFLOW_BACKEND"
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ConfigError(
            f"{source}{backend!r} is not a backend; expected one of {', '.join(BACKENDS)}"
        )
    if name == "auto":
        return "cupy" if gpu_available() else "numpy"
    if name == "cupy":
        reason = _probe_cupy()
        if reason is not None:
            raise BackendError(
                f"backend 'cupy' was requested (via {source.rstrip('=')}) but {reason}; "
                "install evflow[gpu] (CUDA 12) or evflow[cuda13] on a machine with an "
                "NVIDIA GPU, or use backend='numpy'"
            )
    return name


def get_xp(backend: str | None = None) -> ModuleType:
    """The array module for ``backend``: ``numpy`` or ``cupy``."""
    if resolve_backend(backend) == "cupy":
        import cupy

        return cupy
    import numpy

    return numpy


def get_ndi(backend: str | None = None) -> ModuleType:
    """The ndimage module for ``backend``: ``scipy.ndimage`` or ``cupyx.scipy.ndimage``."""
    if resolve_backend(backend) == "cupy":
        import cupyx.scipy.ndimage as ndi

        return ndi
    import scipy.ndimage as ndi

    return ndi


def _is_cupy_array(a) -> bool:
    # Never import cupy here: if ``a`` is a CuPy array, cupy is already imported.
    return "cupy" in sys.modules and type(a).__module__.split(".")[0] == "cupy"


def array_backend(a) -> str:
    """'cupy' for a CuPy array (or a dask array of CuPy chunks), else 'numpy'."""
    meta = getattr(a, "_meta", None)  # dask arrays carry the chunk type as _meta
    if meta is not None and type(a).__module__.split(".")[0] == "dask":
        a = meta
    return "cupy" if _is_cupy_array(a) else "numpy"


def array_module(a) -> ModuleType:
    """The array module (numpy or cupy) that ``a`` (or its dask chunks) belongs to."""
    if array_backend(a) == "cupy":
        import cupy

        return cupy
    import numpy

    return numpy


def to_numpy(a):
    """Return ``a`` as a NumPy array (copies from the device when ``a`` is CuPy)."""
    import numpy as np

    if _is_cupy_array(a):
        return a.get()
    if type(a).__module__.split(".")[0] == "dask":
        a = a.compute()
        return a.get() if _is_cupy_array(a) else np.asarray(a)
    return np.asarray(a)


def to_backend(a, backend: str | None = None):
    """Move ``a`` to ``backend`` ('numpy' or 'cupy'); dask arrays stay lazy."""
    name = resolve_backend(backend)
    if type(a).__module__.split(".")[0] == "dask":
        if name == array_backend(a):
            return a
        import numpy as np

        if name == "cupy":
            import cupy

            return a.map_blocks(cupy.asarray, dtype=a.dtype, meta=cupy.empty((0,) * a.ndim, a.dtype))
        return a.map_blocks(to_numpy, dtype=a.dtype, meta=np.empty((0,) * a.ndim, a.dtype))
    if name == "cupy":
        import cupy

        return cupy.asarray(a)
    return to_numpy(a)
