"""The layout's import rules: numerics never import the case reader, the command line, the driver or plots;
no production module imports the numpy twins (gridpde/twins/, for tests only)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gridpde"
NUMERICS = ["grid", "particles", "attention", "objective", "train", "ntk", "twins"]
FORBIDDEN = ("gridpde.casefile", "gridpde.cli", "gridpde.driver", "gridpde.io.plot", "gridpde.io.results")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against the file's package
            package = path.relative_to(PKG.parent).parent.parts
            base = ".".join(package[: len(package) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # from gridpde import twins
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _dynamic_imports(path: Path) -> set[str]:
    """Module names given as string literals to ``import_module(...)`` or ``__import__(...)``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if func in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("folder", NUMERICS)
def test_numerics_do_not_import_reader_cli_driver_or_io(folder):
    for path in (PKG / folder).rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(FORBIDDEN)]
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_only_the_factory_reads_the_method_name():
    for path in PKG.rglob("*.py"):
        # the factory; the case reader and spec decide whether a case needs [grid]
        if path.name in ("method.py", "casefile.py", "spec.py") or "validation" in path.parts:
            continue
        text = path.read_text()
        for needle in ('method == "grid"', "method == 'grid'", 'method == "particles"', 'name == "grid"'):
            assert needle not in text, f"{path.relative_to(PKG)} branches on the method name ({needle})"


def test_no_production_module_imports_the_twins():
    twins = PKG / "twins"
    assert (twins / "__init__.py").exists()
    for path in PKG.rglob("*.py"):
        if twins in path.parents:
            continue
        names = _imports(path) | _dynamic_imports(path)
        bad = [m for m in names if m == "gridpde.twins" or m.startswith("gridpde.twins.")]
        assert not bad, f"{path.relative_to(PKG)} imports the test-only twins {bad}"
