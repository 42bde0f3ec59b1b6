"""Where compiled kernels are cached: a user cache folder, never inside the installation."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import evflow
from evflow import _cache

PKG_DIRS = [Path(evflow.__file__).parent, Path(evflow.__file__).parent.parent.parent / "kernels"]

# compiles one small cached Numba kernel (the local-maximum filter) and prints where Numba cached it
SNIPPET = """
import numpy as np, numba, evflow
from evflow.kernels.filters import peaks_numba
r = np.zeros((16, 16), np.float32); r[5, 7] = 3.0
print(len(peaks_numba(r, 1.0, 2)[0]), numba.config.CACHE_DIR)
"""


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "EVFLOW_CACHE_DIR")}
    env.update(extra)
    return env


def _index_files(root: Path) -> set:
    return set(root.rglob("*.nbi")) if root.is_dir() else set()


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("EVFLOW_CACHE_DIR", str(tmp_path / "evflow-cache"))
    assert _cache.numba_cache_dir() == str(tmp_path / "evflow-cache" / "numba")
    monkeypatch.delenv("EVFLOW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.numba_cache_dir() == str(tmp_path / "xdg" / "evflow" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))  # the user's own choice wins
    assert _cache.numba_cache_dir() == str(tmp_path / "mine")


def test_unwritable_cache_home_falls_back_to_tempdir(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("EVFLOW_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "sub2"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    path = Path(_cache.numba_cache_dir())
    assert path.is_relative_to(tmp_path / "tmp") and path.is_dir()


def test_numba_cache_written_to_user_folder_not_installation(tmp_path):
    before = set().union(*(_index_files(d) for d in PKG_DIRS))
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                         env=_clean_env(EVFLOW_CACHE_DIR=str(tmp_path / "c")), timeout=300)
    assert out.returncode == 0, out.stderr
    n, cache_dir = out.stdout.split()
    assert n == "1"
    assert Path(cache_dir) == tmp_path / "c" / "numba"
    assert _index_files(tmp_path / "c" / "numba"), "Numba wrote no cache index into the user cache folder"
    after = set().union(*(_index_files(d) for d in PKG_DIRS))
    assert after == before, f"cache files written inside the package: {sorted(after - before)[:5]}"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run as another user")
def test_read_only_installation_runs_kernels(tmp_path):
    """As an unprivileged user the installation is read-only; kernels still compile and cache."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    probe = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                            sys.executable, "-c", "import evflow"], capture_output=True, text=True,
                           env=_clean_env(HOME=str(tmp_path)))
    if probe.returncode != 0 or shutil.which("setpriv") is None:
        pytest.skip(f"the installation is not readable by 'nobody' here: {probe.stderr.strip()[-200:]}")
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="evflow-home-"))  # outside pytest's root-only tmp folders
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    for d in PKG_DIRS:  # read-only for that user: owned by root, not world-writable
        assert not os.access(d, os.W_OK) or os.stat(d).st_uid != nobody.pw_uid
    out = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                          sys.executable, "-W", "error::numba.NumbaWarning", "-c", SNIPPET],
                         capture_output=True, text=True, env=_clean_env(HOME=str(home), XDG_CACHE_HOME=""),
                         timeout=300)
    try:
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.split()[1]) == home / ".cache" / "evflow" / "numba"
        assert _index_files(home / ".cache" / "evflow" / "numba")
    finally:
        shutil.rmtree(home, ignore_errors=True)
