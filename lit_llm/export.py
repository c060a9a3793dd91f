"""``python -m lit_llm export``: write a checkpoint in another ecosystem's format; and the import path back."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from lit_llm.convert_hf import _require_transformers, from_hf_model, to_hf_model
from lit_llm.generate import load_checkpoint
from lit_llm.modules.language_model import CKPT_KEY


def export(checkpoint: str, out: str, format: str = "hf") -> Path:
    """Export a lit_llm checkpoint.

    ``--format hf`` writes a directory that ``transformers``' Auto classes load (GPT2LMHeadModel,
    LlamaForCausalLM or BertForMaskedLM) with safetensors weights, and the tokenizer files for AutoTokenizer.

    Args:
        checkpoint: the .ckpt file written by ``lit_llm fit``.
        out: output directory (replaced if it exists; written under a temporary name, then renamed).
        format: ``hf`` (Hugging Face transformers).
    """
    if format != "hf":
        raise ValueError(f"Unknown export format {format!r}; supported: hf")
    tf = _require_transformers()
    model, tok = load_checkpoint(checkpoint)
    hf_model = to_hf_model(model.config, model.state_dict())
    out_dir = Path(out)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    try:
        hf_model.save_pretrained(tmp)
        vocab = tok.get_vocab()
        special = {k: t for k, t in (("mask_token", "[MASK]"), ("pad_token", "[PAD]"), ("unk_token", "[UNK]"),
                                     ("cls_token", "[CLS]"), ("sep_token", "[SEP]")) if t in vocab}
        tf.PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Wrote {type(hf_model).__name__} and its tokenizer to {out_dir}")
    return out_dir


def import_hf(hf_dir: str, out: str) -> Path:
    """Turn a Hugging Face GPT-2, Llama or BERT directory (config, weights, tokenizer.json) into a lit_llm
    checkpoint that ``generate``, ``export`` and fine-tuning read.

    Args:
        hf_dir: a directory written by ``save_pretrained`` (offline; nothing is downloaded).
        out: path of the .ckpt file to write.
    """
    tf = _require_transformers()
    src = Path(hf_dir)
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
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        CKPT_KEY: {"model_config": cfg.to_dict(), "tokenizer": (src / "tokenizer.json").read_text(), "tokens_seen": 0},
    }
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out_path)  # never a half-written checkpoint under the final name
    print(f"Wrote {out_path} ({cfg.family}, {cfg.num_parameters():,} parameters)")
    return out_path
