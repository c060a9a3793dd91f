#!/usr/bin/env python3
"""Check that every documented install line gives a working environment, and that the lower bounds are true.

    python3 scripts/check_installs.py                 # every line of [tool.lit_llm.installs], fresh venvs (CI)
    python3 scripts/check_installs.py --write_lock    # the same, then write constraints-lock.txt from it
    python3 scripts/check_installs.py --lowest        # the lowest versions pyproject.toml allows, fast tests
    python3 scripts/check_installs.py --lowest -- -k cli   # ... with pytest arguments of your own

The install lines live in pyproject.toml (``[[tool.lit_llm.installs]]``), in the order they run. Those without a
``venv`` run one after the other in one fresh venv, each followed by ``pip check``, an import of each module it
enables, ``import datasets`` (numpy and pyarrow can disagree where pip check sees nothing) and ``lit_llm --help``,
before the next line adds packages. ``venv = "peers"`` is the peers' group: ``benchmarks/vs_peers.py`` builds its
own venv (here under the work folder), then ``pip check`` and the imports run in it.

``--lowest`` derives a constraints file from the lower bounds of the core and the dev extra (``name>=X`` becomes
``name==X``; torch stays at constraints.txt's pin, the one build on this machine's disk), installs ``.[dev]`` with it
in a fresh venv, checks it like above and runs ``pytest -m "not slow"`` there.

Venvs go under ``--workdir`` (default: a temporary folder, removed at the end unless ``--keep``). Exit code 0 when
all passed; otherwise each failure is one ``error:`` line naming the install line and, for a conflict, the packages.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
try:
    from packaging.requirements import Requirement
except ModuleNotFoundError:
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints-lock.txt"
LOCK_HEADER = """\
# The exact versions CI tested: scripts/setup.sh (so the quickstart and CI) installs with these constraints.
# pyproject.toml keeps version ranges; this file is what `python3 scripts/check_installs.py --write_lock` froze in
# the venv of its `.[all]` + `.[dev]` lines (Python {python}, Linux x86_64). torch is pinned by constraints.txt.
"""
# what pip prints that says why an install could not be resolved, or what pip check found
CONFLICT = re.compile(r"conflict is caused by:|depends on|requested|has requirement|which is incompatible|"
                      r"No matching distribution|Could not find a version")
OUT = sys.stdout
# pip's flags for every install here (its output is captured; a failure shows what pip said of it): no .pyc
# compiled at install time, only what the checks import gets compiled (the packages installed are the same)
PIP_FLAGS = ["--no-compile"]


PASSED: list[str] = []  # the install lines that passed


def say(msg: str) -> None:
    print(msg, file=OUT, flush=True)


def installs() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["lit_llm"]["installs"]


def run(cmd: list[str], env: dict | None = None, timeout: float = 900, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def quiet(output: str) -> list[str]:
    """pip's output without the noise of this machine's local indexes."""
    return [line for line in output.splitlines() if line.strip() and "is ignored: it is neither" not in line]


def conflict_lines(output: str) -> str:
    lines = [line.strip() for line in quiet(output) if CONFLICT.search(line)]
    return "; ".join(dict.fromkeys(lines)) or " | ".join(quiet(output)[-3:])


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    return path / "bin" / "python"


class Failure(Exception):
    pass


def check_env(python: Path, label: str, imports: list[str], env: dict | None = None, cli: bool = True,
              allow_missing: frozenset[str] = frozenset()) -> None:
    """pip check, the imports (each reported by name, with ``env``), import datasets, lit_llm --help. They run in
    the venv's folder: from the checkout, ``python -c`` would import the checkout's lit_llm, not the installed one.
    ``allow_missing``: packages an install line leaves out on purpose (``--no-deps``), whose absence pip check
    reports as ``X requires Y, which is not installed``; nothing else is let through."""
    venv = python.parents[1]
    r = run([str(python), "-m", "pip", "check"], cwd=venv)
    problems = [line for line in r.stdout.splitlines() if line.strip() and not any(
        line.rstrip().endswith(f"requires {name}, which is not installed.") for name in allow_missing)]
    if r.returncode and problems:
        raise Failure(f"after {label!r}, pip check finds a conflict: {conflict_lines(chr(10).join(problems))}")
    modules = [*imports, "datasets"] if (python.parent / "lit_llm").exists() or "datasets" in imports else imports
    probe = ("import importlib, sys, traceback\n"
             "bad = 0\n"
             "for m in sys.argv[1:]:\n"
             "    try:\n"
             "        importlib.import_module(m)\n"
             "    except BaseException as e:\n"
             "        bad = 1\n"
             "        msg = ' '.join(str(e).split()) or type(e).__name__\n"
             "        print(f'import {m} failed: {type(e).__name__}: {msg}')\n"
             "sys.exit(bad)\n")
    r = run([str(python), "-c", probe, *dict.fromkeys(modules)], env=env, cwd=venv)
    if r.returncode:
        failed = [line for line in r.stdout.splitlines() if line.startswith("import ")] or quiet(r.stdout)[-2:]
        numpy = "numpy" in r.stdout.lower() or "pyarrow" in r.stdout.lower()
        versions = f" (installed: {versions_of(python, ['numpy', 'pyarrow'], env)})" if numpy else ""
        raise Failure(f"after {label!r}: {'; '.join(failed)}{versions}")
    lit_llm = python.parent / "lit_llm"
    if cli and lit_llm.exists():
        r = run([str(lit_llm), "--help"], env=env, cwd=venv)
        if r.returncode or "commands:" not in r.stdout:
            raise Failure(f"after {label!r}, `lit_llm --help` fails: {' | '.join(quiet(r.stdout)[-3:])}")


def versions_of(python: Path, names: list[str], env: dict | None = None) -> str:
    code = ("import sys\nfrom importlib.metadata import version\nfor n in sys.argv[1:]:\n"
            "    try: print(n, version(n))\n    except Exception: print(n, 'absent')\n")
    out = run([str(python), "-c", code, *names], env=env, cwd=python.parents[1]).stdout
    return ", ".join(out.split("\n")).strip(", ")


def pip_line(python: Path, line: str) -> list[str]:
    """``pip install ...`` of the docs as a command of ``python``'s venv."""
    words = shlex.split(line)
    if words[:2] != ["pip", "install"]:
        raise ValueError(f"not a pip install line: {line}")
    return [str(python), "-m", "pip", "install", *PIP_FLAGS, *words[2:]]


def check_user_venv(work: Path, steps: list[dict], write_lock: bool) -> tuple[Path, list[str]]:
    """The install lines of lit_llm's own environment, one after the other in one fresh venv."""
    errors: list[str] = []
    t = time.perf_counter()
    python = make_venv(work / "user")
    say(f"venv {work / 'user'}: {time.perf_counter() - t:.0f} s")
    allow_missing: set[str] = set()
    for step in steps:
        t = time.perf_counter()
        line = step["line"]
        allow_missing.update(step.get("allow_missing", []))
        r = run(pip_line(python, line))
        if r.returncode:
            errors.append(f"{line!r} does not install: {conflict_lines(r.stdout)}")
            say(f"FAIL {line}  ({time.perf_counter() - t:.0f} s)")
            break
        installed = time.perf_counter() - t
        try:
            check_env(python, line, step.get("imports", []), allow_missing=frozenset(allow_missing))
        except Failure as e:
            errors.append(str(e))
            say(f"FAIL {line}  ({installed:.0f} s install, {time.perf_counter() - t - installed:.0f} s checks)")
            break
        say(f"ok   {line}  ({installed:.0f} s install, {time.perf_counter() - t - installed:.0f} s checks)")
        PASSED.append(line)
        if step.get("lock") and write_lock:
            write_lock_file(python)
    return python, errors


def write_lock_file(python: Path) -> None:
    freeze = run([str(python), "-m", "pip", "freeze", "--exclude-editable"]).stdout.splitlines()
    pins = sorted((line for line in freeze if "==" in line and not line.lower().startswith(("torch==", "pip=="))),
                  key=str.lower)
    LOCK.write_text(LOCK_HEADER.format(python=".".join(map(str, sys.version_info[:2]))) + "\n".join(pins) + "\n")
    say(f"wrote {LOCK.relative_to(ROOT)} ({len(pins)} pins)")


def build_peers(work: Path, step: dict, python: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run the peers' line (it builds their venv) with ``python``; (its result, seconds)."""
    t = time.perf_counter()
    words = shlex.split(step["line"])
    env = {**os.environ, "LIT_LLM_CACHE_DIR": str(work / "cache")}
    return run([str(python) if words[0] == "python" else words[0], *words[1:]], env=env), time.perf_counter() - t


def check_peers(step: dict, built: tuple[subprocess.CompletedProcess, float], user_python: Path) -> list[str]:
    """The peers' group: the venv vs_peers.py built for itself, checked; and lit_llm's own venv without them."""
    r, installed = built
    if r.returncode:
        return [f"{step['line']!r} fails: {conflict_lines(r.stdout)}"]
    venv = Path(quiet(r.stdout)[-1].strip())
    peers_python = venv / "bin" / "python"
    t = time.perf_counter()
    try:
        check_env(peers_python, step["line"], step.get("imports", []), env={**os.environ, "PYTHONPATH": str(ROOT)},
                  cli=False)
    except Failure as e:
        return [str(e)]
    leaked = run([str(user_python), "-c", "import importlib.util as u; print(u.find_spec('litgpt') is not None)"],
                 cwd=user_python.parents[1])
    if leaked.stdout.strip() != "False":
        return ["litgpt is importable in lit_llm's own venv: the peers must stay in their venv"]
    say(f"ok   {step['line']}  ({installed:.0f} s install, {time.perf_counter() - t:.0f} s checks;"
        f" {versions_of(peers_python, ['litgpt', 'torch', 'numpy'])})")
    PASSED.append(step["line"])
    return []


# ------------------------------------------------------------------------------------------------ lowest versions
def requirements(names: list[str], extras: dict[str, list[str]]) -> list[Requirement]:
    """The requirements of the extras ``names``, with lit_llm[...] self-references expanded."""
    out: list[Requirement] = []
    for name in names:
        for text in extras[name]:
            req = Requirement(text)
            if req.name.replace("_", "-").lower() == "lit-llm":
                out += requirements(sorted(req.extras), extras)
            else:
                out.append(req)
    return out


def lowest_constraints() -> list[str]:
    """``name==X`` for each ``name>=X`` (or exact pin ``name==X``) of the core and the dev extra (torch excepted:
    constraints.txt pins it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]] + requirements(["dev"], project["optional-dependencies"])
    lines = []
    for req in reqs:
        low = [s.version for s in req.specifier if s.operator in (">=", "==")]
        if req.name != "torch" and low:
            lines.append(f"{req.name}=={low[0]}")
    return list(dict.fromkeys(lines))


def check_lowest(work: Path, pytest_args: list[str]) -> list[str]:
    constraints = work / "constraints-lowest.txt"
    lines = lowest_constraints()
    constraints.write_text("# the lower bounds of pyproject.toml (core + dev), from scripts/check_installs.py\n"
                           + "\n".join(lines) + "\n")
    say(f"lowest versions ({constraints}): {', '.join(lines)}")
    t = time.perf_counter()
    python = make_venv(work / "lowest")
    for extra in (["torch"], ["-e", ".[dev]", "-c", str(constraints)]):
        r = run([str(python), "-m", "pip", "install", *PIP_FLAGS, "-c", "constraints.txt", *extra])
        if r.returncode:
            return [f"the lowest versions do not install together: {conflict_lines(r.stdout)}"]
    say(f"installed in {time.perf_counter() - t:.0f} s")
    try:
        check_env(python, "lowest versions", ["lit_llm.cli", "lit_llm.export", "lit_llm.serve", "peft", "onnxruntime"])
    except Failure as e:
        return [str(e)]
    t = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *pytest_args]
    say(f"$ {' '.join(cmd)}")
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    say(f"fast tests at the lowest versions: {time.perf_counter() - t:.0f} s")
    if code:
        return [f"the fast tests fail at the lowest versions (pytest exit code {code})"]
    PASSED.append("lowest")
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lowest", action="store_true", help="the lower-bounds run instead of the install lines")
    parser.add_argument("--write_lock", action="store_true", help=f"write {LOCK.name} from the checked venv")
    parser.add_argument("--workdir", type=Path, default=None, help="where the venvs go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (--lowest)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lit_llm-installs-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        if args.lowest:
            errors = check_lowest(work, args.pytest_args)
        else:
            steps = installs()
            user = [s for s in steps if "venv" not in s]
            peers = [s for s in steps if s.get("venv") == "peers"]
            # the peers' venv builds beside lit_llm's when this python has torch (vs_peers.py imports it)
            pool = ThreadPoolExecutor(max_workers=1)
            early = importlib.util.find_spec("torch") is not None
            built = [pool.submit(build_peers, work, s, Path(sys.executable)) for s in peers] if early else []
            python, errors = check_user_venv(work, user, args.write_lock)
            for i, step in enumerate(peers):
                result = built[i].result() if early else build_peers(work, step, python)
                if not errors:
                    errors += check_peers(step, result, python)
            pool.shutdown()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    for e in errors:
        say(f"error: {e}")
    say(f"{'lowest versions' if args.lowest else 'install lines'}: {'FAILED' if errors else 'all passed'} in"
        f" {time.perf_counter() - start:.0f} s")
    checks = 1 if args.lowest else len(installs())
    say(f"installs: {len(PASSED)} passed, {checks - len(PASSED)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
