"""The design's import rules hold: the core imports no framework, and only onnxq/rewrite/ calls
onnxruntime.quantization."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxq"
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf2onnx")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_imports_no_framework(path):
    bad = [name for name in _imports(path) if name.split(".")[0] in FRAMEWORKS]
    assert not bad, f"{path.name} imports {bad}: frameworks are reached only through adapters"


@pytest.mark.parametrize("path", [p for p in SOURCES if "rewrite" not in p.relative_to(PACKAGE).parts],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_rewrite_package_calls_ort_quantization(path):
    bad = [name for name in _imports(path) if name.startswith("onnxruntime.quantization")
           or name.startswith("onnxruntime.transformers")]
    assert not bad, f"{path.name} imports {bad}: only onnxq/rewrite/ may"


#: Longest function, in lines from ``def`` to its last line (docstring included).
MAX_FUNCTION_LINES = 80
#: Functions allowed to be longer for now: "path::qualified name" -> why they are not split today.
LONG_FUNCTIONS: dict[str, str] = {}


def _functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method defined in ``path``."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def _long_functions() -> dict[str, int]:
    return {f"{path.relative_to(PACKAGE).as_posix()}::{name}": lines for path in SOURCES
            for name, lines in _functions(path) if lines > MAX_FUNCTION_LINES}


def test_no_function_over_80_lines():
    long = _long_functions()
    new = {name: lines for name, lines in long.items() if name not in LONG_FUNCTIONS}
    assert not new, (f"functions over {MAX_FUNCTION_LINES} lines (split them, or add them to LONG_FUNCTIONS "
                     f"with the reason): " + ", ".join(f"{n} ({lines})" for n, lines in sorted(new.items())))
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"{stale} now fit in {MAX_FUNCTION_LINES} lines: remove them from LONG_FUNCTIONS"
