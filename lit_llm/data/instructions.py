"""Conversations and preference pairs: the data of fine-tuning the language model itself.

Instruction tuning reads JSON lines, one conversation per line, ``{"messages": [{"role", "content"}, ...]}`` or
``{"prompt": ..., "response": ...}`` (and an optional ``"system"``), renders each through ``lit_llm.chat``'s
template and marks which tokens are the assistant's: only those are trained on (``labels`` holds
``IGNORE_INDEX`` on the prompt and on padding).

Preference tuning reads pairs, ``{"prompt" or "messages": ..., "chosen": ..., "rejected": ...}``, or a
``lit_llm serve`` feedback store, whose records become pairs (``lit_llm.feedback.preference_pairs``): a
corrected text is preferred to the answer served, and of two answers to one request, the one rated good to the
one rated bad.

A conversation longer than the context is dropped, cut or refused (``overlong``), and the count is always
printed; a record that cannot be trained on is an error naming its file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from lit_llm import chat
from lit_llm.data.labelled import seeded_sampler
from lit_llm.data.sources import Source, resolve_files
from lit_llm.data.tokenizer import encode, special_id
from lit_llm.model.loss import IGNORE_INDEX

Overlong = Literal["drop", "truncate", "error"]


def read_jsonl(path: str, data_dir: Optional[str] = None) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` of every JSON object in the file(s) ``path`` names (a glob allowed); ``where`` is
    ``file:line``. Not UTF-8, a line that is not JSON, or no record at all: a ValueError naming the place."""
    out = []
    for file in resolve_files(Source(path=path), data_dir):
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{file}:{n} is not a JSON object ({e}); write one JSON object per line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{file}:{n} is a JSON {type(record).__name__}, not an object")
            out.append((f"{file}:{n}", record))
    if not out:
        raise ValueError(f"{path} holds no records; write one JSON object per line")
    return out


def encode_conversation(tok: Tokenizer, messages: list[dict[str, str]], eos: str) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and, per token, whether it is the assistant's (trained on)."""
    ids: list[int] = []
    answer: list[bool] = []
    for text, is_answer in chat.segments(messages, eos):
        part = encode(tok, text)
        ids += part
        answer += [is_answer] * len(part)
    return ids, answer


def inputs_and_labels(ids: list[int], answer: list[bool]) -> tuple[list[int], list[int]]:
    """Next-token inputs and labels: the label of position t is token t+1 where that token is an answer token,
    ``IGNORE_INDEX`` elsewhere."""
    return ids[:-1], [t if a else IGNORE_INDEX for t, a in zip(ids[1:], answer[1:])]


def fit_context(items: list[list[tuple[list[int], list[int]]]], where: list[str], context: int, overlong: Overlong,
                name: str) -> list[list[tuple[list[int], list[int]]]]:
    """Items (a conversation: one (inputs, labels) row; a preference pair: two) whose rows are no longer than
    ``context`` tokens: an item with a longer row is dropped, cut at the end, or refused; an item left with a row
    that has nothing to learn is dropped. The counts are printed, never silent."""
    kept, dropped, cut = [], 0, 0
    for rows, w in zip(items, where):
        longest = max(len(x) for x, _ in rows)
        if longest > context:
            if overlong == "error":
                raise ValueError(f"{w}: the conversation is {longest + 1} tokens, longer than the model's context of"
                                 f" {context + 1}; shorten it, or set data.overlong drop or truncate")
            if overlong == "drop":
                dropped += 1
                continue
            rows, cut = [(x[:context], y[:context]) for x, y in rows], cut + 1
        if any(all(t == IGNORE_INDEX for t in y) for _, y in rows):
            dropped += 1
            continue
        kept.append(rows)
    if dropped or cut:
        rank_zero_info(f"{name}: {dropped:,} of {len(items):,} dropped and {cut:,} cut at the context of"
                       f" {context + 1} tokens (data.overlong: {overlong})")
    if not kept:
        raise ValueError(f"{name}: none fits the model's context of {context + 1} tokens (data.overlong: {overlong});"
                         " shorten them or use a model with a longer context")
    return kept


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Ragged rows right-padded with ``value`` to one (B, T) tensor (causal attention: padding at the end changes
    nothing before it)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class _FineTuneData(L.LightningDataModule):
    """What both fine-tuning data modules share: the model's tokenizer and context, the train/val split, and
    the loaders (a seeded permutation per epoch, dealt to the data-parallel ranks)."""

    def __init__(self, train: str, val: Optional[str], val_fraction: float, batch_size: int, overlong: Overlong,
                 seed: int, num_workers: int, data_dir: Optional[str]) -> None:
        super().__init__()
        if overlong not in ("drop", "truncate", "error"):
            raise ValueError(f"data.overlong must be drop, truncate or error, got {overlong!r}")
        if not 0 <= val_fraction < 1 or batch_size < 1:
            raise ValueError(f"Need 0 <= val_fraction < 1 and batch_size >= 1, got {val_fraction}, {batch_size}")
        for path in (train, val):  # missing files now, before any model is built
            if path is not None:
                resolve_files(Source(path=path), data_dir)
        self.train_path, self.val_path, self.val_fraction = train, val, val_fraction
        self.batch_size, self.overlong, self.seed, self.num_workers = batch_size, overlong, seed, num_workers
        self.data_dir = data_dir
        self.tokenizer: Optional[Tokenizer] = None
        self.rows: dict[str, list] = {}

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        tok = getattr(module, "tokenizer", None)
        config = getattr(module, "config", None)
        if tok is None or config is None:
            raise ValueError(f"{type(self).__name__} needs a model with a tokenizer (model.init_from a lit_llm"
                             " language-model checkpoint): use it with lit_llm.tasks.InstructionModel or PreferenceModel")
        if self.rows:
            return
        self.tokenizer, self.eos = tok, chat.eos_token(tok)
        if not self.eos:
            raise ValueError("The model's tokenizer has no [EOS] token, so a tuned model could not learn where its"
                             " answer ends. Pretrain with a tokenizer that has one (bpe/wordpiece/unigram have it by"
                             " default; char: --data.tokenizer.special_tokens '[\"[EOS]\"]')")
        train = read_jsonl(self.train_path, self.data_dir)
        if self.val_path is not None:
            val = read_jsonl(self.val_path, self.data_dir)
        else:
            g = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(train), generator=g).tolist()
            n_val = round(len(train) * self.val_fraction)
            val, train = [train[i] for i in order[:n_val]], [train[i] for i in sorted(order[n_val:])]
        self.rows = {"train": self.encode(train, config.block_size, "train")}
        if val:
            self.rows["val"] = self.encode(val, config.block_size, "val")
        rank_zero_info(f"{type(self).__name__}: " + ", ".join(f"{k} {len(v):,}" for k, v in self.rows.items()))

    def encode(self, records: list[tuple[str, dict[str, Any]]], context: int, name: str) -> list:
        raise NotImplementedError

    def collate(self, batch: list) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.rows[split]
        kw = {"sampler": seeded_sampler(self.trainer, data, self.seed)} if shuffle else {}
        return DataLoader(data, batch_size=self.batch_size, collate_fn=self.collate, num_workers=self.num_workers, **kw)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if "val" not in self.rows:
            return []
        return self._loader("val", shuffle=False)


class InstructionDataModule(_FineTuneData):
    """Conversations (JSON lines) -> ``{input_ids, labels}`` batches whose labels are the assistant's tokens only.

    Args:
        train: JSON-lines file (or glob) of conversations: ``{"messages": [{"role", "content"}, ...]}`` with at
            least one assistant turn, or ``{"prompt", "response"}`` (and an optional ``"system"``).
        val: validation conversations; without it ``val_fraction`` of ``train`` is held out, seeded.
        val_fraction: share of ``train`` held out when no ``val`` is given (0: no validation).
        batch_size: conversations per batch on each process (right-padded to the longest).
        overlong: a conversation longer than the model's context: ``drop`` it, ``truncate`` it (the end is cut),
            or ``error``. The count is printed either way.
        seed: seed of the held-out split and of the shuffling.
        num_workers: DataLoader worker processes.
        data_dir: folder searched for relative paths (also ``$LIT_LLM_DATA_DIR`` and ``../shared/data``).
    """

    def __init__(self, train: str, val: Optional[str] = None, val_fraction: float = 0.05, batch_size: int = 8,
                 overlong: Overlong = "drop", seed: int = 1337, num_workers: int = 0,
                 data_dir: Optional[str] = None) -> None:
        super().__init__(train, val, val_fraction, batch_size, overlong, seed, num_workers, data_dir)

    def encode(self, records: list[tuple[str, dict[str, Any]]], context: int, name: str) -> list:
        rows, where = [], []
        for w, record in records:
            messages = chat.as_messages(record, w)
            if not any(m["role"] == "assistant" for m in messages):
                raise ValueError(f"{w}: the conversation has no assistant turn, so there is nothing to learn; add"
                                 " the answer as {\"role\": \"assistant\", \"content\": ...}")
            try:
                ids, answer = encode_conversation(self.tokenizer, messages, self.eos)
            except ValueError as e:
                raise ValueError(f"{w}: {e}") from None
            rows.append([inputs_and_labels(ids, answer)])
            where.append(w)
        return [item[0] for item in fit_context(rows, where, context, self.overlong, f"{name} conversations")]

    def collate(self, batch: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        pad = special_id(self.tokenizer, "pad") or 0
        return {"input_ids": pad_rows([x for x, _ in batch], pad), "labels": pad_rows([y for _, y in batch], IGNORE_INDEX)}


def pair_messages(record: dict[str, Any], where: str) -> tuple[list[dict[str, str]], str, str]:
    """(the conversation before the answer, the chosen answer, the rejected answer) of one pair record."""
    if not isinstance(record.get("chosen"), str) or not record["chosen"].strip():
        raise ValueError(f"{where}: a preference pair needs 'chosen', a non-empty answer text")
    if not isinstance(record.get("rejected"), str):  # may be empty: a model that ended its answer at once
        raise ValueError(f"{where}: a preference pair needs 'rejected', the answer text not preferred")
    if record["chosen"] == record["rejected"]:
        raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
    if "messages" in record:
        history = chat.check_messages(record["messages"], where)
    elif isinstance(record.get("prompt"), str) and record["prompt"].strip():
        history = [{"role": "user", "content": record["prompt"]}]
    else:
        raise ValueError(f"{where}: a preference pair needs 'prompt' (the user's text) or 'messages' (the"
                         " conversation before the answer)")
    if history[-1]["role"] == "assistant":
        raise ValueError(f"{where}: 'messages' must end before the answer (with a user turn); the answers are"
                         " 'chosen' and 'rejected'")
    return history, record["chosen"], record["rejected"]


class PreferenceDataModule(_FineTuneData):
    """Preference pairs -> ``{input_ids, labels}`` batches of 2B rows: the B chosen conversations, then the B
    rejected ones, each labelled on its answer's tokens only.

    Args:
        train: pairs as JSON lines (``{"prompt" or "messages", "chosen", "rejected"}``), or a ``lit_llm serve``
            feedback store (``feedback.jsonl``: corrections and ratings become pairs), or a glob of either.
        val: validation pairs; without it ``val_fraction`` of ``train`` is held out, seeded.
        val_fraction: share of ``train`` held out when no ``val`` is given (0: no validation).
        batch_size: pairs per batch on each process.
        overlong: a pair longer than the model's context: ``drop``, ``truncate`` (the end is cut) or ``error``.
        seed: seed of the held-out split and of the shuffling.
        num_workers: DataLoader worker processes.
        data_dir: folder searched for relative paths (also ``$LIT_LLM_DATA_DIR`` and ``../shared/data``).
    """

    def __init__(self, train: str, val: Optional[str] = None, val_fraction: float = 0.0, batch_size: int = 8,
                 overlong: Overlong = "drop", seed: int = 1337, num_workers: int = 0,
                 data_dir: Optional[str] = None) -> None:
        super().__init__(train, val, val_fraction, batch_size, overlong, seed, num_workers, data_dir)

    def encode(self, records: list[tuple[str, dict[str, Any]]], context: int, name: str) -> list:
        from lit_llm.feedback import pairs_of_records

        records, said = pairs_of_records(records)
        if said:
            rank_zero_info(f"{name} {said}")
        chosen, rejected, where = [], [], []
        for w, record in records:
            history, good, bad = pair_messages(record, w)
            try:
                for answer, out in ((good, chosen), (bad, rejected)):
                    ids, mask = encode_conversation(self.tokenizer, history + [{"role": "assistant", "content": answer}],
                                                    self.eos)
                    out.append(inputs_and_labels(ids, mask))
            except ValueError as e:
                raise ValueError(f"{w}: {e}") from None
            where.append(w)
        items = [[c, r] for c, r in zip(chosen, rejected)]
        return [tuple(item) for item in fit_context(items, where, context, self.overlong, f"{name} pairs")]

    def collate(self, batch: list) -> dict[str, torch.Tensor]:
        pad = special_id(self.tokenizer, "pad") or 0
        rows = [c for c, _ in batch] + [r for _, r in batch]
        return {"input_ids": pad_rows([x for x, _ in rows], pad), "labels": pad_rows([y for _, y in rows], IGNORE_INDEX)}
