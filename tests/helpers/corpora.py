"""A small corpus for the parallel prepare's tests, with duplicates planted across its shards."""

import json
from pathlib import Path

from tests.helpers.paths import SHAKESPEARE

# per-document steps around global ones, and a global step after a per-document step after a global step
CLEANING = ["unicode", "whitespace", {"length": {"min_chars": 5}}, "dedup_exact", "dedup_minhash", "lowercase",
            "dedup_exact"]


def planted_duplicates(path: Path) -> Path:
    """Tiny Shakespeare's first 20,000 characters as paragraph documents (about 200), then, in later shards than
    their originals (at 30 documents per shard): exact copies, a near copy (one word changed), upper-cased copies
    (equal to their originals only after lowercase), a blank document and one too short to keep; as JSONL."""
    paras = [p for p in SHAKESPEARE.read_text(encoding="utf-8")[:20_000].split("\n\n") if p.strip()]
    near = next(p for p in paras if len(p.split()) >= 60).split(" ")
    near[len(near) // 2] = "Verily"
    docs = paras + paras[:5] + [" ".join(near)] + [p.upper() for p in paras[5:10]] + ["   ", "Hi"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    return path
