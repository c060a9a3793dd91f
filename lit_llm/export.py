"""``python -m lit_llm export``: write a checkpoint in another ecosystem's format; and the import path back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, Optional

import torch

from lit_llm import checkpoint as ckpt_format
from lit_llm.chat import CHAT_TEMPLATE
from lit_llm.convert_hf import _require_transformers, from_hf_model, to_hf_model
from lit_llm.data.tokenizer import ROLE_TOKENS, declared_special_tokens, special_tokens
from lit_llm.generate import load_checkpoint
from lit_llm.io import fsync_path, fsync_tree, publish_mode


def export(checkpoint: str, out: str, format: Literal["hf", "onnx"] = "hf", overwrite: bool = False) -> Path:
    """Export a lit_llm checkpoint.

    ``--format hf`` writes a directory that ``transformers``' Auto classes load (GPT2LMHeadModel,
    LlamaForCausalLM or BertForMaskedLM) with safetensors weights, and the tokenizer files for AutoTokenizer.
    ``--format onnx`` writes ``model.onnx`` (a language model's forward: input_ids -> logits; a classifier's:
    input_ids, attention_mask -> class logits, LoRA merged), ``tokenizer.json`` and ``lit_llm.json``, and
    checks onnxruntime's output against PyTorch's.

    Args:
        checkpoint: the .ckpt file written by ``lit_llm fit`` (a language model or a classifier for onnx).
        out: output directory, written under a temporary name beside it, then renamed. An existing folder
            that is not empty is refused unless ``--overwrite true``.
        format: ``hf`` (Hugging Face transformers) or ``onnx``.
        overwrite: replace a non-empty ``out`` (only once the new folder is complete). Never a folder that
            holds the checkpoint being exported.
    """
    if format == "onnx":
        return export_onnx(checkpoint, out, overwrite=overwrite)
    if format != "hf":
        raise ValueError(f"Unknown export format {format!r}; supported: hf, onnx")
    check_out(checkpoint, out, overwrite)  # before the work: a refused --out costs nothing
    model, tok = load_checkpoint(checkpoint, purpose="export --format hf")  # refuses a classifier, with the fix
    tf = _require_transformers()
    hf_model = to_hf_model(model.config, model.state_dict())
    roles = special_tokens(tok)  # lit_llm's [EOS] ..., or the ones an imported model's checkpoint declares
    if declared_special_tokens(tok) is None and model.config.causal and "eos" in roles:
        # what precedes a text in lit_llm's training is the previous document's [EOS], never [BOS] (GPT-2's
        # convention: one <|endoftext|> for both); so lm-eval's --model hf, which starts a text with the BOS,
        # scores the export as lit_llm evaluate scores the checkpoint
        roles["bos"] = roles["eos"]
    # generation in transformers or vLLM stops at the tokenizer's end of text; a vocabulary without one
    # (character level) gets None, never transformers' default id (Llama's 2, which is some other token here)
    for name in ("bos", "eos", "pad"):
        token_id = tok.token_to_id(roles[name]) if name in roles else None
        setattr(hf_model.config, f"{name}_token_id", token_id)
        if getattr(hf_model, "generation_config", None) is not None:
            setattr(hf_model.generation_config, f"{name}_token_id", token_id)

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        special = {f"{role}_token": token for role, token in roles.items()}
        # model_max_length: longer inputs are truncated or refused by transformers instead of running past the
        # position table (its default is 1e30)
        hf_tok = tf.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model.config.block_size, **special)
        if model.config.causal:
            hf_tok.chat_template = CHAT_TEMPLATE  # lit_llm.chat's transcript, as serve and chat prompt it
        hf_tok.save_pretrained(tmp)
        _portable_tokenizer_class(tmp / "tokenizer_config.json")

    out_dir = _write_dir(out, write, overwrite)
    print(f"Wrote {type(hf_model).__name__} and its tokenizer to {out_dir}")
    return out_dir


def _portable_tokenizer_class(path: Path) -> None:
    """Name the tokenizer class that transformers 4.x and 5.x both load: 5.x writes ``TokenizersBackend``, a
    class 4.x (which lm-eval and vLLM often run) does not have; ``PreTrainedTokenizerFast`` is the same
    tokenizer.json-backed class in both."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# the weights, the config, the tokenizer and what names its special tokens (end of text, padding ...)
HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "*.safetensors", "*.safetensors.index.json"]


def hub_snapshot(repo_id: str, revision: Optional[str] = None) -> Path:
    """The local folder of a Hugging Face Hub model: downloaded by ``huggingface_hub.snapshot_download`` (only
    the configs, the tokenizer files and the safetensors weights: ``HUB_FILES``) into the local Hub cache, or found
    there. With
    ``HF_HUB_OFFLINE=1`` nothing is downloaded and the cache must hold it already."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:
        raise ImportError("Importing from the Hub needs huggingface_hub: pip install 'lit_llm[hf]'") from e
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and the Hub model {repo_id} (revision {revision or 'main'}) is"
            " neither in the local Hub cache nor reachable (HF_HUB_OFFLINE is set, or there is no network):"
            " download it where there is a network (huggingface-cli download), or pass a save_pretrained folder"
        ) from e
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"The Hub has no model {repo_id!r} at revision {revision or 'main'}"
                                f" ({type(e).__name__}): check the id, or pass a local folder") from e


def import_hf(hf_dir: str, out: str, revision: Optional[str] = None) -> Path:
    """Turn a Hugging Face GPT-2, Llama or BERT model (config, safetensors weights, tokenizer.json) into a
    lit_llm checkpoint that ``generate``, ``export`` and fine-tuning read.

    Args:
        hf_dir: a directory written by ``save_pretrained``, or a Hub model id such as ``gpt2`` or
            ``owner/name``, fetched into the local Hub cache (``HF_HUB_OFFLINE=1``: from the cache only).
        out: path of the .ckpt file to write.
        revision: the Hub revision (branch, tag or commit) of a Hub id; default main.
    """
    tf = _require_transformers()
    src = Path(hf_dir)
    if not src.exists():
        src = hub_snapshot(hf_dir, revision)
    elif revision is not None:
        raise ValueError(f"--revision applies to a Hub id; {hf_dir} is a local folder")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json; pass a directory written by transformers' save_pretrained")
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{src} has no tokenizer.json; lit_llm checkpoints carry a fast (tokenizers) tokenizer")
    hf_config = tf.AutoConfig.from_pretrained(src)
    cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "bert": tf.BertForMaskedLM}.get(hf_config.model_type)
    if cls is None:
        raise ValueError(f"{src} holds a {hf_config.model_type!r} model; lit_llm imports gpt2, llama and bert")
    hf_model = cls.from_pretrained(src, dtype=torch.float32)
    cfg, state = from_hf_model(hf_model)
    tokenizer = (src / "tokenizer.json").read_text()
    info = ckpt_format.CheckpointInfo(task="language_model", model_config=cfg.to_dict(), tokenizer=tokenizer,
                                      special_tokens=_source_special_tokens(tf, src, hf_config, tokenizer))
    out_path = ckpt_format.save(out, {f"model.{k}": v for k, v in state.items()}, info)
    print(f"Wrote {out_path} ({cfg.family}, {cfg.num_parameters():,} parameters)")
    return out_path


def _source_special_tokens(tf, src: Path, hf_config, tokenizer_json: str) -> dict[str, str]:
    """Role -> token of an imported model's special tokens, as transformers reads them (tokenizer_config.json,
    special_tokens_map.json), completed by the ids in config.json / generation_config.json where the tokenizer
    names none (GPT-2 checkpoints often carry only ``eos_token_id``). Kept in the checkpoint, so that
    generation, serving, chat, fine-tuning and the export stop at the source's end of text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    roles: dict[str, str] = {}
    try:
        hf_tok = tf.AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError):  # a folder with tokenizer.json but no usable tokenizer config: the ids alone
        hf_tok = None
    for role in ROLE_TOKENS:
        token = getattr(hf_tok, f"{role}_token", None) if hf_tok is not None else None
        if isinstance(token, str) and tok.token_to_id(token) is not None:
            roles[role] = token
    generation = getattr(tf.GenerationConfig, "from_pretrained", None)
    try:
        gen_config = generation(src) if generation and (src / "generation_config.json").is_file() else None
    except (OSError, ValueError):
        gen_config = None
    for role in ("bos", "eos", "pad"):
        ids = [getattr(c, f"{role}_token_id", None) for c in (hf_config, gen_config) if c is not None]
        token_id = next((i[0] if isinstance(i, list) else i for i in ids if i not in (None, [])), None)
        if role not in roles and token_id is not None and tok.id_to_token(token_id) is not None:
            roles[role] = tok.id_to_token(token_id)
    return roles


def check_out(checkpoint: str, out: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that export must not replace: a file, a folder that holds the checkpoint, or a
    non-empty folder without ``--overwrite true``."""
    out_dir = Path(out)
    if out_dir.resolve() == Path.cwd().resolve() or out_dir.resolve() in Path.cwd().resolve().parents:
        raise ValueError(f"--out {out} is the current folder or one above it; export writes a folder of its own:"
                         " pass --out exported/NAME")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file, not a folder; pass another --out")
    if out_dir.resolve() in Path(checkpoint).resolve().parents:
        raise ValueError(f"--out {out_dir} holds the checkpoint {checkpoint} being exported; replacing it would"
                         " delete the checkpoint: pass another --out, e.g. exported/NAME")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"--out {out_dir} exists and is not empty; pass another --out, or --overwrite true"
                              " to replace it (everything in it is deleted)")


def _write_dir(out: str, write, overwrite: bool = False) -> Path:
    """Call ``write(tmp_dir)`` on a temporary folder beside ``out``, fsync it, then rename it to ``out``. An
    existing ``out`` is moved aside and deleted only once the new folder is in place: never half a folder."""
    out_dir = Path(out).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp", dir=out_dir.parent))
    old = out_dir.with_name(f"{tmp.name}.old")
    try:
        write(tmp)
        publish_mode(tmp)  # mkdtemp's 0700 would hide the export from everyone else
        fsync_tree(tmp)
        if out_dir.is_dir() and any(out_dir.iterdir()):  # checked again: it may have appeared during the write
            if not overwrite:
                raise FileExistsError(f"--out {out_dir} exists and is not empty; pass another --out, or"
                                      " --overwrite true to replace it")
            os.replace(out_dir, old)  # aside, not deleted, until the new folder is in place
        try:
            os.replace(tmp, out_dir)  # onto nothing or an empty folder
        except OSError:
            if old.exists():
                os.replace(old, out_dir)  # put the old folder back
            raise
        fsync_path(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)  # only now: the new folder is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_onnx(checkpoint: str, out: str, opset: int = 18, tolerance: float = 1e-4, overwrite: bool = False) -> Path:
    """ONNX export of a language model's or a classifier's forward, with an onnxruntime parity check.

    Batch and sequence length are dynamic (up to the model's block_size). The KV cache is not part of the
    graph: a generation loop over it recomputes the prefix (serving uses PyTorch with the cache). ``out`` and
    ``overwrite`` as for ``export``.
    """
    check_out(checkpoint, out, overwrite)
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'lit_llm[onnx]'") from None
    import json

    import numpy as np

    path = Path(checkpoint)
    if ckpt_format.read_info(path, purpose="export --format onnx").task == "classification":
        from lit_llm.tasks.classifier import SequenceClassifier

        model = SequenceClassifier.restore(path)
        if hasattr(model.backbone, "peft_config"):
            model.merge_lora()
        config, tok = model.config, model.tokenizer
        names, outputs = ["input_ids", "attention_mask"], ["logits"]
        meta = {"task": "classification", "label_names": model.hparams.label_names, "pooling": model.pooling,
                "num_classes": model.hparams.num_classes}
    else:
        model, tok = load_checkpoint(path, purpose="export --format onnx")
        config = model.config
        names, outputs = ["input_ids"], ["logits"]
        meta = {"task": "language_model"}
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=config.block_size)

    def example(b: int, t: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, tok.get_vocab_size(), (b, t), generator=g)
        if len(names) == 1:
            return (ids,)
        mask = torch.arange(t)[None, :] < torch.randint(1, t + 1, (b, 1), generator=g)  # right padding
        return ids, mask

    args = example(2, min(8, config.block_size), 0)
    dyn = tuple({0: batch, 1: seq} for _ in names)

    def write(tmp: Path) -> None:
        torch.onnx.export(model, args, tmp / "model.onnx", dynamo=True, dynamic_shapes=dyn, input_names=names,
                          output_names=outputs, opset_version=opset, verbose=False)
        (tmp / "tokenizer.json").write_text(tok.to_str())
        (tmp / "lit_llm.json").write_text(json.dumps({**meta, "inputs": names, "outputs": outputs,
                                                       "model_config": config.to_dict()}, indent=2) + "\n")
        # parity on another shape than the traced one: the dynamic axes really are dynamic
        check = example(3, min(config.block_size, 13), 1)
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: a.numpy() for n, a in zip(names, check)})[0]
        with torch.no_grad():
            want = model(*check).numpy()
        diff = float(np.abs(got - want).max())
        meta["onnxruntime_max_abs_diff"] = diff
        if diff > tolerance:
            raise RuntimeError(f"onnxruntime differs from PyTorch by {diff:.2e} (> {tolerance}); not writing {out}")
        (tmp / "lit_llm.json").write_text(json.dumps({**meta, "inputs": names, "outputs": outputs,
                                                       "model_config": config.to_dict()}, indent=2) + "\n")

    out_dir = _write_dir(out, write, overwrite)
    print(f"Wrote {out_dir / 'model.onnx'} ({meta['task']}); onnxruntime vs PyTorch max |diff| "
          f"{meta['onnxruntime_max_abs_diff']:.2e}")
    return out_dir
