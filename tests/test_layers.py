"""The import rules of the house hold: the import-linter contracts of pyproject.toml are kept.

The contracts (``[tool.importlinter]``): onnxq imports no framework; only ``onnxq.rewrite`` imports
``onnxruntime.quantization`` / ``onnxruntime.transformers``; onnxq's modules form layers that are
only imported downwards (cli > api > consumers > stages > data and facts); no import cycles
between the modules of a package. A second test breaks each rule in a copy of the package and
checks that ``lint-imports`` notices, so a contract cannot silently stop matching anything.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

CONTRACTS = (
    "onnxq never imports a framework",
    "only onnxq.rewrite imports onnxruntime.quantization",
    "onnxq flows one way",
    "no import cycles",
)


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"lint-imports not installed at {LINT_IMPORTS}: pip install -e '.[test]'"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([str(LINT_IMPORTS), "--config", str(CONFIG), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _unresolved_imports(package: Path) -> list[str]:
    """``file:line -> module`` for each relative import of a module that does not exist."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        here = list(path.relative_to(package.parent).parts[:-1])  # the package holding the file
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            target = package.parent.joinpath(*base)
            if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                missing.append(f"{path.relative_to(package.parent)}:{node.lineno} -> {'.'.join(base)}")
    return missing


def test_internal_imports_resolve() -> None:
    missing = _unresolved_imports(ROOT / "onnxq")
    assert not missing, f"imports of onnxq modules that do not exist (lint-imports misreads them): {missing}"


def test_import_contracts_are_kept() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, "\n".join([*_unresolved_imports(ROOT / "onnxq"), result.stdout, result.stderr])
    for name in CONTRACTS:
        assert any(line.startswith(name) and " KEPT" in line for line in result.stdout.splitlines()), \
            f"contract {name!r} was not checked:\n{result.stdout}"


def test_each_contract_catches_a_violation(tmp_path: Path) -> None:
    copy = tmp_path / "onnxq"
    shutil.copytree(ROOT / "onnxq", copy, ignore=shutil.ignore_patterns("__pycache__"))
    breaches = {
        "plan.py": "import torch\n",  # a framework in the core
        "validate.py": "from onnxruntime.quantization import quantize_static\n",  # ORT quantization outside rewrite
        "metrics.py": "from .tune import tune as _tune\n",  # a bottom layer importing a consumer: also a cycle
    }
    for name, line in breaches.items():
        with open(copy / name, "a", encoding="utf-8") as f:
            f.write("\n" + line)
    result = _lint(tmp_path, pythonpath=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    for name in CONTRACTS:
        assert any(line.startswith(name) for line in broken), f"{name!r} missed its violation:\n{result.stdout}"
    assert "onnxq.plan -> torch" in result.stdout and "onnxq.validate -> onnxruntime.quantization" in result.stdout
