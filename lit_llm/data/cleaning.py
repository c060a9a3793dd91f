"""Cleaning: an ordered list of small steps, configured in YAML as ``[{step_name: {options}}, ...]``.

A step maps a document to a new document, or to ``None`` to drop it (the step's name is the reason).
Steps that remember what they saw (deduplication) keep that state for one preparation run.

Stop-word removal and stemming are available but stay off for LM pretraining: a language model has to
learn to produce exactly those function words and inflections, and removing them makes text it will never
be asked to continue. They help in bag-of-words baselines (TF-IDF + linear classifiers), where they shrink
the vocabulary and merge word forms.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

Step = Callable[[str], Optional[str]]


class Unicode:
    """Unicode normalization (NFC by default; NFKC also folds compatibility forms like full-width letters)."""

    def __init__(self, form: str = "NFC") -> None:
        if form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"unicode form must be NFC, NFKC, NFD or NFKD, got {form!r}")
        self.form = form

    def __call__(self, text: str) -> str:
        return unicodedata.normalize(self.form, text)


class StripHtml:
    """Remove script/style blocks, comments and tags, then unescape entities (``&amp;`` -> ``&``)."""

    _blocks = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
    _tags = re.compile(r"</?[A-Za-z][^<>]*>")
    _breaks = re.compile(r"<(br|/p|/div|/li|/h[1-6])\b[^<>]*>", re.I)

    def __call__(self, text: str) -> str:
        if "<" in text:
            text = self._blocks.sub("", text)
            text = self._breaks.sub("\n", text)
            text = self._tags.sub("", text)
        return html.unescape(text) if "&" in text else text


class RemoveControl:
    """Delete control characters (Unicode category Cc/Cf, except newline and tab) and any ``extra`` characters."""

    def __init__(self, extra: str = "") -> None:
        self.extra = extra
        self._table: dict[int, None] = {ord(c): None for c in extra}
        for cp in list(range(0x00, 0x20)) + list(range(0x7F, 0xA0)) + [0x200B, 0x200E, 0x200F, 0xFEFF, 0x2060]:
            if chr(cp) not in "\n\t":
                self._table[cp] = None
        self._ascii = bytes(cp for cp in self._table if cp < 0x80)  # what the table deletes from ASCII text

    def __call__(self, text: str) -> str:
        if text.isascii():  # (a flag CPython keeps) bytes.translate is 4 times as fast as str.translate with a dict
            return text.encode("ascii").translate(None, self._ascii).decode("ascii")
        return text.translate(self._table)


class Whitespace:
    """Tabs and runs of spaces -> one space, no trailing spaces, at most one blank line, trimmed ends."""

    _spaces = re.compile(r"[ \t\u00a0\u3000]+")
    _trailing = re.compile(r" *\n *")
    _blank = re.compile(r"\n{3,}")

    def __call__(self, text: str) -> str:
        # each pattern runs only where a substring test (C speed) says it would change something: a regex scan
        # costs about 20 ns a character even where it replaces a space by a space, which made this step half of
        # the parallel prepare's clean stage (the same output: tests/test_cleaning.py)
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "  " in text or "\t" in text or (not text.isascii() and ("\u00a0" in text or "\u3000" in text)):
            text = self._spaces.sub(" ", text)
        if " \n" in text or "\n " in text:
            text = self._trailing.sub("\n", text)
        if "\n\n\n" in text:
            text = self._blank.sub("\n\n", text)
        return text.strip()


class RegexReplace:
    """Replace every match of ``pattern`` with ``repl`` (Python ``re`` syntax, multiline mode), e.g. drop the
    ``LABEL `` prefix of ``LABEL TEXT`` lines with ``{pattern: "^[01] ", repl: ""}``."""

    def __init__(self, pattern: str, repl: str = "") -> None:
        self.pattern, self.repl = re.compile(pattern, re.M), repl

    def __call__(self, text: str) -> str:
        return self.pattern.sub(self.repl, text)


class Lowercase:
    def __call__(self, text: str) -> str:
        return text.lower()


class Length:
    """Drop documents shorter than ``min_chars`` / ``min_words`` or longer than ``max_chars``."""

    def __init__(self, min_chars: int = 1, max_chars: Optional[int] = None, min_words: int = 0) -> None:
        self.min_chars, self.max_chars, self.min_words = min_chars, max_chars, min_words

    def __call__(self, text: str) -> Optional[str]:
        if len(text) < self.min_chars or (self.max_chars is not None and len(text) > self.max_chars):
            return None
        if self.min_words and len(text.split()) < self.min_words:
            return None
        return text


class SeenKeys:
    """What a deduplication step remembers: the keys of the documents it kept, and one test-and-remember per
    document. In memory, a set. After ``spill(path, memory_mb)``, a table on disk (sqlite3, from the standard
    library: a B-tree whose page cache is capped at ``memory_mb``), so that memory stays bounded by the setting
    however large the corpus; the answers are the same (tests/test_prepare_parallel.py)."""

    COMMIT_EVERY = 50_000  # documents per transaction on disk

    def __init__(self) -> None:
        self._set: set[bytes] = set()
        self._db: Any = None
        self._pending = 0
        self.path: Optional[Path] = None

    def spill(self, path: Path, memory_mb: float) -> None:
        """Keep the keys in a new SQLite file at ``path`` (replacing one a killed run left) with a page cache of
        ``memory_mb``. The file is scratch: no journal and no fsync, since a killed run starts the step over."""
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(f"PRAGMA cache_size = -{max(1, int(memory_mb * 1024))}")  # negative: KiB
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "temp_store = FILE"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE seen (k BLOB PRIMARY KEY) WITHOUT ROWID")
        db.execute("BEGIN")
        db.executemany("INSERT INTO seen VALUES (?)", ((k,) for k in self._set))
        self._db, self._set, self.path = db, set(), path

    def seen_any(self, keys: list[bytes]) -> bool:
        """Whether any of ``keys`` was remembered; if none was, all of them are remembered now."""
        if self._db is None:
            if any(k in self._set for k in keys):
                return True
            self._set.update(keys)
            return False
        marks = ",".join("?" * len(keys))
        if self._db.execute(f"SELECT 1 FROM seen WHERE k IN ({marks}) LIMIT 1", keys).fetchone() is not None:
            return True
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((k,) for k in keys))
        self._pending += 1
        if self._pending >= self.COMMIT_EVERY:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._pending = 0
        return False

    def close(self) -> None:
        """Forget the keys; an index on disk is closed and its file deleted."""
        if self._db is not None:
            self._db.close()
            self.path.unlink(missing_ok=True)
        self._db, self._set, self._pending, self.path = None, set(), 0, None


class DedupExact:
    """Drop a document identical to one seen before (16-byte BLAKE2 digests are kept, not the texts).

    ``key`` and ``seen`` split the step in two, so that the keys can be computed in parallel (the parallel
    ``prepare``, ``data/shards.py``) and then decided in document order, as one process decides them."""

    def __init__(self) -> None:
        self.keys = SeenKeys()

    @staticmethod
    def key(text: str) -> np.ndarray:
        """The document's 16-byte digest."""
        return np.frombuffer(hashlib.blake2b(text.encode(), digest_size=16).digest(), dtype=np.uint8)

    def seen(self, key: np.ndarray) -> bool:
        """Whether a document with this key came before; if not, it is remembered."""
        return self.keys.seen_any([key.tobytes()])

    def __call__(self, text: str) -> Optional[str]:
        return None if self.seen(self.key(text)) else text


class DedupMinHash:
    """Drop near-duplicates: documents whose estimated Jaccard similarity of word ``ngram`` shingles to an
    earlier kept document is at least ``threshold`` (MinHash + LSH, Broder 1997; the signatures and the choice of
    ``b`` bands of ``r`` rows for the threshold are datasketch's). A document is a candidate duplicate when one of
    its bands equals that band of a kept document, which is the test datasketch's ``MinHashLSH.query`` makes; the
    kept bands are held in ``SeenKeys``, in memory or on disk."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError as e:
            raise ImportError("dedup_minhash needs datasketch: pip install 'lit_llm[data]'") from e
        self._minhash, self.num_perm, self.ngram, self.seed = MinHash, num_perm, ngram, seed
        self.bands = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges  # [(start, end)] per band
        self.keys = SeenKeys()

    def key(self, text: str) -> np.ndarray:
        """The document's MinHash signature over its word ``ngram`` shingles (``num_perm`` hash values)."""
        words = text.split()
        shingles = {" ".join(words[i : i + self.ngram]) for i in range(max(1, len(words) - self.ngram + 1))}
        m = self._minhash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([s.encode() for s in shingles])
        return m.hashvalues

    def seen(self, key: np.ndarray) -> bool:
        """Whether an earlier kept document shares a band with this signature; if not, its bands are kept."""
        return self.keys.seen_any([i.to_bytes(2, "little") + key[start:end].tobytes()
                                   for i, (start, end) in enumerate(self.bands)])

    def __call__(self, text: str) -> Optional[str]:
        return None if self.seen(self.key(text)) else text


class Quality:
    """Simple heuristic filters (in the spirit of Gopher's, Rae et al. 2021, appendix A): drop documents whose
    symbol-to-letter ratio is above ``max_symbol_ratio`` or whose share of duplicated lines is above
    ``max_repeated_lines``."""

    def __init__(self, max_symbol_ratio: float = 0.5, max_repeated_lines: float = 0.3) -> None:
        self.max_symbol_ratio, self.max_repeated_lines = max_symbol_ratio, max_repeated_lines

    def __call__(self, text: str) -> Optional[str]:
        letters = sum(c.isalpha() for c in text)
        symbols = sum(not (c.isalnum() or c.isspace()) for c in text)
        if symbols > self.max_symbol_ratio * max(letters, 1):
            return None
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) > 1:
            repeated = sum(n for n in Counter(lines).values() if n > 1)
            if repeated / len(lines) > self.max_repeated_lines:
                return None
        return text


class StopWords:
    """Remove stop words (lists from the ``stop-words`` package). Off for LM pretraining; see the module doc."""

    def __init__(self, language: str = "english") -> None:
        try:
            from stop_words import get_stop_words
        except ImportError as e:
            raise ImportError("stopwords needs the stop-words package: pip install 'lit_llm[data]'") from e
        self.words = set(get_stop_words(language))

    def __call__(self, text: str) -> str:
        return "\n".join(" ".join(w for w in line.split(" ") if w.lower() not in self.words) for line in text.split("\n"))


class Stem:
    """Replace each word by its Snowball stem (``snowballstemmer``). Off for LM pretraining; see the module doc."""

    def __init__(self, language: str = "english") -> None:
        try:
            import snowballstemmer
        except ImportError as e:
            raise ImportError("stem needs snowballstemmer: pip install 'lit_llm[data]'") from e
        self.stemmer = snowballstemmer.stemmer(language)

    def __call__(self, text: str) -> str:
        return "\n".join(" ".join(self.stemmer.stemWords(line.split(" "))) for line in text.split("\n"))


STEPS: dict[str, type] = {
    "unicode": Unicode,
    "strip_html": StripHtml,
    "remove_control": RemoveControl,
    "whitespace": Whitespace,
    "regex_replace": RegexReplace,
    "lowercase": Lowercase,
    "length": Length,
    "dedup_exact": DedupExact,
    "dedup_minhash": DedupMinHash,
    "quality": Quality,
    "stopwords": StopWords,
    "stem": Stem,
}

# What `cleaning: default` means: cheap, safe steps that keep text a language model should see.
DEFAULT_CLEANING: list[dict[str, Any]] = [
    {"unicode": {"form": "NFC"}},
    {"remove_control": {}},
    {"whitespace": {}},
    {"length": {"min_chars": 1}},
    {"dedup_exact": {}},
]


def build_steps(spec: list[Any]) -> list[tuple[str, Step]]:
    """``[{"whitespace": {}}, "lowercase", ...]`` -> [(name, step)], with errors that list the valid steps."""
    steps = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"cleaning[{i}] must be a step name or a one-key mapping {{name: options}}, got {item!r}")
        (name, options), = item.items()
        if name not in STEPS:
            raise ValueError(f"cleaning[{i}]: unknown step {name!r}. Steps: {', '.join(STEPS)}")
        try:
            steps.append((name, STEPS[name](**(options or {}))))
        except TypeError as e:
            raise ValueError(f"cleaning[{i}] ({name}): {e}") from e
    return steps


class Cleaner:
    """Runs the steps in order and counts, per step, documents in, out and dropped."""

    def __init__(self, spec: list[Any]) -> None:
        self.steps = build_steps(spec)
        self.counts = [[0, 0] for _ in self.steps]  # per step: documents in, documents out

    def __call__(self, text: str) -> Optional[str]:
        for (_, step), count in zip(self.steps, self.counts):
            count[0] += 1
            text = step(text)
            if text is None:
                return None
            count[1] += 1
        return text

    def spill(self, folder: Path, memory_mb: Optional[float]) -> None:
        """With ``memory_mb`` (data.dedup_memory_mb), the deduplication steps keep their keys on disk in ``folder``
        with that much page cache between them, instead of in memory; None leaves them in memory."""
        indexed = [(j, step) for j, (_, step) in enumerate(self.steps) if isinstance(getattr(step, "keys", None),
                                                                                     SeenKeys)]
        if memory_mb is not None:
            run = uuid.uuid4().hex[:12]  # this run's files: another prepare deciding in the same folder keeps its own
            for j, step in indexed:
                step.keys.spill(folder / f"seen{j}-{run}.sqlite", memory_mb / len(indexed))

    def close(self) -> None:
        """Forget what the deduplication steps saw (deleting any index on disk)."""
        for _, step in self.steps:
            if isinstance(getattr(step, "keys", None), SeenKeys):
                step.keys.close()

    def report(self) -> list[dict[str, Any]]:
        return [{"step": name, "in": n_in, "out": n_out, "removed": n_in - n_out}
                for (name, _), (n_in, n_out) in zip(self.steps, self.counts)]
