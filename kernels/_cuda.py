"""Loading ``.cu`` sources shipped as package data into CuPy RawModules."""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=None)
def read_source(filename: str) -> str:
    """Return the text of the CUDA source ``filename`` shipped in evflow.kernels."""
    return resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


def load_module(filename: str, options: tuple[str, ...] = (), name_expressions=None):
    """Compile ``filename`` into a ``cupy.RawModule`` for the current device.

    CuPy caches compiled modules on disk; the in-process cache here keys on the
    current device so every GPU gets its own module.
    """
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    return _load(filename, tuple(options), tuple(name_expressions or ()), dev)


@functools.lru_cache(maxsize=None)
def _load(filename, options, name_expressions, device):
    import cupy

    code = read_source(filename)
    kwargs = {"options": ("--std=c++17",) + options}
    if name_expressions:
        kwargs["name_expressions"] = name_expressions
    mod = cupy.RawModule(code=code, **kwargs)
    mod.compile()
    return mod
