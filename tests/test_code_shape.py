"""The shape the code keeps (issue "the house"): small modules and functions, one-way imports.

- no module of ``toolkit/`` or ``plugins/`` over ``MAX_MODULE_LINES`` lines;
- no function over ``MAX_FUNCTION_LINES`` lines (its body, docstring included);
- no import of the package root (``import toolkit``, ``from toolkit import __version__``) from
  inside ``toolkit/``: the root imports its modules, so they cannot import it back;
- no private name (``_x``) of ours imported from another module, in ``toolkit/``, ``plugins/`` and
  the tests.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolkit", "plugins")
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 85


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", _modules(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_nothing_inside_the_package_imports_its_root():
    found = []
    for path in _modules("toolkit"):
        if path.name == "__init__.py" and path.parent.name == "toolkit":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import) and any(a.name == "toolkit" for a in node.names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} import toolkit")
            elif isinstance(node, ast.ImportFrom) and node.module == "toolkit" and node.level == 0:
                modules = {p.stem for p in (ROOT / "toolkit").iterdir()}
                names = [a.name for a in node.names if a.name not in modules]
                if names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} from toolkit import "
                                 + ", ".join(names))
    assert not found, "import these from their own modules: " + "; ".join(found)


def test_no_private_name_is_imported_across_modules():
    found = []
    for path in _modules(*PACKAGES, "tests"):
        for node in ast.walk(_tree(path)):
            ours = node.level > 0 or (node.module or "").split(".")[0] in ("toolkit", "toolkit_plugins") \
                if isinstance(node, ast.ImportFrom) else False
            if ours:
                private = [a.name for a in node.names if a.name.startswith("_")
                           and not a.name.startswith("__")]
                if private:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} "
                                 f"import {', '.join(private)}")
    assert not found, "make these public or keep them where they are: " + "; ".join(found)
