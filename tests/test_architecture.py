"""Package structure: no import cycle between modules, no oversized module.

Imports are read from the source (every ``import`` statement, also those inside functions), so a cycle
that lazy imports only hide at import time is still found.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: package name -> source folder (as pyproject.toml's package-dir maps them)
PACKAGES = {"evflow": ROOT / "src" / "evflow", "evflow.kernels": ROOT / "kernels",
            "evflow_napari": ROOT / "plugins" / "napari" / "evflow_napari"}
MAX_LINES = 700


def _modules(packages=None) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    mods = {}
    for pkg, folder in (packages or PACKAGES).items():
        for p in sorted(folder.rglob("*.py")):
            parts = list(p.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = (p, is_pkg)
    return mods


def import_graph(mods) -> dict[str, set[str]]:
    """Module -> the modules of ``mods`` it imports (``from pkg import sub`` counts as importing pkg.sub)."""

    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    deps.add(sub if sub in mods else known(mod))
        graph[name] = {d for d in deps if d and d != name}
    return graph


def import_cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_reads_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nimport numpy\n")
    graph = import_graph(_modules({"p": pkg}))
    assert graph["p.a"] == {"p.sub.b"} and graph["p.sub.b"] == {"p.a"}
    assert import_cycles(graph) == [["p.a", "p.sub.b"]]


def test_no_import_cycle():
    mods = _modules()
    assert "evflow.pipeline.run" in mods and "evflow.kernels" in mods
    graph = import_graph(mods)
    assert "evflow.pipeline.config" in graph["evflow.pipeline.run"]
    cycles = import_cycles(graph)
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) + ")"
                       for c in cycles)
    assert not cycles, f"import cycles: {detail}"


def test_no_module_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p, _ in _modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


#: device paths: data stay on the device between evflow.backend.to_device and to_host
DEVICE_PATHS = ["src/evflow/flow/_events.py", "src/evflow/flow/phenotypes.py", "src/evflow/flow/density.py",
                "src/evflow/imaging/_core.py", "src/evflow/imaging/_field.py", "src/evflow/imaging/localize.py",
                "src/evflow/imaging/noise.py", "kernels/phenotype.py", "kernels/phenotype_cupy.py",
                "kernels/phenotype_plan.py", "kernels/gaussfit.py", "kernels/gaussfit_cupy.py", "kernels/filters.py",
                "kernels/minmax.py", "kernels/focus.py"]


def test_host_device_crossings_only_in_backend():
    """Copies between host and device go through evflow.backend (to_device / to_host, counted by
    count_transfers); no ``.get()``, ``cupy.asnumpy``, ``cupy.asarray`` or ``__import__('cupy')`` elsewhere
    in the package, and no ``to_numpy`` (uncounted on the host) inside the device paths."""
    import re

    bad = []
    for folder in PACKAGES.values():
        for p in sorted(folder.rglob("*.py")):
            if p == ROOT / "src" / "evflow" / "backend.py":
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if re.search(r"\.get\(\)|asnumpy\(|cupy\.asarray\(|__import__\(.cupy.\)", code):
                    bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    for rel in DEVICE_PATHS:
        for i, line in enumerate((ROOT / rel).read_text().splitlines(), 1):
            if re.search(r"(?<![\w.\]])to_numpy\(", line.split("#", 1)[0]):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, "host<->device crossings outside evflow.backend:\n" + "\n".join(bad)
