"""LightningDataModule for language-model pretraining (causal or masked) on one or more text sources.

raw text -> cleaning steps -> tokenizer (character, BPE, WordPiece or unigram; trained or loaded) -> token
files (memmap, cached by content hash) -> blocks of ``block_size + 1`` tokens. Training draws random blocks; sample ``g`` of the run always starts at the
same offset for a given seed, so the order is reproducible, independent of the number of processes,
and resumable mid-epoch (the sampler restarts at the first batch the loop has not trained on).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_llm.data.cleaning import build_steps
from lit_llm.data.corpora import CORPORA, resolve_corpus
from lit_llm.data.prepare import (
    SHARD_DOCS,
    check_dedup_memory,
    check_shard_docs,
    prepare,
    resolve_workers,
    token_folder,
    wait_for,
)
from lit_llm.data.sources import Source, resolve_files
from lit_llm.data.tokenizer import TokenizerSpec
from lit_llm.data.tokens import open_split

_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lit_llm" / "tokens"
CACHE_DIR_ENV = "LIT_LLM_CACHE_DIR"


def block_offset(seed: int, index: int, num_starts: int) -> int:
    """Start of random block ``index``: a pure function of (seed, index), so any process can compute it."""
    return int(np.random.default_rng([seed, index]).integers(num_starts))


class RandomBlocks(Dataset):
    """Item ``g`` is the block of ``block_size + 1`` tokens starting at ``block_offset(seed, g)``."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int) -> None:
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.num_starts = len(tokens) - block_size  # offsets 0 .. len - block_size - 1

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size  # one epoch sees about as many tokens as the split holds

    def __getitem__(self, g: int) -> torch.Tensor:
        o = block_offset(self.seed, g, self.num_starts)
        return torch.from_numpy(self.tokens[o : o + self.block_size + 1].astype(np.int64))


class ContiguousBlocks(Dataset):
    """Non-overlapping blocks covering a split in order: every token is predicted once (evaluation)."""

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> torch.Tensor:
        o = i * self.block_size
        return torch.from_numpy(self.tokens[o : o + self.block_size + 1].astype(np.int64))


class ResumableBlockSampler(DistributedSampler):
    """Yields global sample indices ``epoch * epoch_len + i * num_replicas + rank``.

    With batch size b on each of n processes, step s covers the same global indices as one process with
    batch size n*b, so the data order does not depend on the number of processes. ``skip`` indices are
    dropped from the start of the next iteration only (mid-epoch resume). It subclasses DistributedSampler
    so that Lightning uses it as is instead of wrapping it.
    """

    def __init__(self, dataset: RandomBlocks, num_replicas: int = 1, rank: int = 0, skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.num_samples * self.num_replicas
        start, self.skip = self.skip, 0
        return iter(range(base + start * self.num_replicas + self.rank, base + self.total_size, self.num_replicas))


class PretrainDataModule(L.LightningDataModule):
    """Text -> cleaning -> tokenizer -> cached token files -> blocks for language-model training.

    The ``prepare`` stage (``lit_llm.data.prepare``) runs once per data config; ``python -m lit_llm prepare
    --config FILE`` runs it from the same ``data:`` section without training.

    Args:
        corpus: shortcut for one source: a named corpus (``tinyshakespeare``) or a file path. Ignored when
            ``sources`` is given.
        sources: the corpora to read (files, globs or Hugging Face datasets), mixed by weight.
        cleaning: ordered cleaning steps, e.g. ``[{unicode: {form: NFKC}}, whitespace, dedup_exact]``
            (see ``lit_llm.data.cleaning.STEPS``); none by default.
        tokenizer: the tokenizer to train or load (default: character level).
        data_dir: folder holding named corpora (also ``$LIT_LLM_DATA_DIR``); searched before downloading.
        cache_dir: where token folders are cached (default ``$LIT_LLM_CACHE_DIR`` or ``~/.cache/lit_llm/tokens``).
        block_size: tokens of context per training example (each block holds ``block_size + 1`` tokens).
        batch_size: blocks per batch on each process.
        val_fraction: fraction of the token stream, taken from its end, held out for validation.
        test_fraction: fraction held out for testing, taken from just before the validation part. With 0,
            ``test`` and ``predict`` use the validation split.
        num_workers: DataLoader worker processes.
        seed: seed of the random block offsets and of the source mixing.
        encoding_errors: invalid UTF-8 in the sources: ``strict`` fails naming the file and byte offset,
            ``replace`` substitutes U+FFFD (text files).
        mixing: how several sources are mixed: ``all_exhausted_without_replacement`` (every document once),
            ``all_exhausted`` (oversample to the weights) or ``first_exhausted`` (stop with the first source).
        workers: processes of the prepare stage (not the DataLoader's, which is ``num_workers``): 1 prepares in
            this process; N > 1 cleans and tokenizes shards in N processes and resumes a killed prepare from the
            shards it finished (needs ``lit_llm[data]``); 0 uses every core. The token files are the same bytes
            for any value (docs/data.md).
        shard_docs: documents per shard when ``workers`` is not 1. Shards are cut from the input, never by the
            number of workers; this only sets the unit of work and of resume.
        dedup_memory_mb: with a number, deduplication holds about that many MiB whatever the corpus: with
            ``workers: 1`` the steps keep their keys on disk (SQLite, beside the output) with that much cache;
            otherwise they sort their keys in buckets of at most that size (64 MiB without it). null keeps the
            one-process path's keys in memory (faster while they fit). The same documents are removed either way.
        stream: train from token shards that stream (litdata chunks of the train split, ``lit_llm.data.stream``):
            each rank reads only the chunks it trains on, and the loader's position is in every checkpoint (needs
            ``lit_llm[stream]``).
            Blocks are non-overlapping and shuffled, not drawn at random offsets. Off: the memory-mapped file.
        stream_dir: where the chunks are written and read: a folder, or an object-store URL (``s3://...``);
            default ``stream<block_size + 1>/`` in the token folder.
        stream_cache: a node-local folder where each rank keeps the chunks it reads, fetched from the URL or from
            ``stream_dir`` on a shared file system; null reads a folder in place (litdata's default cache for URLs).
    """

    def __init__(
        self,
        corpus: Optional[str] = "tinyshakespeare",
        sources: Optional[list[Source]] = None,
        cleaning: Optional[list[Any]] = None,
        tokenizer: Optional[TokenizerSpec] = None,
        data_dir: Optional[str] = None,
        cache_dir: Optional[str] = None,
        block_size: int = 64,
        batch_size: int = 12,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        num_workers: int = 0,
        seed: int = 1337,
        encoding_errors: Literal["strict", "replace"] = "strict",
        mixing: Literal["all_exhausted_without_replacement", "all_exhausted", "first_exhausted"] = "all_exhausted_without_replacement",
        workers: int = 1,
        shard_docs: int = SHARD_DOCS,
        dedup_memory_mb: Optional[float] = None,
        stream: bool = False,
        stream_dir: Optional[str] = None,
        stream_cache: Optional[str] = None,
    ) -> None:
        super().__init__()
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size} and {batch_size}")
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"Need 0 < val_fraction < 1, 0 <= test_fraction and val_fraction + test_fraction < 1;"
                f" got val_fraction={val_fraction}, test_fraction={test_fraction}"
            )
        resolve_workers(workers)  # bad values fail here, not after the corpus is read
        check_shard_docs(shard_docs)
        check_dedup_memory(dedup_memory_mb)
        self.save_hyperparameters()
        if not sources:
            if corpus is None:
                raise ValueError("Give the data module a corpus or a list of sources")
            # a named corpus stays a name (found or downloaded at prepare time); a path must exist now
            sources = [Source(path=corpus if corpus in CORPORA else str(resolve_corpus(corpus, data_dir)))]
        self.sources = sources
        for source in sources:  # fail fast on missing files, before any work
            if source.path is not None:
                resolve_files(source, data_dir)
        self.cleaning = list(cleaning or [])
        build_steps(self.cleaning)  # unknown steps or options fail here, not after reading the corpus
        self.tokenizer_spec = tokenizer or TokenizerSpec()
        self.cache_root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or _CACHE)
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        self._token_dir: Optional[Path] = None
        self._tokenizer: Optional[Tokenizer] = None
        self.splits: dict[str, np.ndarray] = {}
        self._stream_loader: Any = None  # the streaming train loader (data.stream), whose position is our state
        self._stream_state: Optional[dict] = None  # a checkpoint's loader position, for the next train loader
        if stream:
            from lit_llm.data.stream import _import_litdata

            _import_litdata()  # a missing package fails here, before any work

    # ------------------------------------------------------------------ preparation
    def _args(self) -> tuple:
        hp = self.hparams
        return (self.sources, self.cache_root, self.cleaning, self.tokenizer_spec, hp.val_fraction, hp.test_fraction,
                hp.seed, hp.encoding_errors, hp.data_dir)

    def prepare_data(self) -> None:
        """Build the token folder once (Lightning calls this on one process per node); reruns reuse it. With
        ``stream``, also the train split's chunks (to a URL: by the first node only)."""
        self.prepare_stage()
        if self.hparams.stream:
            from lit_llm.data.stream import is_url, write_stream

            source = self.stream_source
            if not (is_url(source) and self.trainer is not None and self.trainer.node_rank > 0):
                with isolate_rng():  # litdata draws from the global RNGs: a first run must init as a later one
                    write_stream(self._token_dir, self.block_size, source)

    @property
    def stream_source(self) -> str:
        """Where the streaming train split's chunks are (``stream_dir``, or in the token folder)."""
        from lit_llm.data.stream import stream_folder

        return self.hparams.stream_dir or str(stream_folder(self.token_dir, self.block_size))

    def state_dict(self) -> dict[str, Any]:
        """The streaming loader's position (samples yielded, epoch, shuffle), kept by Lightning in checkpoints."""
        return {"stream": self._stream_loader.state_dict()} if self._stream_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A checkpoint's loader position: the next streaming train loader starts there."""
        self._stream_state = state_dict.get("stream")

    def prepare_stage(self, stage: Optional[str] = None, task: int = 0, tasks: int = 1) -> Path:
        """``prepare`` of this data config: the whole of it, or its ``merge``, returning the token folder; or one
        stage of its parallel path, returning the work folder (``lit_llm.data.prepare.prepare``'s ``stage``,
        ``task`` and ``tasks``)."""
        hp = self.hparams
        out = prepare(*self._args(), progress=True, mixing=hp.mixing, workers=hp.workers, shard_docs=hp.shard_docs,
                      dedup_memory_mb=hp.dedup_memory_mb, stage=stage, task=task, tasks=tasks)
        if stage in (None, "merge"):
            self._token_dir = out
        return out

    @property
    def token_dir(self) -> Path:
        """The prepared folder. Local rank 0 prepares it; other ranks of a job whose processes all start at
        once (torchrun, srun) wait for it instead of repeating the work."""
        if self._token_dir is None:
            if int(os.environ.get("LOCAL_RANK", "0")) > 0:
                self._token_dir = wait_for(token_folder(*self._args(), mixing=self.hparams.mixing)[0])
            else:
                self.prepare_data()  # returns at once when the folder exists
        return self._token_dir

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_file(str(self.token_dir / "tokenizer.json"))
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def report(self) -> dict[str, Any]:
        """What the preparation did: documents per cleaning step, duplicates, tokens per split, bytes/token."""
        return json.loads((self.token_dir / "report.json").read_text())

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None and self.trainer.is_global_zero:
            self._log_report()
        test_split = "test" if self.hparams.test_fraction > 0 else "val"
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": [test_split], "predict": [test_split]}[stage]
        for split in needed:
            tokens = open_split(self.token_dir, split)
            if len(tokens) < self.block_size + 1:
                raise ValueError(
                    f"The {split} split of {self.token_dir} has {len(tokens)} tokens, fewer than block_size + 1"
                    f" = {self.block_size + 1}. Lower --data.block_size or use a larger corpus / split fraction."
                )
            self.splits[split] = tokens
        if stage in ("test", "predict") and test_split == "val":
            rank_zero_info("test_fraction is 0: evaluating on the validation split")

    def _log_report(self) -> None:
        """Send the data report's figures (and the length histogram, to W&B) to the run's loggers."""
        r = self.report
        metrics = {f"data/{k}_tokens": v for k, v in r["tokens"].items()}
        metrics.update({"data/bytes_per_token": r["bytes_per_token"], "data/documents_kept": r["documents_kept"],
                        "data/documents_read": r["documents_read"], "data/duplicates_removed": r["duplicates_removed"]})
        for row in r["cleaning"]:
            metrics[f"data/removed_by_{row['step']}"] = row["removed"]
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=0)
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key="data/doc_lengths", images=[str(self.token_dir / "doc_lengths.png")], step=0)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        if self.hparams.stream:
            from lit_llm.data.stream import stream_loader

            self._stream_loader = stream_loader(self.stream_source, self.block_size, self.batch_size, self.seed,
                                                self.num_workers, self.hparams.stream_cache, self._stream_state)
            self._stream_state = None
            return self._stream_loader
        dataset = RandomBlocks(self.splits["train"], self.block_size, self.seed)
        sampler = ResumableBlockSampler(dataset)
        if self.trainer is not None:
            # the data-parallel size and rank: all processes under DDP/FSDP, the dp dimension of a 2D mesh
            # (tensor-parallel peers share their batch)
            kw = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) or {}
            replicas, rank = kw.get("num_replicas", 1), kw.get("rank", 0)
            sampler = ResumableBlockSampler(dataset, replicas, rank, self._resume_skip(len(sampler) // replicas))
        # own generator: creating a loader iterator must not draw from the global RNG (dropout), or a resumed
        # run's dropout masks would drift from an uninterrupted run's
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(dataset, sampler=sampler, drop_last=True, generator=generator)

    def _resume_skip(self, samples_per_epoch: int) -> int:
        """Samples of the current epoch that a restored run has already trained on.

        Lightning restores loop progress before it asks for loaders. ``processed`` counts the batches whose
        training step finished, which is what a checkpoint taken in ``on_train_batch_end`` has seen.
        """
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch_batches = samples_per_epoch // self.batch_size
        limit = trainer.limit_train_batches
        epoch_batches = min(epoch_batches, limit) if isinstance(limit, int) else int(epoch_batches * limit)
        if done == 0 or done >= epoch_batches:  # a fresh run, or a checkpoint taken at the end of an epoch
            return 0
        # the sampler handles the mid-epoch restart that this Lightning warning is about
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        return done * self.batch_size

    def val_dataloader(self) -> DataLoader:
        return self._loader(ContiguousBlocks(self.splits["val"], self.block_size))

    def test_dataloader(self) -> DataLoader:
        return self._loader(ContiguousBlocks(self.splits["test" if self.hparams.test_fraction > 0 else "val"], self.block_size))

    predict_dataloader = test_dataloader

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

