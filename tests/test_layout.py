"""The layout's import rule: numerics never import the case reader, the command line, the driver or plots."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gridpde"
NUMERICS = ["grid", "particles", "attention", "objective", "train", "ntk"]
FORBIDDEN = ("gridpde.casefile", "gridpde.cli", "gridpde.driver", "gridpde.io.plot", "gridpde.io.results")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
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
