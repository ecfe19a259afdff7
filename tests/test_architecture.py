"""The package's imports run one way: no cycle, no kdrun import inside a function or at the
bottom of a file; every module imports on its own, in any order."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_no_import_cycle_and_no_misplaced_import():
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_architecture.py"), "--longest", "0"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert ", 0 cycles" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_any_order(order):
    """All modules in a fresh interpreter, leaves first or entry point first: an import that
    works only after another module was imported fails one of the two."""
    code = (
        "import importlib, pkgutil, kdrun\n"
        "mods = sorted(m.name for m in pkgutil.walk_packages(kdrun.__path__, 'kdrun.'))\n"
        f"mods = {order}(mods)\n"
        "[importlib.import_module(m) for m in mods]\n"
        "print(len(list(mods)))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
