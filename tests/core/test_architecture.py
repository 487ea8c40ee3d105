"""The core does not know its plugins: ``toolkit/`` names none of the variables that the built-in
plugins declare, imports no private name across modules, and never imports its own package root."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from toolkit import schema

TOOLKIT = Path(__file__).resolve().parents[2] / "toolkit"
PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MODULES = sorted(TOOLKIT.rglob("*.py"))

def _names(path: Path) -> set[str]:
    """Every string constant and identifier in a module (docstrings and comments left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.add(node.value)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
    return found


def test_the_built_in_plugins_declare_their_variables():
    declared = schema.declared()
    for name in ("B", "B_features", "BC", "BR", "Mg", "Madv", "adversarial_features", "C", "R",
                 "C_mean", "boundary_success"):
        assert name in declared, name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_no_core_module_names_a_plugin_variable(path):
    plugin_variables = set(schema.declared()) - set(schema.CORE)
    named = _names(path) & plugin_variables
    assert not named, f"{path.name} names plugin variables {sorted(named)}"


TESTS = sorted((TOOLKIT.parent / "tests").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES + sorted(PLUGINS.glob("*.py")) + TESTS, ids=lambda p: p.name)
def test_no_private_name_is_imported_across_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module
               and node.module.split(".")[0] in ("toolkit", "toolkit_plugins")
               for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
    assert not private, f"{path.name} imports private names {private}"


@pytest.mark.parametrize("path", [p for p in MODULES if p != TOOLKIT / "__init__.py"],
                         ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_the_core_does_not_import_its_package_root(path):
    """``import toolkit`` or ``from toolkit import <not a module>`` inside the package would run
    the root's imports from within them; import from the module that defines the name."""
    modules = {p.stem for p in TOOLKIT.iterdir()}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            assert all(alias.name != "toolkit" for alias in node.names), f"{path.name}:{node.lineno}"
        elif isinstance(node, ast.ImportFrom) and node.module == "toolkit" and node.level == 0:
            names = [alias.name for alias in node.names if alias.name not in modules]
            assert not names, f"{path.name}:{node.lineno} imports {names} from the package root"


@pytest.mark.parametrize("path", MODULES + sorted(PLUGINS.glob("*.py")), ids=lambda p: p.name)
def test_modules_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= 400, f"{path.name} has {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}: {node.name} has {length} lines"
