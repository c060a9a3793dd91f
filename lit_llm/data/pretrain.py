"""LightningDataModule for causal language-model pretraining on one text corpus.

raw text -> character tokenizer -> token files (memmap, cached by content hash) -> blocks of
``block_size + 1`` tokens. Training draws random blocks; sample ``g`` of the run always starts at the
same offset for a given seed, so the order is reproducible, independent of the number of processes,
and resumable mid-epoch (the sampler restarts at the first batch the loop has not trained on).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_llm.data.corpora import md5sum, read_text, resolve_corpus
from lit_llm.data.tokenizer import encode, tokenizer_hash, train_char_tokenizer
from lit_llm.data.tokens import open_split, read_manifest, write_token_dir

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
    """Text corpus -> character tokenizer -> cached token files -> blocks for causal LM training.

    Args:
        corpus: a named corpus (``tinyshakespeare``) or the path of a UTF-8 text file.
        data_dir: folder holding named corpora (also ``$LIT_LLM_DATA_DIR``); searched before downloading.
        cache_dir: where token files are cached (default ``$LIT_LLM_CACHE_DIR`` or ``~/.cache/lit_llm/tokens``).
        block_size: tokens of context per training example (each block holds ``block_size + 1`` tokens).
        batch_size: blocks per batch on each process.
        val_fraction: fraction of the corpus, taken from its end, held out for validation.
        test_fraction: fraction held out for testing, taken from just before the validation part. With 0,
            ``test`` and ``predict`` use the validation split.
        num_workers: DataLoader worker processes.
        seed: seed of the random block offsets.
        special_tokens: tokens added after the characters, e.g. ``["[MASK]"]`` for a BERT-family model.
    """

    def __init__(
        self,
        corpus: str = "tinyshakespeare",
        data_dir: Optional[str] = None,
        cache_dir: Optional[str] = None,
        block_size: int = 64,
        batch_size: int = 12,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        num_workers: int = 0,
        seed: int = 1337,
        special_tokens: Optional[list[str]] = None,
    ) -> None:
        super().__init__()
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size} and {batch_size}")
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"Need 0 < val_fraction < 1, 0 <= test_fraction and val_fraction + test_fraction < 1;"
                f" got val_fraction={val_fraction}, test_fraction={test_fraction}"
            )
        self.save_hyperparameters()
        self.corpus_path = resolve_corpus(corpus, data_dir)  # fails fast on a missing file
        self.cache_root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or _CACHE)
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        self._token_dir: Optional[Path] = None
        self._tokenizer: Optional[Tokenizer] = None
        self.splits: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ preparation
    @property
    def token_dir(self) -> Path:
        """The cache folder for this corpus and split, named by the content hash of both."""
        if self._token_dir is None:
            key = {
                "corpus_md5": md5sum(self.corpus_path),
                "tokenizer": "char",
                "special_tokens": list(self.hparams.special_tokens or []),
                "val_fraction": self.hparams.val_fraction,
                "test_fraction": self.hparams.test_fraction,
            }
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            self._token_dir = self.cache_root / f"{self.corpus_path.stem}-{digest}"
            self._key = key
        return self._token_dir

    def prepare_data(self) -> None:
        """Tokenize the corpus into memmap files once; reruns with the same inputs reuse them."""
        if read_manifest(self.token_dir) is not None:
            return
        text = read_text(self.corpus_path)
        n = len(text)
        n_val, n_test = int(n * self.hparams.val_fraction), int(n * self.hparams.test_fraction)
        parts = {"train": text[: n - n_val - n_test], "test": text[n - n_val - n_test : n - n_val], "val": text[n - n_val :]}
        tok = train_char_tokenizer(text, self.hparams.special_tokens or ())
        splits = {name: encode(tok, part) for name, part in parts.items()}
        manifest = {"corpus": str(self.corpus_path), **self._key, "tokenizer_hash": tokenizer_hash(tok)}
        write_token_dir(self.token_dir, tok, splits, manifest)
        rank_zero_info(f"Wrote token files to {self.token_dir}: " + ", ".join(f"{k}={len(v):,}" for k, v in splits.items()))

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.prepare_data()
            self._tokenizer = Tokenizer.from_file(str(self.token_dir / "tokenizer.json"))
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def setup(self, stage: str) -> None:
        self.prepare_data()  # no-op when the files exist; covers processes that skipped prepare_data
        test_split = "test" if self.hparams.test_fraction > 0 else "val"
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": [test_split], "predict": [test_split]}[stage]
        for split in needed:
            tokens = open_split(self.token_dir, split)
            if len(tokens) < self.block_size + 1:
                raise ValueError(
                    f"The {split} split of {self.corpus_path} has {len(tokens)} tokens, fewer than block_size + 1"
                    f" = {self.block_size + 1}. Lower --data.block_size or use a larger corpus / split fraction."
                )
            self.splits[split] = tokens
        if stage in ("test", "predict") and test_split == "val":
            rank_zero_info("test_fraction is 0: evaluating on the validation split")

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        dataset = RandomBlocks(self.splits["train"], self.block_size, self.seed)
        sampler = ResumableBlockSampler(dataset)
        if self.trainer is not None:
            sampler = ResumableBlockSampler(
                dataset, self.trainer.world_size, self.trainer.global_rank, self._resume_skip(len(sampler))
            )
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

