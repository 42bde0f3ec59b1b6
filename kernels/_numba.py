"""What the Numba kernels share: ``njit`` (a no-op without Numba), ``prange`` and the launch lock.

Numba is a dependency of evflow, but the NumPy and CuPy implementations must
stay importable without it: when ``import numba`` fails, :func:`njit` returns
the plain Python function, :data:`prange` is ``range`` and :data:`HAVE_NUMBA`
is False (the registry then never picks the 'numba' implementation).

:data:`LAUNCH_LOCK` serialises launches of ``parallel=True`` Numba functions.
Numba's default threading layer (workqueue, used when neither TBB nor OpenMP
is installed) must not be entered from several threads at once, which is what
Dask's threaded scheduler would do; each launch still uses all of Numba's
threads, so chunks run one after another at full width.
"""

from __future__ import annotations

import threading

try:
    import numba
    from numba import prange
except ImportError:  # pragma: no cover - exercised only where Numba is missing
    numba = None
    prange = range

__all__ = ["HAVE_NUMBA", "LAUNCH_LOCK", "numba", "njit", "prange", "get_num_threads"]

HAVE_NUMBA = numba is not None

LAUNCH_LOCK = threading.RLock()


def njit(*args, **kwargs):
    """``numba.njit`` with the same arguments, or, without Numba, a decorator that changes nothing.

    Works bare (``@njit``) and with options (``@njit(parallel=True)``).
    """
    if numba is not None:
        return numba.njit(*args, **kwargs)
    if len(args) == 1 and callable(args[0]) and not kwargs:  # pragma: no cover
        return args[0]
    return lambda f: f  # pragma: no cover


def get_num_threads() -> int:
    """Numba's thread count (1 without Numba)."""
    return int(numba.get_num_threads()) if numba is not None else 1
