"""The layering rules, checked on the source: ``compressor`` knows nothing of HTTP or evals, the
sidecar does not depend on the eval harness, and one package reaches another only through its
public modules (no ``_private`` module of another package)."""

import ast
from pathlib import Path

import pytest

from tests.helpers.data import ROOT

PACKAGES = ("compressor", "service", "eval", "ctxgate")
# who may import whom (besides itself)
ALLOWED = {
    "compressor": set(),
    "service": {"compressor"},
    "eval": {"compressor", "service", "ctxgate"},
    "ctxgate": {"compressor", "service", "eval"},
}


def _raw_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def _imports(path: Path) -> list[str]:
    """Imported modules, named by their folder: ``ctxgate.compressor.x`` is ``compressor.x``."""
    out = []
    for name in _raw_imports(path):
        parts = name.split(".")
        out.append(".".join(parts[1:]) if len(parts) > 1 and parts[0] == "ctxgate" and parts[1] in PACKAGES else name)
    return out


def test_every_import_uses_the_installed_namespace():
    """``compressor``, ``service`` and ``eval`` are installed as ``ctxgate.*`` only (pyproject's package-dir):
    a bare ``import service`` would work in the checkout and break in a wheel."""
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder in (*PACKAGES, "tests", "examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _raw_imports(path)
        if name.split(".")[0] in ("compressor", "service", "eval")
    ]
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction_and_public_surfaces(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top not in PACKAGES or top == package:
                continue
            if top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name} ({package} may not depend on {top})")
            elif any(part.startswith("_") for part in name.split(".")[1:]):
                bad.append(f"{path.relative_to(ROOT)} imports the private module {name}")
    assert bad == []


def test_service_does_not_depend_on_eval_even_lazily():
    # the sidecar image must run without the eval harness's heavy dependencies
    for path in (ROOT / "service").rglob("*.py"):
        assert not any(n.split(".")[0] == "eval" for n in _imports(path)), path


@pytest.mark.parametrize(
    "module", ["ctxgate.compressor", "ctxgate.compressor.models", "ctxgate.compressor.training", "ctxgate.service"]
)
def test_exported_names_exist_and_are_listed(module):
    import importlib

    mod = importlib.import_module(module)
    assert sorted(set(mod.__all__)) == sorted(mod.__all__), "duplicates in __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which does not exist"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_")
        and not isinstance(v, type(ast))
        and getattr(v, "__module__", module).startswith(".".join(module.split(".")[:2]))
        and n not in ("annotations",)
    }
    assert public <= set(mod.__all__) | {n for n in public if isinstance(vars(mod)[n], type(importlib))}
