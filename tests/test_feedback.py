"""The feedback store: atomic appends from many processes, validation, and use as training data."""

import errno
import json
import multiprocessing as mp
import os

import pytest

from lit_llm.data.labelled import ClassificationDataModule
from lit_llm.feedback import MAX_RECORD_BYTES, FeedbackStore, feedback_texts, labelled_examples


def _writer(path, worker, n):
    store = FeedbackStore(path)
    for i in range(n):
        store.append({"kind": "classification", "request": f"worker {worker} text {i} " + "x" * 3000,
                      "response": "positive", "corrected_label": i % 2})


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "feedback.jsonl"
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 160
    records = [json.loads(line) for line in lines]  # every line is one whole record (each ~3 kB)
    assert len({r["id"] for r in records}) == 160
    assert sorted(r["request"].split(" x")[0] for r in records) == sorted(
        f"worker {w} text {i}" for w in range(4) for i in range(40))


def test_records_validation_and_an_interrupted_append(tmp_path):
    store = FeedbackStore(tmp_path / "f.jsonl")
    stored = store.append({"kind": "completion", "request": "ROMEO:", "response": " hi", "rating": 1})
    assert stored["id"] and stored["time"] and list(store.records()) == [stored]
    for bad, match in [({"kind": "completion", "request": "a", "rating": 1, "extra": 1}, "Unknown feedback field"),
                       ({"kind": "other", "request": "a", "rating": 1}, "kind must be one of"),
                       ({"kind": "completion", "request": " ", "rating": 1}, "request text"),
                       ({"kind": "completion", "request": "a", "rating": 3}, "rating must be 1 .good. or -1"),
                       ({"kind": "completion", "request": "a"}, "needs a rating, a corrected_label or a corrected_text")]:
        with pytest.raises(ValueError, match=match):
            store.append(bad)
    with open(store.path, "a") as f:  # a crash in the middle of an append leaves an unterminated line
        f.write('{"id": "half')
    with pytest.warns(UserWarning, match="unterminated last line"):
        assert list(store.records()) == [stored]
    with pytest.raises(FileNotFoundError, match="nothing has been sent"):
        list(FeedbackStore(tmp_path / "none.jsonl").records())


def test_feedback_as_training_data(tmp_path):
    store = FeedbackStore(tmp_path / "f.jsonl")
    for i in range(20):
        store.append({"kind": "classification", "request": f"review {i}", "response": "negative",
                      "corrected_label": "positive" if i % 2 else "negative"})
    store.append({"kind": "classification", "request": "fine as it was", "response": "positive", "rating": 1})
    store.append({"kind": "completion", "request": "Q: ", "response": "bad", "corrected_text": "good"})
    store.append({"kind": "completion", "request": "Q2: ", "response": "kept", "rating": 1})
    store.append({"kind": "completion", "request": "Q3: ", "response": "dropped", "rating": -1})
    texts, labels = labelled_examples(store.path)
    assert len(texts) == 20 and labels[:2] == ["negative", "positive"]  # only corrected labels train
    assert feedback_texts(store.path) == ["Q: good", "Q2: kept"]
    dm = ClassificationDataModule(train=str(store.path), format="feedback", label_names=["negative", "positive"],
                                  val_fraction=0.25)
    ex = dm.load_examples()
    assert len(ex["train"][0]) == 15 and len(ex["val"][0]) == 5
    pairs = list(zip(*ex["train"])) + list(zip(*ex["val"]))
    assert sorted(t for t, _ in pairs) == sorted(f"review {i}" for i in range(20))
    assert all(y == int(t.split()[1]) % 2 for t, y in pairs)  # names mapped to ids: odd reviews positive


# ------------------------------------------------------------------ faults: torn lines, short writes, full disk
def _rec(i):
    return {"kind": "completion", "request": f"Q{i} é", "response": "a", "rating": 1}


def test_torn_lines_in_the_middle_and_at_the_tail_are_skipped_and_counted(tmp_path):
    store = FeedbackStore(tmp_path / "f.jsonl")
    kept = [store.append(_rec(0))]
    with open(store.path, "ab") as f:  # a crash mid-append (old writer: the next append joined onto it) ...
        f.write(b'{"id": "torn", "request": "ca' + "é".encode()[:1] + b"\n")  # ... ends inside a UTF-8 char
    kept.append(store.append(_rec(1)))
    with open(store.path, "ab") as f:  # a crash mid-append at the tail: no newline
        f.write(b'{"id": "torn-tail", "req')
    kept.append(store.append(_rec(2)))  # starts on its own line: the torn tail is closed first
    kept.append(store.append(_rec(3)))
    with pytest.warns(UserWarning) as caught:
        assert list(store.records()) == kept  # every whole record back, in order
    assert store.skipped == [2, 4]
    assert [str(w.message) for w in caught] == [
        f"{store.path}:{n}: skipped a line that is not a whole record (torn by a crash during an append);"
        " the other records are read" for n in (2, 4)]
    with pytest.warns(UserWarning, match="not a whole record"):  # training data reads past them (format: feedback)
        assert feedback_texts(store.path) == [f"Q{i} éa" for i in range(4)]


def test_a_short_write_is_finished(tmp_path, monkeypatch):
    store = FeedbackStore(tmp_path / "f.jsonl")
    first = store.append(_rec(0))
    real_write, calls = os.write, []

    def half(fd, data):  # the kernel may take only part of a write
        calls.append(len(data))
        return real_write(fd, bytes(data[:max(1, len(data) // 2)]))

    monkeypatch.setattr(os, "write", half)
    second = store.append(_rec(1))
    monkeypatch.undo()
    assert len(calls) > 1  # the write really was cut short, and finished
    assert list(store.records()) == [first, second] and store.skipped == []


def test_a_failed_write_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    store = FeedbackStore(tmp_path / "f.jsonl")
    first = store.append(_rec(0))
    before = store.path.read_bytes()
    real_write = os.write

    def full_disk(fd, data):  # half goes in, then the disk is full
        if len(data) > 1 and fd not in (1, 2):
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="the record was not stored and the store is unchanged: free disk space"):
        store.append(_rec(1))
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    third = store.append(_rec(2))
    assert list(store.records()) == [first, third] and store.skipped == []


def test_over_long_fields_and_records_are_refused_naming_the_limit(tmp_path):
    store = FeedbackStore(tmp_path / "f.jsonl")
    for field in ("request", "response", "corrected_text"):
        with pytest.raises(ValueError, match=f"feedback field '{field}' has 65,537 characters; the limit is 65,536"):
            store.append({**_rec(0), field: "x" * 65_537})
    with pytest.raises(ValueError, match="feedback field 'corrected_label' has 257 characters; the limit is 256"):
        store.append({"kind": "classification", "request": "a", "corrected_label": "x" * 257})
    big = "\u4e00" * 60_000  # 3 bytes each in UTF-8: each field is under its limit, the record is not
    with pytest.raises(ValueError, match=f"feedback record is .* bytes as JSON; the limit is {MAX_RECORD_BYTES:,}"):
        store.append({**_rec(0), "request": big, "response": big})
    assert not store.path.exists()  # nothing was written
    store.append({**_rec(0), "request": "x" * 65_536})  # at the limit: stored


def test_a_store_at_its_size_cap_refuses_the_next_record(tmp_path):
    """``max_bytes`` (serve --max_feedback_store_bytes): a record that would take the store past it is refused
    with ``FeedbackStoreFull`` and nothing is written; a smaller one that still fits is stored."""
    from lit_llm.feedback import FeedbackStoreFull

    store = FeedbackStore(tmp_path / "f.jsonl", max_bytes=600)
    first = store.append(_rec(0))
    size = store.path.stat().st_size
    with pytest.raises(FeedbackStoreFull, match=f"{size:,} of its 600 bytes"):
        store.append({**_rec(1), "request": "x" * 500})
    assert store.path.stat().st_size == size
    second = store.append(_rec(2))
    assert list(store.records()) == [first, second] and store.path.stat().st_size <= 600
    while True:  # fill it: the cap holds exactly
        try:
            store.append(_rec(3))
        except FeedbackStoreFull:
            break
    assert 600 - size < store.path.stat().st_size <= 600
