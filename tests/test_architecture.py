"""The house rules of DESIGN.md section 4, checked on every `make test`:

- import-linter contracts in pyproject.toml (layers point down, no import cycles between the files or
  folders of any folder, `policy.base` imports nothing else of lapa, `vla` never imports `laq`, `sim`
  never imports the VLA);
- ruff with the rule set in pyproject.toml;
- no module of the package over the size the house rules allow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lapa"
MAX_MODULE_LINES = 420  # "files of a few hundred lines"; ~400 with a little room for a docstring


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    pytest.importorskip("importlinter")
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    result = _run("-c", code)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: " in result.stdout and " 0 broken" in result.stdout, result.stdout[-2000:]


def test_ruff_is_clean():
    pytest.importorskip("ruff")
    result = _run("-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks", "scripts")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"
