"""The parallel prepare (data.workers other than 1): the same bytes for any number of workers, deduplication
across shards, checksummed shards, resume from the shards a failed run finished (docs/data.md)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import lit_llm.data.shards as shards
from lit_llm.data import PretrainDataModule
from lit_llm.data.cleaning import STEPS, Cleaner, SeenKeys
from lit_llm.data.prepare import prepare, resolve_workers, shard_folder, token_folder
from lit_llm.data.sources import Source
from lit_llm.data.tokenizer import TokenizerSpec, declare_special_tokens, train_tokenizer
from lit_llm.data.tokens import read_manifest
from tests.helpers.corpora import CLEANING, planted_duplicates

SAME = ["manifest.json", "tokenizer.json", "train.bin", "test.bin", "val.bin", "doc_lengths.npy"]
SHARD_DOCS = 30
TOKENIZER = TokenizerSpec(kind="bpe", vocab_size=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus with planted duplicates (module-scoped, so the reference below is prepared once)."""
    return planted_duplicates(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


def _prepare(corpus, root, tokenizer=TOKENIZER, **kw):
    return prepare([Source(path=str(corpus))], root, cleaning=CLEANING, tokenizer=tokenizer, val_fraction=0.1,
                   test_fraction=0.05, progress=False, shard_docs=SHARD_DOCS, **kw)


def _contents(folder):
    return {name: (folder / name).read_bytes() for name in SAME}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The one-process path's output (workers=1) and its report."""
    out = _prepare(corpus, tmp_path_factory.mktemp("reference"))
    return _contents(out), json.loads((out / "report.json").read_text())


def _work(corpus, root):
    out_dir, _ = token_folder([Source(path=str(corpus))], root, CLEANING, TOKENIZER, 0.1, 0.05)
    return shard_folder(out_dir, SHARD_DOCS)


def test_any_number_of_workers_writes_the_same_bytes(corpus, reference, tmp_path):
    ref, report = reference
    steps = report["cleaning"]  # the planted duplicates sit in other shards than their originals
    assert [s["removed"] for s in steps[3:5]] == [5, 1] and steps[6]["removed"] >= 5 and report["documents_read"] > 5 * SHARD_DOCS
    for workers in (2, 3):
        out = _prepare(corpus, tmp_path / f"w{workers}", workers=workers)
        assert _contents(out) == ref  # same manifest (so the same hash), tokenizer and token files
        got = json.loads((out / "report.json").read_text())
        assert {k: got[k] for k in ("cleaning", "documents_kept", "bytes", "tokens")} == \
               {k: report[k] for k in ("cleaning", "documents_kept", "bytes", "tokens")}
        assert got["workers"] == workers and set(got["seconds"]) == {"read", "clean", "dedup", "tokenizer",
                                                                       "tokenize", "split"}
        assert not shard_folder(out, SHARD_DOCS).exists()  # the shards are removed once the folder is published


def test_deduplication_on_disk_with_a_small_memory_bound_removes_the_same_documents(corpus, reference, tmp_path,
                                                                                     monkeypatch):
    """data.dedup_memory_mb: one process keeps the deduplication keys in SQLite files with a 64 KiB page cache
    between the steps (all three); the parallel path sorts every step's keys in buckets, with no SQLite. The
    planted duplicates (across shards) are removed exactly as in memory."""
    sizes = {}
    real_close = SeenKeys.close

    def close(self):  # the index is deleted when its step is done: note how large it grew first
        if self.path is not None:
            sizes[self.path.name.split("-")[0]] = self.path.stat().st_size
        real_close(self)

    monkeypatch.setattr(SeenKeys, "close", close)
    for workers in (1, 2):
        sizes.clear()
        out = _prepare(corpus, tmp_path / f"w{workers}", workers=workers, dedup_memory_mb=1 / 16)
        assert _contents(out) == reference[0]
        assert json.loads((out / "report.json").read_text())["cleaning"] == reference[1]["cleaning"]
        assert sorted(sizes) == (["seen3", "seen4", "seen6"] if workers == 1 else [])  # one per step; none: sorts
        assert all(size > 0 for size in sizes.values())
        assert not list(out.rglob("*.sqlite")) and not list(tmp_path.rglob("*.sqlite"))  # scratch, removed
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []  # nor is its folder published


@pytest.mark.parametrize("memory_mb", [None, 1 / 64, 1 / 1024], ids=["no_setting", "buckets", "marks_on_disk"])
def test_the_dedup_decision_removes_what_one_process_removes_document_by_document(memory_mb, tmp_path):
    """Stage 3 against the one-process rule, written out here: documents in corpus order, each through the global
    steps it reaches, each step's own ``seen`` (first occurrence wins; one removed at a step reaches no later one;
    a MinHash band is remembered only from a kept document). 4,000 documents in 7 shards, fates from
    per-document steps, digests and each MinHash band drawn from small pools, so that duplicates fall across
    shards and documents share one band but not the other, two dedup_exact steps around a dedup_minhash; with
    16 KiB, every step sorts its keys in many buckets and the MinHash walk runs in many ranges of documents; with
    1 KiB, its groups' marks are memory-mapped too. The same documents are kept, with the same counts."""
    from lit_llm.data.cleaning import Cleaner

    spec = [{"length": {"min_chars": 1}}, "dedup_exact", {"dedup_minhash": {"num_perm": 16}}, "lowercase",
            "dedup_exact"]
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, (900, 16), dtype=np.uint8)
    digests[1, :8] = digests[0, :8]  # two digests alike in their first 8 bytes but not the rest,
    digests[3, 8:] = digests[2, 8:]  # and two in their last 8 (the column the buckets are chosen by)
    bands = rng.integers(0, 2**32, (2, 700, 8), dtype=np.uint64)  # num_perm 16: 2 bands of 8, each from its pool
    bands[0, 1, 0] = bands[0, 0, 0]  # two bands alike in their first value (the buckets' column) but not the rest
    work, sizes = tmp_path / "work", [700, 0, 650, 1, 900, 1000, 749]
    (work / "clean").mkdir(parents=True)
    corpus = []  # per document: its fate from the per-document steps and its keys at steps 1, 2 and 4
    for k, size in enumerate(sizes):
        fate = rng.choice([0, 3, 5, 5, 5, 5, 6], size).astype(np.int32)  # 6: survived, blank
        keys = {j: [] for j in (1, 2, 4)}
        for f in fate:
            signature = np.concatenate([bands[0, rng.integers(700)], bands[1, rng.integers(700)]])
            doc = {1: digests[rng.integers(900)], 2: signature, 4: digests[rng.integers(900)]}
            corpus.append((int(f), doc))
            for j in keys:
                if f > j:
                    keys[j].append(doc[j])
        stem = shards.shard_name(k)
        np.savez(work / "clean" / f"{stem}.npz", fate=fate, bytes=np.arange((fate == 5).sum(), dtype=np.int64),
                 **{f"keys{j}": shards._stack(rows) for j, rows in keys.items()})
        shards._write_record(work / "clean" / f"{stem}.json", [work / "clean" / f"{stem}.npz"], documents=len(fate))
    one = Cleaner(spec)
    expected = []
    for f, doc in corpus:
        final = f
        for j in (1, 2, 4):
            if j >= f:
                break
            if one.steps[j][1].seen(doc[j]):
                final = j
                break
        expected.append(final)
    expected = np.array(expected)
    cleaner = Cleaner(spec)
    record = shards._decide_duplicates(work, len(sizes), cleaner, memory_mb)
    keep = np.concatenate([np.load(work / "keep" / f"{shards.shard_name(k)}.npy") for k in range(len(sizes))])
    fates = np.array([f for f, _ in corpus])
    assert np.array_equal(keep, expected[fates == 5] == 5)
    assert record["counts"] == [[int((expected >= j).sum()), int((expected > j).sum())] for j in range(5)]
    assert all(record["counts"][j][0] > record["counts"][j][1] for j in (1, 2, 4))  # each step removed some
    assert record["kept"] == int((expected == 5).sum())
    assert all((record["buckets"][j] > 10) == (memory_mb is not None) for j in "124")
    assert not list(work.glob("decide*"))


def test_the_minhash_walk_halves_a_range_where_near_duplicates_cluster(tmp_path, monkeypatch):
    """The walk's ranges of documents are cut as if the pairs were spread evenly; where they cluster (here all in
    300 of 100,000 documents), a range over the budget is halved until it fits: with 1 KiB (8 pairs), no walk loads
    more than 8 pairs, and the documents removed are those of one walk over all pairs in memory."""
    rng = np.random.default_rng(1)
    docs = np.repeat(np.arange(10, 310, dtype=np.uint64), 2)
    pairs = np.column_stack([docs, rng.integers(0, 60, len(docs)).astype(np.uint64)])
    pairs = pairs[rng.permutation(len(pairs))]  # in any order, as the buckets write them
    path = tmp_path / "pairs.bin"
    pairs.tofile(path)
    marked, expected = set(), []  # the walk, written out
    for doc in range(10, 310):
        own = {int(g) for d, g in pairs if d == doc}
        if own & marked:
            expected.append(doc)
        else:
            marked |= own
    loaded = []
    real = np.fromfile

    def fromfile(file, *args, **kwargs):  # note the size of every whole-file read (a walk's)
        out = real(file, *args, **kwargs)
        if "count" not in kwargs:
            loaded.append(len(out) // 2)
        return out

    monkeypatch.setattr(np, "fromfile", fromfile)
    final = np.full(100_000, 9, dtype=np.int32)
    shards._walk_groups(path, 60, 100_000, 1024, tmp_path / "walk", final, 4)
    assert np.flatnonzero(final == 4).tolist() == expected and 0 < len(expected) < 300
    assert max(loaded) <= 1024 // shards.WALK_BYTES_PER_PAIR and sum(loaded) == len(pairs)
    assert not list(tmp_path.iterdir())  # the pairs and the ranges' files are gone (60 marks: in memory)


def test_keys_on_disk_answer_as_the_set_does_beyond_their_cache(tmp_path):
    """SeenKeys on disk, with a cache of 16 KiB and 10,000 keys (a file over 10 times that), gives the set's
    answers."""
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 256, 16, dtype=np.uint8).tobytes() for _ in range(10_000)]
    stream = [[k] for k in keys] + [[k] for k in keys[::7]] + [[keys[3], b"new"], [b"new2", b"new3"], [b"new3"]]
    memory, disk = SeenKeys(), SeenKeys()
    disk.spill(tmp_path / "seen.sqlite", 1 / 64)
    disk.COMMIT_EVERY = 1000  # several transactions
    answers = [(memory.seen_any(k), disk.seen_any(k)) for k in stream]
    assert [m for m, _ in answers] == [d for _, d in answers]
    assert sum(m for m, _ in answers) == len(keys[::7]) + 2
    assert (tmp_path / "seen.sqlite").stat().st_size > 10 * 16 * 1024
    disk.close()
    assert not (tmp_path / "seen.sqlite").exists()


@pytest.mark.parametrize("bad", [0, -1, "lots", True, float("inf")])
def test_a_bad_dedup_memory_bound_is_refused_before_any_work(bad, corpus, tmp_path):
    with pytest.raises(ValueError, match="dedup_memory_mb .* must be a positive number, or null"):
        PretrainDataModule(sources=[Source(path=str(corpus))], cache_dir=str(tmp_path), dedup_memory_mb=bad)


def test_stages_run_apart_as_array_tasks_write_the_same_bytes(corpus, reference, tmp_path, monkeypatch):
    """The stages as separate SLURM jobs would run them: read; clean as 3 array tasks (out of order); dedup with
    the tokenizer; tokenize as 2 tasks; split as 3 tasks, of which 2 run (out of order), so the merge (one process)
    writes the third's shards. The token folder is the one-process path's."""
    root = tmp_path / "staged"
    with pytest.raises(ValueError, match="the read stage .* has not finished"):
        _prepare(corpus, root, stage="clean")
    work = _prepare(corpus, root, stage="read")
    assert work == _work(corpus, root) and (work / "spool.json").is_file()
    n_shards = json.loads((work / "spool.json").read_text())["shards"]
    for task in (2, 0, 1):
        _prepare(corpus, root, stage="clean", task=task, tasks=3)
        done = {int(p.stem) for p in (work / "clean").glob("*.json")}
        assert set(shards.part(n_shards, task, 3)) <= done
    assert done == set(range(n_shards))
    _prepare(corpus, root, stage="dedup")
    assert (work / "dedup.json").is_file() and (work / "tokenizer.json").is_file()
    for task in (1, 0):
        _prepare(corpus, root, stage="tokenize", task=task, tasks=2)
    assert len(list((work / "tokens").glob("*.json"))) == n_shards
    for task in (2, 0):  # task 1 "failed": the merge writes its shards
        _prepare(corpus, root, stage="split", task=task, tasks=3)
    marked = {int(p.stem) for p in (work / "split").glob("*.json")}
    assert marked == set(shards.part(n_shards, 0, 3)) | set(shards.part(n_shards, 2, 3))
    (work / "split" / "train.bin").unlink()  # lost after its shards were marked: the merge writes them all again

    def no_executor(self):  # every clean and tokenize shard is finished: the merge starts no process to check them
        raise AssertionError("the merge started an executor for a finished stage")

    monkeypatch.setattr("datatrove.executor.LocalPipelineExecutor.run", no_executor)
    out = _prepare(corpus, root, stage="merge")
    assert _contents(out) == reference[0] and not work.exists()
    with pytest.raises(ValueError, match="need 0 <= task < tasks"):
        shards.part(4, 2, 2)


def test_a_source_of_many_files_is_read_in_groups_by_tasks_and_writes_the_same_bytes(corpus, tmp_path, monkeypatch):
    """One source of 6 JSONL files (one of a single document, one blank), cut into groups of consecutive files: the
    read as 2 array tasks (the second first: no spool until both are done), and the read in 2 workers, give the
    token folder of the one-process path over the same files; each group's shards start at the group."""
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    folder = tmp_path / "files"
    folder.mkdir()
    cuts = [0, 45, 46, 100, 150, len(lines)]  # 45, 1, 54, 50 and 12 documents
    for i in range(5):
        (folder / f"part-{i}.jsonl").write_text("".join(lines[cuts[i]:cuts[i + 1]]), encoding="utf-8")
    (folder / "part-5.jsonl").write_text("\n \n", encoding="utf-8")  # no document: the stream passes over it
    sources = [Source(path=str(folder / "*.jsonl"))]

    def run(root, **kw):
        return prepare(sources, tmp_path / root, cleaning=CLEANING, tokenizer=TOKENIZER, val_fraction=0.1,
                       test_fraction=0.05, progress=False, shard_docs=SHARD_DOCS, **kw)

    one = _contents(run("one"))
    assert shards.read_plan(sources, None, "strict") is None  # 5 small files: one group, read in one process
    size = [(folder / f"part-{i}.jsonl").stat().st_size for i in range(5)]
    monkeypatch.setattr(shards, "READ_GROUP_BYTES", min(size[0], size[1] + size[2], size[3]))
    plan = shards.read_plan(sources, None, "strict")
    assert [[Path(f).name for f in g] for g in plan["groups"]] == [["part-0.jsonl"], ["part-1.jsonl", "part-2.jsonl"],
                                                                   ["part-3.jsonl"], ["part-4.jsonl", "part-5.jsonl"]]
    work = run("staged", stage="read", task=1, tasks=2)
    assert sorted(p.name for p in (work / "raw").glob("g*.json")) == ["g00002.json", "g00003.json"]
    assert not (work / "spool.json").exists()
    first = {p.name: p.stat().st_mtime_ns for p in (work / "raw").glob("g0000[23]*")}
    run("staged", stage="read", task=0, tasks=2)
    run("staged", stage="read", task=1, tasks=2)  # a retried task: its finished groups are not read again
    assert {p.name: p.stat().st_mtime_ns for p in (work / "raw").glob("g0000[23]*")} == first
    spool = json.loads((work / "spool.json").read_text())
    assert spool["documents"] == len(lines) and spool["raw"] == [  # 45 | 1 + 54 | 50 | 12 documents, 30 a shard
        "raw/g00000-00000.texts", "raw/g00000-00001.texts", "raw/g00001-00000.texts", "raw/g00001-00001.texts",
        "raw/g00002-00000.texts", "raw/g00002-00001.texts", "raw/g00003-00000.texts"] and spool["shards"] == 7
    # a raw file damaged after the read: one error naming it, and the next read redoes that group alone; a spool
    # that a task did not write (a file system that hid the other tasks' records) is written by the next stage
    damaged = work / "raw" / "g00001-00000.texts"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    (work / "spool.json").unlink()
    with pytest.raises(ValueError, match=f"damaged: {damaged} has"):
        run("staged", stage="clean")
    assert json.loads((work / "spool.json").read_text()) == spool and not (work / "raw" / "g00001.json").exists()
    run("staged", stage="read", task=0, tasks=2)
    assert (work / "raw" / "g00001.json").is_file()
    assert _contents(run("staged", stage="merge")) == one
    assert _contents(run("workers", workers=2)) == one


def test_a_failed_shard_is_the_only_work_a_rerun_redoes(corpus, reference, tmp_path, monkeypatch):
    root = tmp_path / "run"
    work = _work(corpus, root)
    blocker = work / "clean" / "00003.texts"
    blocker.mkdir(parents=True)  # shard 3's output cannot be written, so its worker fails
    with pytest.raises(OSError, match="00003.texts"):
        _prepare(corpus, root, workers=2)
    finished = sorted(p.stem for p in (work / "clean").glob("*.json"))
    assert finished and "00003" not in finished
    kept = [work / "spool.json"] + [p for stem in finished for p in (work / "clean").glob(stem + ".*")]
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    blocker.rmdir()

    after_clean = {}
    real = shards._decide_duplicates

    def spy(*args):  # the rerun's clean stage is over: look before the folder is published and removed
        after_clean.update(records=sorted(p.stem for p in (work / "clean").glob("*.json")),
                           mtimes={p: p.stat().st_mtime_ns for p in kept})
        return real(*args)

    monkeypatch.setattr(shards, "_decide_duplicates", spy)
    out = _prepare(corpus, root, workers=2)
    assert after_clean["mtimes"] == mtimes  # the spool and the finished shards were not redone
    assert "00003" in after_clean["records"]
    assert _contents(out) == reference[0]
    assert not out.with_name(out.name + ".failed").exists() and not work.exists()


def test_a_damaged_shard_file_is_one_error_naming_it(corpus, reference, tmp_path, monkeypatch):
    root = tmp_path / "run"
    work = _work(corpus, root)
    real = shards._split_shards

    def truncate_then_split(*args):  # between the tokenize stage and the split stage that reads its files
        victim = work / "tokens" / "00001.bin"
        victim.write_bytes(victim.read_bytes()[:-2])
        return real(*args)

    monkeypatch.setattr(shards, "_split_shards", truncate_then_split)
    with pytest.raises(ValueError, match=r"tokens/00001\.bin has \d+ bytes where its record 00001\.json says \d+"):
        _prepare(corpus, root, workers=2)
    # that shard's record is removed, the others stay: the next run tokenizes that shard alone
    assert not (work / "tokens" / "00001.json").exists() and (work / "tokens" / "00002.json").exists()
    monkeypatch.setattr(shards, "_split_shards", real)
    assert _contents(_prepare(corpus, root, workers=2)) == reference[0]


def test_a_declared_end_of_text_ends_the_documents_of_both_paths(corpus, tmp_path, monkeypatch):
    """A checkpoint's tokenizer declares its end of text (an imported model's), not held as [EOS]: the shards must
    end documents with it too, although their workers load the tokenizer from a file, which cannot declare it."""
    tok = train_tokenizer(TokenizerSpec(kind="bpe", vocab_size=300, special_tokens=["<|endoftext|>"]),
                          [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()])
    tok.save(str(tmp_path / "imported.json"))
    monkeypatch.setattr("lit_llm.data.tokenizer.load_tokenizer",  # what loading such a checkpoint gives
                        lambda path: declare_special_tokens(Tokenizer.from_file(str(path)), {"eos": "<|endoftext|>"}))
    spec = TokenizerSpec(kind="bpe", path=str(tmp_path / "imported.json"))
    one = _prepare(corpus, tmp_path / "w1", tokenizer=spec)
    two = _prepare(corpus, tmp_path / "w2", tokenizer=spec, workers=2)
    assert read_manifest(two)["eos_id"] == tok.token_to_id("<|endoftext|>") and _contents(two) == _contents(one)


def test_a_changed_byte_is_caught_by_the_checksum(tmp_path):
    data = tmp_path / "clean" / "00000.texts"
    data.parent.mkdir()
    shards._write_texts(data, ["to be", "or not"])
    record = tmp_path / "clean" / "00000.json"
    shards._write_record(record, [data], documents=2)
    assert shards._verify(record)["documents"] == 2
    shards._write_texts(data, ["to be", "or NOT"])  # same size
    with pytest.raises(ValueError, match=r"00000\.texts does not match the sha256 in its record 00000\.json"):
        shards._verify(record)
    assert not record.exists()


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 22])
def test_a_shard_file_gives_back_any_texts_and_a_cut_one_is_an_error(tmp_path, block):
    """The shards' own format (texts ended by 0xFF) read in blocks of any size, texts longer than a block
    included: empty texts, newlines, NUL, 0xFF's character, a lone surrogate (a JSON source can hold one)."""
    texts = ["", "to be\nor not", "\x00", "\u00ff\xff", "\ud800 alone", "", "long " * 40, "\n"]  # last: not empty
    path = shards._write_texts(tmp_path / "a.texts", texts)
    assert list(shards._read_texts(path, block)) == texts
    assert list(shards._read_texts(shards._write_texts(tmp_path / "none.texts", []), block)) == []
    path.write_bytes(path.read_bytes()[:-1])  # the last text lost its end (a cut after it is the record's to see)
    with pytest.raises(ValueError, match=r"a\.texts ends inside a text: it was cut short"):
        list(shards._read_texts(path, block))


def test_a_work_folder_an_older_lit_llm_left_is_refused_with_the_fix(tmp_path):
    raw = tmp_path / "raw" / "00000.jsonl"  # the JSON Lines shards of lit_llm before the .texts format
    raw.parent.mkdir()
    raw.write_text('"to be"\n', encoding="utf-8")
    shards._write_record(tmp_path / "spool.json", [raw], shards=1, documents=1, shard_docs=2)
    work = shards.ShardedPrepare([], Cleaner([]), TokenizerSpec(), False, work=tmp_path, workers=1, shard_docs=2)
    with pytest.raises(ValueError, match=r"left by an older lit_llm.*raw/00000\.jsonl.*delete .* and run prepare again"):
        work.shards()


def test_the_one_process_path_works_without_datatrove(small_corpus, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("datatrove")] + ["datatrove", "lit_llm.data.shards"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import datatrove` now fails
    sources = [Source(path=str(small_corpus))]
    with pytest.raises(ImportError, match=r"pip install 'lit_llm\[data\]', or set data.workers: 1"):
        prepare(sources, tmp_path / "c", progress=False, workers=2)
    assert (prepare(sources, tmp_path / "c", progress=False) / "manifest.json").is_file()


def test_every_cleaning_step_is_per_document_or_global():
    """A new step must be placed: a stateful step run per shard would miss duplicates across shards."""
    assert shards.PER_DOCUMENT_STEPS | shards.GLOBAL_STEPS == set(STEPS)
    assert not shards.PER_DOCUMENT_STEPS & shards.GLOBAL_STEPS


def test_worker_settings_are_checked_and_reach_prepare(small_corpus, monkeypatch):
    assert resolve_workers(0) == len(os.sched_getaffinity(0)) and resolve_workers(3) == 3
    with pytest.raises(ValueError, match=r"data.workers must be 1 .*got -1"):
        PretrainDataModule(corpus=str(small_corpus), workers=-1)
    with pytest.raises(ValueError, match=r"data.shard_docs .* must be a positive integer, got 0"):
        PretrainDataModule(corpus=str(small_corpus), shard_docs=0)
    seen = {}
    monkeypatch.setattr("lit_llm.data.pretrain.prepare", lambda *a, **kw: seen.update(kw))
    PretrainDataModule(corpus=str(small_corpus), workers=4, shard_docs=500).prepare_data()
    assert seen["workers"] == 4 and seen["shard_docs"] == 500


def test_a_parallel_prepare_waits_for_one_of_the_same_config_and_reuses_what_it_published(corpus, reference,
                                                                                         tmp_path, monkeypatch):
    """Two prepares of one config at once (the local rank 0 of two nodes on a shared disk): the parallel one waits on
    its work folder's lock while the other holds it, then finds the published folder and does no work of its own."""
    import threading

    from filelock import FileLock

    root = tmp_path / "cache"
    ran = []
    real_read = shards.ShardedPrepare.read
    monkeypatch.setattr(shards.ShardedPrepare, "read", lambda self, docs: ran.append(1) or real_read(self, docs))
    lock = FileLock(f"{_work(corpus, root)}.lock")
    lock.acquire()  # the other prepare, mid-run
    try:
        got = []
        waiting = threading.Thread(target=lambda: got.append(_prepare(corpus, root, workers=2)))
        waiting.start()
        waiting.join(timeout=2)
        assert waiting.is_alive() and not ran  # blocked on the lock, before any work
        out = _prepare(corpus, root)  # the other one publishes (one process: this test holds its lock)
    finally:
        lock.release()
    waiting.join(timeout=120)
    assert got == [out] and not ran  # it reused the published folder
    assert _contents(out) == reference[0]


def test_a_short_write_of_the_split_stage_is_finished_not_left_as_a_gap(tmp_path, monkeypatch):
    """One os.pwrite may write fewer bytes than asked (network file systems, a nearly full disk): the split stage
    writes the rest, where ignoring the count would leave zeros in the split file under a shard marked written."""
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real(fd, bytes(data[:3]), offset))
    fd = os.open(tmp_path / "train.bin", os.O_RDWR | os.O_CREAT)
    try:
        shards._pwrite_all(fd, b"0123456789", 5)
    finally:
        os.close(fd)
    assert (tmp_path / "train.bin").read_bytes() == b"\0" * 5 + b"0123456789"
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    with pytest.raises(OSError, match="could not write the split file"):
        shards._pwrite_all(-1, b"x", 0)
