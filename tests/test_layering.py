"""The import tree is the architecture: the IR knows no framework, passes know only the IR,
backends never reach into the frontend. Checked on the sources and in a fresh interpreter."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _violations(folder: str, allowed) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in sorted(_imports(path)):
            if name.startswith("tgraph") and not allowed(name):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_passes_import_only_the_ir():
    def allowed(name: str) -> bool:
        return name == "tgraph" or name.startswith(("tgraph.ir", "tgraph.passes"))

    assert _violations("passes", allowed) == []


def test_backends_import_no_frontend():
    assert _violations("backends", lambda name: not name.startswith("tgraph.frontend")) == []


def test_ir_imports_no_framework_sources():
    frameworks = ("torch", "onnx", "onnxruntime")
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "tgraph" / "ir").rglob("*.py"))
        for name in sorted(_imports(path))
        if name.split(".")[0] in frameworks
    ]
    assert bad == []


@pytest.mark.parametrize("module", ["tgraph", "tgraph.ir", "tgraph.passes"])
def test_import_loads_no_framework(module):
    code = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_package_names_resolve():
    import tgraph

    for name in tgraph.__all__:
        assert getattr(tgraph, name) is not None


def test_one_backend_table_and_one_lowering_error():
    import tgraph.backends as backends
    from tgraph.backends import onnx_lowering, torch_backend

    assert backends.BACKENDS == ("ort", "torch", "reference")
    for name in backends.BACKENDS:
        assert callable(backends.get_backend(name).lower)
    assert onnx_lowering.LoweringError is torch_backend.LoweringError is backends.LoweringError
    with pytest.raises(ValueError, match="valid backends: ort, torch, reference"):
        backends.get_backend("tvm")
