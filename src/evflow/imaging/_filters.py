"""The detection filters live in :mod:`evflow.kernels.filters`; this name is kept for imports."""

from evflow.kernels.filters import *  # noqa: F401,F403
from evflow.kernels.filters import (  # noqa: F401
    HAVE_NUMBA,
    dog_numba,
    gaussian_kernel,
    maxima_numba,
    windows_numba,
)
