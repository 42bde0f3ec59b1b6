"""Loading ``.cu`` sources shipped as package data into CuPy RawModules."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from importlib import resources

__all__ = ["read_source", "source_preamble", "module_source", "load_module", "BoundedCache"]

#: compiled modules kept in memory (per source, options and device)
MODULE_CACHE_SIZE = 32


@functools.lru_cache(maxsize=16)
def read_source(filename: str) -> str:
    """Return the text of the CUDA source ``filename`` shipped in evflow.kernels."""
    return resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


def source_preamble(filename: str) -> str:
    """The ``#define`` lines generated from Python that precede ``filename`` ('' for none)."""
    if filename == "phenotype.cu":
        from .phenotype_plan import cuda_preamble

        return cuda_preamble()
    return ""


def module_source(filename: str) -> str:
    """The exact source string compiled for ``filename``: what NVRTC receives
    (``load_module(filename, preamble=source_preamble(filename))``, as
    :func:`evflow.kernels.launch.run_cupy` calls it) and what the CPU execution
    of the CUDA sources in the ``cuda_cpu`` tests compiles."""
    return source_preamble(filename) + read_source(filename)


def load_module(filename: str, options: tuple[str, ...] = (), name_expressions=None, preamble: str = ""):
    """Compile ``preamble + source of filename`` into a ``cupy.RawModule`` for the current device.

    ``preamble`` holds the ``#define`` lines generated from the Python
    constants the source uses.  CuPy caches compiled modules on disk; the
    in-process cache here (the :data:`MODULE_CACHE_SIZE` most recent) keys on
    the current device so every GPU gets its own module.
    """
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    return _load(filename, tuple(options), tuple(name_expressions or ()), preamble, dev)


@functools.lru_cache(maxsize=MODULE_CACHE_SIZE)
def _load(filename, options, name_expressions, preamble, device):
    import cupy

    code = preamble + read_source(filename)
    kwargs = {"options": ("--std=c++17",) + options}
    if name_expressions:
        kwargs["name_expressions"] = name_expressions
    mod = cupy.RawModule(code=code, **kwargs)
    mod.compile()
    return mod


class BoundedCache:
    """A thread-safe mapping that keeps the ``maxsize`` most recently used entries."""

    def __init__(self, maxsize: int = 64):
        self.maxsize = int(maxsize)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self):
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
