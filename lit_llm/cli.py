"""``lit_llm`` / ``python -m lit_llm``: the one entry point for every command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (``lit_llm.lightning_cli.LitLLMCLI``). The other
commands are typed functions whose signature and docstring are their command line, listed in ``COMMANDS`` as
``"module:function"`` strings: a command's module is imported only when it runs, so ``--help`` and a mistyped
command answer at once and no command pays for another's imports (the server's litserve and fastapi, export's
transformers and onnx). Commands that work on a fit config take fit's own arguments (``--config FILE``,
repeatable, and overrides such as ``--trainer.max_steps 100``) beside theirs, resolved by fit's parser.

A bad argument is one line ``error: ...`` on stderr and exit code 2; ``LIT_LLM_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import sys
from typing import Callable, NamedTuple, NoReturn, Optional, Sequence

from lit_llm.errors import USER_ERRORS, UsageError, one_line

PROG = "python -m lit_llm"
DEBUG_ENV = "LIT_LLM_DEBUG"
FIT_ARGS = "fit_args"  # the parameter through which a command receives fit's arguments


class Command(NamedTuple):
    target: str  # "module:function", imported when the command runs; "" for a LightningCLI subcommand
    summary: str  # one line for the top-level help
    positional: str = ""  # a list parameter that also takes the command's bare words (``plot RUN [RUN ...]``)


COMMANDS: dict[str, Command] = {
    "fit": Command("", "train a model: --config FILE (repeatable) and overrides such as --trainer.max_steps 100"),
    "validate": Command("", "evaluate a checkpoint (--ckpt_path) on the validation data of a config"),
    "test": Command("", "evaluate a checkpoint (--ckpt_path) on the test data of a config"),
    "predict": Command("", "run a checkpoint's predict step over the data of a config"),
    "prepare": Command("lit_llm.commands.prepare:prepare",
                       "run the data stage of a config: sources, cleaning, tokenizer, token files, report"),
    "generate": Command("lit_llm.generate:generate", "sample text from a checkpoint"),
    "evaluate": Command("lit_llm.evaluate:evaluate",
                        "score a checkpoint on lm-evaluation-harness tasks (hellaswag, mmlu ... or your own YAML)",
                        positional="tasks"),
    "chat": Command("lit_llm.chat:chat", "chat with a language model in the terminal (/reset, /exit)"),
    "export": Command("lit_llm.export:export",
                      "write a checkpoint as a Hugging Face transformers directory or ONNX (--format hf|onnx)"),
    "import-hf": Command("lit_llm.export:import_hf",
                         "turn a transformers GPT-2 / Llama / BERT directory into a lit_llm checkpoint"),
    "size": Command("lit_llm.commands.size:size",
                    "parameters, training FLOPs per token and memory per GPU of a preset or a config"),
    "plan": Command("lit_llm.commands.plan:plan",
                    "the parallel layouts of a model on a cluster: memory per GPU, bubble, step time; its SLURM job"),
    "consolidate": Command("lit_llm.parallel.consolidate:consolidate",
                           "merge a sharded (FSDP / tensor-parallel) checkpoint folder into one file"),
    "plot": Command("lit_llm.curves:plot",
                    "draw runs' loss, val perplexity, learning rate and tokens/s as PNGs from their CSV logs",
                    positional="runs"),
    "crossval": Command("lit_llm.commands.crossval:crossval",
                        "k-fold cross-validation of a classifier config (fit + test per fold, mean ± std)"),
    "sweep": Command("lit_llm.commands.sweep:sweep",
                     "a classifier config over several seeds (and folds): mean, 95% intervals, paired comparison"),
    "submit": Command("lit_llm.commands.submit:submit",
                      "write the SLURM job script that fits a config and sbatch it (--dry_run true prints it)"),
    "serve": Command("lit_llm.serve:serve",
                     "serve a checkpoint over HTTP (OpenAI-compatible completions/chat, or /v1/classify)"),
    "monitor": Command("lit_llm.monitor:monitor",
                       "report on a feedback store: ratings, corrections, label drift; PNGs, one line for cron (exit 1:"
                       " alert)", positional="stores"),
}

FIT_ARGS_HELP = (
    "Every argument not listed below is fit's: --config FILE (repeatable, composed in order) and overrides such as"
    f" --trainer.max_steps 100 or --data.batch_size 4, resolved exactly as by `{PROG} fit` (see its --help)."
)


def help_text() -> str:
    """The top-level help: every command with its one-line summary."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS]   ({PROG} COMMAND --help: that command's arguments)", "",
             "Train, evaluate, sample, export and serve a from-scratch transformer.", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", f"A bad argument is one line 'error: ...' and exit code 2; {DEBUG_ENV}=1 shows the traceback."]
    return "\n".join(lines)


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _module_file(module: str) -> Optional[str]:
    """The source file of ``module`` (``a.b.c``), found without importing ``a.b`` (whose ``__init__`` may be heavy)."""
    from importlib.machinery import PathFinder

    spec = None
    for i, part in enumerate(module.split(".")):
        path = None if spec is None else spec.submodule_search_locations
        if i and not path:
            return None
        spec = PathFinder.find_spec(part, path)
        if spec is None:
            return None
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def help_function(target: str, _hops: int = 2) -> Optional[Callable]:
    """A stand-in for the command function ``target`` names, read from its module's source without importing the
    module, so that ``COMMAND --help`` costs no torch or Lightning import: the same name, docstring and parameters,
    whose annotations and defaults are evaluated among the names the module takes from ``typing`` and ``pathlib``
    and its own module-level aliases (``Format = Literal["hf", "onnx"]``). A function the module imports from
    another is looked up there. None where the source needs any other name: the caller imports the module."""
    import ast
    import collections.abc
    import pathlib
    import typing

    plain = {"typing": typing, "pathlib": pathlib, "collections.abc": collections.abc}  # modules read by name
    module, _, name = target.partition(":")
    path = _module_file(module)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names: dict = {t.__name__: t for t in (bool, bytes, dict, float, frozenset, int, list, set, str, tuple)}
    fn = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in plain and not node.level:
            for alias in node.names:
                if hasattr(plain[node.module], alias.name):
                    names[alias.asname or alias.name] = getattr(plain[node.module], alias.name)
        elif isinstance(node, ast.ImportFrom) and _hops and any((a.asname or a.name) == name for a in node.names):
            origin = next(a.name for a in node.names if (a.asname or a.name) == name)
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if path.endswith("__init__.py") else 0)]
            imported = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            return help_function(f"{imported}:{origin}", _hops - 1)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = _evaluate(node.value, names, path)
            except Exception:  # noqa: BLE001 - a module constant that is not a plain value: not needed for help
                pass
        elif isinstance(node, ast.FunctionDef) and node.name == name:
            fn = node
    if fn is None or fn.args.vararg or fn.args.kwarg or fn.args.posonlyargs:
        return None
    args = fn.args
    defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
    given = [(a, d, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a, d in zip(args.args, defaults)]
    given += [(a, d, inspect.Parameter.KEYWORD_ONLY) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    try:
        params = [inspect.Parameter(
            a.arg, kind,
            annotation=inspect.Parameter.empty if a.annotation is None else _evaluate(a.annotation, names, path),
            default=inspect.Parameter.empty if d is None else _evaluate(d, names, path)) for a, d, kind in given]
    except Exception:  # noqa: BLE001 - a name from elsewhere (a class, a constant of another module)
        return None

    def stand_in(*_: object, **__: object) -> NoReturn:
        raise RuntimeError(f"{target} was read for --help only")

    stand_in.__name__ = stand_in.__qualname__ = name
    stand_in.__module__ = __name__  # jsonargparse imports a function's module to read its globals
    stand_in.__doc__ = ast.get_docstring(fn, clean=False)
    stand_in.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return stand_in


def _evaluate(node, names: dict, path: str):
    """The value of an annotation or default expression among ``names`` only (no builtins); a string annotation
    (``"Optional[int]"``) is evaluated in turn."""
    import ast

    value = eval(compile(ast.Expression(node), path, "eval"), {"__builtins__": {}, **names})  # noqa: S307
    if isinstance(node, ast.Constant) or not isinstance(value, str):
        return value
    return eval(value, {"__builtins__": {}, **names})  # noqa: S307


def function_parser(name: str, fn: Callable):
    """The parser of an extra command: ``fn``'s arguments as --flags (without ``fit_args``), its docstring as help."""
    from jsonargparse import ArgumentParser, DefaultHelpFormatter

    class Formatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """jsonargparse's formatter, keeping the line breaks of the description."""

    takes_fit = FIT_ARGS in inspect.signature(fn).parameters
    description = (fn.__doc__ or "").split("\n\n")[0].strip()
    if takes_fit:
        description += "\n\n" + FIT_ARGS_HELP
    usage = f"{PROG} {name} [--config FILE ...] [fit overrides ...] [options]" if takes_fit else None
    positional = COMMANDS[name].positional if name in COMMANDS else ""
    if positional:
        word = positional.upper()
        usage = f"{PROG} {name} {word} [{word} ...] [options]"
        description += (f"\n\n{word}: one or more words before or after the options, or --{positional} (a word, or a"
                        f" list: --{positional} '[a, b]').")
    parser = ArgumentParser(prog=f"{PROG} {name}", usage=usage, description=description, formatter_class=Formatter,
                            exit_on_error=False)
    parser.add_function_arguments(fn, as_positional=False, skip={FIT_ARGS} if takes_fit else None)
    return parser


def split_fit_args(parser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the command's own arguments, fit's arguments): an option that ``parser`` defines, with its value, is the
    command's; everything else (``--config FILE``, ``--trainer.max_steps 5`` ...) goes to fit, in order."""
    own_flags = {s for action in parser._actions for s in action.option_strings}
    own, fit = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, _ = arg.partition("=")
        if flag in own_flags:
            takes_value = not eq and flag not in ("-h", "--help")
            own += argv[i:i + 2] if takes_value else [arg]
            i += 2 if takes_value else 1
        else:
            fit.append(arg)
            i += 1
    return own, fit


def gather_positional(parser, argv: Sequence[str], dest: str) -> list[str]:
    """``argv`` with its bare words, and the words after ``--DEST``, as one ``--DEST`` list (JSON) at the end:
    ``A B --out X`` and ``--runs A B --out X`` both become ``--out X --runs '["A", "B"]'``. A word written as a
    list (``'[A, B]'``) adds its items. A value of another option stays with it."""
    import json

    import yaml

    flag = f"--{dest}"
    takes_value = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
    words: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in (flag, flag + "+"):
            if eq:
                words.append(value)
            while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                words.append(argv[i + 1])
                i += 1
        elif arg.startswith("-"):
            rest.append(arg)
            if not eq and name in takes_value and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        else:
            words.append(arg)
        i += 1
    items: list[str] = []
    for word in words:
        loaded = yaml.safe_load(word) if word.lstrip().startswith("[") else None
        items += [str(x) for x in loaded] if isinstance(loaded, list) else [word]
    return rest + ([flag, json.dumps(items)] if items else [])


def _extra_of(module: str) -> Optional[str]:
    """The extra of lit_llm that installs ``module``'s package (by lit_llm's installed metadata), if one does; the
    narrowest such extra, never ``all`` or ``dev``."""
    import re
    from importlib import metadata

    try:
        requires = metadata.requires("lit_llm") or []
    except metadata.PackageNotFoundError:
        return None
    top = module.partition(".")[0].lower()
    for line in requires:  # e.g. 'lm_eval[hf]>=0.4.13; extra == "eval"'
        dist, extra = re.match(r"\s*([A-Za-z0-9._-]+)", line), re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", line)
        if dist and extra and extra.group(1) not in ("all", "dev") and \
                re.sub(r"[-.]", "_", dist.group(1).lower()) == top:
            return extra.group(1)
    return None


def _missing_module(error: ImportError) -> Optional[str]:
    """The module whose absence ``error`` reports (itself, or the ModuleNotFoundError it was raised from)."""
    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name and not seen.name.startswith("lit_llm"):
            return seen.name
        seen = seen.__cause__ or seen.__context__
    return None


def _run_extra(name: str, argv: list[str]) -> None:
    # a package of an extra that is not installed, at the command's import or at run time (a lazy import):
    # one error line naming the extra to install, never a traceback
    try:
        asks_help = any(a in ("-h", "--help") for a in argv)
        fn = (help_function(COMMANDS[name].target) if asks_help else None) or _load(COMMANDS[name].target)
        parser = function_parser(name, fn)
        if COMMANDS[name].positional:
            argv = gather_positional(parser, argv, COMMANDS[name].positional)
        if FIT_ARGS in inspect.signature(fn).parameters:
            own, fit_args = split_fit_args(parser, argv)
            kwargs = parser.parse_args(own).as_dict()
            kwargs[FIT_ARGS] = fit_args
        else:
            kwargs = parser.parse_args(argv).as_dict()
        fn(**kwargs)
    except ImportError as e:
        missing = _missing_module(e)
        if "pip install 'lit_llm[" in str(e):  # the message already names the extra
            raise UsageError(f"{name}: {one_line(e)}") from e
        if missing is None:
            raise
        extra = _extra_of(missing)
        fix = f": pip install 'lit_llm[{extra}]'" if extra else ""
        raise UsageError(f"{name} needs the {missing.partition('.')[0]!r} package, which is not installed{fix}") from e


def _run_lightning(argv: list[str]) -> None:
    from lit_llm.lightning_cli import run

    run(argv)


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    if close:
        return f"unknown command {name!r}; did you mean {close[0]!r}?"
    return f"unknown command {name!r}; the commands are {', '.join(COMMANDS)} (see {PROG} --help)"


def did_you_mean(message: str, name: str, lightning: bool) -> str:
    """"; did you mean --X?" for the first mistyped option a parse error names (``unrecognized arguments: --X``
    or jsonargparse's ``Option 'X' is not accepted``), else ""."""
    import re

    unknown = message.partition("unrecognized arguments: ")[2]
    typed = re.findall(r"(?:^|\s)--([\w.-]+)", unknown)
    nested = re.search(r"Parser key \"(\w+)\".*?(?:Option '([\w.]+)' is not accepted|unrecognized arguments: --([\w.]+))",
                       message, re.S)
    if nested:
        typed = [k for k in typed if k != nested.group(3)]  # a class's own parser: the key is inside its section
        typed.insert(0, f"{nested.group(1)}.{nested.group(2) or nested.group(3)}")
    for key in typed:
        if lightning:
            from lit_llm.lightning_cli import suggest_key

            close = suggest_key(key)
        else:
            parser = function_parser(name, _load(COMMANDS[name].target))
            flags = [s.removeprefix("--") for a in parser._actions for s in a.option_strings if s.startswith("--")]
            close = next(iter(difflib.get_close_matches(key, flags, n=1)), None)
        if close:
            return f"; did you mean --{close}?"
    return ""


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with code 2."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(args: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        if not argv:
            fail(f"give a command, e.g. {PROG} fit --config configs/debug.yaml")
        return
    name = argv[0]
    if not name.startswith("-") and name not in COMMANDS:
        fail(_unknown(name))
    lightning = name.startswith("-") or not COMMANDS[name].target  # a leading option: LightningCLI's own
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    # fit & co. turn the user's errors raised before the run starts into UsageError; any error of an extra command
    # of the kinds a bad argument raises (ValueError, FileNotFoundError, ...) is reported the same way
    caught = (argparse.ArgumentError, UsageError) if lightning else (argparse.ArgumentError, *USER_ERRORS)
    try:
        if lightning:
            _run_lightning(argv)
        else:
            _run_extra(name, argv[1:])
    except caught as e:
        if debug:
            raise
        if isinstance(e, argparse.ArgumentError):
            hint = did_you_mean(str(e), name, lightning)
            fail(f"{one_line(e)}{hint} (see {' '.join([PROG, *([name] if name in COMMANDS else []), '--help'])})")
        fail(one_line(e))
