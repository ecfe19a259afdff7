"""The console script finds its configs from an editable install and from a built wheel.

Each install goes into a fresh virtual environment that reuses the running interpreter's
packages (torch is far too big to reinstall), and kdrun is then run from an unrelated directory.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, read_json

pytestmark = pytest.mark.slow


def _running_site_dirs() -> list[str]:
    """The site-packages directories of the interpreter running the tests: a venv's own, not
    its base interpreter's."""
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [d for d in dirs if Path(d).is_dir()]


def _venv(path: Path) -> Path:
    """A new venv whose sys.path ends with the running interpreter's site-packages.

    ``--system-site-packages`` would expose the *base* interpreter's packages, and inside a
    venv that base has no torch and no pip. A line of a .pth file only appends a directory to
    sys.path (the .pth files in that directory are not run, so an editable kdrun there stays
    invisible), and the new venv's own site-packages comes first: its kdrun is the one used."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    python = str(path / "bin" / "python")
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    pth = Path(out.stdout.strip()) / "_kdrun_tests_parent_env.pth"
    pth.write_text("".join(f"{d}\n" for d in _running_site_dirs()))
    return path / "bin"


def _pip(bindir: Path, *args: str) -> None:
    subprocess.run(
        [
            str(bindir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["OMP_NUM_THREADS"] = "2"
    return env


def _smoke(bindir: Path, where: Path) -> dict:
    run_dir = where / "run"
    p = subprocess.run(
        [
            str(bindir / "kdrun"),
            "experiment=smoke",
            f"hydra.run.dir={run_dir}",
            f"store_dir={where / 'store'}",
        ],
        cwd=where,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    return read_json(run_dir / "metrics.json")


def _kdrun_location(bindir: Path, where: Path) -> str:
    code = "import kdrun.config as c; print(c.__file__); print(c.config_dir())"
    p = subprocess.run(
        [str(bindir / "python"), "-c", code],
        cwd=where,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return p.stdout


def test_wheel_ships_the_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("kdrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for must in (
        "kdrun/conf/config.yaml",
        "kdrun/conf/dataset/digits.yaml",
        "kdrun/conf/experiment/smoke.yaml",
        "kdrun/cli/main.py",
        # every subpackage: pyproject lists them by name, so a new one must be added there
        *(
            str(d.relative_to(REPO) / "__init__.py")
            for d in (REPO / "kdrun").glob("*/")
            if (d / "__init__.py").is_file()
        ),
    ):
        assert must in names, must
    assert not any(n.startswith("conf/") for n in names)
    for module in sorted((REPO / "kdrun").rglob("*.py")):
        rel = module.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} is not in the wheel: add its package to pyproject's list"


def test_non_editable_install_runs_from_anywhere(tmp_path):
    bindir = _venv(tmp_path / "venv")
    _pip(bindir, str(REPO))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _kdrun_location(bindir, elsewhere)
    assert str(tmp_path / "venv") in where and "kdrun/conf" in where  # the wheel's own copy
    assert _smoke(bindir, elsewhere)["status"] == "completed"


def test_editable_install_runs_from_anywhere(tmp_path):
    bindir = _venv(tmp_path / "venv")
    _pip(bindir, "-e", str(REPO))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _kdrun_location(bindir, elsewhere)
    assert str(REPO / "conf") in where  # the checkout's top-level conf/
    assert _smoke(bindir, elsewhere)["status"] == "completed"
