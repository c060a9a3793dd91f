"""The preparation stage: sources, tokenizers, token files, manifest, report, cache and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

import lit_llm.data.prepare as prep
from lit_llm.data import PretrainDataModule
from lit_llm.data.prepare import prepare
from lit_llm.data.sources import Source
from lit_llm.data.tokenizer import TokenizerSpec, decode, train_tokenizer
from lit_llm.data.tokens import open_split, read_manifest
from tests.helpers.paths import SHAKESPEARE


@pytest.fixture
def docs():
    """Real paragraphs of Shakespeare plus a few non-ASCII ones, as separate documents."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:60_000]
    paras = [p for p in text.split("\n\n") if p.strip()]
    return paras + ["Café naïve — “quoted” 日本語 😀 tab\there", "ÀÉÎÕÜ ß ﬁ"]


def _jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def test_byte_level_bpe_round_trips_the_cleaned_text_exactly(docs):
    tok = train_tokenizer(TokenizerSpec(kind="bpe", vocab_size=600), iter(docs))
    assert tok.get_vocab_size() <= 600 and tok.token_to_id("[EOS]") is not None
    for text in docs[:50] + docs[-2:]:
        assert decode(tok, tok.encode(text, add_special_tokens=False).ids) == text


@pytest.mark.parametrize("kind", ["char", "bpe", "wordpiece", "unigram"])
def test_every_tokenizer_kind_trains_with_its_special_tokens(docs, kind):
    spec = TokenizerSpec(kind=kind, vocab_size=500)
    tok = train_tokenizer(spec, iter(docs))
    if kind == "char":  # the characters, and [UNK] for any other (a Hugging Face export reads every text)
        assert tok.get_vocab_size() == len(set("".join(docs))) + 1
        assert tok.encode("To be \u2603", add_special_tokens=False).tokens[-1] == "[UNK]"
    else:
        assert tok.get_vocab_size() <= 500
        assert all(tok.token_to_id(t) is not None for t in ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"])
    ids = tok.encode("To be, or not to be", add_special_tokens=False).ids
    assert ids and "be" in decode(tok, ids)


def test_manifest_report_eos_and_document_boundaries(tmp_path, docs):
    src = _jsonl(tmp_path / "a.jsonl", docs + docs[:5])  # 5 exact duplicates
    out = prepare([Source(path=str(src))], tmp_path / "cache", cleaning=["whitespace", "dedup_exact"],
                  tokenizer=TokenizerSpec(kind="bpe", vocab_size=800), val_fraction=0.1, progress=False)
    m = read_manifest(out)
    assert m["vocab_size"] <= 800 and m["dtype"] == "uint16" and m["documents"] == len(docs)
    assert m["sources"][0]["files"][0][0] == str(src.resolve())  # fingerprint: path, size, mtime
    assert m["cleaning"] == ["whitespace", "dedup_exact"] and m["tokenizer"]["kind"] == "bpe"
    lengths = np.load(out / "doc_lengths.npy")
    assert lengths.sum() == sum(m["num_tokens"].values()) and len(lengths) == len(docs)
    stream = np.concatenate([open_split(out, s) for s in ("train", "test", "val")])
    ends = np.cumsum(lengths) - 1
    assert (stream[ends] == m["eos_id"]).all()  # every document ends with EOS
    assert (stream == m["eos_id"]).sum() == len(docs)
    assert m["num_tokens"]["val"] == int(len(stream) * 0.1)
    report = json.loads((out / "report.json").read_text())
    assert report["documents_read"] == len(docs) + 5 and report["duplicates_removed"] == 5
    assert report["cleaning"][1] == {"step": "dedup_exact", "in": len(docs) + 5, "out": len(docs), "removed": 5}
    assert 2.0 < report["bytes_per_token"] < 6.0
    assert (out / "doc_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cache_hits_reuse_and_any_change_rebuilds(tmp_path, docs):
    src = _jsonl(tmp_path / "a.jsonl", docs)
    kw = dict(tokenizer=TokenizerSpec(kind="char"), progress=False)
    first = prepare([Source(path=str(src))], tmp_path / "c", **kw)
    mtime = (first / "train.bin").stat().st_mtime_ns
    assert prepare([Source(path=str(src))], tmp_path / "c", **kw) == first
    assert (first / "train.bin").stat().st_mtime_ns == mtime  # reused, not rewritten
    assert prepare([Source(path=str(src))], tmp_path / "c", cleaning=["lowercase"], **kw) != first
    assert prepare([Source(path=str(src))], tmp_path / "c", val_fraction=0.2, **kw) != first
    _jsonl(src, docs[:-1])  # the source changed
    assert prepare([Source(path=str(src))], tmp_path / "c", **kw) != first
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp" in p.name]


def test_a_killed_prepare_leaves_nothing_that_looks_valid(tmp_path, docs, monkeypatch):
    src = _jsonl(tmp_path / "a.jsonl", docs)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_split", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare([Source(path=str(src))], tmp_path / "c", progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_data_module_mixes_jsonl_csv_and_parquet(tmp_path, docs):
    third = len(docs) // 3
    _jsonl(tmp_path / "a.jsonl", docs[:third], field="body")
    pd.DataFrame({"review": docs[third : 2 * third]}).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame({"text": docs[2 * third :]}).to_parquet(tmp_path / "c.parquet")
    dm = PretrainDataModule(
        sources=[Source(path=str(tmp_path / "a.jsonl"), text_field="body"),
                 Source(path=str(tmp_path / "b.csv"), text_field="review", weight=2.0),
                 Source(path=str(tmp_path / "c.parquet"))],
        cleaning=["whitespace"], tokenizer=TokenizerSpec(kind="bpe", vocab_size=700), block_size=16, batch_size=4,
    )
    dm.prepare_data()
    assert dm.report["documents_read"] == len(docs)  # every document of every source, once
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 17) and int(batch.max()) < dm.vocab_size
    text = decode(dm.tokenizer, np.concatenate([open_split(dm.token_dir, s) for s in ("train", "val")]).tolist())
    assert docs[0].strip() in text and docs[third].strip() in text and docs[-1].strip() in text


def test_sources_are_found_in_the_data_directories():
    dm = PretrainDataModule(sources=[Source(path="sentiment/cr/custrev.all", format="text", sample_by="line",
                                            max_documents=200)], block_size=8)
    dm.prepare_data()
    assert dm.report["documents_read"] == 200


def test_bad_input_gives_clear_errors_before_work(tmp_path, docs):
    with pytest.raises(FileNotFoundError, match="nope/\\*.jsonl.*matches no file"):
        PretrainDataModule(sources=[Source(path=str(tmp_path / "nope/*.jsonl"))])
    src = _jsonl(tmp_path / "a.jsonl", docs)
    with pytest.raises(KeyError, match="no field 'body'.*'text'"):
        prepare([Source(path=str(src), text_field="body")], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="empty after cleaning.*length removed"):
        prepare([Source(path=str(src))], tmp_path / "c", cleaning=[{"length": {"min_chars": 10**9}}], progress=False)
    with pytest.raises(ValueError, match="unknown step"):
        PretrainDataModule(sources=[Source(path=str(src))], cleaning=["scrub"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\n" * 100 + b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad.txt is not valid UTF-8 at byte 1003"):
        prepare([Source(path=str(bad))], tmp_path / "c", progress=False)
    out = prepare([Source(path=str(bad))], tmp_path / "c", encoding_errors="replace", progress=False)
    assert "\ufffd" in decode(train_tokenizer(TokenizerSpec(path=str(out / "tokenizer.json")), []),
                              open_split(out, "val").tolist())
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp" in p.name]


def test_other_local_ranks_wait_for_rank_zero_instead_of_preparing(tmp_path, docs, monkeypatch):
    import threading

    src = _jsonl(tmp_path / "a.jsonl", docs)
    kw = dict(sources=[Source(path=str(src))], cache_dir=str(tmp_path / "c"), block_size=8)
    monkeypatch.setenv("LOCAL_RANK", "1")
    waiting = PretrainDataModule(**kw)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("dir", waiting.token_dir))
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive() and not list((tmp_path / "c").glob("*/manifest.json"))  # rank 1 did not prepare
    monkeypatch.setenv("LOCAL_RANK", "0")
    rank0 = PretrainDataModule(**kw)
    rank0.prepare_data()
    t.join(timeout=30)
    assert result["dir"] == rank0.token_dir


def test_a_tokenizer_larger_than_the_model_is_refused(small_corpus):
    import lightning as L

    from lit_llm.tasks import LanguageModel

    dm = PretrainDataModule(corpus=str(small_corpus), block_size=16)
    model = LanguageModel("debug", vocab_size=20, block_size=16)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's embedding holds 20"):
        trainer.fit(model, dm)


def test_a_failed_rank_zero_prepare_fails_the_waiting_ranks_at_once(tmp_path):
    """Rank 0 hits bad input; the ranks waiting for its folder get its message within seconds, not after 24 h."""
    import threading
    import time

    bad = tmp_path / "bad.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    sources = [Source(path=str(bad))]
    out_dir, _ = prep.token_folder(sources, tmp_path / "c")
    errors = []

    def waiter():
        try:
            prep.wait_for(out_dir, timeout_s=60, poll_s=0.05)
        except RuntimeError as e:
            errors.append((time.monotonic(), str(e)))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        prepare(sources, tmp_path / "c", progress=False)
    failed_at = time.monotonic()
    t.join(timeout=10)
    assert errors and "Local rank 0 failed to prepare" in errors[0][1] and "not valid UTF-8" in errors[0][1]
    assert errors[0][0] - failed_at < 5
    # fixed input: the next attempt clears the marker and succeeds
    bad.write_text("café\n", encoding="utf-8")
    out = prepare([Source(path=str(bad))], tmp_path / "c", progress=False)
    assert not out.with_name(out.name + ".failed").exists()


def test_a_killed_prepare_leaves_nothing_that_is_reused(tmp_path, docs):
    import os
    import time

    cache = tmp_path / "c"
    stale, fresh = cache / "corpus-123.tmpabc", cache / "corpus-456.tmpdef"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "cleaned.jsonl").write_text("half")
    old = time.time() - 2 * prep.STALE_TMP_S
    for p in (stale / "cleaned.jsonl", stale):
        os.utime(p, (old, old))
    # parallel work folders: one abandoned for longer than a resume is kept for, one recent (kept for a rerun)
    abandoned, recent = cache / "corpus-789.shards100", cache / "corpus-790.shards100"
    for d in (abandoned, recent):
        (d / "raw").mkdir(parents=True)
        (d / "raw" / "00000.jsonl").write_text("[]")
    old = time.time() - 2 * prep.STALE_SHARDS_S
    for p in (abandoned / "raw" / "00000.jsonl", abandoned / "raw", abandoned):
        os.utime(p, (old, old))
    out = prepare([Source(path=str(_jsonl(tmp_path / "a.jsonl", docs)))], cache, progress=False)
    assert not stale.exists() and fresh.exists()  # a prepare still writing into its folder is left alone
    assert not abandoned.exists() and recent.exists()
    leftover = out.with_name(out.name + ".shards100")  # a published folder's work folder whose removal failed
    (leftover / "raw").mkdir(parents=True)
    assert prep.sweep_stale(cache) == [leftover] and not leftover.exists()
    # a token file that does not match its manifest is refused, not memory-mapped
    (out / "train.bin").write_bytes((out / "train.bin").read_bytes()[:-2])
    with pytest.raises(ValueError, match="is damaged: train.bin has .* bytes, its manifest says .*prepare again"):
        open_split(out, "train")
