"""The kernel registry (one ``impl=`` selector), the deprecated old keyword names, and the CUDA constants
generated from the Python that owns them."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import evflow
from evflow.errors import BackendError, ImplementationError
from evflow.kernels import _registry as R, gaussfit as gf, phenotype as ph, phenotype_plan as plan_mod

# ----------------------------------------------------------------------------- registry


def test_auto_picks_numba_when_it_imports_else_numpy(monkeypatch):
    x = np.zeros((4, 2))
    for family in R.FAMILIES.values():
        assert family.resolve("auto", x) == "numba", family
    monkeypatch.setattr(R, "numba_available", lambda: False)
    for family in R.FAMILIES.values():
        assert family.resolve("auto", x) == "numpy", family
    assert R.phenotype.resolve(None, x) == "numpy"  # None means auto


def test_auto_picks_cupy_for_cupy_arrays(monkeypatch):
    # a stand-in for a CuPy array: evflow.backend recognises CuPy arrays by their module
    monkeypatch.setitem(sys.modules, "cupy", sys.modules.get("cupy") or types.ModuleType("cupy"))
    FakeCupyArray = type("ndarray", (), {"__module__": "cupy._core.core"})
    a = FakeCupyArray()
    for family in R.FAMILIES.values():
        assert family.resolve("auto", a) == "cupy", family
        assert family.resolve("numpy", a) == "numpy"  # an explicit choice is kept
    assert R.phenotype.resolve("auto", np.zeros(3)) == "numba"


def test_explicit_names_and_case():
    for name in ("numpy", "numba", "cupy"):
        assert R.gaussfit.resolve(name) == name
    assert R.gaussfit.resolve(" NumPy ") == "numpy"


@pytest.mark.parametrize("bad", ["tpu", "reference", "fast", "", 3])  # ("gpu" would mark the test gpu)
def test_unknown_impl_names_the_choices(bad):
    with pytest.raises(ImplementationError, match=r"impl=.*expected one of auto, numpy, numba, cupy") as err:
        R.phenotype.resolve(bad, np.zeros(2))
    assert isinstance(err.value, BackendError) and isinstance(err.value, ValueError)
    with pytest.raises(BackendError, match="auto, numpy, numba, cupy"):
        ph.fused(np.zeros((2, 1)), ph.FusedPlan(n_columns=1, slots=[(0, 0)]), impl=bad)


def test_unknown_impl_through_public_functions():
    with pytest.raises(BackendError, match="impl='gpu'.*auto, numpy, numba, cupy"):
        gf.fit_gaussians(np.zeros((3, 7, 7), np.float32), impl="gpu")
    with pytest.raises(BackendError, match="impl='gpu'"):
        evflow.count_phenotypes((np.ones((10, 2)), ["A", "B"]), markers={"m": ("A", 0.5)}, impl="gpu")
    from evflow.flow.transforms import LogicleTransform

    with pytest.raises(BackendError, match="impl='gpu'"):
        LogicleTransform(262144, 0.5, 4.5, 0).apply(np.ones(3), impl="gpu")


def test_every_registered_implementation_is_importable_without_cupy():
    for key, family in R.FAMILIES.items():
        assert family.impls == ("numpy", "numba", "cupy"), key
        for name in family.impls:
            assert callable(family.get(name)), (key, name)


def test_dispatch_goes_through_the_module_attribute(monkeypatch):
    """The registry looks the implementation up at each call, so the module's public name is the one
    implementation: replacing ``phenotype.fused_numba`` replaces what ``fused(impl='numba')`` runs."""
    calls = []
    orig = ph.fused_numba

    def spy(events, plan, mask=None, n_threads=None):
        calls.append(n_threads)
        return orig(events, plan, mask, n_threads)

    monkeypatch.setattr(ph, "fused_numba", spy)
    plan = ph.FusedPlan(n_columns=1, slots=[(0, 0)], markers=[(0, 0.5)])
    got = ph.fused(np.array([[0.0], [1.0], [2.0]]), plan, impl="numba", n_threads=1)
    assert calls == [1]
    np.testing.assert_array_equal(got.counts, [1, 2])
    ph.fused(np.array([[0.0]]), plan, impl="numpy")
    assert calls == [1]


def test_import_evflow_kernels_never_imports_cupy():
    code = (
        "import sys, evflow, evflow.kernels\n"
        "import evflow.kernels._registry as R, evflow.kernels.phenotype, evflow.kernels.gaussfit\n"
        "import evflow.kernels.transforms, evflow.kernels.filters, evflow.imaging.detect\n"
        "for f in R.FAMILIES.values():\n"
        "    [f.get(n) for n in f.impls]\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'cupy', 'cupyx'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"evflow.kernels pulled in {out.stdout.strip()}"


# ----------------------------------------------------------------------------- one selector, old names


def _public_functions():
    from evflow.flow import phenotypes as P, transforms as T
    from evflow.imaging import detect as D, localize as L
    from evflow.kernels import transforms as KT

    return [P.count_phenotypes, P.density2d, T.LogicleTransform.apply, T.HyperlogTransform.apply, KT.forward_fast,
            gf.fit_gaussians, ph.fused, D.detect_spots, D.dog_filter, D.local_maxima, L.fit_spots]


def test_public_signatures_have_one_selector():
    for fn in _public_functions():
        params = inspect.signature(fn).parameters
        assert "impl" in params, fn.__qualname__
        assert params["impl"].default == "auto", fn.__qualname__
        assert not {"engine", "kernel", "fit_backend"} & set(params), fn.__qualname__
    assert "backend" not in inspect.signature(gf.fit_gaussians).parameters  # backend= is the array library only


def test_old_keywords_warn_and_map_to_impl():
    from evflow.flow.phenotypes import count_phenotypes, density2d
    from evflow.flow.transforms import LogicleTransform
    from evflow.kernels import transforms as KT

    rng = np.random.default_rng(0)
    ev = rng.normal(1.0, 1.0, (5000, 2))
    data = (ev, ["A", "B"])
    mk = {"m": ("A", 1.0)}
    ref = count_phenotypes(data, markers=mk, impl="numpy")
    for old, new in (("reference", "numpy"), ("fast", "numba"), ("auto", "auto")):
        with pytest.warns(DeprecationWarning, match=r"kernel=.*impl="):
            ds = count_phenotypes(data, markers=mk, kernel=old)
        np.testing.assert_array_equal(ds["count"].values, ref["count"].values)
        assert ds.attrs == count_phenotypes(data, markers=mk, impl=new).attrs
    with pytest.warns(DeprecationWarning, match="kernel="):
        d_old = density2d(data, "A", "B", bins=8, range=((-2, 4), (-2, 4)), kernel="reference")
    np.testing.assert_array_equal(d_old.values, density2d(data, "A", "B", bins=8, range=((-2, 4), (-2, 4)), impl="numpy").values)

    t = LogicleTransform(262144, 0.5, 4.5, 0)
    x = np.linspace(-100, 1e5, 70000)
    with pytest.warns(DeprecationWarning, match="engine="):
        a = t.apply(x, engine="numba")
    np.testing.assert_array_equal(a, t.apply(x, impl="numpy"))
    with pytest.warns(DeprecationWarning, match="engine="):
        np.testing.assert_array_equal(KT.forward_fast(x, t.coefficients, engine="numpy"), a)

    w = rng.poisson(20.0, (4, 7, 7)).astype(np.float32)
    with pytest.warns(DeprecationWarning, match="backend="):
        r = gf.fit_gaussians(w, backend="numpy")
    np.testing.assert_array_equal(r["params"], gf.fit_gaussians(w, impl="numpy")["params"])
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="backend='gpu'"):
        gf.fit_gaussians(w, backend="gpu")
    with pytest.raises(TypeError, match="both impl= and"):
        gf.fit_gaussians(w, backend="numpy", impl="numba")


def test_old_fit_backend_keyword_of_the_imaging_functions():
    from evflow.imaging.detect import detect_spots
    from evflow.imaging.localize import fit_spots

    rng = np.random.default_rng(1)
    img = rng.poisson(10.0, (48, 48)).astype(np.float32)
    img[20:23, 30:33] += 400.0
    with pytest.warns(DeprecationWarning, match="fit_backend="):
        a = fit_spots(img, [21], [31], fit_backend="numpy")
    b = fit_spots(img, [21], [31], impl="numpy")
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    with pytest.warns(DeprecationWarning, match="fit_backend="):
        c = detect_spots(img, psf_sigma_px=1.3, fit_backend="numba")
    d = detect_spots(img, psf_sigma_px=1.3)
    assert len(d) >= 1
    np.testing.assert_array_equal(c.to_numpy(), d.to_numpy())


# ----------------------------------------------------------------------------- CUDA constants from Python


def _preamble_defines():
    out = {}
    for line in ph.cuda_preamble().splitlines():
        m = re.fullmatch(r"#define (\w+) \((.+)\)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_phenotype_cu_constants_come_from_python():
    d = _preamble_defines()
    assert int(d["FINE_SUB"]) == ph.FINE_SUB == 1024
    assert int(d["FINE_EMIN"]) == ph.FINE_EMIN
    assert int(d["FINE_OCT"]) == ph.FINE_OCT
    assert int(d["FINE_NBINS"]) == ph.FINE_NBINS == ph.FINE_SUB * ph.FINE_OCT + 2
    assert float.fromhex(d["FINE_LO"]) == ph._FINE_LO == 2.0**-24
    assert float.fromhex(d["FINE_HI"]) == ph._FINE_HI == 2.0**40
    assert int(d["MAX_SLOTS"]) == ph.MAX_SLOTS and int(d["MAX_DIMS"]) == ph.MAX_DIMS
    # the packed-plan layout: every header slot, as the kernels in Python index it
    layout = {k: v for k, v in d.items() if re.match(r"[HOD]_", k)}
    assert len(layout) == 34 == ph._HEADER_LEN
    for name, text in layout.items():
        assert int(text) == getattr(plan_mod, "_" + name), name
    assert sorted(int(v) for v in layout.values()) == list(range(ph._HEADER_LEN))  # no slot twice
    assert int(d["H_NOUT"]) == 33 and int(d["D_H2"]) == 32 and int(d["O_SLOT_KIND"]) == 11


def test_phenotype_cu_has_no_hand_written_copies_and_uses_only_generated_names():
    from evflow.kernels import read_source

    src = read_source("phenotype.cu")
    generated = set(_preamble_defines())
    written = set(re.findall(r"^\s*#\s*define\s+(\w+)", src, flags=re.M))
    assert not written & generated, f"hand-written copies in phenotype.cu: {sorted(written & generated)}"
    used = set(re.findall(r"\b((?:H|O|D)_[A-Z0-9_]+|FINE_[A-Z]+|MAX_[A-Z]+)\b", src))
    assert used - generated == set(), f"phenotype.cu uses constants nobody defines: {sorted(used - generated)}"
    assert {"H_S", "O_MK_SLOT", "D_H2", "FINE_NBINS", "FINE_LO", "MAX_SLOTS"} <= used
    from evflow.kernels.phenotype_cupy import cuda_source

    assert cuda_source().startswith(ph.cuda_preamble()) and cuda_source().endswith(src)


def test_gaussfit_cu_defaults_agree_with_python():
    from evflow.kernels import gaussfit_model as M, read_source

    src = read_source("gaussfit.cu")
    opts = dict(o[2:].split("=", 1) for o in gf.cuda_options(9))
    assert opts["EVF_W"] == "9"
    want = {"EVF_LAMBDA0": M._LAMBDA0, "EVF_LAMBDA_MIN": M._LAMBDA_MIN, "EVF_LAMBDA_MAX": M._LAMBDA_MAX,
            "EVF_MIN_PHOTONS": M._MIN_PHOTONS, "EVF_MIN_BACKGROUND": M._MIN_BACKGROUND}
    for name, value in want.items():
        assert float(opts[name]) == value, name
        m = re.search(rf"#define {name} (\S+)", src)  # the #ifndef fallback in the source
        assert m and float(m.group(1)) == value, name


def test_device_caches_are_bounded():
    from evflow.kernels import _cuda, phenotype_cupy, transforms

    assert _cuda._load.cache_info().maxsize == _cuda.MODULE_CACHE_SIZE
    assert phenotype_cupy._DEVICE_PLANS.maxsize == 64 and transforms._DEVICE_KNOTS.maxsize == 64
    c = _cuda.BoundedCache(maxsize=3)
    for i in range(5):
        c.put(i, str(i))
    assert len(c) == 3 and c.get(0) is None and c.get(1) is None
    assert c.get(2) == "2"  # used: now the most recent
    c.put(5, "5")
    assert c.get(3) is None and c.get(2) == "2" and c.get(5) == "5"
