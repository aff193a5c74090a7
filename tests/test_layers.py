"""The layering rules, checked on the source: ``compressor`` knows nothing of HTTP or evals, the
sidecar does not depend on the eval harness, and one package reaches another only through its
public modules (no ``_private`` module of another package)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compressor", "service", "eval", "ctxgate")
# who may import whom (besides itself)
ALLOWED = {
    "compressor": set(),
    "service": {"compressor"},
    "eval": {"compressor", "service", "ctxgate"},
    "ctxgate": {"compressor", "service", "eval"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


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


@pytest.mark.parametrize("module", ["compressor", "compressor.models", "compressor.training", "service"])
def test_exported_names_exist_and_are_listed(module):
    import importlib

    mod = importlib.import_module(module)
    assert sorted(set(mod.__all__)) == sorted(mod.__all__), "duplicates in __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which does not exist"
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not isinstance(v, type(ast))
              and getattr(v, "__module__", module).startswith(module.split(".")[0])
              and n not in ("annotations",)}
    assert public <= set(mod.__all__) | {n for n in public if isinstance(vars(mod)[n], type(importlib))}
