"""The feedback store: atomic appends from many processes, validation, and use as training data."""

import json
import multiprocessing as mp

import pytest

from lit_llm.data.labelled import ClassificationDataModule
from lit_llm.feedback import FeedbackStore, feedback_texts, labelled_examples


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
