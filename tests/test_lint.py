"""The suite lints the repository: undefined names, unused imports and variables (pyflakes'
checks, through ruff) and syntax errors, in every Python file, so that dead code and
half-finished edits cannot land; and it type-checks the package (mypy, configured in
pyproject.toml), so that a call that does not fit its signature is caught before it runs."""

from __future__ import annotations

import os
import subprocess
import sys

from backend_helpers import REPO

CHECKED = ("src", "tests", "benchmarks", "demo")


def test_no_undefined_names_unused_imports_or_syntax_errors():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,E9", *CHECKED],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_type_checks():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", os.devnull, "src/batch_predict"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
