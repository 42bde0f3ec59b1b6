"""The public API: top-level verbs and errors, the gates/transforms namespaces, the type stub."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import evflow

PKG = Path(evflow.__file__).resolve().parent


def _stub_names():
    tree = ast.parse((PKG / "__init__.pyi").read_text())
    imported, declared, listed = set(), set(), None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                # a re-export in a stub is spelled "name as name"
                assert a.asname == a.name, f"stub import {a.name!r} is not re-exported (write '{a.name} as {a.name}')"
                imported.add(a.name)
        elif isinstance(node, ast.AnnAssign):
            declared.add(node.target.id)
        elif isinstance(node, ast.Assign) and node.targets[0].id == "__all__":
            listed = [e.value for e in node.value.elts]
    return imported, declared, listed


def test_stub_lists_every_export_and_each_resolves():
    imported, declared, listed = _stub_names()
    assert listed == evflow.__all__
    assert imported | declared == set(evflow.__all__)
    assert set(evflow._EXPORTS) <= imported
    for name in evflow.__all__:
        assert getattr(evflow, name) is not None, name
        assert name in dir(evflow)


def test_stub_imports_name_the_defining_modules():
    tree = ast.parse((PKG / "__init__.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = importlib.import_module(f"evflow.{node.module}")
            for a in node.names:
                assert hasattr(mod, a.name), f"evflow.{node.module} has no {a.name}"
                if a.name in evflow._EXPORTS:
                    assert evflow._EXPORTS[a.name] == f"evflow.{node.module}", a.name


def test_package_data_is_declared():
    text = (PKG.parents[1] / "pyproject.toml").read_text()
    assert (PKG / "py.typed").is_file()
    assert '"evflow" = ["py.typed", "*.pyi"]' in text
    assert '"evflow.synth"' in text


def test_namespaces_reexport_the_implementations():
    from evflow.flow import compensation, gates, transforms

    for name in evflow.gates.__all__:
        assert getattr(evflow.gates, name) is getattr(gates, name)
    for name in evflow.transforms.__all__:
        src = compensation if name == "Compensation" else transforms
        assert getattr(evflow.transforms, name) is getattr(src, name)
    assert {"PolygonGate", "GatingStrategy", "Dimension", "BooleanGate"} <= set(evflow.gates.__all__)
    assert {"LogicleTransform", "Compensation"} <= set(evflow.transforms.__all__)


def test_old_top_level_names_still_resolve_but_are_not_listed():
    for name, module in evflow._COMPAT.items():
        assert name not in evflow.__all__
        assert getattr(evflow, name) is getattr(importlib.import_module(module), name)
    assert evflow.PolygonGate is evflow.gates.PolygonGate
    assert evflow.LogicleTransform is evflow.transforms.LogicleTransform
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        evflow.NotAThing  # noqa: B018


def test_verbs_and_errors_at_the_top_level():
    for name in ("read_fcs", "write_fcs", "read_images", "read_gatingml", "write_gatingml", "count_phenotypes",
                 "count_vesicles", "detect_spots", "calibrate_mesf", "calibrate_scatter", "run"):
        assert callable(getattr(evflow, name)), name
    for name in ("EvflowError", "FCSError", "GatingError", "CalibrationError", "ImageError", "ConfigError",
                 "BackendError"):
        assert issubclass(getattr(evflow, name), evflow.EvflowError)
        assert name in evflow.__all__


def test_import_stays_light():
    code = ("import sys, evflow; evflow.gates.PolygonGate; evflow.transforms.LogicleTransform; evflow.synth.tirf; "
            "bad = [m for m in ('cupy', 'napari', 'qtpy', 'PyQt5') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_synth_package_keeps_tirf_callable():
    import evflow.synth.flow as sflow

    assert callable(evflow.synth.tirf)
    s = evflow.synth.tirf((16, 16), n_vesicles=2, seed=0)
    assert s.images.shape[-2:] == (16, 16)
    tirf_module = sys.modules["evflow.synth.tirf"]
    assert tirf_module.tirf is evflow.synth.tirf and tirf_module.SyntheticTIRF is evflow.synth.SyntheticTIRF
    assert sflow.synthetic_ev_sample is evflow.synth.synthetic_ev_sample
    for name in evflow.synth.__all__:
        assert getattr(evflow.synth, name) is not None


def test_deprecated_subtract_background_aliases():
    from evflow.flow import controls
    from evflow.imaging import background

    img = np.random.default_rng(0).poisson(10.0, (32, 32)).astype(np.float32)
    with pytest.warns(DeprecationWarning, match="subtract_image_background"):
        old = evflow.subtract_background(img, 3)
    np.testing.assert_array_equal(old, evflow.subtract_image_background(img, 3))
    assert evflow.subtract_image_background is background.subtract_image_background
    with pytest.warns(DeprecationWarning, match="subtract_buffer_counts"):
        chk = controls.subtract_background({"count": 1000, "volume_ul": 1.0}, {"count": 10, "volume_ul": 1.0})
    new = evflow.subtract_buffer_counts({"count": 1000, "volume_ul": 1.0}, {"count": 10, "volume_ul": 1.0})
    assert chk.values == new.values and chk.status == new.status == "pass"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evflow.subtract_buffer_counts({"count": 1}, {"count": 0})
