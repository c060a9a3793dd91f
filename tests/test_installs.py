"""Installs: a command whose extra is missing says which extra to install (one ``error:`` line, no traceback), and
every install line the docs give is one that scripts/check_installs.py checks (that script itself runs in CI, not
here: it builds venvs)."""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO, cli_env

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

sys.path.insert(0, str(REPO / "scripts"))
import check_installs  # noqa: E402

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]

# (command line, the module made absent, the extra the error must name); {ckpt} and {tmp} are filled in below
MISSING = {
    "serve": (["serve", "--checkpoint", "{ckpt}"], "litserve", "serve"),
    "export-hf": (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/hf"], "transformers", "hf"),
    "import-hf": (["import-hf", "--hf_dir", "{tmp}", "--out", "{tmp}/x.ckpt"], "transformers", "hf"),
    "export-onnx": (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/onnx", "--format", "onnx"], "onnx", "onnx"),
    "evaluate": (["evaluate", "--checkpoint", "{ckpt}", "--tasks", "hellaswag"], "lm_eval", "eval"),
    "prepare-minhash": (["prepare", "--config", str(REPO / "configs" / "debug.yaml"), "--data.cleaning",
                         "[dedup_minhash]", "--trainer.default_root_dir", "{tmp}/run"], "datasketch", "data"),
    "prepare-workers": (["prepare", "--config", str(REPO / "configs" / "debug.yaml"), "--data.workers", "2",
                         "--trainer.default_root_dir", "{tmp}/run"], "datatrove", "data"),
    "serve-ui": (["serve", "--checkpoint", "{ckpt}", "--ui", "true"], "gradio", "ui"),
    "prepare-stream": (["prepare", "--config", str(REPO / "configs" / "debug.yaml"), "--data.stream", "true",
                        "--trainer.default_root_dir", "{tmp}/run"], "litdata", "stream"),
}

# runs every case in one interpreter: each makes its module absent (None in sys.modules: import raises
# ModuleNotFoundError, as when the package is not installed) and calls the CLI's main
RUNNER = """
import contextlib, io, json, sys, traceback
from lit_llm.cli import main
results = {}
for name, (argv, absent) in json.loads(sys.argv[1]).items():
    saved = sys.modules.get(absent)
    sys.modules[absent] = None
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = -1
    sys.modules.pop(absent)
    if saved is not None:
        sys.modules[absent] = saved
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def missing_extra_runs(tmp_path_factory):
    from tests.helpers.checkpoints import write_lm_checkpoint

    tmp = tmp_path_factory.mktemp("missing")
    ckpt = write_lm_checkpoint(tmp / "lm.ckpt")
    cases = {name: ([a.format(ckpt=ckpt, tmp=tmp) for a in argv], absent)
             for name, (argv, absent, _) in MISSING.items()}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=tmp, env=cli_env(tmp),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(MISSING))
def test_a_missing_extra_is_one_error_line_naming_it(case, missing_extra_runs):
    code, err = missing_extra_runs[case]
    extra = MISSING[case][2]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code == 2, err
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, err
    assert f"pip install 'lit_llm[{extra}]'" in lines[-1], err
    assert MISSING[case][1] in lines[-1] or "needs" in lines[-1], err


def test_the_extra_of_a_module_comes_from_lit_llms_metadata():
    from importlib import metadata

    from lit_llm.cli import _extra_of

    if not any(r.startswith("lm_eval") for r in metadata.requires("lit_llm") or []):
        pytest.skip("lit_llm's installed metadata predates the eval extra (re-run scripts/setup.sh)")
    assert _extra_of("transformers.models") == "hf" and _extra_of("stop_words") == "data"
    assert _extra_of("lm_eval") == "eval" and _extra_of("litserve") == "serve" and _extra_of("peft") == "lora"
    assert _extra_of("pytest") is None  # dev only: never offered as the fix


# ------------------------------------------------------------------------------------- documented install lines
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*.py")),
        *sorted((REPO / "lit_llm").rglob("*.py")), *sorted((REPO / "scripts").glob("*.sh"))]
INSTALL = re.compile(r"pip install[^`\n]*?(?:-e\s+[\"']?\.(?:\[([\w,]+)\])?[\"']?|[\"']?lit_llm\[([\w,]+)\])")


def documented_extras() -> dict[str, set[str]]:
    """Each set of lit_llm extras a `pip install` line of the docs, the benchmarks, the scripts or an error message
    installs (the empty set: the core), with where it is written."""
    found: dict[str, set[str]] = {}
    for path in DOCS:
        for match in INSTALL.finditer(path.read_text(encoding="utf-8")):
            extras = ",".join(sorted(filter(None, (match.group(1) or match.group(2) or "").split(","))))
            found.setdefault(extras, set()).add(str(path.relative_to(REPO)))
    return found


def checked_extras() -> set[str]:
    checked = set()
    for step in PYPROJECT["tool"]["lit_llm"]["installs"]:
        m = re.search(r"-e\s+[\"']?\.(?:\[([\w,]+)\])?", step["line"])
        if m:
            checked.add(",".join(sorted((m.group(1) or "").split(","))).strip(","))
    return checked


def test_every_documented_install_line_is_checked():
    documented, checked = documented_extras(), checked_extras()
    assert "" in documented and "dev" in documented  # the patterns still find the README's lines
    for extras, where in documented.items():
        for extra in filter(None, extras.split(",")):
            assert extra in EXTRAS, f"{sorted(where)} install lit_llm[{extra}], an extra pyproject.toml lacks"
        assert extras in checked or all(e in checked for e in extras.split(",")), (
            f"{sorted(where)} give `pip install ...[{extras}]`, which [tool.lit_llm.installs] does not check")


def test_all_is_every_extra_and_the_peers_are_none():
    """`all` is every extra but stream, whose litdata declares a torchvision that breaks a CPU-only torch (it is
    installed apart, without it: the install table's --no-deps line, which pip check may see missing torchvision)."""
    everything = {e for e in EXTRAS if e not in ("all", "dev", "stream")}
    (no_deps,) = [i for i in PYPROJECT["tool"]["lit_llm"]["installs"] if "--no-deps" in i["line"]]
    assert "litdata" in no_deps["line"] and no_deps["allow_missing"] == ["torchvision"]
    (all_req,) = EXTRAS["all"]
    assert set(re.search(r"\[(.*)\]", all_req).group(1).split(",")) == everything
    for extra, reqs in EXTRAS.items():
        assert not any(r.startswith(("litgpt", "torchtitan")) for r in reqs), f"the peers must not be in [{extra}]"


def test_every_core_and_dev_requirement_has_a_lower_bound_the_lowest_run_installs():
    lowest = dict(line.split("==") for line in check_installs.lowest_constraints())
    core = [r for r in PYPROJECT["project"]["dependencies"] if not re.match(r"torch\b(?!metrics)", r)]
    assert len(lowest) == len(core) + len(check_installs.requirements(["dev"], EXTRAS))
    assert lowest["transformers"].startswith("5") and "torch" not in lowest


def test_litserve_is_pinned_to_the_version_whose_internals_the_adapter_uses():
    """The serve extra allows exactly the LitServe release that _litserve_adapter.py was written against (its
    guard test in tests/test_serve.py checks that release's source), so no install can bring another."""
    adapter = (REPO / "lit_llm" / "serve" / "_litserve_adapter.py").read_text()
    version = re.search(r'^LITSERVE_VERSION = "([^"]+)"', adapter, re.M).group(1)
    assert [r for r in EXTRAS["serve"] if r.startswith("litserve")] == [f"litserve=={version}"]
