"""Users' feedback as training data: an append-only JSON-lines store.

Each record is one line: what was asked, what the model answered, and what the user said about it
(a rating of 1 or -1, a corrected label, or a corrected text). ``append`` writes the whole line under an
exclusive ``flock``, finishing a short write and fsyncing it, so concurrent writers (server workers) never
interleave. A write that fails (a full disk) is cut off again, leaving the store as it was; a line torn by a
crash is closed with a newline by the next append, so the next record starts on its own line; and readers
skip (and count) any line that is not a whole record. Fields and records have size limits (``FIELD_LIMITS``,
``MAX_RECORD_BYTES``), checked with the rest of the record, and a store may have one of its own (``max_bytes``):
a record that would take it past that is refused (``FeedbackStoreFull``).

The store is a data source: ``ClassificationDataModule(train=STORE, format="feedback")`` trains on the
corrected labels, and ``feedback_texts`` gives the corrected texts for language-model data.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

KINDS = ("completion", "classification")
# longest value of each string field, in characters; and the longest stored line, in bytes (well under
# serve's default 1 MiB request limit, so that one record never makes the store slow to read)
FIELD_LIMITS = {"request": 65_536, "response": 65_536, "corrected_text": 65_536, "corrected_label": 256, "model": 256,
                "conversation_id": 256}
MAX_RECORD_BYTES = 256 * 1024


def validate_feedback(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its fields checked; raises ValueError naming the problem."""
    allowed = {"kind", "request", "response", "rating", "corrected_label", "corrected_text", "model", "conversation_id"}
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
    for name in ("corrected_text", "conversation_id"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise ValueError(f"{name} must be a string")
    if all(record.get(k) is None for k in ("rating", "corrected_label", "corrected_text")):
        raise ValueError("feedback needs a rating, a corrected_label or a corrected_text")
    for field, limit in FIELD_LIMITS.items():
        value = record.get(field)
        if isinstance(value, str) and len(value) > limit:
            raise ValueError(f"feedback field '{field}' has {len(value):,} characters; the limit is {limit:,}:"
                             " send a shorter text")
    size = len(json.dumps(record, ensure_ascii=False).encode())
    if size > MAX_RECORD_BYTES:
        raise ValueError(f"feedback record is {size:,} bytes as JSON; the limit is {MAX_RECORD_BYTES:,}:"
                         " send shorter request, response and corrected_text fields")
    return record


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part of it); OSError if none goes in."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "the write took no bytes")
        view = view[n:]


class FeedbackStoreFull(Exception):
    """The record would take the store past its ``max_bytes``: it was not written."""


class FeedbackStore:
    """Append-only JSON lines at ``path`` (created on first append), of at most ``max_bytes`` if given."""

    def __init__(self, path: str | Path, max_bytes: Optional[int] = None) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 (or None: no cap), got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.skipped: list[int] = []  # line numbers that the last records() skipped (not whole records)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Validate, stamp (``id``, ``time``) and append one record atomically; returns the stored record. Raises
        ``FeedbackStoreFull``, writing nothing, when the line would take the store past ``max_bytes``."""
        stored = {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), **validate_feedback(dict(record))}
        line = (json.dumps(stored, ensure_ascii=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":  # a line torn by a crash: close it, start a new one
                line = b"\n" + line
            if self.max_bytes is not None and start + len(line) > self.max_bytes:  # under the lock: exact
                raise FeedbackStoreFull(f"The feedback store {self.path} holds {start:,} of its {self.max_bytes:,}"
                                        f" bytes; this record ({len(line):,} bytes) does not fit")
            try:
                _write_all(fd, line)  # the whole line, under the lock
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, start)  # take back what went in: the store stays as it was
                raise OSError(e.errno, f"Could not append to the feedback store {self.path} ({e.strerror or e});"
                              " the record was not stored and the store is unchanged: free disk space, or pass"
                              " --feedback_store PATH on another disk") from e
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return stored

    def records(self) -> Iterator[dict[str, Any]]:
        """Every whole record, in order. A line that is not one (torn by a crash, or unterminated at the end: an
        interrupted append, or one in progress) is skipped with a warning; ``self.skipped`` lists their numbers."""
        if not self.path.is_file():
            raise FileNotFoundError(f"Feedback store {self.path} does not exist; nothing has been sent to it yet")
        self.skipped = []
        with open(self.path, "rb") as f:  # bytes: a torn line may end inside a UTF-8 character
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    self.skipped.append(n)
                    warnings.warn(f"{self.path}:{n}: skipped an unterminated last line (an interrupted append)")
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:  # JSONDecodeError or UnicodeDecodeError
                    record = e
                if not isinstance(record, dict):
                    self.skipped.append(n)
                    warnings.warn(f"{self.path}:{n}: skipped a line that is not a whole record (torn by a crash"
                                  " during an append); the other records are read")
                    continue
                yield record


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


def preference_pairs(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Preference pairs ``{"prompt", "chosen", "rejected"}`` from completion feedback, and counts of what became
    of the records. The request is the user's turn, the answers are the texts as served:

    - a corrected text is preferred to the answer it corrects (``chosen`` = the correction, ``rejected`` = the
      response), when the record has the response;
    - of two different answers to the same request, one rated good (1) is preferred to one rated bad (-1),
      every such combination once.
    """
    from lit_llm.chat import answer_content  # a served answer as message content, as the chat template writes it

    pairs, counts = [], {"corrections": 0, "rated_pairs": 0, "unused": 0}
    rated: dict[str, dict[Any, Any]] = {}  # request -> {1: answers rated good, -1: rated bad, "records": count}
    for r in records:
        if r.get("kind") != "completion" or not r.get("response"):
            counts["unused"] += 1
            continue
        response = answer_content(r["response"])
        corrected = answer_content(r["corrected_text"]) if r.get("corrected_text") else None
        if corrected and corrected != response:
            pairs.append({"prompt": r["request"], "chosen": corrected, "rejected": response})
            counts["corrections"] += 1
        elif r.get("rating") in (1, -1):
            by_rating = rated.setdefault(r["request"], {1: [], -1: [], "records": 0})
            by_rating["records"] += 1
            if response not in by_rating[r["rating"]]:
                by_rating[r["rating"]].append(response)
        else:
            counts["unused"] += 1
    for request, by_rating in rated.items():
        made = [{"prompt": request, "chosen": good, "rejected": bad}
                for good in by_rating[1] for bad in by_rating[-1] if good != bad]
        pairs += made
        counts["rated_pairs"] += len(made)
        if not made:  # ratings of one kind only: nothing to prefer
            counts["unused"] += by_rating["records"]
    return pairs, counts


def is_feedback_record(record: dict[str, Any]) -> bool:
    """A record of a feedback store (``kind`` and ``request``), as opposed to a preference pair."""
    return "kind" in record and "request" in record and "chosen" not in record


def pairs_of_records(records: list[tuple[str, dict[str, Any]]]) -> tuple[list[tuple[str, dict[str, Any]]], Optional[str]]:
    """``(where, pair)`` records: preference pairs as they are, feedback-store records turned into pairs
    (``preference_pairs``; ``where`` is then ``feedback:N``), and a line saying what the feedback gave (None
    without feedback). Nothing to pair is an error saying why."""
    given = [(w, r) for w, r in records if not is_feedback_record(r)]
    feedback = [r for _, r in records if is_feedback_record(r)]
    if not feedback:
        return given, None
    pairs, counts = preference_pairs(feedback)
    said = (f"feedback: {len(feedback):,} records gave {counts['corrections']:,} correction pairs and"
            f" {counts['rated_pairs']:,} pairs of rated answers; {counts['unused']:,} unused (no response, or a"
            " rating without an opposite one)")
    if not pairs and not given:
        raise ValueError(f"The feedback store's {len(feedback):,} records give no preference pair: a pair needs a"
                         " corrected_text with the response it corrects, or two answers to one request rated 1 and -1")
    return given + [(f"feedback:{i}", p) for i, p in enumerate(pairs, 1)], said
