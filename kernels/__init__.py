"""evflow.kernels: custom compute kernels.

Each kernel family provides

- a plain NumPy reference implementation (the oracle of the parity tests),
- where it pays, a fast CPU version (Numba), and
- a CuPy version, built from a ``.cu`` file in this package (compiled once
  per device and cached, see :func:`load_module`) or written with
  cupyx.scipy.ndimage.

Families and modules: ``phenotype`` (fused gating + phenotype counting:
``phenotype_plan``, ``phenotype_numpy``, ``phenotype_numba``,
``phenotype_cupy`` + ``phenotype.cu``; ``phenotype`` gathers them),
``gaussfit`` (spot fits: ``gaussfit_model``, ``gaussfit_numpy``,
``gaussfit_numba``, ``gaussfit_cupy`` + ``gaussfit.cu``), ``transforms``
(logicle / hyperlog lookup) and ``filters`` (detection filters).  One
registry (:mod:`evflow.kernels._registry`) picks the implementation from
``impl=`` ('auto', 'numpy', 'numba', 'cupy'); :mod:`evflow.kernels._numba`
holds what the Numba kernels share.  Importing this package imports neither
CuPy nor the kernels.

All versions of a kernel give identical results; ``tests/test_kernels*.py``
prove it on every available backend and chunking.
"""

from __future__ import annotations

from ._cuda import load_module, module_source, read_source

__all__ = ["load_module", "module_source", "read_source"]
