"""Shared fixtures: the real data in ../shared/data and backend parametrisation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from general_checks import impl  # noqa: F401  (the implementation fixture: numba, cupy, dask+numpy, dask+cupy)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EVFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path of a file in the shared test data; skips the test when that folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared test data not found at {SHARED_DATA} "
            "(set EVFLOW_SHARED_DATA to the folder holding fcs/, gatingml/, beads/, images/)"
        )
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared test data file missing: {p}")
    return p


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def _gpu():
    from evflow.backend import gpu_available

    return gpu_available()


BACKENDS = [
    "numpy",
    pytest.param("cupy", marks=[pytest.mark.gpu]),
]


def pytest_collection_modifyitems(config, items):
    skip = None
    for item in items:
        if "gpu" in item.keywords:
            if skip is None:
                skip = pytest.mark.skip(reason="needs CuPy and a working CUDA device") if not _gpu() else False
            if skip:
                item.add_marker(skip)


@pytest.fixture
def headless_chromium(tmp_path):
    """Command prefix for headless Chromium with a fresh profile; skips where no Chromium is installed."""
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p),
                  None)
    if chrome is None:
        pytest.skip("no chromium binary found (Debian: apt-get install chromium)")
    return [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}"]


#: skip reasons that cannot hold in CI: ci/test installs every Python dependency and the browser, and
#: the shared data is beside the clone (skips for want of a GPU, or of root, stay skips)
_NOT_IN_CI = ("shared test data", "could not import", "No module named", "chromium")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI`` set) a test skipped for a missing dependency, browser or shared data file fails instead:
    otherwise it would pass there without having run."""
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and os.environ.get("CI")) or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if any(w in reason for w in _NOT_IN_CI):
        rep.outcome = "failed"
        rep.longrepr = f"skipped in CI, where nothing should be missing: {reason}"
