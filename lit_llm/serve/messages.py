"""The messages between the serving front end and the model workers: the one contract the two sides share.

- front end -> worker, through LitServe's request queue (pickled): a ``CompletionJob`` (a prompt checked and
  tokenized, with its sampling settings) or a ``ClassifyJob`` (texts framed and tokenized);
- worker -> front end: a completion's ``Piece``s (``lit_llm.completion``), which LitServe's streaming loops send as
  JSON (``Piece.to_wire`` in the worker's ``encode_response``, ``Piece.from_wire`` in the front end; a stream ends
  with its ``last`` piece), and a classification's ``ClassProbabilities`` (pickled).

No torch and no LitServe here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from lit_llm.completion import Piece, Usage, to_wire

__all__ = ["ClassProbabilities", "ClassifyJob", "CompletionJob", "Piece", "Usage", "to_wire"]


@dataclass(frozen=True)
class CompletionJob:
    """A completion for a model worker: the prompt's tokens and how to sample after them. ``id`` is the job's key on
    the ``CancelBoard`` (``flow.new_job_id``); ``stream`` False gathers the text into the last piece."""

    ids: list[int]
    max_tokens: int
    stop: list[str]
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stream: bool = False
    id: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.ids or self.max_tokens < 1:
            raise ValueError(f"a job needs a prompt and max_tokens >= 1, got {len(self.ids)} tokens and"
                             f" max_tokens={self.max_tokens}")

    def with_stops(self, more: Sequence[str]) -> CompletionJob:
        """This job, also ending at the strings of ``more`` it does not have yet."""
        return replace(self, stop=self.stop + [s for s in more if s not in self.stop])


@dataclass(frozen=True)
class ClassifyJob:
    """Texts for a classifier worker, tokenized and framed as the model was trained (``ClassifySpec._frame``)."""

    ids: list[list[int]]


@dataclass(frozen=True)
class ClassProbabilities:
    """A classifier worker's answer to a ``ClassifyJob``: per text, the probability of each class; how many requests
    shared its forward pass; the checkpoint that answered."""

    probs: list[list[float]]
    batch_requests: int
    system_fingerprint: str
