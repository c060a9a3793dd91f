"""Monitoring: the server's Prometheus counters (``lit_llm.serve.metrics``), counted by several processes at once,
and ``lit_llm monitor`` on a feedback store this test writes. ``tests/test_serve.py`` checks ``GET /metrics`` of a
real server against a load it sends."""

import json
import multiprocessing as mp
from datetime import datetime, timedelta, timezone

import pytest

from lit_llm.monitor import feedback_report, label_drift
from lit_llm.serve.metrics import ModelInfo, ServerMetrics
from tests.helpers.cli import call, error_line
from tests.helpers.prometheus import samples, total, value

INFO = ModelInfo(model="lm", task="completion", system_fingerprint="fp_x", generation=0, workers=2, queue_depth=3,
                 queue_limit=256)


def _front_end(metrics: ServerMetrics, i: int) -> None:
    """What one front end counts: 40 answered completions, one 404, a streamed first token, usage, a rejection and
    a feedback record."""
    for k in range(40):
        metrics.request("/v1/completions", 200, 0.02 * (k % 3))
    metrics.request("/no/such/path", 404, 0.001)
    metrics.first_token("/v1/chat/completions", 0.003 + i)
    metrics.tokens("/v1/completions", 5, 7)
    metrics.rejected("queue_full")
    metrics.feedback("completion", -1, corrected_text=True, corrected_label=False)


def test_the_counters_of_forked_front_ends_add_up_in_every_scrape():
    """LitServe forks its front ends from serve's process: each counts into the same shared memory, so a scrape of
    any of them gives the totals of all."""
    metrics = ServerMetrics(["/v1/completions", "/v1/chat/completions", "/metrics"])
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_front_end, args=(metrics, i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    page = samples(metrics.exposition(INFO).decode())
    assert value(page, "lit_llm_http_requests_total", route="/v1/completions", status="200") == 120
    assert value(page, "lit_llm_http_requests_total", route="other", status="404") == 3  # any unknown path
    assert total(page, "lit_llm_http_requests_total") == 123
    assert value(page, "lit_llm_http_request_duration_seconds_count", route="/v1/completions") == 120
    # 0.0, 0.02, 0.04 s in turn: 14 of each 40 at 0, 13 at 0.02, 13 at 0.04
    assert value(page, "lit_llm_http_request_duration_seconds_bucket", route="/v1/completions", le="0.005") == 42
    assert value(page, "lit_llm_http_request_duration_seconds_bucket", route="/v1/completions", le="0.025") == 81
    assert value(page, "lit_llm_http_request_duration_seconds_bucket", route="/v1/completions", le="+Inf") == 120
    assert value(page, "lit_llm_http_request_duration_seconds_sum", route="/v1/completions") == pytest.approx(
        3 * 13 * (0.02 + 0.04))
    assert value(page, "lit_llm_time_to_first_token_seconds_count", route="/v1/chat/completions") == 3
    assert value(page, "lit_llm_time_to_first_token_seconds_bucket", route="/v1/chat/completions", le="0.005") == 1
    assert value(page, "lit_llm_generated_tokens_total", route="/v1/completions") == 21
    assert value(page, "lit_llm_prompt_tokens_total", route="/v1/completions") == 15
    assert value(page, "lit_llm_rejected_requests_total", reason="queue_full") == 3
    assert value(page, "lit_llm_rejected_requests_total", reason="feedback_rate_limit", default=-1) == 0
    assert value(page, "lit_llm_feedback_total", kind="completion", rating="bad", correction="text") == 3
    assert value(page, "lit_llm_feedback_total", kind="completion", rating="good", correction="none", default=-1) == 0
    assert value(page, "lit_llm_queue_depth") == 3 and value(page, "lit_llm_queue_limit") == 256
    assert value(page, "lit_llm_model_info", model="lm", task="completion", system_fingerprint="fp_x",
                 generation="0", workers="2") == 1


def test_a_full_queue_and_a_feedback_flood_are_counted_as_rejections(tmp_path):
    """The spec's own counting, without a server: ``admit`` beyond ``--max_queue``, feedback beyond the rate limit,
    and a stored record, as ``GET /metrics`` reports them."""
    import asyncio
    from types import SimpleNamespace

    from lit_llm.feedback import FeedbackStore
    from lit_llm.serve import APIError, CompletionSpec, FeedbackRequest, read_served
    from tests.helpers.checkpoints import write_lm_checkpoint

    served = read_served(str(write_lm_checkpoint(tmp_path / "lm.ckpt")), None, None, 8, 4, max_queue=1,
                         max_feedback_per_minute=1)
    spec = CompletionSpec(served, FeedbackStore(tmp_path / "feedback.jsonl"))
    spec.admit()
    with pytest.raises(APIError) as busy:
        spec.admit()
    assert busy.value.status == 429
    client = SimpleNamespace(client=SimpleNamespace(host="10.0.0.1"))
    spec.feedback(FeedbackRequest(request="Q", response="A", rating=1), client)
    with pytest.raises(APIError) as flood:
        spec.feedback(FeedbackRequest(request="Q", response="A", rating=1), client)
    assert flood.value.status == 429
    response = asyncio.run(spec.prometheus())
    assert response.media_type.startswith("text/plain")
    page = samples(response.body.decode())
    assert value(page, "lit_llm_rejected_requests_total", reason="queue_full") == 1
    assert value(page, "lit_llm_rejected_requests_total", reason="feedback_rate_limit") == 1
    assert value(page, "lit_llm_feedback_total", kind="completion", rating="good", correction="none") == 1
    assert value(page, "lit_llm_queue_depth") == 1 and value(page, "lit_llm_queue_limit") == 1
    spec.leave()
    assert value(samples(asyncio.run(spec.prometheus()).body.decode()), "lit_llm_queue_depth") == 0


# ---------------------------------------------------------------------------------------------- lit_llm monitor
UNTIL = datetime(2026, 5, 2, tzinfo=timezone.utc)


def _record(hours_before: float, **fields) -> dict:
    """A record as the server stores it, ``hours_before`` UNTIL."""
    time = (UNTIL - timedelta(hours=hours_before)).isoformat()
    return {"id": f"{hours_before}-{len(fields)}", "time": time, "kind": "classification", "request": "some text",
            "model": "clf", **fields}


def _store(tmp_path):
    """A store with known numbers. The last 24 h: 12 records, 6 corrected (50%), 6 ratings of which 2 bad (33%); the
    classifier's served labels (sent back as ``response``, once as an id) are 8 positive and 2 negative. The 24 h
    before: 5 records, 1 corrected (20%), 4 ratings, 1 bad (25%). Two older records and one after UNTIL."""
    window = ([_record(1 + k, response="positive", rating=1) for k in range(4)]
              + [_record(5 + k, response="negative", rating=-1) for k in range(2)]
              + [_record(8 + k, response="positive", corrected_label="negative") for k in range(3)]
              + [_record(12, response="1", corrected_label=0)]
              + [_record(13 + k, kind="completion", response="bad", corrected_text="a  better\nanswer")
                 for k in range(2)])
    previous = ([_record(25 + k, response="positive", rating=1) for k in range(3)]
                + [_record(30, response="negative", rating=-1), _record(31, response="positive", corrected_label=0)])
    others = [_record(240, rating=1), _record(241, rating=1), _record(-2, rating=-1)]
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in window + previous + others))
    train = tmp_path / "train.txt"  # the training mix: half and half
    train.write_text("".join(f"{label} review {i}\n" for i, label in enumerate(["negative", "positive"] * 5)))
    return path, train


def test_the_report_counts_what_the_store_holds(tmp_path):
    store, train = _store(tmp_path)
    report = feedback_report([str(store)], 24, UNTIL.isoformat(), str(train), ["negative", "positive"])
    w, p = report.window, report.previous
    assert (report.records, w.records, w.corrected, w.rated, w.bad) == (20, 12, 6, 6, 2)
    assert (p.records, p.corrected, p.rated, p.bad) == (5, 1, 4, 1)
    assert report.by_kind == {"classification": 10, "completion": 2}
    assert report.label_counts == {"served": {"positive": 8, "negative": 2}, "corrected": {"negative": 4},
                                   "training": {"negative": 5, "positive": 5}}
    assert report.label_drift == pytest.approx(0.3)  # |0.8 - 0.5| / 2 + |0.2 - 0.5| / 2
    assert report.top_corrections == [("positive -> negative", 4), ("a better answer", 2)]
    assert sum(period.records for period in report.periods) == 19  # every record up to UNTIL, in 6 h periods
    assert report.period_hours == 6 and report.notes == []
    assert label_drift({"a": 1}, {"b": 3}) == 1 and label_drift({}, {"a": 1}) is None


def test_monitor_prints_one_line_and_exits_1_when_a_threshold_is_crossed(tmp_path, capsys):
    store, train = _store(tmp_path)
    out = tmp_path / "report"
    common = ["monitor", str(store), "--until", UNTIL.isoformat(), "--train_labels", str(train), "--label_names",
              "[negative, positive]", "--out", str(out)]
    code, stdout, _ = call([*common, "--max_correction_rate", "0.3", "--max_label_drift", "0.25"], capsys)
    assert code == 1
    assert stdout.splitlines() == [
        "feedback: 12 records in the last 24h (20 in all), 50% corrected (up from 20%), 33% of 6 ratings bad (up from"
        " 25%), label drift 0.30 vs training; ALERT: correction rate 50% > 30%; label drift 0.30 > 0.25;"
        f" report: {out}"]
    assert {p.name for p in out.iterdir()} == {"summary.json", "feedback_over_time.png", "label_mix.png",
                                               "top_corrections.png"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["window"]["correction_rate"] == 0.5 and summary["label_drift"] == pytest.approx(0.3)
    assert summary["alerts"] == ["correction rate 50% > 30%", "label drift 0.30 > 0.25"]

    code, stdout, _ = call([*common, "--max_correction_rate", "0.6", "--max_bad_rate", "0.5", "--min_records", "10",
                            "--figures", "false"], capsys)
    assert code == 0 and stdout.strip().endswith(f"; OK; report: {out}")
    code, stdout, _ = call([*common, "--min_records", "13", "--figures", "false"], capsys)
    assert code == 1 and "ALERT: 12 records < 13" in stdout

    code, _, err = call(["monitor", str(store), "--max_label_drift", "0.2"], capsys)
    assert "--train_labels" in error_line(code, err)
    code, _, err = call(["monitor", str(tmp_path / "missing.jsonl")], capsys)
    assert "does not exist" in error_line(code, err)
