"""Throughput and memory of the data preparation stage.

1. Builds a corpus of at least ``--mb`` MB (default 50) as JSONL documents by repeating Tiny Shakespeare
   (five paragraphs per document) with a different 10% of the words swapped in every copy, so that exact
   deduplication keeps nearly all of it.
2. Trains a byte-level BPE (8k) on the first 2 MB and saves it, so that both measurements below use the
   same, already trained tokenizer.
3. Times the whole ``prepare`` pipeline (read -> default cleaning, near-duplicate removal off -> tokenize ->
   write token files, manifest and report) with that tokenizer, and its peak resident memory above the
   memory before it (kernel high-water mark reset before the run; ``datasets`` and ``matplotlib`` are
   imported first, since their import cost does not grow with the corpus).
4. Times the raw tokenizer alone, ``encode_batch_fast`` over the same documents held in memory.
5. Times a second ``prepare`` call with the same config (a cache hit).

    python benchmarks/prepare_throughput.py --mb 50

Ends with one JSON line: {"pipeline_mb_s", "tokenizer_mb_s", "ratio", "peak_rss_mb", "corpus_mb", "second_run_s"}.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from peak_memory import peak_rss_mb

from lit_llm.data.cleaning import DEFAULT_CLEANING
from lit_llm.data.corpora import resolve_corpus
from lit_llm.data.prepare import ENCODE_BATCH, prepare
from lit_llm.data.sources import Source
from lit_llm.data.tokenizer import TokenizerSpec, load_tokenizer, train_tokenizer


def build_corpus(path: Path, target_mb: float) -> int:
    paras = [p for p in resolve_corpus("tinyshakespeare").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    docs = ["\n\n".join(paras[i : i + 5]) for i in range(0, len(paras), 5)]
    vocab = sorted({w for d in docs for w in d.split()})
    size, copy = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target_mb * 1e6:
            rng = random.Random(copy)
            for d in docs:
                words = d.split(" ")
                for i in rng.sample(range(len(words)), k=max(1, len(words) // 10)):
                    words[i] = rng.choice(vocab)
                text = " ".join(words)
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                size += len(text.encode())
            copy += 1
    return size


def bpe_from_file(texts: list[str], path: Path) -> TokenizerSpec:
    """An 8k byte-level BPE trained on the first 2 MB of ``texts``, saved to ``path``: the runs load it from file,
    so they time the pipeline, not tokenizer training."""
    sample, acc = [], 0
    for t in texts:
        sample.append(t)
        acc += len(t)
        if acc > 2e6:
            break
    train_tokenizer(TokenizerSpec(kind="bpe", vocab_size=8192), iter(sample)).save(str(path))
    return TokenizerSpec(kind="bpe", path=str(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=50.0)
    p.add_argument("--workdir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lit_llm_prepare_bench"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    t0 = time.perf_counter()
    text_mb = build_corpus(corpus, args.mb) / 1e6
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    print(f"corpus: {len(texts):,} documents, {text_mb:.1f} MB of text, {corpus.stat().st_size / 1e6:.1f} MB as JSONL"
          f" (built in {time.perf_counter() - t0:.1f} s)")

    spec = bpe_from_file(texts, work / "tokenizer.json")
    tok = load_tokenizer(spec.path)

    t0 = time.perf_counter()
    for i in range(0, len(texts), ENCODE_BATCH):
        tok.encode_batch_fast(texts[i : i + ENCODE_BATCH], add_special_tokens=False)
    tokenizer_s = time.perf_counter() - t0
    del texts

    out_root = work / "tokens"
    shutil.rmtree(out_root, ignore_errors=True)
    import datasets  # noqa: F401  fixed import costs are not part of the pipeline's working memory
    import matplotlib.pyplot  # noqa: F401

    with peak_rss_mb({}) as mem:
        t0 = time.perf_counter()
        out = prepare([Source(path=str(corpus))], out_root, cleaning=DEFAULT_CLEANING, tokenizer=spec, progress=False)
        pipeline_s = time.perf_counter() - t0
    peak_mb = mem["peak_mb"]
    report = json.loads((out / "report.json").read_text())

    t0 = time.perf_counter()
    assert prepare([Source(path=str(corpus))], out_root, cleaning=DEFAULT_CLEANING, tokenizer=spec, progress=False) == out
    second_s = time.perf_counter() - t0

    result = {
        "pipeline_mb_s": round(text_mb / pipeline_s, 2), "tokenizer_mb_s": round(text_mb / tokenizer_s, 2),
        "ratio": round(tokenizer_s / pipeline_s, 3), "peak_rss_mb": round(peak_mb, 1), "corpus_mb": round(text_mb, 1),
        "second_run_s": round(second_s, 2),
    }
    print(f"documents kept {report['documents_kept']:,} of {report['documents_read']:,};"
          f" tokens {sum(report['tokens'].values()):,}; stage seconds {report['seconds']}")
    print(f"pipeline  : {pipeline_s:.1f} s, {result['pipeline_mb_s']} MB/s, peak +{peak_mb:.0f} MB resident")
    print(f"tokenizer : {tokenizer_s:.1f} s, {result['tokenizer_mb_s']} MB/s (encode_batch_fast alone)")
    print(f"second run: {second_s:.2f} s (cache hit)")
    print(json.dumps(result))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
