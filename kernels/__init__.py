"""evflow.kernels: custom compute kernels.

Each kernel family lives in its own module and provides

- a plain NumPy reference implementation (the oracle of the parity tests),
- where it pays, a fast CPU version (Numba), and
- a CuPy version built from a ``.cu`` file next to the module, compiled once
  per device and cached (see :func:`load_module`).

All versions of a kernel give identical results; ``tests/test_kernels*.py``
prove it on every available backend and chunking.
"""

from __future__ import annotations

from ._cuda import load_module, read_source

__all__ = ["load_module", "read_source"]
