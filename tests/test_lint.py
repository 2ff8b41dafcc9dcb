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


def test_every_benchmark_script_imports():
    """Benchmarks run on the GPU machine, never in this suite: a name the package no longer has
    would otherwise be found only there, with device time spent."""
    scripts = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py"))
    result = subprocess.run(
        [sys.executable, "-c", "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]", *scripts],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "benchmarks")])},
    )
    assert result.returncode == 0, result.stderr[-2000:]
