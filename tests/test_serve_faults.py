"""Faults injected into the server (``lit_llm serve``): a client that goes away mid-stream, a flood beyond
``--max_queue``, a huge prompt, a flood of feedback, and requests generated from the server's own OpenAPI schema
(fuzzing)."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lit_llm.data.tokenizer import encode
from lit_llm.feedback import FeedbackStore
from lit_llm.serve import ClassifySpec, CompletionJob, CompletionSpec, GenerationAPI, decode_static, read_served
from lit_llm.serve.flow import Admission, CancelBoard, RateLimit
from tests.helpers.checkpoints import write_lm_checkpoint
from tests.helpers.paths import cli_env
from tests.helpers.server_process import ServerProcess


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def _wait_for(path: Path, text: str, timeout: float = 60, count: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        if log.count(text) >= count:
            return log
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-3000:]
    raise AssertionError(f"{text!r} not in the server log within {timeout} s:\n{tail}")


# ---------------------------------------------------------------------------------------------- no server
def test_cancel_board_and_admission_are_shared_counters():
    board = CancelBoard(size=4)
    assert not board.cancelled()
    for i in range(1, 4):
        board.cancel(i)
    assert board.cancelled() == {1, 2, 3}
    for i in range(4, 10):  # the ring keeps the last 4
        board.cancel(i)
    assert {6, 7, 8, 9} <= board.cancelled()
    admission = Admission(2)
    assert admission.try_enter() and admission.try_enter() and not admission.try_enter()
    admission.leave()
    assert admission.count == 1 and admission.try_enter()


def test_the_feedback_rate_limit_is_a_token_bucket_per_client():
    limit = RateLimit(per_minute=3, slots=64)
    assert [limit.wait("10.0.0.1", now=100.0) for _ in range(3)] == [0, 0, 0]  # a minute's worth at once
    assert limit.wait("10.0.0.1", now=100.0) == pytest.approx(20)  # then one every 20 s
    assert limit.wait("10.0.0.2", now=100.0) == 0  # another client has its own bucket
    assert limit.wait("10.0.0.1", now=115.0) == pytest.approx(5)  # refused requests do not use it up
    assert limit.wait("10.0.0.1", now=121.0) == 0 and limit.wait("10.0.0.1", now=121.0) > 0
    assert limit.wait("10.0.0.1", now=1e6) == 0  # refilled, up to a minute's worth
    off = RateLimit(per_minute=0)
    assert all(off.wait("10.0.0.1", now=100.0) == 0 for _ in range(1000))


def test_the_worker_stops_decoding_a_cancelled_job(tmp_path):
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    served = read_served(str(ckpt), None, None, 64, 8)
    api = GenerationAPI(str(ckpt), CompletionSpec(served, FeedbackStore(tmp_path / "fb.jsonl")))
    api.setup("cpu")
    tok, board = api.tokenizer, api.spec.board

    def job(i, max_tokens=40):
        return CompletionJob(encode(tok, "the film"), max_tokens, [], temperature=0.0, stream=True, id=i)

    # in a batch: job 1 is cancelled after 3 steps, the others go on to their end
    steps = []
    for step in decode_static(api.model, tok, [job(1), job(2, 10)], cancelled=board.cancelled):
        steps.append(step)
        if len(steps) == 3:
            board.cancel(1)
    assert len([s for s in steps if s[0]]) <= 3  # nothing more for job 1 once cancelled
    assert [s[1] for s in steps if s[1]][-1].last  # job 2 ended normally
    assert len(steps) == 10  # and the batch ended with it, not at job 1's 40 tokens
    # alone (the worker's path past block_size too): a cancelled job stops, and one cancelled before it starts
    # never runs
    out = []
    alone = CompletionJob(encode(tok, "it"), 500, [], temperature=0, stream=True, id=3)
    for (piece,) in decode_static(api.model, tok, [alone], cancelled=board.cancelled):
        out.append(piece)
        if len(out) == 2:
            board.cancel(3)
    assert len(out) == 2 and not out[-1].last
    assert list(api.predict(job(1))) == []
    assert list(api.predict([job(1), job(3)])) == []


def test_the_continuous_worker_drops_a_cancelled_job_and_survives_a_failed_step(tmp_path):
    """A cancelled job leaves the continuous batch at the next step with nothing more sent (its row is freed);
    a step that raises gives every running request the error, and the next request decodes normally."""
    from litserve.utils import LitAPIStatus

    from lit_llm.serve import ContinuousGenerationAPI

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    served = read_served(str(ckpt), None, None, 64, 8)
    api = ContinuousGenerationAPI(str(ckpt), CompletionSpec(served, FeedbackStore(tmp_path / "fb.jsonl")), max_batch_size=4)
    api.setup("cpu")
    tok, board = api.tokenizer, api.spec.board

    def job(i, max_tokens=40):
        return CompletionJob(encode(tok, "the film"), max_tokens, [], temperature=0.0, stream=True, id=i)

    api.add_request("one", job(11))
    api.add_request("two", job(12, 10))
    outputs = []
    for step in range(12):
        if step == 3:
            board.cancel(11)
        outputs.append(api.step(None))
    one = [o for step in outputs for o in step if o.uid == "one"]
    assert len([o for o in one if o.status == LitAPIStatus.OK]) == 3 and one[-1].status == LitAPIStatus.FINISH_STREAMING
    two = [o for step in outputs for o in step if o.uid == "two"]
    assert two[-1].output.last and two[-1].status == LitAPIStatus.FINISH_STREAMING  # last output + end, one message
    assert not api.has_active_requests() and not api.rows.keys

    api.add_request("three", job(13))
    api.step(None)
    api.rows.step = lambda tokens: (_ for _ in ()).throw(RuntimeError("injected"))
    api.add_request("four", job(14))
    failed = api.step(None)
    assert {o.uid for o in failed} == {"three", "four"} and all(o.status == LitAPIStatus.ERROR for o in failed)
    assert "injected" in str(failed[0].output) and not api.has_active_requests()
    api.add_request("five", job(15, 4))  # the worker goes on, with a fresh batch
    after = [o for _ in range(4) for o in api.step(None)]
    assert after[-1].status == LitAPIStatus.FINISH_STREAMING and after[-1].output.usage.completion_tokens == 4


@pytest.mark.parametrize("temperature, top_p", [(5e-324, 1.0), (1.0, 5e-324), (1e-40, 1e-45)])
def test_subnormal_temperature_and_top_p_sample_greedily(temperature, top_p):
    """Found by the fuzzing below: 5e-324 rounds to 0 in float32 and gave NaN probabilities (a 500)."""
    import torch
    from tokenizers import Tokenizer, models

    from lit_llm.generate import sample_rows
    from lit_llm.serve.worker import Completion

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    run = Completion(CompletionJob([0], 4, [], temperature, top_p, seed=1), tok, "cpu")
    assert [run.sample(logits[r : r + 1]).item() for r in range(4)] == logits.argmax(-1).tolist()  # static
    rows = sample_rows(logits, torch.tensor([run.temperature] * 4), torch.tensor([run.top_p] * 4), [run.generator] * 4)
    assert rows.tolist() == logits.argmax(-1).tolist()  # continuous


def test_a_huge_text_is_never_tokenized_whole(tmp_path):
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    served = read_served(str(ckpt), None, 48, 8, 8)
    assert 48 <= served.max_prompt_chars < 48 * 100
    spec = ClassifySpec(served, FeedbackStore(tmp_path / "fb.jsonl"))
    huge = "the film " * 600_000  # 5.4 MB
    start = time.monotonic()
    rows, truncated = spec._frame(["a good film", huge])
    assert time.monotonic() - start < 5  # generous: the whole text would take far longer
    assert truncated == [False, True] and len(rows[1]) == 48
    assert rows[1] == spec._frame(["the film " * 60])[0][0]  # the same cut as a text just over the limit


# ---------------------------------------------------------------------------------------------- a server
@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return write_lm_checkpoint(tmp / "lm.ckpt"), tmp


def _stream_first_chunk(client: httpx.Client, url: str, body: dict):
    """Open a streamed completion and read its first event; the caller closes it (the client going away). The
    line iterator is kept with it: dropping it would close the connection."""
    cm = client.stream("POST", url, json={**body, "stream": True})
    r = cm.__enter__()
    assert r.status_code == 200, r.read()
    lines = r.iter_lines()
    for line in lines:
        if line.startswith("data: "):
            assert json.loads(line[6:])["choices"]
            break
    return cm, lines


@pytest.mark.slow
def test_a_client_that_disconnects_frees_the_worker(lm_ckpt):
    ckpt, tmp = lm_ckpt
    log = tmp / "disconnect.log"
    args = ["--max_tokens", "100000", "--feedback_store", str(tmp / "fb.jsonl")]
    with ServerProcess(ckpt, args, env=cli_env(tmp), log=log) as server:
        url = f"{server.base_url}/v1/completions"
        with httpx.Client(timeout=60) as client:
            stream, _ = _stream_first_chunk(client, url, {"prompt": "the film", "max_tokens": 100000, "temperature": 0})
            time.sleep(1)  # still streaming: nothing is stopped while the client is there
            assert "client gone" not in log.read_text(errors="replace")
            stream.__exit__(None, None, None)  # close the connection after the first chunk
        # the worker stops that job (decoding it to the end would take minutes) and serves the next at once
        text = _wait_for(log, "client gone: stopped job")
        line = next(ln for ln in text.splitlines() if "client gone" in ln)
        done = int(line.split(" after ")[1].split(" of ")[0])
        assert done < 10_000 and "of 100000 tokens" in line
        r = httpx.post(url, json={"prompt": "the film", "max_tokens": 5, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        # a client that does not stream and gives up waiting: the front end sees it gone and stops its job too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"prompt": "the film", "max_tokens": 100000, "temperature": 0}, timeout=2)
        text = _wait_for(log, "client gone", count=2)
        line = [ln for ln in text.splitlines() if "client gone" in ln][1]
        assert int(line.split(" after ")[1].split(" of ")[0]) < 50_000
        r = httpx.post(url, json={"prompt": "the film", "max_tokens": 5, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


@pytest.fixture(scope="module")
def limited_server(lm_ckpt):
    """One server with small limits, for the floods: 2 requests queued or running, 48-token prompts, 16 MB
    bodies, 3 feedback records a minute per client and a feedback store of at most 2,000 bytes."""
    ckpt, tmp = lm_ckpt
    store = tmp / "limited-fb.jsonl"
    args = ["--max_tokens", "100000", "--max_queue", "2", "--max_prompt_tokens", "48",
            "--max_payload_bytes", str(16 << 20), "--max_feedback_per_minute", "3",
            "--max_feedback_store_bytes", "2000", "--feedback_store", str(store)]
    with ServerProcess(ckpt, args, env=cli_env(tmp), log=tmp / "flood.log") as server:
        yield server, store


@pytest.mark.slow
def test_a_flood_beyond_max_queue_gets_fast_429s_and_a_huge_prompt_a_fast_400(limited_server):
    server, _ = limited_server
    url = f"{server.base_url}/v1/completions"
    # a 5 MB prompt: refused by its length in characters, without tokenizing it
    start = time.monotonic()
    r = httpx.post(url, json={"prompt": "the film " * 600_000, "max_tokens": 4}, timeout=60)
    assert r.status_code == 400 and time.monotonic() - start < 20
    err = _error(r)
    assert err["code"] == "context_length_exceeded" and "48 tokens" in err["message"]
    # two long streams run (continuous batching decodes them side by side): the queue (2) is full. A flood
    # of 24 concurrent requests then gets 429s at once
    with httpx.Client(timeout=60) as client, httpx.Client(timeout=60) as other, \
            ThreadPoolExecutor(max_workers=25) as pool:
        long = {"prompt": "the film", "max_tokens": 100000, "temperature": 0}
        stream, lines = _stream_first_chunk(client, url, long)
        second, more_lines = _stream_first_chunk(other, url, long)
        short = {"prompt": "the film", "max_tokens": 5, "temperature": 0}

        def one(i):
            t = time.monotonic()
            kind = "/v1/chat/completions" if i % 2 else "/v1/completions"
            body = {"messages": [{"role": "user", "content": "hi"}]} if i % 2 else {"prompt": "x"}
            resp = httpx.post(f"{server.base_url}{kind}", json={**body, "max_tokens": 4}, timeout=60)
            return resp, time.monotonic() - t

        results = list(pool.map(one, range(24)))
        for resp, seconds in results:
            assert resp.status_code == 429, resp.text
            assert resp.headers["retry-after"] == "1" and seconds < 20
            err = _error(resp)
            assert err["code"] == "server_busy" and "--max_queue" in err["message"]
        assert httpx.get(f"{server.base_url}/health").status_code == 200  # /health is not queued
        stream.__exit__(None, None, None)  # one stream's client goes: its place is free for the next
        deadline = time.monotonic() + 30
        while (r := httpx.post(url, json=short, timeout=120)).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.2)  # the front end frees the place once it sees the client has gone
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        second.__exit__(None, None, None)
    # both have left the queue: requests are served again
    r = httpx.post(url, json={"prompt": "the film", "max_tokens": 5, "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


@pytest.mark.slow
def test_feedback_is_rate_limited_per_client_and_the_store_is_capped(limited_server):
    """--max_feedback_per_minute 3: a client's fourth record within the minute gets 429 with Retry-After, and
    another client (by IP: here 127.0.0.2) is not held up by it; --max_feedback_store_bytes 2000: a record that
    would take the store past it gets 507, and the store stays under the cap."""
    server, store = limited_server
    url = f"{server.base_url}/v1/feedback"
    small = {"request": "Q ", "response": "A", "rating": 1}

    def client(ip: str) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30)

    with client("127.0.0.1") as one, client("127.0.0.2") as two:
        for _ in range(3):
            r = one.post(url, json=small)
            assert r.status_code == 200, r.text
        r = one.post(url, json=small)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 20, (r.status_code, r.headers)
        err = _error(r)
        assert err["code"] == "rate_limit_exceeded" and "--max_feedback_per_minute" in err["message"]
        r = two.post(url, json={**small, "request": "x" * 1600})  # 3 records (~500 bytes) + this one > 2,000
        assert r.status_code == 507, r.text
        err = _error(r)
        assert err["code"] == "feedback_store_full" and "--max_feedback_store_bytes" in err["message"]
        r = two.post(url, json=small)  # a record that fits is still stored
        assert r.status_code == 200, r.text
    records = list(FeedbackStore(store).records())
    assert len(records) == 4 and store.stat().st_size <= 2000


@pytest.fixture(scope="module")
def clf_ckpt(lm_ckpt):
    """A classifier checkpoint (labels neg/pos, an untrained head): SequenceClassifier on the language model
    above, saved in the format ``finetune`` writes."""
    from lit_llm import checkpoint as ckpt_format
    from lit_llm.tasks import SequenceClassifier

    lm, tmp = lm_ckpt
    clf = SequenceClassifier(init_from=str(lm), label_names=["neg", "pos"])
    path = ckpt_format.save(tmp / "clf.ckpt", clf.state_dict(), clf.checkpoint_info())
    return path, tmp


def _short_request_works(base_url: str, task: str) -> None:
    """A normal request after the fuzzing: a 5-token completion, or a classification of two texts."""
    if task == "language_model":
        short = {"prompt": "the film", "max_tokens": 5, "temperature": 0}
        r = httpx.post(f"{base_url}/v1/completions", json=short, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    else:
        r = httpx.post(f"{base_url}/v1/classify", json={"input": ["a fine film", "dull"]}, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1] and all(d["label"] in ("neg", "pos") for d in data)
        assert all(set(d["probs"]) == {"neg", "pos"} and abs(sum(d["probs"].values()) - 1) < 1e-4 for d in data)


def _with_lone_surrogates(body):
    """``body`` with a lone surrogate in each of its strings (JSON carries it as the escape \\ud800)."""
    if isinstance(body, str):
        return body[: len(body) // 2] + "\ud800" + body[len(body) // 2 :]
    if isinstance(body, list):
        return [_with_lone_surrogates(v) for v in body]
    if isinstance(body, dict):
        return {k: _with_lone_surrogates(v) for k, v in body.items()}
    return body


# the operations each server's /openapi.json must have, and the fewest requests the fuzzing must send it
_FUZZED = {
    "language_model": ({"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/feedback", "/v1/admin/reload",
                        "/health"}, 1000),
    "classification": ({"/v1/classify", "/v1/models", "/v1/feedback", "/v1/admin/reload", "/health"}, 500),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(_FUZZED))
def test_fuzzing_every_endpoint_from_its_openapi_schema_finds_no_5xx(task, request):
    """Requests generated by schemathesis from the server's /openapi.json, valid and invalid ones, at least
    1,000 for a language model and 500 for a classifier, some with lone surrogates in their texts: none gets a
    5xx or hangs, and the server serves normally afterwards."""
    schemathesis = pytest.importorskip("schemathesis")
    import requests  # schemathesis's HTTP client
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable

    ckpt, tmp = request.getfixturevalue("lm_ckpt" if task == "language_model" else "clf_ckpt")
    required, least = _FUZZED[task]
    # no feedback rate limit: the fuzzing sends hundreds of records a minute, and each should reach the checks; and
    # reloads allowed without a key, so that the fuzzed paths reach the checkpoint checks
    args = ["--max_tokens", "8", "--max_feedback_per_minute", "0", "--feedback_store", str(tmp / f"fuzz-{task}.jsonl"),
            "--allow_reload", "true"]
    with ServerProcess(ckpt, args, env=cli_env(tmp), log=tmp / f"fuzz-{task}.log") as server:
        schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        paths = {op.path for op in operations}
        assert required <= paths, paths
        sent, failures, lone_sent = [], [], []

        def fuzz(op, mode: str) -> None:
            @settings(max_examples=250, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=schemathesis.GenerationMode(mode)), lone=st.integers(0, 7))
            def check(case, lone):
                kwargs = case.as_transport_kwargs(base_url=server.base_url)
                # some bodies (about 90 of each server's) get a lone surrogate in every text: schemathesis
                # generates UTF-8 text only, and refuses to send a body that is not
                if lone == 3 and isinstance(kwargs.get("json"), dict):
                    kwargs["json"] = _with_lone_surrogates(kwargs["json"])
                    lone_sent.append(1)
                    response = requests.request(**kwargs, timeout=30)
                else:
                    response = case.call(base_url=server.base_url, timeout=30)
                sent.append((op.method, op.path, response.status_code))
                if response.status_code >= 500:
                    failures.append((op.method, op.path, response.status_code, kwargs.get("json", case.body),
                                     response.text[:300]))

            try:
                check()
            except Unsatisfiable:  # a GET without parameters has no invalid form
                assert mode == "negative" and op.method.upper() == "GET", op.path

        for op in operations:
            for mode in ("positive", "negative"):
                fuzz(op, mode)
        counts = {}
        for method, path, _ in sent:
            counts[f"{method.upper()} {path}"] = counts.get(f"{method.upper()} {path}", 0) + 1
        statuses = sorted({code for _, _, code in sent})
        print(f"fuzzing {task}: {len(sent)} requests ({counts}, {len(lone_sent)} with lone surrogates), statuses"
              f" {statuses}, {len(failures)} 5xx")
        assert len(sent) >= least and len(lone_sent) >= least // 20 and not failures, failures[:5]
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        _short_request_works(server.base_url, task)
