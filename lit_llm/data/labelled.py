"""Labelled text for sequence classification: reading, seeded splits (files, random or k-fold), batching.

Formats:
- ``label_text``: one example per line, ``LABEL TEXT`` (the SST-2 and CR files in ``../shared/data/sentiment``);
- ``csv`` and ``json`` (JSON lines) with configurable text and label fields, read through ``datasets``;
- ``feedback``: a ``lit_llm.feedback`` store, whose corrected labels become training examples.

Labels are integers ``0 .. num_classes - 1``, or strings mapped through ``label_names``.

The tokenizer is the one of the model being fine-tuned: ``ClassificationDataModule`` takes it from the
LightningModule in ``setup`` (a ``SequenceClassifier`` carries the tokenizer of its pretrained checkpoint),
so a fine-tune cannot silently use another vocabulary.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, DistributedSampler

from lit_llm.data.prepare import check_utf8
from lit_llm.data.sources import FORMATS, Source, resolve_files, split_lines
from lit_llm.data.tokenizer import load_tokenizer, special_id

SPLIT_MODES = ("files", "random", "kfold")


def read_labelled(path: str, format: Optional[str] = None, text_field: str = "text", label_field: str = "label",
                  label_names: Optional[list[str]] = None, num_classes: int = 2, data_dir: Optional[str] = None,
                  encoding_errors: str = "strict") -> tuple[list[str], list[int]]:
    """(texts, labels) of one labelled file. A relative path is looked up in the data dirs, like corpora.

    Nothing is guessed: a missing or null text or label, a label that is not a whole number, and a file that
    is not UTF-8 (UTF-16 included) are errors naming the file, the line or row, and the fix."""
    files = resolve_files(Source(path=path), data_dir)
    fmt = format or FORMATS.get(files[0].suffix.lower(), "label_text")
    if fmt == "text":  # .txt holding LABEL TEXT lines
        fmt = "label_text"
    texts: list[str] = []
    raw: list[Any] = []
    where: list[str] = []  # "FILE:LINE" or "FILE, row N" of each example, for errors about its label
    no_text = 0
    if fmt == "label_text":
        for f in files:
            check_utf8(f, encoding_errors)
            text_of_file = f.read_bytes().decode("utf-8", errors=encoding_errors)
            for n, line in enumerate(_records(text_of_file), 1):
                if not line.strip():
                    continue
                label, _, text = line.strip().partition(" ")
                if not text.strip():
                    if label.lstrip("-").isdigit() or (label_names and label in label_names):
                        no_text += 1  # a label with no text (CR has one): nothing to classify
                        continue
                    raise ValueError(f"{f}:{n}: expected 'LABEL TEXT', got {line[:80]!r}")
                raw.append(label)
                texts.append(text)
                where.append(f"{f}:{n}")
    elif fmt == "feedback":  # lit_llm.feedback's store: the requests with the labels users corrected
        from lit_llm.feedback import labelled_examples

        for f in files:
            t, y = labelled_examples(f)
            texts += t
            raw += y
            where += [str(f)] * len(y)
    elif fmt in ("csv", "json"):
        from datasets import load_dataset

        for f in files:  # one at a time, so that errors name the file
            check_utf8(f, encoding_errors)
            kw = {"encoding_errors": encoding_errors} if fmt == "csv" else {}
            for n, row in enumerate(load_dataset(fmt, data_files=[str(f)], split="train", streaming=True, **kw), 1):
                at = f"{f}, row {n} below the header" if fmt == "csv" else f"{f}, record {n}"
                if text_field not in row or label_field not in row:
                    raise ValueError(f"{at} has fields {sorted(row)}; set text_field / label_field (now {text_field!r} /"
                                     f" {label_field!r})")
                for what, field in (("text", text_field), ("label", label_field)):
                    if row[field] is None:  # streaming JSON also gives None for a field the row lacks
                        why = "is empty (so are cells reading NA, N/A or null)" if fmt == "csv" else "is missing or null"
                        raise ValueError(f"{at} has no {what}: its {field!r} {why}. Fill it in or drop the row.")
                texts.append(str(row[text_field]))
                raw.append(row[label_field])
                where.append(at)
    else:
        raise ValueError(f"Unknown labelled format {fmt!r} for {path}; use label_text, csv, json or feedback")
    if no_text:
        warnings.warn(f"{path}: skipped {no_text} line(s) with a label but no text")
    if not texts:
        raise ValueError(f"{path} holds no labelled examples")
    return texts, [_label_id(v, label_names, num_classes, at) for v, at in zip(raw, where)]


def _records(text: str) -> list[str]:
    """The lines of a label_text file: split at "\\n" only (``split_lines``: U+0085 / U+2028 / form feeds inside
    a review stay in it), or, in a file with no "\\n" at all, at its bare "\\r" line ends (classic Mac OS)."""
    if "\n" not in text and "\r" in text:
        text = text.replace("\r", "\n")
    return split_lines(text)


def _label_id(value: Any, names: Optional[list[str]], num_classes: int, where: str) -> int:
    """The class id of one label: its index in ``names``, or the integer it is (a float only if whole)."""
    if names is not None and str(value) in names:
        return names.index(str(value))
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise ValueError(
            f"{where}: label {value!r} is not a whole number; labels are class ids 0..{num_classes - 1} or names in"
            f" label_names. Correct the label (rounding it would mislabel the example silently)."
        )
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: label {value!r} is neither an integer nor one of label_names {names}; set label_names"
        ) from None
    if not 0 <= label < num_classes:
        raise ValueError(f"{where}: label {label} is outside 0..{num_classes - 1}; set num_classes")
    return label


def frame_examples(tok: Tokenizer, texts: list[str], causal: bool, max_length: int) -> list[list[int]]:
    """Token ids of each text as a classifier sees it: ``[EOS]`` appended for causal models (pooled as the last
    token), ``[CLS] ... [SEP]`` for encoders, where the vocabulary has those tokens; cut to ``max_length``.
    Training (``ClassificationDataModule``) and serving (``lit_llm serve``) both frame text here."""
    head = [i for i in [None if causal else special_id(tok, "cls")] if i is not None]
    tail = [i for i in [special_id(tok, "eos" if causal else "sep")] if i is not None]
    room = max_length - len(head) - len(tail)
    return [head + e.ids[:room] + tail for e in tok.encode_batch(texts, add_special_tokens=False)]


def pad_examples(tok: Tokenizer, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` (B, T) and the ``attention_mask`` (True on real tokens) of ragged rows."""
    pad = special_id(tok, "pad") or 0
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = True
    return input_ids, mask


def _dealt(idx: np.ndarray, labels: Optional[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``idx`` shuffled; with ``labels`` (of every example), class by class, so that dealing the result out
    round-robin gives every part the classes in the proportions of the whole (stratification)."""
    if labels is None:
        return rng.permutation(idx)
    return np.concatenate([rng.permutation(idx[labels[idx] == c]) for c in np.unique(labels[idx])])


def kfold_indices(n: int, num_folds: int, seed: int, labels: Optional[Sequence[int]] = None) -> list[np.ndarray]:
    """``num_folds`` disjoint index sets that together cover ``range(n)``, from a seeded permutation. With
    ``labels``, stratified: each fold holds every class in the proportion of the whole (to one example), as
    is usual for cross-validation on small, imbalanced sets such as CR."""
    if not 2 <= num_folds <= n:
        raise ValueError(f"num_folds must be between 2 and the number of examples ({n}), got {num_folds}")
    rng = np.random.default_rng(seed)
    if labels is None:
        return [np.sort(f) for f in np.array_split(rng.permutation(n), num_folds)]
    order = _dealt(np.arange(n), np.asarray(labels), rng)
    return [np.sort(order[k::num_folds]) for k in range(num_folds)]


def _carve(idx: np.ndarray, fraction: float, seed: int,
           labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held) with ``round(fraction * len)`` held out, seeded; stratified by
    ``labels`` (of every example) when given."""
    k = int(round(fraction * len(idx)))
    if labels is None or k == 0:
        perm = np.random.default_rng(seed).permutation(idx)
        return np.sort(perm[k:]), np.sort(perm[:k])
    order = _dealt(idx, labels, np.random.default_rng(seed))
    held = order[np.round(np.arange(k) * len(idx) / k).astype(int)]  # k examples spread evenly over the classes
    return np.sort(np.setdiff1d(idx, held)), np.sort(held)


def split_indices(n: int, mode: str, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  num_folds: int = 10, fold: int = 0, labels: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
    """Indices of train/val/test in one labelled set of ``n`` examples.

    - ``random``: a seeded split with the given val and test fractions;
    - ``kfold``: fold ``fold`` of ``num_folds`` is the test set, and ``val_fraction`` of the other folds is
      held out for validation (model selection never sees the test fold).

    With ``labels`` every split is stratified (each holds the classes in the proportions of the whole).
    """
    y = None if labels is None else np.asarray(labels)
    if y is not None and len(y) != n:
        raise ValueError(f"labels has {len(y)} entries for {n} examples")
    if mode == "random":
        rest, test = _carve(np.arange(n), test_fraction, seed, y)
    elif mode == "kfold":
        if not 0 <= fold < num_folds:
            raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}")
        folds = kfold_indices(n, num_folds, seed, y)
        test = folds[fold]
        rest = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != fold]))
    else:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {mode!r}")
    train, val = _carve(rest, val_fraction, seed + 1, y)
    return {"train": train, "val": val, "test": test}


class ClassificationDataModule(L.LightningDataModule):
    """Labelled text -> token ids -> padded batches ``{input_ids, attention_mask, labels}``.

    Args:
        train: file (or glob) of training examples; with ``split: random`` or ``kfold``, the whole labelled set.
        val: validation file (``split: files``). Without it, ``val_fraction`` of ``train`` is held out, seeded.
        test: test file (``split: files``).
        format: ``label_text``, ``csv``, ``json`` or ``feedback``; by default from the extension (``label_text``
            otherwise).
        text_field: csv/json field holding the text.
        label_field: csv/json field holding the label.
        label_names: names of the classes, in id order; string labels are mapped through it. The CLI links
            it from the model's.
        num_classes: number of classes (the CLI links it from the model's).
        split: ``files`` (given files), ``random`` (seeded val/test fractions of ``train``) or ``kfold``.
        num_folds: folds for ``kfold``.
        fold: which fold is the test set for ``kfold``.
        val_fraction: share of the training examples held out for validation when no val file is given.
        test_fraction: share held out for testing with ``split: random``.
        seed: seed of the splits and of the shuffling.
        stratify: splits cut from ``train`` (``random``, ``kfold``, and ``val_fraction``) keep the classes in the
            proportions of the whole, fold by fold; false: plain seeded permutations.
        max_length: tokens per example, special tokens included; longer texts are cut at the end.
        batch_size: examples per batch on each process.
        num_workers: DataLoader worker processes.
        data_dir: folder searched for relative paths (also ``$LIT_LLM_DATA_DIR`` and ``../shared/data``).
        tokenizer_path: a tokenizer.json (or a lit_llm checkpoint) to use instead of the model's. Normally
            left empty; given while the model has its own, the two must be identical.
        causal: how examples are framed: causal models get ``[EOS]`` appended (pooled as the last token),
            encoders ``[CLS] ... [SEP]``, where the tokenizer has those tokens. None: from the model.
        encoding_errors: invalid UTF-8 in label_text and csv files: ``strict`` (error naming the byte) or
            ``replace``. UTF-16 and binary files are refused either way.
    """

    def __init__(
        self,
        train: str,
        val: Optional[str] = None,
        test: Optional[str] = None,
        format: Optional[str] = None,
        text_field: str = "text",
        label_field: str = "label",
        label_names: Optional[list[str]] = None,
        num_classes: int = 2,
        split: str = "files",
        num_folds: int = 10,
        fold: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 1337,
        stratify: bool = True,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        data_dir: Optional[str] = None,
        tokenizer_path: Optional[str] = None,
        causal: Optional[bool] = None,
        encoding_errors: str = "strict",
    ) -> None:
        super().__init__()
        if split not in SPLIT_MODES:
            raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
        if split != "files" and (val or test):
            raise ValueError(f"split: {split} cuts val and test from `train`; drop val/test files or use split: files")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
            raise ValueError(f"val_fraction and test_fraction must be in [0, 1), got {val_fraction}, {test_fraction}")
        if max_length < 2 or batch_size < 1 or num_classes < 2:
            raise ValueError(f"Need max_length >= 2, batch_size >= 1, num_classes >= 2; got {max_length}, {batch_size}, {num_classes}")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"label_names has {len(label_names)} names but num_classes is {num_classes}")
        self.save_hyperparameters()
        for path in (train, val, test):  # fail on missing files now, before any model is built
            if path is not None:
                resolve_files(Source(path=path), data_dir)
        if split == "kfold":
            if not 2 <= num_folds or not 0 <= fold < num_folds:
                raise ValueError(f"Need num_folds >= 2 and 0 <= fold < num_folds, got {num_folds} and {fold}")
        self._tokenizer: Optional[Tokenizer] = None
        if tokenizer_path is not None:
            self._tokenizer = load_tokenizer(tokenizer_path)
        self.examples: dict[str, tuple[list[str], list[int]]] = {}
        self.encoded: dict[str, list[tuple[list[int], int]]] = {}

    # ------------------------------------------------------------------ reading and splitting
    def _read(self, path: str) -> tuple[list[str], list[int]]:
        hp = self.hparams
        return read_labelled(path, hp.format, hp.text_field, hp.label_field, hp.label_names, hp.num_classes,
                             hp.data_dir, hp.encoding_errors)

    def load_examples(self) -> dict[str, tuple[list[str], list[int]]]:
        """(texts, labels) per split: train, val and, where there is one, test."""
        if self.examples:
            return self.examples
        hp = self.hparams
        texts, labels = self._read(hp.train)
        if hp.split == "files":
            out = {}
            if hp.val is None:
                idx = split_indices(len(texts), "random", hp.seed, hp.val_fraction, 0.0,
                                    labels=labels if hp.stratify else None)
                out["train"], out["val"] = _take(texts, labels, idx["train"]), _take(texts, labels, idx["val"])
            else:
                out["train"], out["val"] = (texts, labels), self._read(hp.val)
            if hp.test is not None:
                out["test"] = self._read(hp.test)
        else:
            idx = split_indices(len(texts), hp.split, hp.seed, hp.val_fraction, hp.test_fraction, hp.num_folds, hp.fold,
                                labels=labels if hp.stratify else None)
            out = {name: _take(texts, labels, i) for name, i in idx.items()}
        for name, (t, _) in out.items():
            if not t:
                raise ValueError(f"The {name} split is empty; lower the held-out fractions or give a {name} file")
        self.examples = out
        return out

    def texts(self, split: str = "train") -> list[str]:
        """The texts of one split without their labels (e.g. for domain-adaptive pretraining on the training fold)."""
        return self.load_examples()[split][0]

    # ------------------------------------------------------------------ tokenizing
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise ValueError("The classification data module has no tokenizer: use it with a SequenceClassifier"
                             " (it brings its checkpoint's tokenizer) or pass tokenizer_path: PATH")
        return self._tokenizer

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        model_tok: Optional[Tokenizer] = getattr(module, "tokenizer", None)
        if model_tok is not None:
            if self._tokenizer is not None and self._tokenizer.to_str() != model_tok.to_str():
                raise ValueError(
                    "data.tokenizer_path differs from the tokenizer of the model's checkpoint; a fine-tune must use"
                    " the vocabulary the model was trained with. Drop data.tokenizer_path to use the model's."
                )
            self._tokenizer = model_tok
        hp = self.hparams
        causal = hp.causal if hp.causal is not None else getattr(getattr(module, "config", None), "causal", True)
        block = getattr(getattr(module, "config", None), "block_size", None)
        if block is not None and hp.max_length > block:
            raise ValueError(f"data.max_length {hp.max_length} exceeds the model's block_size {block}; lower max_length")
        examples = self.load_examples()
        for name, (texts, labels) in examples.items():
            if name not in self.encoded:
                self.encoded[name] = list(zip(self.encode(texts, causal), labels))
        lengths = [len(ids) for ids, _ in self.encoded["train"]]
        cut = sum(n >= hp.max_length for n in lengths)
        rank_zero_info(
            "classification data: " + ", ".join(f"{k} {len(v):,}" for k, v in self.encoded.items())
            + f" examples; train tokens/example mean {np.mean(lengths):.1f}, {cut:,} cut at max_length {hp.max_length}"
        )

    def encode(self, texts: list[str], causal: bool = True) -> list[list[int]]:
        """Token ids of each text, framed for the model and cut to ``max_length`` (see ``frame_examples``)."""
        return frame_examples(self.tokenizer, texts, causal, self.hparams.max_length)

    def collate(self, batch: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_examples(self.tokenizer, [ids for ids, _ in batch])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([y for _, y in batch])}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.encoded:
            raise ValueError(f"This data config has no {split} split; give data.{split} or use split: random/kfold")
        data = self.encoded[split]
        kw = {"sampler": seeded_sampler(self.trainer, data, self.hparams.seed)} if shuffle else {}
        return DataLoader(data, batch_size=self.hparams.batch_size, collate_fn=self.collate,
                          num_workers=self.hparams.num_workers, **kw)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.encoded else "val", shuffle=False)


def seeded_sampler(trainer, data, seed: int) -> DistributedSampler:
    """One seeded permutation of ``data`` per epoch, dealt out to the data-parallel ranks (all processes under
    DDP/FSDP, the dp dimension of a 2D mesh): the global batch is the same whatever the layout, so every strategy
    trains like one process. Lightning keeps a DistributedSampler it finds and calls its set_epoch."""
    dist_kw = (getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}) if trainer is not None else {}
    return DistributedSampler(data, num_replicas=dist_kw.get("num_replicas", 1), rank=dist_kw.get("rank", 0),
                              shuffle=True, seed=seed)


def _take(texts: list[str], labels: list[int], idx: np.ndarray) -> tuple[list[str], list[int]]:
    return [texts[i] for i in idx], [labels[i] for i in idx]
