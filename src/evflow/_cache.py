"""Where evflow keeps its caches (today: Numba's compiled kernels).

Numba's default is a ``__pycache__`` folder beside each source file, i.e.
inside the installation.  That is wrong twice over: site-packages is
read-only on many clusters, and files pip did not install survive an
uninstall, so a later editable install of the same package is shadowed by
the left-over folder (imported as a namespace package).  evflow therefore
points Numba at a user cache directory before Numba is imported:

1. ``NUMBA_CACHE_DIR`` if the user set it (Numba's own variable, respected);
2. ``$EVFLOW_CACHE_DIR/numba``;
3. ``$XDG_CACHE_HOME/evflow/numba`` (``~/.cache/evflow/numba`` by default);
4. ``<tempdir>/evflow-<user>/numba`` when none of those is writable.

Numba keys each cache entry by the full path and modification time of its
source file, so two installations of evflow never read each other's
entries.  This module imports nothing heavy: ``import evflow`` calls
:func:`configure_numba_cache` and stays light.
"""

from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["cache_root", "numba_cache_dir", "configure_numba_cache"]


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _user() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # Windows
        return os.environ.get("USERNAME", "user")


def cache_root() -> str:
    """evflow's cache folder (created if needed): see the module docstring for the order."""
    candidates = []
    if os.environ.get("EVFLOW_CACHE_DIR"):
        candidates.append(os.environ["EVFLOW_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "evflow"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"evflow-{_user()}"))
    for c in candidates:
        if _writable_dir(c):
            return c
    return candidates[-1]


def numba_cache_dir() -> str:
    """The folder Numba caches evflow's compiled kernels in (never inside site-packages)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    path = os.path.join(cache_root(), "numba")
    return path if _writable_dir(path) else os.path.join(tempfile.gettempdir(), f"evflow-{_user()}", "numba")


def configure_numba_cache() -> str:
    """Point Numba's cache at :func:`numba_cache_dir` (before or after Numba is imported)."""
    path = numba_cache_dir()
    os.environ.setdefault("NUMBA_CACHE_DIR", path)
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None and not getattr(numba_config, "CACHE_DIR", ""):
        # Numba was imported first: its config has already read the environment
        numba_config.CACHE_DIR = path
    return os.environ["NUMBA_CACHE_DIR"]
