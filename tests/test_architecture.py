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


@pytest.mark.slow  # one interpreter, but ~100 fresh imports of kdrun's modules
def test_every_module_imports_alone():
    """Each module with no other kdrun module loaded before it (kdrun's modules are dropped
    from sys.modules between imports; torch and the rest stay loaded, which keeps it to one
    interpreter): a module that works only after another was imported fails here."""
    code = (
        "import importlib, pkgutil, sys, kdrun\n"
        "mods = sorted(m.name for m in pkgutil.walk_packages(kdrun.__path__, 'kdrun.'))\n"
        "bad = []\n"
        "for m in mods:\n"
        "    for k in [k for k in sys.modules if k == 'kdrun' or k.startswith('kdrun.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print(len(mods))\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_package_is_in_the_architecture_page():
    """docs/ARCHITECTURE.md names every package under kdrun/ (as kdrun/<name>/)."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    packages = sorted(p.parent.name for p in (REPO / "kdrun").glob("*/__init__.py"))
    missing = [p for p in packages if f"kdrun/{p}/" not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"
