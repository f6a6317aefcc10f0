"""Imports point down only: cli -> flows -> tasks -> anomdet -> db.

Every module of these packages is parsed, and every import in it counts: at the top,
inside a function (the command line imports what a command needs when it runs), under
TYPE_CHECKING, relative, or by a literal name given to importlib.import_module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Highest first: a package may import those after it, never those before it.
LAYERS = ("cli", "flows", "tasks", "anomdet", "db")


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The absolute name of a `from` import, relative ones resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[:-node.level]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_names(source: str, module: str) -> list[tuple[int, str]]:
    """(line, module name) of every import in `source`, the code of module `module`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _absolute(node, module)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def upward_imports(root: Path) -> list[str]:
    """`path:line: imports name` for each import of a higher layer, under `root`."""
    wrong = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((root / layer).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for line, name in imported_names(path.read_text(), module):
                top = name.split(".")[0]
                if top in LAYERS[:rank]:
                    wrong.append(f"{path.relative_to(root)}:{line}: imports {name}")
    return wrong


def test_no_import_points_back_up() -> None:
    assert upward_imports(ROOT) == []


def test_every_layer_is_a_package_here() -> None:
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), layer


@pytest.mark.parametrize(("layer", "code"), [
    ("db", "def f():\n    from anomdet.settings import Settings\n"),
    ("anomdet", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tasks.model\n"),
    ("tasks", "import importlib\nimportlib.import_module('flows.retrain')\n"),
    ("flows", "from cli import app\n"),
])
def test_an_import_back_up_is_found(tmp_path: Path, layer: str, code: str) -> None:
    for name in LAYERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / layer / "wrong.py").write_text(code)
    # Downward imports are fine: the lowest layer's names may be imported from anywhere.
    (tmp_path / layer / "fine.py").write_text("import db.models\nfrom db import engine\n")
    [found] = upward_imports(tmp_path)
    assert found.startswith(f"{layer}/wrong.py:")
