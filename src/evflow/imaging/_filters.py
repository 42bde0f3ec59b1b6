"""The detection filters live in :mod:`evflow.kernels.filters`; this name is kept for imports."""

from evflow.kernels.filters import *  # noqa: F401,F403
from evflow.kernels.filters import HAVE_NUMBA, gaussian_kernel, dog_numba, maxima_numba, windows_numba  # noqa: F401
