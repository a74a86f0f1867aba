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
