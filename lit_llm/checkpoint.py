"""The lit_llm checkpoint format, and its only reader and writer.

A lit_llm checkpoint is a Lightning ``.ckpt`` (``torch.save`` of a dict) with one extra entry, ``"lit_llm"``:
what is needed to rebuild the model without the config files that trained it (:class:`CheckpointInfo`).
Weights sit in ``state_dict`` under ``model.`` (language models) or ``backbone.`` + ``head.`` (classifiers).

Everything that opens a checkpoint (``generate``, ``serve``, ``export``, ``init_from``, the classifier, the
tokenizer loader, ``consolidate``) goes through this module, so a change of format is one edit, and every
bad file gets the same error that names it and says what to pass instead. No Lightning import: the
commands that only read a checkpoint stay light.
"""

from __future__ import annotations

import os
import pickle
import socket
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from lit_llm.model.lora import LoraSpec

KEY = "lit_llm"  # the checkpoint entry this module owns
TMP_PREFIX = ".lit_llm-tmp-"  # checkpoints being written (temp_path); stale ones are swept when a run starts
Task = Literal["language_model", "classification"]
WEIGHT_PREFIX: dict[str, str] = {"language_model": "model.", "classification": "backbone."}


class CheckpointError(ValueError):
    """A file that is not a usable lit_llm checkpoint for what was asked of it."""


# a classifier's hyper_parameters hold a LoraSpec: allow it in weights-only loads, under its name and the name
# it had when it lived in this module (classifier checkpoints written before it moved)
torch.serialization.add_safe_globals([LoraSpec, (LoraSpec, "lit_llm.checkpoint.LoraSpec")])


@dataclass
class CheckpointInfo:
    """What a lit_llm checkpoint carries beside the weights.

    Args:
        task: ``language_model`` (causal LM or masked LM) or ``classification``.
        model_config: ``ModelConfig.to_dict()`` of the network (for a classifier: its backbone).
        tokenizer: the tokenizer as tokenizer.json text.
        tokens_seen: training tokens seen so far (language models).
        num_classes: classifier only.
        label_names: classifier only: class names in id order.
        pooling: classifier only: ``last``, ``cls`` or ``mean``.
        lora: the LoRA spec as a dict, when adapters are trained (a classifier's, or a language model's tuned by
            ``InstructionModel`` / ``PreferenceModel``, whose adapters are merged when it is loaded).
        rng: random-number generator states for an exact resume: ``cpu`` and, on GPUs, ``cuda`` (one per device).
        special_tokens: role -> token of the tokenizer's special tokens (``{"eos": "<|endoftext|>", ...}``) when
            they are not lit_llm's bracketed names: a model imported from Hugging Face keeps its end of text.
    """

    task: Task
    model_config: dict[str, Any]
    tokenizer: str
    tokens_seen: int = 0
    num_classes: Optional[int] = None
    label_names: Optional[list[str]] = None
    pooling: Optional[str] = None
    lora: Optional[dict[str, Any]] = None
    rng: Optional[dict[str, Any]] = None
    special_tokens: Optional[dict[str, str]] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, extra: dict[str, Any]) -> "CheckpointInfo":
        known = {f.name for f in fields(cls)}
        extra = dict(extra)
        # written before the format had an owner: no task on language models, the CPU RNG state alone
        extra["task"] = "language_model" if extra.get("task") in (None, "lm") else extra["task"]
        if "torch_rng_state" in extra:
            extra.setdefault("rng", {"cpu": extra.pop("torch_rng_state")})
        return cls(**{k: v for k, v in extra.items() if k in known})

    @property
    def config(self):
        """The network's ``ModelConfig``."""
        from lit_llm.model.config import ModelConfig

        return ModelConfig.from_dict(self.model_config)

    def build_tokenizer(self):
        """The ``tokenizers.Tokenizer`` of the stored JSON, with the roles of its special tokens declared
        (``lit_llm.data.tokenizer.special_tokens`` reads them; ``load_tokenizer`` is the loader of a tokenizer by
        path, a tokenizer.json or a checkpoint's)."""
        from tokenizers import Tokenizer

        from lit_llm.data.tokenizer import declare_special_tokens

        return declare_special_tokens(Tokenizer.from_str(self.tokenizer), self.special_tokens)

    def lora_spec(self) -> Optional[LoraSpec]:
        return LoraSpec(**self.lora) if self.lora else None


def capture_rng() -> dict[str, Any]:
    """The RNG states a resumed run needs to continue its dropout masks exactly: CPU, and every CUDA device."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict[str, Any]]) -> None:
    if not state:
        return
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# ---------------------------------------------------------------------------------------------- reading
_WHAT_TO_PASS = "pass the .ckpt file that `lit_llm fit` wrote (e.g. outputs/<run>/checkpoints/last.ckpt)"


def _open(path: str | Path, what: str, mmap: bool, weights_only: bool = True) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        if (path / ".metadata").is_file():
            raise CheckpointError(f"{path} is a sharded checkpoint folder; merge it into one file first:"
                                  f" lit_llm consolidate --checkpoint {path} --out merged.ckpt")
        raise CheckpointError(f"{what} {path} is a folder; {_WHAT_TO_PASS}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; {_WHAT_TO_PASS}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"{path} holds objects that a weights-only load refuses, so it was not written by"
                                  f" lit_llm; {_WHAT_TO_PASS}") from None
        raise CheckpointError(f"{path} is truncated or corrupted ({type(e).__name__}: {str(e).splitlines()[0][:120]});"
                              " use an earlier checkpoint, e.g. another step*.ckpt of the same run") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a lit_llm checkpoint (it holds a {type(ckpt).__name__}); {_WHAT_TO_PASS}")
    return ckpt


def _info(ckpt: dict[str, Any], path: str | Path, expect: Optional[Task], purpose: str) -> CheckpointInfo:
    extra = ckpt.get(KEY)
    if not isinstance(extra, dict) or not extra.get("tokenizer") or "model_config" not in extra:
        raise CheckpointError(
            f"{path} is not a lit_llm checkpoint (it has no '{KEY}' entry with a model config and tokenizer);"
            f" {_WHAT_TO_PASS}, or turn a transformers model into one with `lit_llm import-hf`"
        )
    info = CheckpointInfo.from_dict(extra)
    if expect is not None and info.task != expect:
        if expect == "language_model":
            hint = ("pass the language-model checkpoint it was fine-tuned from (its model.init_from), or serve"
                    " the classifier with `lit_llm serve`")
        else:
            hint = "fine-tune a classifier from it with --model.init_from instead"
        raise CheckpointError(f"{path} is a {info.task.replace('_', ' ')} checkpoint, but {purpose} needs a"
                              f" {expect.replace('_', ' ')} checkpoint; {hint}")
    return info


def read_info(path: str | Path, expect: Optional[Task] = None, purpose: str = "this command") -> CheckpointInfo:
    """The checkpoint's :class:`CheckpointInfo` (memory-mapped: the weights are not read)."""
    return _info(_open(path, "Checkpoint", mmap=True), path, expect, purpose)


def load(path: str | Path, expect: Optional[Task] = None, purpose: str = "this command",
         mmap: bool = False) -> tuple[CheckpointInfo, dict[str, Any]]:
    """(info, the whole checkpoint dict) of a lit_llm checkpoint file, checked; tensors on the CPU."""
    ckpt = _open(path, "Checkpoint", mmap=mmap)
    return _info(ckpt, path, expect, purpose), ckpt


def network_state(ckpt: dict[str, Any], info: CheckpointInfo, path: str | Path = "") -> dict[str, torch.Tensor]:
    """The network's weights (names as in ``build_model``): the language model, or a classifier's backbone."""
    prefix = WEIGHT_PREFIX[info.task]
    state = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if info.task == "classification" and any(".base_layer." in k for k in state):
        raise CheckpointError(f"{path} holds unmerged LoRA adapters; merge them first (SequenceClassifier.merge_lora)")
    return state


def load_network(path: str | Path, expect: Optional[Task] = "language_model", purpose: str = "this command"):
    """(ModelConfig, network weights, Tokenizer) of a checkpoint, for generation, export and fine-tuning. A file
    that loads but is wrong inside (a model config that does not build, a tokenizer that does not parse, a
    language model's weights missing, extra or of the wrong shape) is a ``CheckpointError`` naming what."""
    info, ckpt = load(path, expect, purpose, mmap=True)
    config, tokenizer = config_and_tokenizer(info, path)
    state = network_state(ckpt, info, path)
    if info.task == "language_model" and info.lora:
        state = merge_lora(config, state, info.lora_spec(), path)
    if info.task == "language_model":
        _check_weights(config, state, path)
    return config, state, tokenizer


def merge_lora(config, state: dict[str, torch.Tensor], spec: LoraSpec, path: str | Path) -> dict[str, torch.Tensor]:
    """The plain network weights of a language model tuned with LoRA (``InstructionModel``): peft folds each
    adapter's update into its projection, so readers see an ordinary language model."""
    from lit_llm.model import build_model
    from lit_llm.model.lora import add_lora

    try:
        net = add_lora(build_model(config), spec)
    except ImportError:
        raise CheckpointError(f"{path} holds LoRA adapters; merging them into the weights needs peft: pip install"
                              " 'lit_llm[lora]'") from None
    try:
        net.load_state_dict(state)  # LoraModel's names: model.<the network's>
    except RuntimeError as e:
        raise CheckpointError(f"{path} holds LoRA adapters that do not match its spec ({str(e)[:200]}){DAMAGED_HINT}") from None
    return net.merge_and_unload().state_dict()


DAMAGED_HINT = "; the file is damaged or was not written by lit_llm: use another checkpoint of the run"


def config_and_tokenizer(info: CheckpointInfo, path: str | Path):
    """(ModelConfig, Tokenizer) of a checkpoint's info; a config that does not build or a tokenizer that does not
    parse is a ``CheckpointError`` naming it."""
    try:
        config = info.config
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} holds a model config that does not build ({str(e)[:200]}){DAMAGED_HINT}") from None
    try:
        tokenizer = info.build_tokenizer()
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"{path} holds a tokenizer that does not load ({str(e)[:200]}){DAMAGED_HINT}") from None
    return config, tokenizer


def _check_weights(config, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Compare a language model's weights with the names and shapes its config builds (on the meta device: no
    memory, no time)."""
    from lit_llm.model import build_model

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected weights (e.g. {extra[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} weights of the wrong shape (e.g. {k}: {tuple(state[k].shape)}, config says"
                        f" {expected[k]})")
    if problems:
        raise CheckpointError(f"{path} does not match its own model config: {'; '.join(problems)}{DAMAGED_HINT}")


def load_sharded_meta(folder: str | Path) -> dict[str, Any]:
    """The non-tensor part (``meta.pt``) of a sharded checkpoint folder, loaded weights-only, after its
    ``.metadata`` passed ``read_sharded_index``: nothing in the folder can run code."""
    read_sharded_index(folder)
    meta = Path(folder) / "meta.pt"
    ckpt = _open(meta, "Sharded checkpoint metadata", mmap=False)
    _info(ckpt, folder, None, "consolidate")
    return ckpt


# what torch.distributed.checkpoint pickles into a folder's .metadata: its own dataclasses and enums, the
# storage locations, shapes, dtypes and layouts (found by recording find_class on the folders FSDP2 writes)
_INDEX_MODULE = "torch.distributed.checkpoint.metadata"
_INDEX_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # looks a layout up by name in torch
    ("collections", "OrderedDict"),
}
_PATH_CLASSES = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"}


class _IndexUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD step can be checked
    """Unpickles a DCP ``.metadata`` file, refusing every global but the checkpoint-metadata classes (a pickle
    that names ``os.system``, or anything else, fails before it is called) and any BUILD that would set
    attributes on a class or function rather than on an instance (which would tamper with the process)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, type) or callable(target):
            raise pickle.UnpicklingError(f"it sets attributes on {getattr(target, '__name__', target)!r}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _INDEX_GLOBALS
        allowed |= module in ("pathlib", "pathlib._local") and name in _PATH_CLASSES
        allowed |= module == "torch" and isinstance(vars(torch).get(name), torch.dtype)  # no lazy imports
        if module == _INDEX_MODULE:
            import torch.distributed.checkpoint.metadata as index

            obj = getattr(index, name, None)
            allowed |= isinstance(obj, type) and obj.__module__ == _INDEX_MODULE  # its classes, not its imports
        if not allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}")
        return super().find_class(module, name)


def read_sharded_index(folder: str | Path):
    """The ``.metadata`` of a sharded (torch.distributed.checkpoint) folder, unpickled with an allow-list.

    torch reads this file with plain ``pickle.load`` (``FileSystemReader.read_metadata``), and the non-tensor
    items in the ``.distcp`` shards (an optimizer's ``param_groups``) with ``torch.load(weights_only=False)``
    (``DefaultLoadPlanner.load_bytes``), so a folder from someone else could run any code the moment Lightning
    or ``dcp_to_torch_save`` opens it. Every path that reads a sharded folder (``consolidate``,
    ``fit/validate/test --ckpt_path FOLDER``, ``newest``) calls this first: an index that names anything but the
    checkpoint-metadata classes is refused, and so is a shard item that a weights-only load refuses or that
    lies outside the folder; nothing is called.
    """
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    path = Path(folder) / ".metadata"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a sharded checkpoint folder (it has no .metadata); {_WHAT_TO_PASS}")
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f).load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("it names "):
            raise CheckpointError(f"{path} is not a checkpoint index that torch wrote: {e}, which a sharded"
                                  " checkpoint never does; refused without running it. Use a checkpoint your own"
                                  " runs wrote") from None
        raise CheckpointError(f"{path} is truncated or corrupted ({e}); use an earlier checkpoint") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({type(e).__name__}: {str(e)[:120]}); use an"
                              " earlier checkpoint") from None
    if not isinstance(index, Metadata):
        raise CheckpointError(f"{path} holds a {type(index).__name__}, not a checkpoint index; {_WHAT_TO_PASS}")
    storage = index.storage_data if isinstance(index.storage_data, dict) else {}
    for key, info in storage.items():
        item = index.state_dict_metadata.get(getattr(key, "fqn", None))
        where = getattr(info, "relative_path", "")
        if not isinstance(where, str) or Path(where).name != where or where in ("", ".", ".."):
            raise CheckpointError(f"{path} points at {where!r}, outside its folder; refused")
        if isinstance(item, BytesStorageMetadata):
            _check_shard_item(Path(folder), info, path)
    return index


def _check_shard_item(folder: Path, info: Any, index_path: Path) -> None:
    """Load one pickled (non-tensor) item of a ``.distcp`` shard weights-only: torch would load it with
    ``weights_only=False``, so a pickle that calls anything must be refused before torch sees it."""
    import io

    if getattr(info, "transform_descriptors", None):
        raise CheckpointError(f"{index_path} stores items through transforms {info.transform_descriptors}, which"
                              " lit_llm's checks do not read; refused")
    try:
        with open(folder / info.relative_path, "rb") as f:
            f.seek(int(info.offset))
            blob = f.read(int(info.length))
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{folder / info.relative_path} holds an item that a weights-only load refuses"
                              f" ({reason}); refused without running it. Use a checkpoint your own runs"
                              " wrote") from None


# ---------------------------------------------------------------------------------------------- writing
def attach(checkpoint: dict[str, Any], info: CheckpointInfo) -> None:
    """Put ``info`` into a checkpoint dict that Lightning is about to save (``on_save_checkpoint``)."""
    checkpoint[KEY] = info.to_dict()


def temp_path(path: str | Path) -> Path:
    """The temporary name a checkpoint is written under beside ``path``: ``TMP_PREFIX`` + ``PID@HOST+`` + its
    name, so that a run's start-up sweep can tell a dead writer's leftover from a file another run on the same
    folder is writing now (``lit_llm.callbacks.preemption.sweep_stale_temps``)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}@{socket.gethostname()}+{path.name}")


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``TMP_PREFIX + name`` beside ``path``, fsync, rename, then sync the folder: a reader sees
    the old file or the whole new one. A kill leaves only the temporary name, which a run's start sweeps
    (``lit_llm.callbacks.preemption.sweep_stale_temps``)."""
    from lit_llm.io import fsync_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # an error, not a kill: nothing is left behind
        from lit_llm.io import STORAGE_ERRNOS, storage_error

        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise storage_error(e, path, "nothing was half-written and the earlier checkpoints are whole: free"
                                " space or fix the folder, then resume with --ckpt_path newest") from None
        raise
    fsync_path(path.parent)
    return path


def save(path: str | Path, state_dict: dict[str, torch.Tensor], info: CheckpointInfo,
         **entries: Any) -> Path:
    """Write a checkpoint file: ``state_dict`` (with its prefixes), ``info`` and any other top-level entries,
    atomically (``torch_save_atomic``)."""
    return torch_save_atomic({**entries, "state_dict": state_dict, KEY: info.to_dict()}, path)


# ---------------------------------------------------------------------------------------------- resuming
RUN_KEY = "lit_llm_run"  # which run saved a checkpoint: {"slurm_job": id or None, "config": fingerprint}


def _candidate(path: Path) -> Optional[tuple[int, dict[str, Any]]]:
    """(global step, run record) of a complete checkpoint (file or sharded folder); None if it does not load."""
    meta = path / "meta.pt" if path.is_dir() else path
    try:
        if path.is_dir():
            read_sharded_index(path)  # a hostile or broken index is no candidate, and runs nothing
        ckpt = torch.load(meta, map_location="cpu", weights_only=True, mmap=not path.is_dir())
    except Exception:  # truncated, corrupted or foreign: not a candidate  # noqa: BLE001
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    if not isinstance(step, int) or KEY not in ckpt:
        return None
    run = ckpt.get(RUN_KEY)
    return step, run if isinstance(run, dict) else {}


def checkpoints_by_step(*folders: str | Path) -> list[tuple[int, float, Path, dict[str, Any]]]:
    """Every complete lit_llm checkpoint in ``folders`` (``*.ckpt`` files and sharded ``*.ckpt/`` folders,
    ``hpc_ckpt_N.ckpt`` included) as (step, mtime, path, run record), newest first; files that do not load are
    passed over."""
    found = []
    for folder in {Path(f) for f in folders if f}:
        if not folder.is_dir():
            continue
        for path in folder.glob("*.ckpt"):
            if path.name.startswith("."):
                continue
            candidate = _candidate(path)
            if candidate is not None:
                found.append((candidate[0], path.stat().st_mtime, path, candidate[1]))
    return sorted(found, key=lambda c: c[:2], reverse=True)


def newest_checkpoint(*folders: str | Path) -> Optional[Path]:
    """The complete lit_llm checkpoint with the highest global step in ``folders``; on a tie the most recently
    written wins. None when there is none."""
    found = checkpoints_by_step(*folders)
    return found[0][2] if found else None
