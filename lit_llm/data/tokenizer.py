"""Tokenizers, trained or loaded with Hugging Face ``tokenizers``. Every tokenizer is one ``tokenizer.json``
string, saved beside the token files and carried in checkpoints.

Kinds: ``char`` (one token per character: the quickstart's), byte-level ``bpe`` (GPT-2 style, lossless on
any text), ``wordpiece`` (BERT style) and ``unigram`` (SentencePiece style).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lit_llm.data.sources import split_lines

# bos, eos, pad, unk, mask, cls, sep: what the model families need (causal: eos/bos; BERT: mask/cls/sep/pad)
DEFAULT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"]
# the role of each of lit_llm's own special tokens, by which every reader finds them
ROLE_TOKENS = {"bos": "[BOS]", "eos": "[EOS]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]", "cls": "[CLS]",
               "sep": "[SEP]"}
# a tokenizer.json does not say which of its tokens ends a text: a checkpoint that declares its own roles (one
# imported from Hugging Face, whose end of text is e.g. <|endoftext|> or </s>) has them set on the Tokenizer
# object it builds, under this attribute (CheckpointInfo.build_tokenizer, the one place that builds one)
_DECLARED = "lit_llm_special_tokens"


@dataclass
class TokenizerSpec:
    """Which tokenizer to train or load.

    Args:
        kind: ``char``, ``bpe`` (byte-level BPE), ``wordpiece`` or ``unigram``.
        vocab_size: target vocabulary size, special tokens included (not used by ``char``).
        special_tokens: tokens added whole; default ``[UNK]`` alone for ``char`` (so that a Hugging Face export
            reads any text: lit_llm itself refuses characters the vocabulary lacks) and bos/eos/pad/unk/mask/
            cls/sep (``[BOS]`` ...) for the trained kinds.
        eos_token: the token written after every document, if the vocabulary has it; if not, the end of text
            that a loaded checkpoint declares (an imported model's, e.g. ``</s>``).
        min_frequency: pairs/pieces seen fewer times are not merged (bpe, wordpiece).
        path: load this tokenizer instead of training one: a tokenizer.json, or a lit_llm checkpoint (.ckpt),
            whose stored tokenizer is used (continued pretraining of that checkpoint needs its vocabulary).
    """

    kind: str = "char"
    vocab_size: int = 8192
    special_tokens: Optional[list[str]] = None
    eos_token: str = "[EOS]"
    min_frequency: int = 2
    path: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in ("char", "bpe", "wordpiece", "unigram"):
            raise ValueError(f"tokenizer kind must be char, bpe, wordpiece or unigram, got {self.kind!r}")
        if self.special_tokens is None:
            self.special_tokens = ["[UNK]"] if self.kind == "char" else list(DEFAULT_SPECIAL_TOKENS)
        if self.path is not None and not Path(self.path).is_file():
            raise FileNotFoundError(f"Tokenizer file {self.path} does not exist; train one (drop tokenizer.path) or fix the path")
        if self.kind == "wordpiece" and "[UNK]" not in self.special_tokens:
            raise ValueError("A wordpiece tokenizer needs [UNK] among its special_tokens")


def train_char_tokenizer(text: str | Iterable[str], special_tokens: Sequence[str] = ()) -> Tokenizer:
    """A character-level tokenizer over the characters that occur in ``text`` (ids in sorted order), followed
    by ``special_tokens`` (e.g. ``[MASK]`` for masked-LM), which are matched whole before splitting. With
    ``[UNK]`` among them, other characters become ``[UNK]`` in tokenizers and transformers (``encode`` still
    refuses them, with their names)."""
    chars: set[str] = set()
    for piece in [text] if isinstance(text, str) else text:
        chars.update(piece)
    vocab = {ch: i for i, ch in enumerate(sorted(chars))}
    unk = "[UNK]" if "[UNK]" in special_tokens else None
    if unk is not None:  # WordLevel looks its unknown token up in its own vocabulary
        vocab[unk] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    # Oniguruma: (?m) lets '.' match newlines too, so every character is its own piece
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if special_tokens:
        tok.add_special_tokens(list(special_tokens))
    return tok


def train_tokenizer(spec: TokenizerSpec, texts: Iterable[str], length: Optional[int] = None) -> Tokenizer:
    """Train (or load, with ``spec.path``) the tokenizer ``spec`` describes on an iterator of documents."""
    if spec.path is not None:
        return load_tokenizer(spec.path)
    specials = list(spec.special_tokens or [])
    if spec.kind == "char":
        return train_char_tokenizer(texts, specials)
    if spec.kind == "bpe":  # Radford et al. 2019: byte-level, so no unknown tokens and exact round trips
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                      special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif spec.kind == "wordpiece":  # Devlin et al. 2019
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                            special_tokens=specials)
    else:  # Kudo 2018, as in SentencePiece
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=spec.vocab_size, special_tokens=specials,
                                          unk_token="[UNK]" if "[UNK]" in specials else None)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer by path: a tokenizer.json, or the one stored in a lit_llm checkpoint (``.ckpt``). The one
    loader of a tokenizer file; a checkpoint's own is ``CheckpointInfo.build_tokenizer``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Tokenizer file {path} does not exist; give a tokenizer.json or a lit_llm .ckpt")
    if path.suffix == ".ckpt":
        from lit_llm.checkpoint import read_info

        return read_info(path).build_tokenizer()
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a file it cannot parse
        raise ValueError(f"Tokenizer file {path} does not load ({str(e)[:200]}); give a tokenizer.json written by"
                         " HF tokenizers, or a lit_llm .ckpt") from None


def declare_special_tokens(tok: Tokenizer, roles: Optional[dict[str, str]]) -> Tokenizer:
    """``tok`` with its special tokens' roles (``{"eos": "</s>", ...}``) declared, as a checkpoint records them;
    ``None`` leaves lit_llm's bracketed names (``ROLE_TOKENS``). A role whose token is not in the vocabulary is
    an error, raised here rather than as a model that never stops."""
    if roles:
        unknown = {r: t for r, t in roles.items() if r not in ROLE_TOKENS or tok.token_to_id(t) is None}
        if unknown:
            raise ValueError(f"Special tokens {unknown} are not roles ({', '.join(ROLE_TOKENS)}) with a token in the"
                             " vocabulary")
    setattr(tok, _DECLARED, dict(roles) if roles else None)
    return tok


def special_tokens(tok: Tokenizer) -> dict[str, str]:
    """Role -> token text of ``tok``'s special tokens: the roles its checkpoint declares (an imported model's),
    else lit_llm's own (``[EOS]``, ``[BOS]``, ...) that its vocabulary holds."""
    declared = getattr(tok, _DECLARED, None)
    if declared:
        return dict(declared)
    return {role: t for role, t in ROLE_TOKENS.items() if tok.token_to_id(t) is not None}


def declared_special_tokens(tok: Tokenizer) -> Optional[dict[str, str]]:
    """The roles declared on ``tok`` (to record in a checkpoint of a model trained with it), or None."""
    return getattr(tok, _DECLARED, None)


def eos_token(tok: Tokenizer) -> str:
    """The token that ends a text (a document in the token files, an answer in a chat), or "" if none."""
    return special_tokens(tok).get("eos", "")


def special_id(tok: Tokenizer, role: str) -> Optional[int]:
    """The id of ``tok``'s special token of ``role`` (``eos``, ``pad``, ``cls``, ...), or None if it has none."""
    token = special_tokens(tok).get(role)
    return tok.token_to_id(token) if token else None


def eos_id(tok: Tokenizer) -> Optional[int]:
    """The id at which generation stops, or None when the vocabulary has no end-of-text token."""
    return special_id(tok, "eos")


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Encode ``text`` (no special tokens), with an error naming any characters a character-level vocabulary
    lacks (whether it maps them to ``[UNK]`` or has no unknown token at all)."""
    try:
        # line by line: encode_batch runs in parallel and keeps memory of the offsets small
        ids = [i for e in tok.encode_batch(split_lines(text, keepends=True), add_special_tokens=False) for i in e.ids]
    except Exception as e:  # tokenizers raises a bare Exception for out-of-vocabulary input
        if "Missing [UNK]" in str(e):
            _refuse_unknown_characters(tok, text)
        raise
    if isinstance(tok.model, models.WordLevel):
        unk = tok.token_to_id(tok.model.unk_token) if tok.model.unk_token else None
        if unk is not None and unk in ids:
            _refuse_unknown_characters(tok, text)
    return ids


def _refuse_unknown_characters(tok: Tokenizer, text: str) -> None:
    vocab = tok.get_vocab()
    missing = sorted({ch for ch in text if ch not in vocab})
    if missing:
        raise ValueError(f"The text holds characters the tokenizer does not know: {missing[:20]}. Remove them, or"
                         " train the tokenizer on text that contains them.")


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)
