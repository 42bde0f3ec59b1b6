"""What the Numba kernels share.

:data:`LAUNCH_LOCK` serialises launches of ``parallel=True`` Numba functions.
Numba's default threading layer (workqueue, used when neither TBB nor OpenMP
is installed) must not be entered from several threads at once, which is what
Dask's threaded scheduler would do; each launch still uses all of Numba's
threads, so chunks run one after another at full width.
"""

from __future__ import annotations

import threading

LAUNCH_LOCK = threading.RLock()
