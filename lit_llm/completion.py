"""A completion's text as its tokens arrive, and the messages it makes.

``CompletionText`` decides where a completion ends (the end-of-text token, a stop string, ``max_tokens``) and which
of its text is final and may be shown. Each ``push`` of a token gives a ``Piece`` (new text, and on the last one
why it ended and its ``Usage``) or None while nothing new is final. ``generate``'s callers, ``chat``, ``evaluate``
and the serving worker all read completions this way; the ``Piece`` is also what a model worker sends the serving
front end (``lit_llm.serve.messages``), as JSON through LitServe's queue (``to_wire``, ``Piece.from_wire``).

No torch here: tokenizers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from tokenizers import Tokenizer

from lit_llm.data.tokenizer import eos_id

FINISH_REASONS = ("stop", "length")  # OpenAI's: an end of text or a stop string, or max_tokens reached


@dataclass(frozen=True)
class Usage:
    """The tokens of one completion: its prompt's, and every token the model sampled (a stop string's too)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        """OpenAI's ``usage`` object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Piece:
    """Text of a completion that has become final. The last piece of a completion (``last``) carries why it ended
    and its usage; a serving worker's first piece of a request names the checkpoint that answers it."""

    text: str
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.finish_reason is None) != (self.usage is None):
            raise ValueError("a completion's last piece has both a finish_reason and a usage, and no other piece has")
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")

    @property
    def last(self) -> bool:
        return self.finish_reason is not None

    def to_wire(self) -> dict[str, Any]:
        """As a JSON object: the fields that are set."""
        wire: dict[str, Any] = {"text": self.text}
        if self.last:
            wire["finish_reason"], wire["usage"] = self.finish_reason, self.usage.as_dict()
        if self.system_fingerprint is not None:
            wire["system_fingerprint"] = self.system_fingerprint
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Optional[Piece]:
        """The piece ``to_wire`` wrote; ``{}`` (nothing for this request in a step of its batch) is None. A message of
        another shape is a ValueError naming what is wrong."""
        if not wire:
            return None
        unknown = set(wire) - {"text", "finish_reason", "usage", "system_fingerprint"}
        if unknown or not isinstance(wire.get("text"), str):
            raise ValueError(f"not a completion piece: {wire!r}")
        usage = wire.get("usage")
        return cls(wire["text"], wire.get("finish_reason"),
                   None if usage is None else Usage(usage["prompt_tokens"], usage["completion_tokens"]),
                   wire.get("system_fingerprint"))


def to_wire(piece: Optional[Piece]) -> dict[str, Any]:
    """A piece as JSON, and None (nothing new) as ``{}``."""
    return {} if piece is None else piece.to_wire()


def _held_back(text: str, stops: list[str]) -> int:
    """How much of ``text`` may be sent now: not a tail that could still grow into a stop string, nor a
    trailing U+FFFD (a multi-byte character whose other bytes are still to come)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    safe = len(text) - hold
    while safe > 0 and text[safe - 1] == "\ufffd":
        safe -= 1
    return safe


class CompletionText:
    """One completion's text as its tokens arrive: where it ends ([EOS], a stop string, ``max_tokens``) and
    which text is final and may be sent.

    ``push`` returns a ``Piece`` of the text that has become final (None while nothing new is) and, once the
    completion ends, its last piece. The stop string itself is not returned, and ``completion_tokens`` counts every
    token the model sampled."""

    def __init__(self, tok: Tokenizer, prompt: list[int], max_tokens: int, stops: Optional[list[str]] = None) -> None:
        self.tok, self.prompt, self.max_tokens, self.stops = tok, prompt, max_tokens, stops or []
        self.prompt_tokens = len(prompt)
        # the completion is decoded after its prompt: WordPiece and Metaspace (unigram) decoders drop the
        # space before a sequence's first word, which here is not the first word
        self.prefix = tok.decode(prompt)
        self.eos = eos_id(tok)
        self.ids: list[int] = []
        self.sampled, self.sent, self.text = 0, 0, ""
        self.finish: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    def push(self, token: int) -> Optional[Piece]:
        self.sampled += 1
        if token == self.eos:
            return self._end("stop")
        self.ids.append(token)
        self.text = self._decode()
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._end("stop")
        if self.sampled >= self.max_tokens:
            return self._end("length")
        safe = _held_back(self.text, self.stops)
        if safe <= self.sent:
            return None
        delta, self.sent = self.text[self.sent : safe], safe
        return Piece(delta)

    def _decode(self) -> str:
        """The completion's text (special tokens such as [UNK] and [PAD] are not text)."""
        full = self.tok.decode(self.prompt + self.ids)
        return full[len(self.prefix) :] if full.startswith(self.prefix) else self.tok.decode(self.ids)

    def cancel(self) -> None:
        """The client has gone: the completion ends here, with nothing more to send."""
        self.finish = "cancelled"

    def _end(self, reason: str) -> Piece:
        self.finish = reason
        return Piece(self.text[self.sent :], reason, Usage(self.prompt_tokens, self.sampled))
