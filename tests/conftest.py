"""Shared fixtures: the real data in ../shared/data and backend parametrisation."""

from __future__ import annotations

import os
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
