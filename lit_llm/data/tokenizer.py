"""Tokenizers, built with Hugging Face ``tokenizers`` so that every tokenizer is one ``tokenizer.json``
string that can travel inside a checkpoint.

The quickstart uses a character-level tokenizer: a WordLevel model whose vocabulary is the sorted set of
characters of the training text, a pre-tokenizer that isolates each character and a ``Fuse`` decoder.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers


def train_char_tokenizer(text: str, special_tokens: Sequence[str] = ()) -> Tokenizer:
    """A character-level tokenizer over the characters that occur in ``text`` (ids in sorted order), followed
    by ``special_tokens`` (e.g. ``[MASK]`` for masked-LM), which are matched whole before splitting."""
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Oniguruma: (?m) lets '.' match newlines too, so every character is its own piece
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if special_tokens:
        tok.add_special_tokens(list(special_tokens))
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Encode ``text`` (no special tokens), with an error naming any characters the vocabulary lacks."""
    try:
        # line by line: encode_batch runs in parallel and keeps memory of the offsets small
        return [i for e in tok.encode_batch(text.splitlines(keepends=True), add_special_tokens=False) for i in e.ids]
    except Exception as e:  # tokenizers raises a bare Exception for out-of-vocabulary input
        vocab = tok.get_vocab()
        missing = sorted({ch for ch in text if ch not in vocab})
        if missing and "Missing [UNK]" in str(e):
            raise ValueError(
                f"The text holds characters the tokenizer does not know: {missing[:20]}."
                " Remove them, or train the tokenizer on text that contains them."
            ) from e
        raise


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)
