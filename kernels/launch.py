"""Pure builders of the CUDA launches: kernel, grid, block, shared memory, typed arguments.

Each builder returns a :class:`Launch` that both executions consume unchanged:
:func:`run_cupy` (the GPU path of the kernel modules) and the CPU execution of
the same ``.cu`` source in the ``cuda_cpu`` tests (``tests/cuda_cpu/``).  The
builders take the array module (``numpy`` or ``cupy``) so the same code
allocates the outputs on either side; they import neither.

Every argument carries its CUDA type, and :meth:`Launch.check` compares the
types with the parameters of the ``__global__`` function as written in the
source (typedefs and the template argument substituted), and array arguments
with the dtype of the pointee; a mismatch raises ``TypeError`` before any launch.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from ._cuda import module_source, source_preamble

__all__ = ["CUDA_TYPES", "Launch", "phenotype_launch", "gaussfit_launch", "steps_launch", "run_cupy", "kernel_signature"]

# input dtypes of the fused phenotype kernel and their CUDA types
CUDA_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint64): "unsigned long long",
}
_DTYPES = {v: k for k, v in CUDA_TYPES.items()}
_SCALARS = {  # CUDA scalar type -> NumPy scalar type passed to CuPy
    "int": np.int32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
    "float": np.float32,
    "double": np.float64,
}


@dataclass(frozen=True)
class Launch:
    """One kernel launch.

    ``filename``/``options``: the source (as returned by
    :func:`evflow.kernels.module_source`) and its NVRTC options; ``kernel``:
    the name expression (``fused_phenotype<float>``); ``grid``, ``block``:
    3-tuples; ``shared_bytes``: dynamic shared memory; ``args``: ``((ctype,
    value), ...)`` in parameter order, arrays for pointer types; ``names``:
    the parameter names (to fetch outputs with :meth:`arg`).
    """

    filename: str
    options: tuple
    kernel: str
    grid: tuple
    block: tuple
    shared_bytes: int
    args: tuple
    names: tuple

    def source(self) -> str:
        return module_source(self.filename)

    def arg(self, name: str):
        return self.args[self.names.index(name)][1]

    def cupy_args(self) -> tuple:
        """The argument tuple for a ``cupy.RawKernel`` call (scalars as sized NumPy scalars)."""
        return tuple(v if t.endswith("*") else _SCALARS[t](v) for t, v in self.args)

    def check(self) -> Launch:
        """Raise ``TypeError`` unless the arguments agree with the kernel's signature."""
        params = kernel_signature(self.source(), self.kernel)
        if len(params) != len(self.args):
            raise TypeError(f"{self.kernel} takes {len(params)} arguments, the launch passes {len(self.args)}")
        for i, ((ctype, value), (ptype, pname)) in enumerate(zip(self.args, params)):
            if _norm(ctype) != ptype:
                raise TypeError(f"{self.kernel} argument {i} ({pname}): the launch passes {ctype!r}, the kernel takes {ptype!r}")
            if ptype.endswith("*"):
                want = _DTYPES.get(ptype.removeprefix("const ").removesuffix("*").strip())
                got = getattr(value, "dtype", None)
                if want is None or got != want:
                    raise TypeError(f"{self.kernel} argument {i} ({pname}): {ptype} needs a {want} array, got {got}")
            else:
                kind = np.dtype(_SCALARS[ptype])
                if kind.kind == "f":
                    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                else:
                    info = np.iinfo(kind)
                    ok = isinstance(value, int) and not isinstance(value, bool) and info.min <= value <= info.max
                if not ok:
                    raise TypeError(f"{self.kernel} argument {i} ({pname}): {value!r} is not a valid {ptype}")
        if len(self.grid) != 3 or len(self.block) != 3 or not 1 <= int(np.prod(self.block)) <= 1024:
            raise TypeError(f"{self.kernel}: invalid launch shape grid={self.grid} block={self.block}")
        return self


def _norm(ctype: str) -> str:
    t = re.sub(r"\s*\*\s*", "*", " ".join(ctype.replace("__restrict__", " ").split()))
    return t.strip()


@functools.lru_cache(maxsize=64)
def kernel_signature(source: str, kernel: str) -> tuple:
    """``((type, name), ...)`` of the ``__global__`` function ``kernel`` (``name<targ>`` for a template)."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", " ", source, flags=re.S)
    typedefs = {b: " ".join(a.split()) for a, b in re.findall(r"\btypedef\s+([\w\s]+?)\s+(\w+)\s*;", code)}
    base, _, targ = kernel.partition("<")
    targ = targ.rstrip(">").strip()
    m = re.search(
        r"(?:template\s*<\s*typename\s+(\w+)\s*>\s*)?(?:extern\s+\"C\"\s+)?__global__\s+void\s+"
        + re.escape(base) + r"\s*\(([^)]*)\)",
        code,
    )
    if m is None:
        raise TypeError(f"no __global__ function {base!r} in the source")
    tparam, plist = m.group(1), m.group(2)
    if bool(tparam) != bool(targ):
        raise TypeError(f"{kernel!r} does not match the template parameters of {base!r}")
    out = []
    for p in plist.split(","):
        words = re.findall(r"\w+|\*", p.replace("__restrict__", " "))
        name = words[-1]
        subst = {**typedefs, **({tparam: targ} if tparam else {})}
        out.append((_norm(" ".join(subst.get(w, w) for w in words[:-1])), name))
    return tuple(out)


def run_cupy(launch: Launch) -> None:
    """Compile (cached) and launch ``launch`` on the current CUDA device (asynchronously)."""
    from ._cuda import load_module

    templated = "<" in launch.kernel
    mod = load_module(
        launch.filename, options=launch.options, name_expressions=(launch.kernel,) if templated else None,
        preamble=source_preamble(launch.filename),  # the compiled code is module_source(launch.filename)
    )
    fn = mod.get_function(launch.kernel)
    fn(launch.grid, launch.block, launch.cupy_args(), shared_mem=launch.shared_bytes)


# ----------------------------------------------------------------------------
# phenotype.cu
# ----------------------------------------------------------------------------
#
# What the CPU execution of phenotype.cu (tests/test_cuda_cpu_phenotype.py)
# cannot prove: races between blocks (blocks run one after another there; the
# kernel's only inter-block communication is atomics on global memory),
# occupancy, register pressure and speed (see ci/nvrtc-check for registers and
# spills), and the GPU's atomic float addition order (pos_sum is compared to a
# relative 1e-12 only).  Its maths are +, -, *, /, comparisons and frexp, all
# exactly rounded, and --fmad=false is mirrored by -ffp-contract=off, so the
# integer outputs must agree exactly.


def phenotype_launch(xp, ev, plan, mask, ip, dp, *, n_sm: int) -> Launch:
    """Launch of ``fused_phenotype<T>`` on the events ``ev`` (n, columns) of dtype T.

    ``mask``: None or a bool array (n,); ``ip``, ``dp``: ``plan.packed()`` as
    arrays of ``xp``; ``n_sm``: multiprocessors of the device (the grid is at
    most 8 blocks of 256 threads per multiprocessor, grid-stride loop beyond).
    Outputs (zeroed): ``counts``, ``pos_hist``, ``pos_sum``, ``density``.
    """
    from .phenotype_plan import FINE_NBINS

    n = int(ev.shape[0])
    item = ev.dtype.itemsize
    rs, cs = ev.strides[0] // item, ev.strides[1] // item
    if mask is not None:
        pm, has_mask = mask.view(xp.uint8), 1
    else:
        pm, has_mask = xp.zeros(1, dtype=xp.uint8), 0
    k = plan.n_markers
    nx, ny = plan.density_shape()
    counts = xp.zeros(plan.n_phenotypes, dtype=xp.uint64)
    pos_hist = xp.zeros((max(k, 1), FINE_NBINS), dtype=xp.uint32)
    pos_sum = xp.zeros(max(k, 1), dtype=xp.float64)
    density = xp.zeros(max(nx * ny, 1), dtype=xp.uint32)
    block = 256
    grid = max(1, min((n + block - 1) // block, int(n_sm) * 8))
    nph = plan.n_phenotypes
    shared = (((nph * 4 + 7) // 8) * 8 if nph <= 4096 else 0) + 8 * max(k, 1)
    t = CUDA_TYPES[np.dtype(ev.dtype)]
    args = (
        ("ev", f"const {t}*", ev), ("n", "long long", n), ("rs", "long long", int(rs)), ("cs", "long long", int(cs)),
        ("pmask", "const unsigned char*", pm), ("has_mask", "int", has_mask),
        ("ip", "const long long*", ip), ("dp", "const double*", dp),
        ("counts", "unsigned long long*", counts), ("pos_hist", "unsigned int*", pos_hist),
        ("pos_sum", "double*", pos_sum), ("density", "unsigned int*", density),
    )
    return Launch(
        "phenotype.cu", ("--fmad=false",), f"fused_phenotype<{t}>", (grid, 1, 1), (block, 1, 1), shared,
        tuple((c, v) for _, c, v in args), tuple(a[0] for a in args),
    ).check()


# ----------------------------------------------------------------------------
# gaussfit.cu
# ----------------------------------------------------------------------------
#
# What the CPU execution of gaussfit.cu (tests/test_cuda_cpu_gaussfit.py)
# cannot prove: CUDA's libdevice exp/erf/log/sqrt against glibc's (both
# within about 1-2 ulp, so parameters agree to ~1e-10, not bit for bit); FMA
# contraction (gaussfit.cu is compiled without --fmad=false, so nvcc may fuse
# multiply-adds the CPU build keeps separate); occupancy, register pressure
# and spills (ci/nvrtc-check prints them) and speed.  One thread per spot, no
# shared memory and no atomics: there is no inter-thread communication to race.


def gaussfit_launch(data, theta, crlb, llr, iters, status, *, sigma, fit_sigma, method, max_iter, tol,
                    readout_var) -> Launch:
    """Launch of ``evf_gaussfit`` on windows ``data`` (n, w, w) float32 (C order).

    ``theta`` float64 (n, 5): start values, fitted in place; outputs ``crlb``
    float64 (n, 5), ``llr`` float64 (n), ``iters`` int32 (n), ``status`` int8 (n).
    """
    from .gaussfit_model import cuda_options

    n, w, _ = data.shape
    threads = 128
    blocks = (n + threads - 1) // threads
    args = (
        ("data", "const float*", data), ("theta", "double*", theta), ("crlb", "double*", crlb),
        ("llr_out", "double*", llr), ("iters_out", "int*", iters), ("status_out", "signed char*", status),
        ("n", "int", int(n)), ("rv", "double", float(readout_var)), ("lsq_i", "int", int(method == "lsq")),
        ("fit_sigma_i", "int", int(bool(fit_sigma))), ("sigma", "double", float(sigma)),
        ("max_iter", "int", int(max_iter)), ("tol", "double", float(tol)),
    )
    return Launch(
        "gaussfit.cu", cuda_options(w), "evf_gaussfit", (blocks, 1, 1), (threads, 1, 1), 0,
        tuple((c, v) for _, c, v in args), tuple(a[0] for a in args),
    ).check()


# ----------------------------------------------------------------------------
# steps.cu
# ----------------------------------------------------------------------------
#
# What the CPU execution of steps.cu (tests/test_cuda_cpu_steps.py) cannot
# prove: CUDA's libdevice log() against glibc's (both within 1 ulp; the cost of
# a split is a sum of such logs, so a split whose cost ties another's to the
# last bits can go the other way on a GPU: the GPU parity test compares counts
# exactly and change points to 99 %), races between blocks (they run one after
# another there; each block owns its row of the s1/s2 scratch and its traces'
# rows of cps/n_cp, nothing else is shared), occupancy, registers and speed
# (ci/nvrtc-check prints registers and spills).  Everything else is +, -, *, /
# and comparisons compiled with --fmad=false, as the NumPy reference rounds them.

#: threads per block of binseg_steps (one block per trace; a power of two)
STEPS_BLOCK = 128
#: CUDA's default limit of dynamic shared memory per block without opt-in
MAX_SHARED_BYTES = 49152


def steps_shared_bytes(block: int, max_cp: int) -> int:
    """Dynamic shared memory of ``binseg_steps``: the reduction buffers and the segment table."""
    return 16 * int(block) + 32 * (int(max_cp) + 2) + 8


def steps_launch(xp, x, a, g, penalty, min_size, max_cp, *, n_sm: int, block: int = STEPS_BLOCK) -> Launch:
    """Launch of ``binseg_steps<T>`` on the traces ``x`` (traces, frames) of dtype T (any strides > 0).

    ``a``, ``g``: float64 (traces,) noise model; ``n_sm``: multiprocessors of
    the device (one block per trace, at most 16 blocks per multiprocessor,
    grid-stride loop beyond).  Outputs ``cps`` int64 (traces, max_cp) and
    ``n_cp`` int64 (traces,) are written whole by the kernel; ``s1``, ``s2``
    (blocks, frames + 1) float64 are its scratch.
    """
    n_tr, n = (int(v) for v in x.shape)
    item = x.dtype.itemsize
    rs, cs = x.strides[0] // item, x.strides[1] // item
    if block & (block - 1) or not 1 <= block <= 1024:
        raise ValueError(f"block must be a power of two up to 1024, got {block}")
    shared = steps_shared_bytes(block, max_cp)
    if shared > MAX_SHARED_BYTES:
        raise ValueError(f"max_cp={max_cp} needs {shared} bytes of shared memory; the CUDA kernel allows at most "
                         f"{(MAX_SHARED_BYTES - 8 - 16 * block) // 32 - 2} change points per trace")
    grid = max(1, min(n_tr, int(n_sm) * 16))
    s1 = xp.empty((grid, n + 1), dtype=xp.float64)
    s2 = xp.empty((grid, n + 1), dtype=xp.float64)
    cps = xp.empty((n_tr, int(max_cp)), dtype=xp.int64)
    n_cp = xp.empty(n_tr, dtype=xp.int64)
    t = CUDA_TYPES[np.dtype(x.dtype)]
    args = (
        ("x", f"const {t}*", x), ("n_tr", "long long", n_tr), ("n", "long long", n),
        ("rs", "long long", int(rs)), ("cs", "long long", int(cs)),
        ("a_tr", "const double*", a), ("g_tr", "const double*", g), ("pen", "double", float(penalty)),
        ("ms", "int", int(min_size)), ("max_cp", "int", int(max_cp)),
        ("s1_all", "double*", s1), ("s2_all", "double*", s2), ("cps", "long long*", cps), ("n_cp", "long long*", n_cp),
    )
    return Launch(
        "steps.cu", ("--fmad=false",), f"binseg_steps<{t}>", (grid, 1, 1), (int(block), 1, 1), shared,
        tuple((c, v) for _, c, v in args), tuple(a[0] for a in args),
    ).check()
