"""Guards on the package's shape: the import contracts hold, modules stay small, docs stay in the repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lm_eval_approx"
MAX_MODULE_LINES = 400


def _sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tasks").glob("*.py")])


def test_import_contracts_hold():
    """`lint-imports` (import-linter) checks the layers, sibling cycles and the plugin boundary."""
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if linter is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_module_is_over_the_size_limit():
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines hold two ideas: {long}"


def test_docstrings_point_only_inside_the_repository():
    """The repository explains itself: a cited design document must be one of ours, in docs/."""
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for name in ("DESIGN.md", "EVIDENCE.md", "STYLE.md", "shared/docs"):
            if name in text:
                assert (ROOT / "docs" / name).is_file(), f"{path.relative_to(ROOT)} cites {name}"


def test_every_subpackage_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        text = init.read_text(encoding="utf-8").strip()
        assert text.startswith(('"""', 'r"""')), f"{init.relative_to(ROOT)} has no docstring"


def test_the_command_line_starts_without_the_model_stack():
    """Building every subcommand's parser imports no torch, transformers or lm-eval: those load only
    when a command computes something (function-level imports marked where they happen)."""
    code = ("import sys; from lm_eval_approx.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
