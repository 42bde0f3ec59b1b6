"""Compile every CUDA kernel of evflow with NVRTC (no GPU needed) and report registers and spills.

Usage: python ci/nvrtc_check.py NVIDIA_DIR [--arch 80,90]

NVIDIA_DIR holds the NVIDIA pip packages (nvidia/cuda_nvrtc/lib/libnvrtc.so.*
and nvidia/cuda_nvcc/bin/ptxas).  Each kernel is compiled from the source
string and with the options the CuPy path uses (kernels/launch.py builds the
launches; evflow.kernels.module_source gives the source), for every listed
architecture, to PTX with NVRTC, and the PTX is assembled by ptxas -v for
the register/spill figures.  Exits 1 on any compile error.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from evflow.kernels import launch as L, phenotype as ph


def _nvrtc(nvidia_dir):
    libs = sorted(glob.glob(os.path.join(nvidia_dir, "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    if not libs:
        sys.exit(f"nvrtc-check: no libnvrtc.so.* under {nvidia_dir}/cuda_nvrtc/lib")
    lib = ctypes.CDLL(libs[0])
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def _check(lib, rc, what):
    if rc:
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(rc).decode()}")


def nvrtc_ptx(lib, source, options, names, filename):
    """``(ptx, {name expression: lowered name}, log)``; raises RuntimeError with the log on failure."""
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(), 0, None, None), "create")
    try:
        for n in names:
            _check(lib, lib.nvrtcAddNameExpression(prog, n.encode()), f"name expression {n}")
        opts = [o.encode() for o in options]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if rc:
            raise RuntimeError(f"NVRTC refused {filename} with {' '.join(options)}:\n{log}")
        lowered = {}
        for n in names:
            p = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(p)), f"lowered name {n}")
            lowered[n] = p.value.decode()
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, ptx), "PTX")
        return ptx.value.decode(), lowered, log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def ptxas_info(ptxas, ptx, arch):
    """``{mangled name: (registers, spill stores, spill loads, stack bytes)}`` from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as td:
        src = os.path.join(td, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-v", f"-arch=sm_{arch}", "-o", os.path.join(td, "k.cubin"), src],
                           capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"ptxas failed for sm_{arch}:\n{r.stderr}")
    out, cur = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line)
        if m:
            cur = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            out.setdefault(cur, [None, 0, 0, 0])[1:] = [int(m.group(2)), int(m.group(3)), int(m.group(1))]
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            out.setdefault(cur, [None, 0, 0, 0])[0] = int(m.group(1))
    return out, r.stderr


def launches():
    """``{(filename, options): [name expressions]}`` as the CuPy path builds them."""
    groups: dict = {}
    plan = ph.FusedPlan(n_columns=1, slots=[(0, 0)], markers=[(0, 0.0)])
    ip, dp = plan.packed()
    for dt in L.CUDA_TYPES:
        la = L.phenotype_launch(np, np.zeros((0, 1), dt), plan, None, ip, dp, n_sm=1)
        groups.setdefault((la.filename, la.options), []).append(la.kernel)
    for w in (3, 7, 9, 16):
        la = L.gaussfit_launch(np.zeros((0, w, w), np.float32), np.zeros((0, 5)), np.zeros((0, 5)), np.zeros(0),
                               np.zeros(0, np.int32), np.zeros(0, np.int8), sigma=1.3, fit_sigma=True,
                               method="mle", max_iter=30, tol=1e-5, readout_var=0.0)
        groups.setdefault((la.filename, la.options), []).append(la.kernel)
    for dt in L.CUDA_TYPES:
        la = L.steps_launch(np, np.zeros((0, 10), dt), np.zeros(0), np.zeros(0), 1.0, 2, 160, n_sm=1)
        groups.setdefault((la.filename, la.options), []).append(la.kernel)
    return groups


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("nvidia_dir")
    ap.add_argument("--arch", default="80,90")
    a = ap.parse_args(argv)
    lib = _nvrtc(a.nvidia_dir)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    ptxas = os.path.join(a.nvidia_dir, "cuda_nvcc", "bin", "ptxas")
    have_ptxas = os.access(ptxas, os.X_OK)
    print(f"NVRTC {major.value}.{minor.value}; ptxas: {'yes' if have_ptxas else 'no (PTX only)'}")
    failed = 0
    rows = []
    for (filename, options), names in launches().items():
        source = L.Launch(filename, options, names[0], (1, 1, 1), (1, 1, 1), 0, (), ()).source()
        for arch in a.arch.split(","):
            # the options load_module gives NVRTC, plus the target architecture
            opts = ["--std=c++17", *options, f"--gpu-architecture=compute_{arch}"]
            try:
                ptx, lowered, log = nvrtc_ptx(lib, source, opts, names, filename)
            except RuntimeError as e:
                print(f"FAIL {filename} sm_{arch}: {e}")
                failed += 1
                continue
            if log.strip():
                print(f"NVRTC log for {filename} sm_{arch}:\n{log}")
            if not have_ptxas:
                rows.append((filename, " ".join(o for o in options if o.startswith("-DEVF_W")), arch, "PTX only", "", ""))
                continue
            try:
                info, _ = ptxas_info(ptxas, ptx, arch)
            except RuntimeError as e:
                print(f"FAIL {filename} sm_{arch}: {e}")
                failed += 1
                continue
            for n in names:
                regs, st, ld, stack = info.get(lowered[n], (None, 0, 0, 0))
                w = [o.split("=")[1] for o in options if o.startswith("-DEVF_W=")]
                rows.append((n + (f" W={w[0]}" if w else ""), f"sm_{arch}", regs, stack, st, ld))
    print(f"{'kernel':34s} {'arch':6s} {'regs':>5s} {'stack':>6s} {'spill st':>9s} {'spill ld':>9s}")
    for r in rows:
        print(f"{r[0]:34s} {r[1]:6s} {str(r[2]):>5s} {str(r[3]):>6s} {str(r[4]):>9s} {str(r[5]):>9s}")
    if failed:
        print(f"nvrtc-check: {failed} compile(s) failed")
        return 1
    print("nvrtc-check: every kernel compiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
