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

Host <-> device crossings happen in this module only: :func:`to_device` (host
arrays through a pinned staging buffer and a per-thread CUDA stream) and
:func:`to_host` (one device-to-host copy).  Each call is recorded while a
:func:`count_transfers` block is open, on the NumPy backend too (where the
"copy" is free), so the CPU tests count the crossings a CuPy run makes: the
same code calls the same crossing points on either backend.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import sys
import threading
from dataclasses import dataclass, field
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
    "to_device",
    "to_host",
    "to_host_all",
    "count_transfers",
    "TransferLog",
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


def get_ndi(backend: str | None = None):
    """The ndimage module for ``backend``: ``cupyx.scipy.ndimage``, or for NumPy ``scipy.ndimage`` with its
    square ``maximum_filter``/``minimum_filter`` compiled (:data:`evflow.kernels.minmax.HOST_NDIMAGE`: the
    same values, a fraction of the time)."""
    if resolve_backend(backend) == "cupy":
        import cupyx.scipy.ndimage as ndi

        return ndi
    from evflow.kernels.minmax import HOST_NDIMAGE

    return HOST_NDIMAGE


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


# ============================================================================ host <-> device crossings


@dataclass(frozen=True)
class Transfer:
    """One call of a crossing point: ``direction`` 'to_device' or 'to_host', the ``backend`` the data went to
    (or came from), ``nbytes``, ``copied`` (False on the NumPy backend, where nothing moves) and ``what``."""

    direction: str
    backend: str
    nbytes: int
    copied: bool
    what: str


@dataclass
class TransferLog:
    """The crossings recorded while a :func:`count_transfers` block was open (every thread of the process)."""

    transfers: list = field(default_factory=list)

    def count(self, direction=None, what=None) -> int:
        """Number of crossings, optionally of one ``direction`` ('to_device', 'to_host') and label ``what``."""
        return sum(1 for t in self.transfers
                   if (direction is None or t.direction == direction) and (what is None or t.what == what))

    @property
    def to_device(self) -> int:
        """Crossings towards the compute device."""
        return self.count("to_device")

    @property
    def to_host(self) -> int:
        """Crossings back to the host."""
        return self.count("to_host")

    def by_label(self) -> dict:
        """``{(direction, what): count}``."""
        return dict(collections.Counter((t.direction, t.what) for t in self.transfers))


_LOGS: list = []
_LOGS_LOCK = threading.Lock()
_LOCAL = threading.local()


@contextlib.contextmanager
def count_transfers():
    """Record every host <-> device crossing (:func:`to_device`, :func:`to_host`, :func:`to_numpy`) of this
    process while the block runs, on every thread (dask's threaded scheduler runs chunks on its own threads).

    Workers of a ``distributed`` cluster are other processes: their crossings are not seen here.

    Examples
    --------
    >>> import numpy as np
    >>> from evflow.backend import count_transfers, to_device, to_host
    >>> with count_transfers() as log:
    ...     _ = to_host(to_device(np.arange(3), "numpy") * 2)
    >>> (log.to_device, log.to_host)
    (1, 1)
    """
    log = TransferLog()
    with _LOGS_LOCK:
        _LOGS.append(log)
    try:
        yield log
    finally:
        with _LOGS_LOCK:
            _LOGS.remove(log)


def _record(direction, backend, nbytes, copied, what):
    if _LOGS:
        t = Transfer(direction, backend, int(nbytes), bool(copied), str(what))
        with _LOGS_LOCK:
            for log in _LOGS:
                log.transfers.append(t)


def _is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask"


def _stream_and_staging(nbytes):
    """This thread's non-blocking CUDA stream and a pinned host buffer of at least ``nbytes`` (reused)."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    st = getattr(_LOCAL, "staging", None)
    if st is None or st[0] != dev or st[3] < nbytes:
        stream = st[1] if st is not None and st[0] == dev else cupy.cuda.Stream(non_blocking=True)
        size = max(int(nbytes), 1 << 20)
        st = (dev, stream, cupy.cuda.alloc_pinned_memory(size), size)
        _LOCAL.staging = st
    return st[1], st[2]


def to_device(a, backend: str | None = None, *, stream=None, what: str = "array"):
    """Move a host array to ``backend``'s device: the one crossing from the host into a computation.

    On 'cupy' a NumPy array is copied into a pinned staging buffer (reused per thread) and from there to the
    GPU on ``stream`` (default: a non-blocking stream of this thread), which is synchronised before
    returning; a CuPy array is returned as it is (nothing crosses, nothing is recorded).  On 'numpy' the
    array is returned as a NumPy array (a CuPy one is copied back with :func:`to_host`).  ``what`` labels
    the crossing in :func:`count_transfers`.
    """
    import numpy as np

    name = resolve_backend(backend)
    if _is_dask(a):
        a = a.compute(scheduler="sync")
    if name == "numpy":
        if _is_cupy_array(a):
            return to_host(a, what=what)
        a = np.asarray(a)
        _record("to_device", "numpy", a.nbytes, False, what)
        return a
    if _is_cupy_array(a):
        return a
    import cupy

    host = np.ascontiguousarray(a)
    own_stream, pinned = _stream_and_staging(host.nbytes)
    stream = own_stream if stream is None else stream
    staged = np.frombuffer(pinned, dtype=np.uint8, count=host.nbytes).view(host.dtype).reshape(host.shape)
    staged[...] = host
    out = cupy.empty(host.shape, dtype=host.dtype)
    if host.nbytes:
        out.set(staged, stream=stream)
        stream.synchronize()  # the staging buffer is reused by this thread's next crossing
    _record("to_device", "cupy", host.nbytes, True, what)
    return out


def to_host(a, *, what: str = "array"):
    """Return ``a`` as a NumPy array: the one crossing from a device result back to the host.

    A CuPy array is copied once (``.get()``); a dask array is computed first; anything else goes through
    ``numpy.asarray``.  Every call is recorded by :func:`count_transfers` (``copied`` only for CuPy).
    """
    import numpy as np

    if _is_dask(a):
        a = a.compute()
    if _is_cupy_array(a):
        _record("to_host", "cupy", a.nbytes, True, what)
        return a.get()
    a = np.asarray(a)
    _record("to_host", "numpy", a.nbytes, False, what)
    return a


def to_host_all(arrays, *, what: str = "arrays") -> list:
    """Several arrays of one backend back to the host in one crossing: their values as float64,
    concatenated, copied with one :func:`to_host`, and split again.

    Returns float64 NumPy arrays of the inputs' shapes (views of one buffer).  Exact for float32 and
    float64 values and for integers below 2**53 (indices, counts, status codes).
    """
    arrays = list(arrays)
    xp = array_module(arrays[0])
    shapes = [tuple(int(s) for s in a.shape) for a in arrays]
    h = to_host(xp.concatenate([xp.asarray(a, dtype=xp.float64).ravel() for a in arrays]), what=what)
    out, i = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(h[i:i + n].reshape(shape))
        i += n
    return out


def to_numpy(a):
    """Return ``a`` as a NumPy array (copies from the device when ``a`` is CuPy).

    For host code that may be handed device arrays; only a real copy is recorded by :func:`count_transfers`.
    Device paths cross with :func:`to_host` instead (recorded on either backend, so the CPU tests see them).
    """
    import numpy as np

    if _is_dask(a):
        a = a.compute()
    if _is_cupy_array(a):
        return to_host(a, what="to_numpy")
    return np.asarray(a)


def to_backend(a, backend: str | None = None):
    """Move ``a`` to ``backend`` ('numpy' or 'cupy'); dask arrays stay lazy (one :func:`to_device` per chunk,
    ``meta`` of the target type)."""
    name = resolve_backend(backend)
    if _is_dask(a):
        if name == array_backend(a):
            return a
        import numpy as np

        if name == "cupy":
            import cupy

            return a.map_blocks(to_device, "cupy", what="chunk", dtype=a.dtype,
                                meta=cupy.empty((0,) * a.ndim, a.dtype))
        return a.map_blocks(to_host, what="chunk", dtype=a.dtype, meta=np.empty((0,) * a.ndim, a.dtype))
    if name == "cupy":
        return to_device(a, "cupy")
    return to_numpy(a)
