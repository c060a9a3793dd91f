"""Users' feedback as training data: an append-only JSON-lines store.

Each record is one line: what was asked, what the model answered, and what the user said about it
(a rating of 1 or -1, a corrected label, or a corrected text). ``append`` writes the whole line with a single
``write`` under an exclusive ``flock`` and fsyncs it, so concurrent writers (server workers) never
interleave, and a crash can at most leave an unterminated last line, which readers skip.

The store is a data source: ``ClassificationDataModule(train=STORE, format="feedback")`` trains on the
corrected labels, and ``feedback_texts`` gives the corrected texts for language-model data.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

KINDS = ("completion", "classification")


def validate_feedback(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its fields checked; raises ValueError naming the problem."""
    allowed = {"kind", "request", "response", "rating", "corrected_label", "corrected_text", "model"}
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise ValueError(f"Unknown feedback field(s) {unknown}; allowed: {sorted(allowed)}")
    if record.get("kind") not in KINDS:
        raise ValueError(f"feedback kind must be one of {KINDS}, got {record.get('kind')!r}")
    if not isinstance(record.get("request"), str) or not record["request"].strip():
        raise ValueError("feedback needs the request text (a non-empty string)")
    rating = record.get("rating")
    if rating is not None and (isinstance(rating, bool) or rating not in (-1, 1)):
        raise ValueError(f"rating must be 1 (good) or -1 (bad), got {rating!r}")
    if record.get("corrected_label") is not None and not isinstance(record["corrected_label"], (int, str)):
        raise ValueError("corrected_label must be a class id or a class name")
    if record.get("corrected_text") is not None and not isinstance(record["corrected_text"], str):
        raise ValueError("corrected_text must be a string")
    if all(record.get(k) is None for k in ("rating", "corrected_label", "corrected_text")):
        raise ValueError("feedback needs a rating, a corrected_label or a corrected_text")
    return record


class FeedbackStore:
    """Append-only JSON lines at ``path`` (created on first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Validate, stamp (``id``, ``time``) and append one record atomically; returns the stored record."""
        stored = {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), **validate_feedback(dict(record))}
        line = (json.dumps(stored, ensure_ascii=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)  # one write of the whole line, under the lock
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return stored

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in order. An unterminated last line (a crash mid-append) is skipped."""
        if not self.path.is_file():
            raise FileNotFoundError(f"Feedback store {self.path} does not exist; nothing has been sent to it yet")
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    warnings.warn(f"{self.path}:{n}: skipped an unterminated last line (an interrupted append)")
                    break
                if line.strip():
                    yield json.loads(line)


def labelled_examples(path: str | Path, label_names: Optional[list[str]] = None) -> tuple[list[str], list[Any]]:
    """(texts, labels) of the classification feedback that carries a corrected label: the request text with
    the label the user gave (a class id or a name from ``label_names``)."""
    texts, labels = [], []
    for r in FeedbackStore(path).records():
        if r.get("kind") == "classification" and r.get("corrected_label") is not None:
            texts.append(r["request"])
            labels.append(r["corrected_label"])
    return texts, labels


def feedback_texts(path: str | Path) -> list[str]:
    """Texts for language-model training: each completion's corrected text appended to its request, and each
    answer rated good (1) as it was given."""
    out = []
    for r in FeedbackStore(path).records():
        if r.get("kind") != "completion":
            continue
        if r.get("corrected_text"):
            out.append(r["request"] + r["corrected_text"])
        elif r.get("response") and r.get("rating") == 1:
            out.append(r["request"] + r["response"])
    return out
