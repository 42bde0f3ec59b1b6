"""The output folder evflow owns: manifest, lock, generations and cleaning.

What evflow promises about ``--out DIR``:

* **It never destroys files it did not create.**  A folder is evflow's when it holds
  ``.evflow/manifest.json`` (written when evflow creates or claims the folder).  A non-empty folder
  without one is refused unless ``force=True`` (``--force``); even then evflow only adds its own
  entries beside the user's files and refuses to replace any file or folder of the same name that
  its manifest does not list.
* **A run's outputs are replaced as one unit.**  Every run writes a complete new *generation* under
  ``.evflow/generations/<id>/`` (``results.zarr``, the tables, ``report.html``); one atomic rename of
  the symbolic link ``.evflow/current`` then switches every output at once.  The names at the top of
  the folder (``DIR/results.zarr``, ``DIR/report.html`` ...) are links into ``.evflow/current``, so a
  run killed at any moment leaves either the previous complete set or the new complete set.
* **One run at a time.**  A run holds an exclusive lock on ``.evflow/lock`` (released by the OS when
  the process ends, even by SIGKILL); a second run on the same folder stops with a message naming the
  holder (pid, host, start time).
* **Temporaries are cleaned at start**: half-written generations, temporary files and folders that an
  interrupted run left behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from ..errors import OutputError

__all__ = ["OutputFolder", "OUTPUT_NAMES", "MANIFEST"]

#: the names a run places at the top of its output folder
OUTPUT_NAMES = ("results.zarr", "counts.csv", "counts.parquet", "markers.csv", "markers.parquet",
                "spots.csv", "spots.parquet", "report.html")
STATE = ".evflow"
MANIFEST = f"{STATE}/manifest.json"
_FORMAT = "evflow-output-folder"
_GEN = "generations"
# temporaries of earlier evflow versions and of atomic_write_bytes (".<name>.<random>.tmp")
_TMP_DIR = re.compile(r"^\.results\.([A-Za-z0-9_]{8}|zarr\.old)$")
_TMP_FILE = re.compile(r"^\.(%s)\.[A-Za-z0-9_]{8}\.tmp$" % "|".join(re.escape(n) for n in OUTPUT_NAMES))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class OutputFolder:
    """An output folder owned by evflow; use as a context manager around a run.

    ``with OutputFolder(path, force=False) as folder:`` checks ownership (or claims an empty or new
    folder), takes the lock and cleans temporaries; ``folder.new_generation()`` gives an empty folder
    to write a complete set of outputs into and ``folder.commit(gen)`` switches to it.
    """

    def __init__(self, path, *, force: bool = False):
        self.path = Path(path)
        self.force = bool(force)
        self._lock_fd = None

    # ------------------------------------------------------------------ ownership
    @property
    def state(self) -> Path:
        return self.path / STATE

    def _read_manifest(self):
        p = self.path / MANIFEST
        if not p.is_file():
            return None
        try:
            m = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"{p}: evflow's manifest of this output folder is unreadable ({exc}); "
                              "remove it only if nothing else in the folder matters") from None
        if not isinstance(m, dict) or m.get("format") != _FORMAT or not isinstance(m.get("entries", []), list):
            raise OutputError(f"{p}: not an evflow output-folder manifest (expected format {_FORMAT!r})")
        return m

    def _write_manifest(self, entries, generation=None):
        from .. import __version__
        from .store import atomic_write_bytes

        old = self._manifest or {}
        m = {"format": _FORMAT, "version": 1, "created": old.get("created") or _now(),
             "evflow_version": __version__, "entries": sorted(set(entries)),
             "generation": generation if generation is not None else old.get("generation")}
        atomic_write_bytes(self.path / MANIFEST, (json.dumps(m, indent=1) + "\n").encode())
        self._manifest = m

    def _ours(self, name: str) -> bool:
        """Whether the top-level entry ``name`` is one evflow placed (a link into .evflow/current, or listed)."""
        p = self.path / name
        if p.is_symlink() and os.readlink(p) == f"{STATE}/current/{name}":
            return True
        return name in (self._manifest or {}).get("entries", [])

    def claim(self) -> OutputFolder:
        """Check that the folder is evflow's (or new, or empty, or ``force``) and mark it as evflow's."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputError(f"output folder {p} is a file, not a folder: choose another output folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output folder {p}: cannot create it ({_os_reason(exc)})") from None
        self._manifest = self._read_manifest()
        if self._manifest is None:
            legacy = (self.state / "items").is_dir()  # made by an evflow without manifests
            try:
                others = sorted(e.name for e in p.iterdir() if e.name != STATE)
            except OSError as exc:
                raise OutputError(f"output folder {p}: cannot list it ({_os_reason(exc)})") from None
            entries = [n for n in others if n in OUTPUT_NAMES] if legacy else []
            if others and not legacy and not self.force:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise OutputError(
                    f"output folder {p} is not empty ({shown}) and was not created by evflow "
                    f"(no {MANIFEST}): choose a new or empty folder, or pass --force (force=True) to write "
                    "evflow's outputs beside these files (evflow never deletes or replaces files it did not write)")
            self._check_writable()
            self._write_manifest(entries)
        clash = [n for n in OUTPUT_NAMES if (p / n).exists() or (p / n).is_symlink()]
        clash = [n for n in clash if not self._ours(n)]
        if clash:
            raise OutputError(f"output folder {p}: {', '.join(clash)} exist(s) and evflow did not write them "
                              f"(not in {MANIFEST}); evflow will not replace them: move them away or choose "
                              "another output folder")
        return self

    def _check_writable(self):
        try:
            self.state.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output folder {self.path}: cannot write in it ({_os_reason(exc)})") from None

    # ------------------------------------------------------------------ lock
    def lock(self) -> OutputFolder:
        """Take the folder's exclusive lock, or raise :class:`OutputError` naming the run that holds it."""
        p = self.state / "lock"
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{p}: cannot open the output folder's lock ({_os_reason(exc)})") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: an exclusive lock file instead
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
                finally:
                    os.close(fd)
                raise OutputError(f"output folder {self.path} is in use by another evflow run ({holder}); "
                                  "wait for it to finish or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {_now()}\n".encode(), 0)
        self._lock_fd = fd
        return self

    def unlock(self):
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ cleaning
    def clean(self) -> list:
        """Remove what interrupted runs left: unfinished generations and temporaries; returns the paths."""
        removed = []
        cur = self.current_generation()
        gens = self.state / _GEN
        if gens.is_dir():
            for g in gens.iterdir():
                if g.name != cur:
                    shutil.rmtree(g, ignore_errors=True) if g.is_dir() and not g.is_symlink() else g.unlink()
                    removed.append(g)
        for e in self.state.iterdir():
            if e.name.startswith(("current.", "trash.")):
                shutil.rmtree(e, ignore_errors=True) if e.is_dir() and not e.is_symlink() else e.unlink()
                removed.append(e)
        for e in self.path.iterdir():
            if (_TMP_DIR.match(e.name) and e.is_dir() and not e.is_symlink()) or (_TMP_FILE.match(e.name) and e.is_file()):
                shutil.rmtree(e, ignore_errors=True) if e.is_dir() else e.unlink()
                removed.append(e)
        return removed

    # ------------------------------------------------------------------ generations
    def current_generation(self):
        link = self.state / "current"
        if link.is_symlink():
            return Path(os.readlink(link)).name
        return None

    def new_generation(self) -> Path:
        """An empty folder for a complete new set of outputs (switched in by :meth:`commit`)."""
        gens = self.state / _GEN
        try:
            gens.mkdir(parents=True, exist_ok=True)
            stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
            return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=gens))
        except OSError as exc:
            raise OutputError(f"output folder {self.path}: cannot write in it ({_os_reason(exc)})") from None

    def commit(self, gen) -> dict:
        """Switch every output to the generation ``gen`` at once; returns ``{name: path}`` of the outputs."""
        gen = Path(gen)
        names = sorted(e.name for e in gen.iterdir())
        old = self.current_generation()
        try:
            _fsync_dir(gen)
            tmp = self.state / f"current.{os.getpid()}"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(f"{_GEN}/{gen.name}", tmp)
            os.replace(tmp, self.state / "current")  # the switch: one atomic rename
            _fsync_dir(self.state)
            placed = set()
            for n in names:
                self._place(n)
                placed.add(n)
            listed = set((self._manifest or {}).get("entries", []))
            for n in sorted(listed - placed):  # outputs of the previous run that this run does not make
                p = self.path / n
                if p.is_symlink():
                    p.unlink()
                elif p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            self._write_manifest(placed, generation=gen.name)
            if old and old != gen.name:
                shutil.rmtree(self.state / _GEN / old, ignore_errors=True)
        except OSError as exc:
            raise OutputError(f"output folder {self.path}: cannot switch to the new outputs "
                              f"({_os_reason(exc)}: {exc.filename or ''})") from None
        return {n: self.path / n for n in names}

    def _place(self, name: str):
        """Make ``DIR/name`` the link ``.evflow/current/name`` (replacing only what evflow wrote)."""
        p = self.path / name
        target = f"{STATE}/current/{name}"
        if p.is_symlink() and os.readlink(p) == target:
            return
        if (p.exists() or p.is_symlink()) and not self._ours(name):
            raise OutputError(f"{p} exists and evflow did not write it; it is left as it is")
        tmp = self.state / f"current.{name}.{os.getpid()}"
        os.symlink(target, tmp)
        if p.is_dir() and not p.is_symlink():  # a results.zarr folder of an evflow without generations
            trash = self.state / f"trash.{name}.{os.getpid()}"
            p.rename(trash)
            os.replace(tmp, p)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, p)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> OutputFolder:
        self.claim()
        self.lock()
        try:
            self.clean()
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        self.unlock()
        return False


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
