"""Resumable per-item result store: atomic writes with fingerprints.

Each item (a calibration, a control, a sample, an image field) is written to
``<out>/.evflow/items/<kind>-<name>.npz`` as a temporary file in the same
folder, flushed to disk and renamed into place (``os.replace`` is atomic on
POSIX), so a run killed at any moment never leaves a half-written file under
the final name.  The file stores the item's fingerprint; a rerun loads an
item only when the fingerprint it would compute now is the stored one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["ResultStore", "fingerprint", "file_fingerprint", "file_sha256", "file_sha256_once",
           "atomic_write_bytes"]


def _canonical(obj):
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.dtype.str, "shape": list(obj.shape), "sha": hashlib.sha256(obj.tobytes()).hexdigest()}
    if isinstance(obj, (np.floating, float)):
        return repr(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fingerprint(*parts) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (dicts, lists, numbers, arrays, paths)."""
    return hashlib.sha256(json.dumps(_canonical(list(parts)), sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path) -> dict:
    """What identifies an input file cheaply: resolved path, size and modification time (ns)."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path, block: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (for provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


_SHA_CACHE: dict = {}  # (resolved path, size, mtime_ns) -> sha256 of the files hashed in this process
_SHA_LOCKS: dict = {}
_SHA_LOCK = threading.Lock()


def file_sha256_once(path) -> str:
    """:func:`file_sha256`, computed once per file in this process (while its size and modification time stay):
    every field of a multi-field file gives its file's digest without reading the file again."""
    fp = file_fingerprint(path)
    key = (fp["path"], fp["size"], fp["mtime_ns"])
    with _SHA_LOCK:
        lock = _SHA_LOCKS.setdefault(key, threading.Lock())
    with lock:  # another thread hashing the same file: wait for its digest
        if key not in _SHA_CACHE:
            if len(_SHA_CACHE) > 4096:
                _SHA_CACHE.clear()
            _SHA_CACHE[key] = file_sha256(path)
        return _SHA_CACHE[key]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+=,@()-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@()-]")


class ResultStore:
    """Per-item results under ``<out>/.evflow/items``.

    An item is a dict of JSON-able values and NumPy arrays; it is stored with
    its fingerprint and read back only when the fingerprint matches.
    """

    def __init__(self, out):
        self.root = Path(out) / ".evflow" / "items"

    @classmethod
    def at(cls, root) -> ResultStore:
        """A store whose item folder is ``root`` (as passed to tasks)."""
        st = cls.__new__(cls)
        st.root = Path(root)
        return st

    def path(self, kind: str, name: str) -> Path:
        """``<kind>-<name>.npz``; a name that is long or not a plain file name gets a shortened, hashed form."""
        stem = f"{kind}-{name}"
        if len(stem.encode()) > 120 or not _PLAIN.fullmatch(stem):
            h = hashlib.sha256(stem.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            stem = _UNSAFE.sub("_", stem)[:60] + "-" + h
        return self.root / f"{stem}.npz"

    def save(self, kind: str, name: str, fp: str, item: dict) -> Path:
        arrays, meta = {}, {}
        for k, v in item.items():
            if isinstance(v, np.ndarray):
                arrays[k] = v
            else:
                meta[k] = v
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps({"fingerprint": fp, "kind": kind, "name": name, "item": meta},
                                                    default=_json_default)), **arrays)
        return atomic_write_bytes(self.path(kind, name), buf.getvalue())

    def load(self, kind: str, name: str, fp: str | None = None):
        """The stored item, or None when absent, unreadable or stored with another fingerprint."""
        p = self.path(kind, name)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                if fp is not None and meta.get("fingerprint") != fp:
                    return None
                item = dict(meta["item"])
                for k in z.files:
                    if k != "__meta__":
                        item[k] = z[k]
        except Exception:
            return None
        return item

    def clean_temporaries(self) -> int:
        """Remove temporary files left by a killed run; returns how many."""
        n = 0
        if self.root.is_dir():
            for p in self.root.glob(".*.tmp"):
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
        return n


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in a result item")
