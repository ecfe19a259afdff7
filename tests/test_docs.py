"""The documentation: the site builds with warnings as errors, and every `kdrun` command that
README.md and docs/*.md show is one kdrun accepts. Each documented job's overrides must
compose into a valid config (the check `kdrun` itself runs before any job starts); the quick
commands (`kdrun list`, `kdrun softmax`, `--help`, `--cfg job`) run; the smoke jobs run in
the slow tier. A command that cannot be checked here is listed in SKIP with its reason."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdrun.cli.app import precheck
from kdrun.cli.commands import SUBCOMMANDS
from kdrun.cli.main import run
from kdrun.cli.plugins import load_plugins
from tests.conftest import kdrun_env

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Documented commands this test cannot check, by a substring of the command, with the reason.
SKIP = {
    "method=toy_kd": "the plugin example needs the package tests/test_methods_plugins.py builds",
}
# Documented as refused: the command must fail its check with this text in the error.
REFUSED = {"method=dkd method.T=2": "T="}

# Hydra's own flags that take a value (kept out of the overrides that are composed).
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--config-dir", "-cd", "--config-path", "-cp"}
_FLAGS_WITH_VALUE |= {"--config-name", "-cn", "--package", "-p", "--info", "-i"}
_FENCE = re.compile(r"^\s*(```|~~~)(\w*)")
_INLINE = re.compile(r"`([^`\n]+)`")
# What may stand before `kdrun` on a line: a prompt, env assignments, a launcher, `&&`.
_LEAD = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S* )*(?:.*(?:&& | -m ))?kdrun(?=\s|$)")


@dataclass(frozen=True)
class Documented:
    where: str  # file:line
    text: str  # the command as written, after `kdrun`
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: kdrun {self.text}"


def _fenced_lines(lines: list[str]):
    """(line number, logical line) of shell-like fenced blocks; backslash continuations joined."""
    lang, inside, buf, start = "", False, "", 0
    for i, line in enumerate(lines, 1):
        m = _FENCE.match(line)
        if m:
            inside, lang = (not inside), m.group(2) if not inside else ""
            continue
        if not inside or lang not in ("", "bash", "sh", "shell", "console"):
            continue
        if not buf and line[:1].isspace():
            continue  # printed output (a centred table title), not a command
        buf, start = (buf + " " + line.strip(), start) if buf else (line.strip(), i)
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        yield start, buf
        buf = ""


def _inline_spans(lines: list[str]):
    """(line number, text) of inline code spans outside fenced blocks."""
    inside = False
    for i, line in enumerate(lines, 1):
        if _FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            for m in _INLINE.finditer(line):
                yield i, m.group(1)


def _argv(rest: str) -> tuple[str, ...] | None:
    """The arguments of a documented command: optional `[...]` parts included, `...` dropped;
    None where the shell would expand something (a loop's `$var`)."""
    if "$" in rest:
        return None
    argv = shlex.split(rest, comments=True)
    out = []
    for a in argv:
        if a in ("...", "…"):
            continue
        if a.startswith("[") and a.endswith("]") and "=" in a and "," not in a:
            a = a[1:-1]  # `[dataset=fashion_mnist]`: an optional override, check it too
        out.append(a)
    return tuple(out)


def documented_commands() -> list[Documented]:
    found: dict[tuple[str, ...], Documented] = {}
    for path in DOC_FILES:
        lines = path.read_text().splitlines()
        for lineno, text in [*_fenced_lines(lines), *_inline_spans(lines)]:
            m = _LEAD.match(text.strip())
            if m is None:
                continue
            rest = text.strip()[m.end() :].strip()
            where = f"{path.relative_to(ROOT)}:{lineno}"
            argv = _argv(rest)
            if argv is not None and argv not in found:
                found[argv] = Documented(where, rest, argv)
    return list(found.values())


COMMANDS = documented_commands()


def _overrides(argv: tuple[str, ...]) -> list[str]:
    """The Hydra overrides of a job's argv: flags (and their values) left out, but -m kept:
    precheck reads it to tell a sweep from a comma typed by mistake."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _FLAGS_WITH_VALUE:
            skip = True
        elif not a.startswith("-") or a in ("-m", "--multirun"):
            out.append(a)
    return out


def _skip_reason(cmd: Documented) -> str | None:
    return next((why for key, why in SKIP.items() if key in cmd.text), None)


def test_the_docs_show_many_commands():
    # The extraction itself: a change that found nothing would pass every check below.
    assert len(COMMANDS) >= 40, [str(c) for c in COMMANDS]
    argvs = {c.argv for c in COMMANDS}
    assert () in argvs  # `pip install -e . && kdrun`: the default job
    assert ("-m", "T=1,2,4,8", "alpha=0.1,0.5,0.9") in argvs
    assert any(c.argv[:1] == ("softmax",) for c in COMMANDS)
    assert any("experiment=smoke" in c.argv for c in COMMANDS)


def test_the_extraction_reads_what_a_reader_reads():
    lines = [
        "```",
        "$ kdrun dataset=image_folder dataset.root=x \\",
        "    teacher.train.epochs=5   # a comment",
        "             kdrun · digits · method=kd",
        "OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 -m kdrun experiment=smoke",
        "kdrun: error: alpha must be in [0, 1]",
        "```",
        "```python",
        "kdrun = 1",
        "```",
        "Prose with `kdrun experiment=omit_class [dataset=fashion_mnist]` and `import kdrun`.",
    ]
    fenced = [t for _, t in _fenced_lines(lines)]
    assert fenced[0] == (
        "$ kdrun dataset=image_folder dataset.root=x teacher.train.epochs=5   # a comment"
    )
    spans = [t for _, t in _inline_spans(lines)]
    got = []
    for text in [*fenced, *spans]:
        if (m := _LEAD.match(text.strip())) is not None:
            got.append(_argv(text.strip()[m.end() :]))
    assert got == [
        ("dataset=image_folder", "dataset.root=x", "teacher.train.epochs=5"),
        ("experiment=smoke",),
        ("experiment=omit_class", "dataset=fashion_mnist"),
    ]


@pytest.fixture(scope="module", autouse=True)
def _plugins():
    load_plugins()  # as `kdrun` does before anything looks a name up


def _job_commands() -> list[Documented]:
    return [c for c in COMMANDS if not (c.argv and c.argv[0] in SUBCOMMANDS)]


@pytest.mark.parametrize("cmd", _job_commands(), ids=str)
def test_every_documented_job_composes(cmd: Documented):
    if (why := _skip_reason(cmd)) is not None:
        pytest.skip(why)
    err = precheck(_overrides(cmd.argv))
    expected = next((t for key, t in REFUSED.items() if key in cmd.text), None)
    if expected is not None:
        assert err is not None and expected in err, f"{cmd}: documented as refused; got {err!r}"
    else:
        assert err is None, f"{cmd}\n  kdrun: error: {err}"


def test_every_documented_subcommand_exists():
    subs = {c.argv[0] for c in COMMANDS if c.argv and c.argv[0] in SUBCOMMANDS}
    # Every subcommand appears in the docs; an unknown word would have failed to compose above.
    missing = sorted(set(SUBCOMMANDS) - subs)
    assert not missing, f"undocumented subcommands {missing}: show them in docs/usage.md"


def _quick(cmd: Documented) -> bool:
    a = cmd.argv
    return bool(a) and (a[0] in ("list", "softmax") or "--help" in a or a[:2] == ("--cfg", "job"))


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if _quick(c)], ids=str)
def test_quick_documented_commands_run(cmd: Documented, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run() sets it for Hydra
    monkeypatch.chdir(tmp_path)  # whatever a command writes stays here
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = run(list(cmd.argv))
        except SystemExit as e:  # Hydra's --help exits itself
            code = e.code
    assert code == 0, f"{cmd}: exit {code}\n{out.getvalue()[-2000:]}"
    assert out.getvalue().strip(), f"{cmd} printed nothing"


def test_the_quick_commands_include_the_readme_ones():
    quick = {c.argv for c in COMMANDS if _quick(c)}
    assert ("list",) in quick and ("--help",) in quick and ("softmax",) in quick


def _smoke_jobs() -> list[Documented]:
    """Documented single jobs that finish in seconds on the bundled data."""
    return [
        c
        for c in _job_commands()
        if set(_overrides(c.argv)) <= {"experiment=smoke", "experiment=smoke_lm"}
        and _overrides(c.argv)
        and not any(a.startswith("-") for a in c.argv)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", _smoke_jobs(), ids=str)
def test_documented_smoke_jobs_run(cmd: Documented, tmp_path):
    argv = [*cmd.argv, f"store_dir={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run(
        [sys.executable, "-m", "kdrun", *argv],
        cwd=tmp_path,
        env=kdrun_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, f"{cmd}\n{p.stderr[-3000:]}"
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_the_smoke_jobs_are_found():
    assert {c.argv for c in _smoke_jobs()} >= {("experiment=smoke",)}


def test_every_file_the_docs_name_exists():
    # The docs send readers to scripts and modules by path: a moved file must move them too.
    pattern = re.compile(r"\b(?:bench|scripts|tests|kdrun|conf)/[\w./-]+\.(?:py|yaml)\b")
    named = {
        (path.relative_to(ROOT), m.group(0))
        for path in DOC_FILES
        for m in pattern.finditer(path.read_text())
    }
    missing = sorted(f"{where}: {f}" for where, f in named if not (ROOT / f).exists())
    # An error message's text, and placeholders (`conf/method/name.yaml`), name no file.
    missing = [m for m in missing if "imagenet.yaml" not in m and not m.endswith("/name.yaml")]
    assert not missing, missing


_MKDOCS = all(importlib.util.find_spec(m) for m in ("mkdocs", "material"))


@pytest.mark.skipif(not _MKDOCS, reason='mkdocs not installed: pip install -e ".[docs]"')
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    # No --quiet: it silences the warnings before --strict can count them (MkDocs 1.6).
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    built = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert pages - {"index"} <= built, pages - built  # every page is in the site
    _readme_links_resolve(tmp_path / "site")


def _readme_links_resolve(site: Path) -> None:
    """README.md is not part of the site, so MkDocs does not check its links: every relative
    link must name a file of the repository, and an anchor into docs/ one the site has."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            broken.append(target)
        elif anchor and path.startswith("docs/"):
            page = site / Path(path).relative_to("docs").with_suffix("") / "index.html"
            if path == "docs/index.md":
                page = site / "index.html"
            if f'id="{anchor}"' not in page.read_text():
                broken.append(target)
    assert not broken, f"README.md links to what does not exist: {broken}"
