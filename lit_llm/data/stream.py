"""Token shards that stream to many nodes (``data.stream``): the train split as litdata chunks, read by litdata's
``StreamingDataset`` so that each rank reads only the chunks it trains on, from local disk or an object store.

The chunks are written once per token folder and block size by ``litdata.optimize`` (``TokensLoader``: each chunk
holds ``chunk_blocks`` whole blocks of ``block_size + 1`` tokens, stored as int32), into ``stream<block+1>/``
inside the token folder, under a temporary name and renamed, or to ``data.stream_dir`` (a folder or a URL such as
``s3://bucket/corpus``, which litdata writes and reads). With ``data.stream_cache``, each rank copies the chunks it
reads into that folder (node-local disk), from the URL or from a folder on a shared file system. Training iterates non-overlapping blocks, shuffled by chunk and within a window, split
between the ranks by litdata; the loader's position (samples yielded, epoch) is the data module's state, which
Lightning keeps in every checkpoint, so a resumed run continues at the next unseen batch (docs/data.md).

litgpt streams its pretraining data the same way; litdata is the ``stream`` extra, imported only here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lit_llm.data.tokens import open_split
from lit_llm.io import file_sha256

CHUNK_BLOCKS = 1024  # blocks per chunk: 1024 x 1025 int32 tokens (4 MB) at block_size 1024


def _import_litdata() -> Any:
    try:
        import litdata
    except ImportError as e:
        raise ImportError("data.stream reads litdata chunks, and litdata is not installed: pip install"
                          " 'lit_llm[stream]' (beside a CPU-only torch: docs/installing.md), or set data.stream:"
                          " false") from e
    return litdata


def is_url(path: str) -> bool:
    return "://" in path


def stream_folder(token_dir: Path, block_size: int) -> Path:
    """Where the train split's chunks go by default: inside the token folder, one folder per block size."""
    return token_dir / f"stream{block_size + 1}"


def _blocks(item: tuple[str, str, int, int]) -> Any:
    """``optimize``'s function: tokens ``start`` .. ``stop`` of a split file as one int32 item (whole chunks)."""
    path, dtype, start, stop = item
    tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    yield torch.from_numpy(np.asarray(tokens[start:stop], dtype=np.int32))


def write_stream(token_dir: Path, block_size: int, out: str, chunk_blocks: Optional[int] = None) -> str:
    """The train split of ``token_dir`` as chunks of ``chunk_blocks`` blocks in ``out`` (a folder or a URL), unless
    a finished set is there (its ``index.json``, which litdata writes last). A local folder is written under a
    temporary name and renamed, so a killed write never looks finished. The tokens after the last whole block
    are left out, as ``drop_last`` leaves them out of an epoch. Returns ``out``."""
    litdata = _import_litdata()
    from litdata import TokensLoader

    manifest = json.loads((token_dir / "manifest.json").read_text())
    per_chunk = (chunk_blocks or CHUNK_BLOCKS) * (block_size + 1)
    origin = {"token_folder": token_dir.name, "tokenizer_hash": manifest["tokenizer_hash"],
              "block_size": block_size, "chunk_tokens": per_chunk}
    if _finished(out, origin):
        return out
    tokens = open_split(token_dir, "train")
    whole = len(tokens) // (block_size + 1) * (block_size + 1)
    if whole == 0:
        raise ValueError(f"The train split of {token_dir} has {len(tokens)} tokens, fewer than block_size + 1 ="
                         f" {block_size + 1}: nothing to stream. Lower --data.block_size")
    path = str(token_dir / "train.bin")
    items = [(path, manifest["dtype"], s, min(s + per_chunk, whole)) for s in range(0, whole, per_chunk)]
    if is_url(out):
        target = out
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        target = tempfile.mkdtemp(prefix=f"{Path(out).name}.tmp", dir=Path(out).parent)  # unique across nodes too
        os.rmdir(target)  # optimize creates it
    litdata.optimize(fn=_blocks, inputs=items, output_dir=target, chunk_size=per_chunk, item_loader=TokensLoader(),
                     num_workers=1, verbose=os.environ.get('LIT_LLM_DEBUG') == '1', mode="overwrite" if is_url(out) else None)
    if is_url(out):
        _put_origin(out, origin)
    else:  # and each chunk's sha256, which check_chunks verifies at load
        (Path(target) / ORIGIN).write_text(json.dumps({**origin, "sha256": _chunk_digests(Path(target))}))
        try:
            os.replace(target, out)
        except OSError:  # another process published the same chunks first
            shutil.rmtree(target, ignore_errors=True)
            if not (Path(out) / "index.json").is_file():
                raise
    return out


ORIGIN = "lit_llm.json"  # beside the chunks: the token folder, tokenizer and block size they were cut from


def _chunk_digests(folder: Path) -> dict[str, str]:
    """The sha256 of each chunk its ``index.json`` lists, by file name."""
    chunks = json.loads((folder / "index.json").read_text())["chunks"]
    return {chunk["filename"]: file_sha256(folder / chunk["filename"]) for chunk in chunks}


def _finished(out: str, origin: dict) -> bool:
    """Whether ``out`` holds a finished stream (its ``index.json``) of these tokens and blocks. A finished one of
    other tokens or another block size is refused, naming both: a reused ``stream_dir`` must not train on stale
    chunks. At a URL, nothing is written over a finished stream (litdata's overwrite would delete the prefix)."""
    if is_url(out):
        from litdata.streaming.fs_provider import _get_fs_provider

        fs = _get_fs_provider(out)
        if not fs.exists(f"{out.rstrip('/')}/index.json"):
            return False
        local = Path(tempfile.mkdtemp(prefix="lit_llm_origin"))
        try:
            fs.download_file(f"{out.rstrip('/')}/{ORIGIN}", str(local / ORIGIN))
            found = json.loads((local / ORIGIN).read_text())
        except Exception:
            found = None
        finally:
            shutil.rmtree(local, ignore_errors=True)
    else:
        if not (Path(out) / "index.json").is_file():
            return False
        path = Path(out) / ORIGIN
        found = json.loads(path.read_text()) if path.is_file() else None
    if isinstance(found, dict):
        found = {k: v for k, v in found.items() if k != "sha256"}
    if found != origin:
        raise ValueError(f"data.stream_dir {out} holds chunks of other tokens or blocks ({found}) than this run's"
                         f" ({origin}): give another stream_dir, or delete that one")
    return True


def _put_origin(url: str, origin: dict) -> None:
    from litdata.streaming.fs_provider import _get_fs_provider

    local = Path(tempfile.mkdtemp(prefix="lit_llm_origin"))
    try:
        (local / ORIGIN).write_text(json.dumps(origin))
        _get_fs_provider(url).upload_file(str(local / ORIGIN), f"{url.rstrip('/')}/{ORIGIN}")
    finally:
        shutil.rmtree(local, ignore_errors=True)


def check_chunks(folder: Path) -> None:
    """A local stream folder's chunks against its index and the checksums written beside them: a missing,
    truncated or altered chunk is one error naming it. (Hashing reads every chunk once per process at start:
    sha256 runs at about 1 GB/s a core.)"""
    index = folder / "index.json"
    if not index.is_file():
        raise ValueError(f"{folder} holds no finished stream ({index} is missing); delete the folder and run"
                         " prepare again")
    for chunk in json.loads(index.read_text())["chunks"]:
        path = folder / chunk["filename"]
        size = path.stat().st_size if path.is_file() else None
        if size != chunk["chunk_bytes"]:
            found = "is missing" if size is None else f"has {size} bytes"
            raise ValueError(f"The stream chunk {path} {found} where {index.name} says {chunk['chunk_bytes']}:"
                             f" delete {folder} and run prepare (or fit) again to rewrite it")
    origin = folder / ORIGIN
    want = json.loads(origin.read_text()).get("sha256") if origin.is_file() else None
    if want is None:  # written elsewhere (a URL's chunks, copied down): sizes only
        return
    for name, digest in _chunk_digests(folder).items():
        if want.get(name) != digest:
            raise ValueError(f"The stream chunk {folder / name} does not match its sha256 in {origin} (altered since"
                             f" it was written): delete {folder} and run prepare (or fit) again to rewrite it")


def _stack(batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(batch).long()


def _loader_class(litdata: Any) -> type:
    class EpochLoader(litdata.StreamingDataLoader):
        """litdata's loader, where an epoch cut short after a resume (``Trainer.limit_train_batches``) still ends
        the resumed epoch. litdata keeps its ``restore`` flag until an epoch runs to its end, so the next ``iter``
        replayed the resumed epoch's order where an uninterrupted run starts a new epoch (tested)."""

        def __iter__(self) -> Any:
            started = False
            try:
                for batch in super().__iter__():
                    started = True
                    yield batch
            finally:
                if started:
                    self.restore = False

    return EpochLoader


def stream_loader(source: str, block_size: int, batch_size: int, seed: int, num_workers: int,
                  cache_dir: Optional[str] = None, state: Optional[dict] = None) -> Any:
    """litdata's ``StreamingDataLoader`` over the chunks at ``source``: shuffled blocks of ``block_size + 1``
    tokens (int64 batches, as the memory-mapped path gives), split between the ranks, resumed from ``state``."""
    litdata = _import_litdata()
    from lit_llm.data import stream_tokens

    if not is_url(source):
        check_chunks(Path(source))
        if cache_dir is not None:  # a shared folder (NFS, Lustre) read like a store: each node copies its chunks
            source = "local:" + str(Path(source).resolve())
    dataset = litdata.StreamingDataset(source, cache_dir=cache_dir, item_loader=stream_tokens.TokensLoader(block_size=block_size + 1),
                                       shuffle=True, drop_last=True, seed=seed)
    # its own generator, as the memory-mapped path's loader has: a DataLoader iterator otherwise draws its base
    # seed from the global RNG when it is created, and a resumed run creates one at the resume, after the
    # checkpoint's RNG state was restored, so its dropout masks drifted from an uninterrupted run's (found by
    # benchmarks/kill_resume.py --stream: the weights differed from the first step after a resume on)
    loader = _loader_class(litdata)(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_stack,
                                    drop_last=True, generator=torch.Generator().manual_seed(seed))
    if state is not None:
        loader.load_state_dict(state)
    return loader
