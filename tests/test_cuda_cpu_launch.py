"""kernels/launch.py: launches are typed and checked against the kernel signatures in the .cu sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cuda_cpu import runner

import evflow.kernels
from evflow.kernels import gaussfit as gf, launch as L, phenotype as ph

pytestmark = pytest.mark.cuda_cpu


def test_sources_are_the_kernel_files():
    # both the CuPy path and the CPU execution read kernels/*.cu through evflow.kernels
    here = Path(evflow.kernels.__file__).parent
    for name in ("phenotype.cu", "gaussfit.cu", "steps.cu"):
        text = (here / name).read_text(encoding="utf-8")
        assert evflow.kernels.module_source(name).endswith(text)
    # phenotype.cu is preceded by the #define lines generated from Python, on both paths
    from evflow.kernels import phenotype_cupy
    from evflow.kernels.phenotype_plan import cuda_preamble

    assert evflow.kernels.module_source("phenotype.cu") == cuda_preamble() + (here / "phenotype.cu").read_text()
    assert phenotype_cupy.cuda_source() == evflow.kernels.module_source("phenotype.cu")
    assert evflow.kernels.module_source("gaussfit.cu") == (here / "gaussfit.cu").read_text()
    assert evflow.kernels.module_source("steps.cu") == (here / "steps.cu").read_text()


def test_signatures_parsed_from_the_sources():
    sig = L.kernel_signature(evflow.kernels.module_source("phenotype.cu"), "fused_phenotype<unsigned short>")
    assert sig[0] == ("const unsigned short*", "ev") and sig[1] == ("long long", "n")
    assert [t for t, _ in sig[-4:]] == ["unsigned long long*", "unsigned int*", "double*", "unsigned int*"]
    sig = L.kernel_signature(evflow.kernels.module_source("gaussfit.cu"), "evf_gaussfit")
    assert len(sig) == 13 and sig[5] == ("signed char*", "status_out") and sig[-1] == ("double", "tol")
    sig = L.kernel_signature(evflow.kernels.module_source("steps.cu"), "binseg_steps<float>")
    assert sig[0] == ("const float*", "x") and sig[7] == ("double", "pen") and sig[-1] == ("long long*", "n_cp")


def _gaussfit(n=3):
    d = np.zeros((n, 7, 7), np.float32)
    return L.gaussfit_launch(d, np.ones((n, 5)), np.empty((n, 5)), np.empty(n), np.empty(n, np.int32),
                             np.empty(n, np.int8), sigma=1.3, fit_sigma=True, method="mle", max_iter=30,
                             tol=1e-5, readout_var=0.0)


def test_mismatched_arguments_raise():
    launch = _gaussfit()
    args = list(launch.args)
    args[6] = ("long long", 3)  # n is an int in gaussfit.cu
    with pytest.raises(TypeError, match="argument 6 .n.: the launch passes 'long long'"):
        L.Launch(*[getattr(launch, f) for f in ("filename", "options", "kernel", "grid", "block", "shared_bytes")],
                 tuple(args), launch.names).check()
    args = list(launch.args)
    args[0] = ("const float*", np.zeros((3, 7, 7)))  # float64 data behind a float*
    with pytest.raises(TypeError, match="needs a float32 array"):
        L.Launch(launch.filename, launch.options, launch.kernel, launch.grid, launch.block, 0, tuple(args),
                 launch.names).check()
    args = list(launch.args)
    args[6] = ("int", 2**31)
    with pytest.raises(TypeError, match="not a valid int"):
        L.Launch(launch.filename, launch.options, launch.kernel, launch.grid, launch.block, 0, tuple(args),
                 launch.names).check()
    with pytest.raises(TypeError, match="takes 13 arguments"):
        L.Launch(launch.filename, launch.options, launch.kernel, launch.grid, launch.block, 0, launch.args[:-1],
                 launch.names).check()


def test_signature_change_in_the_source_is_caught(monkeypatch):
    src = evflow.kernels.module_source("gaussfit.cu").replace("int n, double rv", "long long n, double rv")
    monkeypatch.setattr(L, "module_source", lambda name: src)
    with pytest.raises(TypeError, match="the kernel takes 'long long'"):
        _gaussfit()


def test_phenotype_launch_follows_the_plan():
    plan = ph.FusedPlan(n_columns=3, slots=[(0, 0), (0, 1), (0, 2)], markers=[(0, 0.0), (1, 0.0), (2, 1.0)])
    ip, dp = plan.packed()
    ev = np.zeros((10_000, 3), np.int16)[::2]
    la = L.phenotype_launch(np, ev, plan, None, ip, dp, n_sm=2)
    assert la.kernel == "fused_phenotype<short>" and la.options == ("--fmad=false",)
    assert la.grid == (16, 1, 1) and la.block == (256, 1, 1) and la.shared_bytes == 32 + 24
    assert la.arg("rs") == 6 and la.arg("cs") == 1 and la.arg("has_mask") == 0
    assert [type(v) for v in la.cupy_args()[1:4]] == [np.int64] * 3


def test_cpu_options_follow_the_nvrtc_options():
    assert runner.gxx_flags(gf.cuda_options(7))[0] == "-DEVF_W=7"
    assert runner.gxx_flags(("--fmad=false", "--std=c++17")) == ["-ffp-contract=off"]
    with pytest.raises(runner.CompileError, match="no CPU equivalent"):
        runner.gxx_flags(("--use_fast_math",))
