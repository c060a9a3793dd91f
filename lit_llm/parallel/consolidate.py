"""Turning a sharded (distributed) checkpoint into one file that generate, export and validate read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from lit_llm.checkpoint import load_sharded_meta, read_info


def consolidate(checkpoint: str, out: str) -> Path:
    """Merge a sharded checkpoint written under FSDP or tensor parallelism into one .ckpt file.

    Lightning's ModelParallelStrategy saves a folder: ``*.distcp`` tensor shards, ``.metadata``, and
    ``meta.pt`` (loop state, hyperparameters, lit_llm's model config and tokenizer). The tensors are gathered
    with ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``, on one process. The result holds
    the full model weights and the metadata; the optimizer state is left out, so it serves generation,
    export, validation and fine-tuning, not an exact resume (resume from the sharded folder for that).

    Args:
        checkpoint: the checkpoint folder (e.g. ``outputs/run/checkpoints/last.ckpt/``).
        out: the single file to write (written under a temporary name, then renamed).
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    src = Path(checkpoint)
    if src.is_file():
        read_info(src, purpose="consolidate")  # a truncated or foreign file gets its own error, not this one
        raise ValueError(f"{src} is already a single-file checkpoint; generate and export can read it as it is")
    if not (src / ".metadata").is_file() or not (src / "meta.pt").is_file():
        raise FileNotFoundError(f"{src} is not a sharded checkpoint folder (it needs .metadata and meta.pt)")
    # .metadata through an allow-list unpickler (torch's reader would run any pickle), meta.pt weights-only:
    # a folder from someone else cannot run code; both before any work
    ckpt = load_sharded_meta(src)
    dst = Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        tensors = Path(tmp) / "tensors.pt"
        dcp_to_torch_save(src, tensors)
        ckpt["state_dict"] = torch.load(tensors, map_location="cpu", weights_only=True)["state_dict"]
        torch.save(ckpt, Path(tmp) / "out.ckpt")
        os.replace(Path(tmp) / "out.ckpt", dst)  # never a half-written file under the final name
    print(f"Wrote {dst} ({len(ckpt['state_dict'])} tensors, weights only)")
    return dst
