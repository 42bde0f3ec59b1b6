"""Compile evflow's CUDA sources with g++ under cuda_cpu.h and run a Launch on the CPU.

The source is the string :func:`evflow.kernels.module_source` returns (what
NVRTC receives), included verbatim into a small wrapper translation unit that
adds one exported entry point per kernel name expression and the buffer behind
the kernel's ``extern __shared__`` array.  NVRTC options map to g++ flags
(``-D`` as is, ``--fmad=false`` as ``-ffp-contract=off``).  Shared objects are
cached under ``$EVFLOW_CUDA_CPU_CACHE`` (default: the temp dir) by sha256 of
(source, header, options, kernels, flags).

Sanitizer runs (``sanitize="thread"`` or ``"address"``) execute in a child
Python with the sanitizer runtime preloaded; the arrays travel as raw memory
spans so strided views keep their layout.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_cpu.h")
BASE_FLAGS = ("-O1", "-std=c++20", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-Wno-unknown-pragmas")
SANITIZE_FLAGS = {
    None: (),
    "thread": ("-fsanitize=thread", "-g"),
    "address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-g"),
}
_CTYPES = {
    "int": ctypes.c_int32,
    "unsigned int": ctypes.c_uint32,
    "long long": ctypes.c_int64,
    "unsigned long long": ctypes.c_uint64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}
_SHARED_DECL = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w\s]*?)\s+(\w+)\s*\[\s*\]\s*;")


class CompileError(RuntimeError):
    pass


def require_gxx() -> None:
    """Skip the calling test without g++ (fail instead under CI=true: CI must run these)."""
    import shutil

    import pytest

    if shutil.which("g++") is None:
        if os.environ.get("CI"):
            pytest.fail("the cuda_cpu tests need g++ (>= 12) in CI")
        pytest.skip("the cuda_cpu tests need g++ (>= 12)")


def cache_dir() -> Path:
    d = Path(os.environ.get("EVFLOW_CUDA_CPU_CACHE") or Path(tempfile.gettempdir()) / f"evflow-cuda-cpu-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def gxx_flags(options) -> list[str]:
    """g++ flags for NVRTC ``options``; an option with no CPU meaning raises."""
    out = []
    for o in options:
        if o.startswith("-D") or o.startswith("--define-macro="):
            out.append("-D" + o.split("=", 1)[1] if o.startswith("--define-macro=") else o)
        elif o in ("--fmad=false", "-fmad=false"):
            out.append("-ffp-contract=off")
        elif o.startswith("--std=") or o.startswith("-std="):
            pass  # the CPU build needs C++20 (std::atomic_ref, std::barrier)
        else:
            raise CompileError(f"NVRTC option {o!r} has no CPU equivalent")
    return out


def _entry(i: int) -> str:
    return f"evf_cpu_kernel_{i}"


def wrapper_source(source: str, kernels) -> tuple[str, str | None]:
    """The translation unit compiled by g++, and the shared-memory array's name (or None)."""
    decls = {(" ".join(t.split()), name) for t, name in _SHARED_DECL.findall(source)}
    if len({name for _, name in decls}) > 1 or len(decls) > 1:
        raise CompileError(f"more than one extern __shared__ array: {sorted(decls)}")
    lines = [f'#include "{HEADER}"']
    smem = None
    if decls:
        (stype, smem), = decls
        lines.append(f"alignas(16) {stype} {smem}[EVF_CPU_MAX_SHARED / sizeof({stype})];")
    lines += ['#line 1 "kernel.cu"', source, "", "// entry points"]
    for i, k in enumerate(kernels):
        sm = f"reinterpret_cast<unsigned char*>({smem})" if smem else "nullptr"
        lines.append(
            f'extern "C" int {_entry(i)}(const unsigned int* grid, const unsigned int* block, unsigned long long shared,'
            f" void** args, char* err, unsigned long long err_len) {{\n"
            f"    return evf_cpu::launch(&{k}, grid, block, (std::size_t)shared, {sm}, args, err, (std::size_t)err_len);\n}}"
        )
    return "\n".join(lines) + "\n", smem


def build(source: str, options, kernels, sanitize=None) -> Path:
    """Compile (or find in the cache) the shared object holding ``kernels``; returns its path."""
    kernels = tuple(kernels)
    flags = list(BASE_FLAGS) + list(SANITIZE_FLAGS[sanitize]) + gxx_flags(options)
    tu, _ = wrapper_source(source, kernels)
    key = hashlib.sha256(
        "\0".join([source, HEADER.read_text(), tu, " ".join(flags), *kernels]).encode()
    ).hexdigest()[:32]
    d = cache_dir()
    so = d / f"{key}.so"
    if so.exists():
        return so
    cpp = d / f"{key}.cpp"
    cpp.write_text(tu)
    tmp = d / f"{key}.{os.getpid()}.so.tmp"
    cmd = ["g++", *flags, "-o", str(tmp), str(cpp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise CompileError(f"g++ failed ({' '.join(cmd)}):\n{r.stderr[-6000:]}")
    os.replace(tmp, so)
    return so


_loaded: dict = {}


def _lib(so: Path):
    lib = _loaded.get(so)
    if lib is None:
        lib = _loaded[so] = ctypes.CDLL(str(so))
    return lib


def _marshal(args):
    """ctypes objects for ``args`` ((ctype, value), ...) and the void* array pointing at them."""
    keep = []
    for ctype, value in args:
        if ctype.endswith("*"):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{ctype} argument must be a NumPy array on the CPU, got {type(value).__name__}")
            keep.append(ctypes.c_void_p(value.ctypes.data))
        else:
            keep.append(_CTYPES[ctype](value))
    arr = (ctypes.c_void_p * max(len(keep), 1))(*[ctypes.addressof(k) for k in keep])
    return keep, arr


def _call(lib, index, grid, block, shared, args):
    fn = getattr(lib, _entry(index))
    fn.restype = ctypes.c_int
    keep, arr = _marshal(args)
    err = ctypes.create_string_buffer(512)
    g = (ctypes.c_uint * 3)(*grid)
    b = (ctypes.c_uint * 3)(*block)
    rc = fn(g, b, ctypes.c_ulonglong(shared), arr, err, ctypes.c_ulonglong(len(err)))
    del keep
    if rc:
        raise RuntimeError(f"CPU launch failed: {err.value.decode()}")


def run(launch, *, kernels=None, sanitize=None) -> None:
    """Execute ``launch`` (an evflow.kernels.launch.Launch over NumPy arrays) on the CPU.

    ``kernels``: name expressions compiled into the same shared object (one
    g++ run for all of them; must include ``launch.kernel``).
    """
    launch.check()
    kernels = tuple(kernels or (launch.kernel,))
    so = build(launch.source(), launch.options, kernels, sanitize)
    index = kernels.index(launch.kernel)
    if sanitize is None:
        _call(_lib(so), index, launch.grid, launch.block, launch.shared_bytes, launch.args)
    else:
        _run_child(so, index, launch, sanitize)


# ----------------------------------------------------------------------------
# output arrays with guard bytes
# ----------------------------------------------------------------------------


class GuardedNumpy:
    """``numpy`` for the launch builders, allocating every array inside a larger
    buffer filled with a canary byte; :meth:`check` raises when a kernel wrote
    outside an array (an off-by-one bound, a thread past ``n``)."""

    GUARD = 256
    CANARY = 0xA5

    def __init__(self):
        self._made = []

    def __getattr__(self, name):
        return getattr(np, name)

    def _alloc(self, shape, dtype):
        dtype = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf = np.full(nbytes + 2 * self.GUARD + dtype.alignment, self.CANARY, np.uint8)
        start = self.GUARD + (-(buf.ctypes.data + self.GUARD)) % max(dtype.alignment, 1)
        arr = buf[start : start + nbytes].view(dtype).reshape(shape)
        self._made.append((buf, start, nbytes))
        return arr

    def empty(self, shape, dtype=float):
        return self._alloc(shape, dtype)

    def zeros(self, shape, dtype=float):
        a = self._alloc(shape, dtype)
        a[...] = 0
        return a

    def array(self, obj, dtype=None, copy=True, order="C"):
        src = np.asarray(obj, dtype=dtype)
        a = self._alloc(src.shape, src.dtype)
        a[...] = src
        return a

    def check(self):
        for buf, start, nbytes in self._made:
            bad = np.flatnonzero(np.r_[buf[:start], buf[start + nbytes :]] != self.CANARY)
            if bad.size:
                raise AssertionError(f"a kernel wrote outside a {nbytes}-byte output array ({bad.size} guard bytes changed)")


# ----------------------------------------------------------------------------
# sanitizer runs in a child process
# ----------------------------------------------------------------------------


def _span(a: np.ndarray):
    """(lo, hi) byte offsets of the memory ``a`` touches, relative to its data pointer."""
    if a.size == 0:
        return 0, 0
    lo = sum(min(0, (s - 1) * st) for s, st in zip(a.shape, a.strides))
    hi = sum(max(0, (s - 1) * st) for s, st in zip(a.shape, a.strides)) + a.itemsize
    return lo, hi


def _runtime(name: str) -> str:
    lib = {"thread": "libtsan.so", "address": "libasan.so"}[name]
    path = subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        raise CompileError(f"no {lib} for g++")
    return os.path.realpath(path)


def _run_child(so: Path, index: int, launch, sanitize: str) -> None:
    items = []
    for ctype, v in launch.args:
        if ctype.endswith("*"):
            lo, hi = _span(v)
            raw = ctypes.string_at(v.ctypes.data + lo, hi - lo) if hi > lo else b""
            items.append(("ptr", ctype, raw, -lo))
        else:
            items.append(("val", ctype, v, 0))
    job = {"so": str(so), "index": index, "grid": launch.grid, "block": launch.block,
           "shared": launch.shared_bytes, "items": items}
    with tempfile.TemporaryDirectory() as td:
        jin, jout = Path(td) / "in.pkl", Path(td) / "out.pkl"
        jin.write_bytes(pickle.dumps(job))
        env = dict(os.environ)
        env["LD_PRELOAD"] = _runtime(sanitize)
        env["TSAN_OPTIONS"] = "halt_on_error=1 exitcode=66 report_signal_unsafe=0"
        env["ASAN_OPTIONS"] = "detect_leaks=0 halt_on_error=1 exitcode=67"
        r = subprocess.run([sys.executable, __file__, str(jin), str(jout)], env=env, capture_output=True, text=True)
        if r.returncode or not jout.exists():
            raise RuntimeError(f"{sanitize} sanitizer run failed (exit {r.returncode}):\n{r.stderr[-8000:]}")
        out = pickle.loads(jout.read_bytes())
    for (ctype, v), raw in zip(launch.args, out):
        if ctype.endswith("*") and not ctype.startswith("const") and raw:
            lo, _ = _span(v)
            ctypes.memmove(v.ctypes.data + lo, raw, len(raw))


def _child(jin: str, jout: str) -> None:
    job = pickle.loads(Path(jin).read_bytes())
    lib = ctypes.CDLL(job["so"])
    bufs, args = [], []
    for kind, ctype, v, off in job["items"]:
        if kind == "ptr":
            buf = (ctypes.c_char * max(len(v), 1)).from_buffer_copy(v if v else b"\0")
            bufs.append(buf)
            args.append((ctype, _Ptr(ctypes.addressof(buf) + off)))
        else:
            bufs.append(None)
            args.append((ctype, v))
    fn = getattr(lib, _entry(job["index"]))
    fn.restype = ctypes.c_int
    keep = [ctypes.c_void_p(v.address) if c.endswith("*") else _CTYPES[c](v) for c, v in args]
    arr = (ctypes.c_void_p * max(len(keep), 1))(*[ctypes.addressof(k) for k in keep])
    err = ctypes.create_string_buffer(512)
    g = (ctypes.c_uint * 3)(*job["grid"])
    b = (ctypes.c_uint * 3)(*job["block"])
    rc = fn(g, b, ctypes.c_ulonglong(job["shared"]), arr, err, ctypes.c_ulonglong(len(err)))
    if rc:
        sys.exit(f"CPU launch failed: {err.value.decode()}")
    out = [bytes(buf) if kind == "ptr" and v else b"" for buf, (kind, _c, v, _o) in zip(bufs, job["items"])]
    Path(jout).write_bytes(pickle.dumps(out))


class _Ptr:
    def __init__(self, address):
        self.address = address


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
