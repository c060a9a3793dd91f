"""The HTTP server (``lit_llm serve``) tested as clients see it: a real server in a subprocess on a loopback port,
driven by the ``openai`` client and raw HTTP; and the feedback loop serve -> feedback -> fine-tune -> serve."""

import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Optional

import httpx
import openai
import pytest
import torch
import yaml

from lit_llm.completion import CompletionText, _held_back
from lit_llm.data.sources import Source, iter_documents
from lit_llm.data.tokenizer import TokenizerSpec, encode, train_tokenizer
from lit_llm.feedback import FeedbackStore
from lit_llm.generate import generate_tokens, load_checkpoint
from lit_llm.serve import CompletionJob, CompletionSpec, GenerationAPI, Piece, decode_static, read_served, serve
from lit_llm.tasks import SequenceClassifier
from tests.helpers import prometheus
from tests.helpers.checkpoints import sst2_texts, write_lm_checkpoint
from tests.helpers.cli import run_cli
from tests.helpers.paths import SST2_TRAIN, cli_env
from tests.helpers.server_process import ServerProcess, _group_alive, free_port

KEY = "test-key-123"


# ---------------------------------------------------------------------------------------------- no server
def test_stop_strings_are_held_back_until_they_cannot_match():
    assert _held_back("hello wor", ["world"]) == len("hello ")  # "wor" may still become "world"
    assert _held_back("hello", ["xyz"]) == 5
    assert _held_back("ab\ufffd", []) == 2  # half a UTF-8 character waits for its other bytes


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "bpe"])
def test_completion_text_keeps_the_space_after_the_prompt(kind):
    """WordPiece and Metaspace decoders drop the space before a sequence's first word; a completion's first
    word is not the first word, so its text is decoded after the prompt's."""
    tok = train_tokenizer(TokenizerSpec(kind=kind, vocab_size=300), sst2_texts(2000))
    prompt, rest = encode(tok, "the film"), encode(tok, "the film is good")[len(encode(tok, "the film")):]
    state = CompletionText(tok, prompt, max_tokens=len(rest))
    text = "".join(piece.text for piece in map(state.push, rest) if piece is not None)
    assert tok.decode(prompt) + text == tok.decode(prompt + rest) and text.startswith(" ")


def test_stream_completion_matches_generate_and_stops(tmp_path):
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    model, tok = load_checkpoint(ckpt)
    ids = encode(tok, "the film is")
    greedy = generate_tokens(model, torch.tensor([ids]), 20, temperature=0)[0, len(ids):].tolist()
    chunks = [step[0] for step in decode_static(model, tok, [CompletionJob(ids, 20, [], temperature=0, stream=True)])]
    assert "".join(c.text for c in chunks) == tok.decode(greedy)
    assert chunks[-1].finish_reason == "length" and all(not c.last for c in chunks[:-1])
    assert chunks[-1].usage.as_dict() == {"prompt_tokens": len(ids), "completion_tokens": 20,
                                          "total_tokens": len(ids) + 20}
    full = tok.decode(greedy)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    chunks = [step[0] for step in decode_static(model, tok, [CompletionJob(ids, 20, [stop], temperature=0, stream=True)])]
    assert "".join(c.text for c in chunks) == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens <= 20


def _texts(pieces: list[Piece]) -> tuple[str, Piece]:
    return "".join(p.text for p in pieces), pieces[-1]


def _job(tok, prompt, max_tokens, stream=True, **kw) -> CompletionJob:
    """A completion job as the front end queues it: greedy unless told otherwise."""
    return CompletionJob(**{"ids": encode(tok, prompt), "max_tokens": max_tokens, "temperature": 0.0, "stop": [],
                            "stream": stream, **kw})


def test_generation_worker_decodes_a_batch_as_it_decodes_each_request(tmp_path):
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    served = read_served(str(ckpt), None, None, 64, 8)
    api = GenerationAPI(str(ckpt), CompletionSpec(served, FeedbackStore(tmp_path / "fb.jsonl")))
    api.setup("cpu")
    tok = api.tokenizer

    job = partial(_job, tok)

    greedy_text = _texts(list(api.predict(job("it is", 12))))[0]
    jobs = [job("a long film about a family", 12), job("bad", 5, stream=False),
            job("it is", 12, stop=[greedy_text[4:6]]),
            job("the best", 9, temperature=1.0, top_p=0.9, seed=11)]
    steps = list(api.predict(jobs))
    assert all(len(step) == len(jobs) for step in steps)
    for row, j in enumerate(jobs):
        alone = list(api.predict(j))  # LitServe's unbatched loop hands predict one job
        together = [step[row] for step in steps if step[row]]
        assert _texts(together) == _texts(alone)
        assert together[-1].last and together[-1].usage.completion_tokens <= j.max_tokens
    assert len([s[1] for s in steps if s[1]]) == 1  # a client that does not stream gets one message
    assert _texts([s[2] for s in steps if s[2]])[1].finish_reason == "stop"
    # a batch that does not fit block_size together (60 + 10 > 64) runs one request after the other
    long = replace(job("x", 10), ids=encode(tok, "the film " * 30)[:58])
    steps = list(api.predict([long, jobs[0]]))
    assert _texts([s[0] for s in steps if s[0]]) == _texts(list(api.predict(long)))
    assert _texts([s[1] for s in steps if s[1]]) == _texts(list(api.predict(jobs[0])))


def test_continuous_worker_streams_the_first_text_at_once_then_one_message_per_interval(tmp_path):
    """stream_interval: the same text, in fewer messages; the first one still leaves in the first step."""
    from litserve.utils import LitAPIStatus

    from lit_llm.serve import ContinuousGenerationAPI

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    spec = CompletionSpec(read_served(str(ckpt), None, None, 64, 8), FeedbackStore(tmp_path / "fb.jsonl"))
    with pytest.raises(ValueError, match="stream_interval must be >= 0"):
        ContinuousGenerationAPI(str(ckpt), spec, stream_interval=-1)
    sent, first = {}, {}
    for interval in (0.0, 3600.0):
        api = ContinuousGenerationAPI(str(ckpt), spec, max_batch_size=2, stream_interval=interval)
        api.setup("cpu")
        api.add_request("s", _job(api.tokenizer, "it is", 20, temperature=1.0, seed=3))
        steps = []
        while api.has_active_requests():
            steps.append([o for o in api.step(None) if o.uid == "s"])
        sent[interval] = [o.output for step in steps for o in step if o.output]
        first[interval] = next(i for i, step in enumerate(steps) if any(o.output for o in step))
        assert steps[-1][-1].status == LitAPIStatus.FINISH_STREAMING
    assert first[3600.0] == first[0.0]  # the first text is not held
    assert len(sent[0.0]) > 2 and len(sent[3600.0]) == 2  # the first text, then the rest with the end
    (text, last), (text_0, last_0) = _texts(sent[3600.0]), _texts(sent[0.0])
    assert text == text_0 and replace(last, text="") == replace(last_0, text="")


def test_continuous_worker_lets_requests_join_mid_batch_and_each_gets_what_it_gets_alone(tmp_path):
    """The continuous worker as LitServe's loop drives it: requests arrive between steps (``add_request``),
    each gets its first token in the step after it arrives, leaves when it ends (FINISH_STREAMING, its row
    freed for the next), and streams exactly the messages it streams alone; a request too long for a row
    (prompt + max_tokens > block_size) decodes beside the batch with its own sliding context."""
    from litserve.utils import LitAPIStatus

    from lit_llm.serve import ContinuousGenerationAPI

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    served = read_served(str(ckpt), None, None, 64, 8)
    spec = CompletionSpec(served, FeedbackStore(tmp_path / "fb.jsonl"))
    alone_api = GenerationAPI(str(ckpt), spec, max_batch_size=1)
    alone_api.setup("cpu")
    api = ContinuousGenerationAPI(str(ckpt), spec, max_batch_size=3)
    api.setup("cpu")
    tok = api.tokenizer

    job = partial(_job, tok)

    greedy_text = _texts(list(alone_api.predict(job("it is", 12))))[0]
    jobs = {"a": job("a long film about a family", 12), "b": job("bad", 5, stream=False),
            "c": job("it is", 12, stop=[greedy_text[4:6]]), "d": job("the best", 9, temperature=1.0, top_p=0.9, seed=11),
            "e": replace(job("x", 10), ids=encode(tok, "the film " * 30)[:58]),  # 58 + 10 > 64: beside the batch
            "f": job("what a", 6)}
    arrivals = {0: ["a", "b"], 1: ["c"], 3: ["d", "e", "f"]}  # step -> requests; capacity 3: some wait
    got = {uid: [] for uid in jobs}
    finished, first_step, waiting, step = [], {}, [], 0
    while step < 200 and (waiting or api.has_active_requests() or step <= max(arrivals)):
        waiting += arrivals.get(step, [])
        while waiting and api.has_capacity():  # what ContinuousBatchingLoop.prefill does
            api.add_request(waiting[0], jobs[waiting.pop(0)])
        for out in api.step(None):
            assert out.status != LitAPIStatus.ERROR, out.output
            if out.output:  # the message that finishes a stream carries the request's last output
                first_step.setdefault(out.uid, step)
                got[out.uid].append(out.output)
            if out.status == LitAPIStatus.FINISH_STREAMING:
                assert out.output.last, out.uid
                finished.append(out.uid)
        step += 1
    assert sorted(finished) == sorted(jobs) and not api.has_active_requests() and not api.rows.keys
    assert first_step["a"] == 0 and first_step["c"] == 1  # the first token comes in the step after arrival
    for uid, j in jobs.items():
        alone = [m for m in alone_api.predict(j) if m]
        assert got[uid] == alone, uid
    assert len(got["b"]) == 1 and _texts(got["c"])[1].finish_reason == "stop"


def test_feedback_store_is_a_prepare_source(tmp_path):
    store = FeedbackStore(tmp_path / "fb.jsonl")
    store.append({"kind": "completion", "request": "Q1 ", "response": "bad", "corrected_text": "good answer"})
    store.append({"kind": "completion", "request": "Q2 ", "response": "fine", "rating": 1})
    store.append({"kind": "completion", "request": "Q3 ", "response": "wrong", "rating": -1})
    docs = list(iter_documents([Source(path=str(store.path), format="feedback")]))
    assert docs == ["Q1 good answer", "Q2 fine"]  # corrections and approved answers; the rejected one is left out


def test_the_messages_between_front_end_and_worker_survive_the_trip():
    """What a worker sends crosses LitServe's queue as JSON (streamed) or pickled (a job, a classification): each
    message comes back equal, nothing (a step of a batch with nothing for a job) is {} and comes back None, and a
    message of another shape is an error that shows it rather than a KeyError later."""
    import pickle

    import litserve as ls

    from lit_llm.serve import ClassifyJob, ClassProbabilities, Usage

    last = Piece("end.", "length", Usage(5, 16), "fp_1")
    for piece in (Piece("a"), Piece("", "stop", Usage(3, 1)), last):
        wire = ls.LitAPI.format_encoded_response(None, piece.to_wire())  # as the worker loops encode it
        assert Piece.from_wire(json.loads(wire)) == piece
    assert last.to_wire()["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
    assert Piece.from_wire({}) is None
    for bad in ({"text": "a", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, {"txt": "a"}, {"text": 3}):
        with pytest.raises(ValueError):
            Piece.from_wire(bad)
    with pytest.raises(ValueError, match="finish_reason"):
        Piece("a", "cancelled", Usage(1, 1))
    job = CompletionJob([1, 2], 4, ["\n"], seed=3, stream=True, id=7).with_stops(["\n", "user:"])
    assert job.stop == ["\n", "user:"] and pickle.loads(pickle.dumps(job)) == job
    for message in (ClassifyJob([[1, 2], [3]]), ClassProbabilities([[0.25, 0.75]], 2, "fp_1")):
        assert pickle.loads(pickle.dumps(message)) == message
    with pytest.raises(ValueError, match="prompt"):
        CompletionJob([], 4, [])


def test_a_worker_message_the_front_end_cannot_read_is_a_500_not_a_cut_stream(tmp_path):
    """A piece of another shape (a worker of another version) ends the job's pieces with the APIError that
    _answer and _sse turn into a 500 or an SSE error event, and the job is released."""
    import asyncio

    from lit_llm.serve.protocol import APIError

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    spec = CompletionSpec(read_served(str(ckpt), None, None, 64, 8), FeedbackStore(tmp_path / "fb.jsonl"))
    released = []
    spec.release = released.append

    async def outputs(item):
        yield {"text": "a"}, False
        yield {"txt": "b"}, False

    spec.outputs = outputs

    async def read():
        got = []
        with pytest.raises(APIError) as e:
            async for piece in spec._chunks("job", None):
                got.append(piece)
        return got, e.value

    got, error = asyncio.run(read())
    assert got == [Piece("a")] and error.status == 500 and released == ["job"]


def test_the_litserve_internals_the_adapter_uses_are_there():
    """lit_llm/serve/_litserve_adapter.py uses LitServe internals (written against litserve 0.2.19): the spec base
    class, the request queue's item, the response buffer and how LitServe fills it, the statuses, the stream reader,
    the FastAPI app. Each is exercised here as LitServe itself uses it, so that an upgrade that changes one fails
    this test instead of the server."""
    import asyncio
    import dataclasses
    import inspect
    import pickle
    import queue
    from types import SimpleNamespace

    import litserve as ls
    from fastapi import FastAPI
    from litserve.loops import simple_loops, streaming_loops
    from litserve.server import LitServer, response_queue_to_buffer
    from litserve.specs.base import LitSpec
    from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem

    from lit_llm.serve._litserve_adapter import QueueSpec, fastapi_app

    assert {"OK", "ERROR", "START", "FINISH_STREAMING"} <= set(vars(LitAPIStatus))
    assert [f.name for f in dataclasses.fields(ResponseBufferItem)][:2] == ["event", "response_queue"]
    assert "response" in {f.name for f in dataclasses.fields(ResponseBufferItem)}
    assert list(inspect.signature(response_queue_to_buffer).parameters) == [
        "transport", "response_buffer", "consumer_id", "litapi_connector"]
    # the workers unpack the request queue's items as submit() writes them; the server tells the spec its queue id
    for loops in (simple_loops, streaming_loops):
        assert "response_queue_id, uid, timestamp, x_enc = request_data" in inspect.getsource(loops)
    assert "lit_api.spec.response_queue_id = response_queue_id" in inspect.getsource(LitServer._start_server)
    assert "copy.copy(self.app)" in inspect.getsource(LitServer._start_server)  # handlers on server.app apply
    # stopping on a signal (command._Shutdown): the front ends' names and drain time, the model workers' name, and
    # run's answer to KeyboardInterrupt (it stops what it started)
    start_server, run = inspect.getsource(LitServer._start_server), inspect.getsource(LitServer.run)
    assert 'name=f"LitServer-{response_queue_id}"' in start_server
    assert "timeout_graceful_shutdown=self.uvicorn_graceful_timeout" in start_server
    assert 'name="inference-worker"' in inspect.getsource(LitServer.launch_inference_worker)
    assert "except KeyboardInterrupt:" in run and "self._perform_graceful_shutdown(manager, uvicorn_workers" in run
    assert "uw.join(timeout=self.uvicorn_graceful_timeout)" in inspect.getsource(LitServer._perform_graceful_shutdown)
    # the continuous loop (ContinuousLoop): what it calls on the LitAPI, and its run that returns when idle
    from litserve.loops import ContinuousBatchingLoop, base

    from lit_llm.serve._litserve_adapter import ContinuousLoop, Output
    continuous = inspect.getsource(ContinuousBatchingLoop)
    for call in ("lit_api.add_request(uid, request)", "lit_api.has_capacity()", "lit_api.has_active_requests()",
                 "lit_api.step, prev_outputs", "lit_api.encode_response(step_output.output)",
                 "lit_api.format_encoded_response(response_data)", "status == LitAPIStatus.FINISH_STREAMING",
                 "response_queue_id, uid, timestamp, input = request",
                 "self.response_queue_ids[uid] = response_queue_id", "del self.response_queue_ids[uid]"):
        assert call in continuous, call
    assert list(inspect.signature(base.LitLoop.put_response).parameters) == [
        "self", "transport", "response_queue_id", "uid", "response_data", "status", "response_type"]
    assert "transport.send((uid, (response_data, status, response_type, self.worker_id))" in inspect.getsource(
        base.LitLoop.put_response)
    assert "response_item.response_queue.append(response)" in inspect.getsource(response_queue_to_buffer)
    assert "while lit_api.has_active_requests():" in inspect.getsource(ContinuousBatchingLoop.run)
    assert "await self.run(" in inspect.getsource(base._BaseLoop.__call__)
    assert issubclass(ContinuousLoop, ContinuousBatchingLoop)
    assert list(inspect.signature(ContinuousBatchingLoop.run).parameters)[1:3] == ["lit_api", "device"]

    # LitSpec.setup takes the buffer, the request queue and the stream reader from the server
    requests = queue.Queue()
    spec = QueueSpec()
    spec.api_path = "/v1/x"
    spec.setup(SimpleNamespace(response_buffer={}, _get_request_queue={"/v1/x": requests}.__getitem__,
                               data_streamer=None))  # LitSpec.setup reads it; QueueSpec does not use it
    spec.response_queue_id = 3
    assert isinstance(spec, LitSpec)

    class Transport:  # what LitServe's worker side delivers, then the cancellation that ends the reader
        def __init__(self, messages):
            self.messages = list(messages)

        async def areceive(self, consumer_id):
            if not self.messages:
                raise asyncio.CancelledError
            return self.messages.pop(0)

    async def exchange(streaming, answers):
        uid, item = spec.submit({"ids": [1, 2]}, streaming=streaming)
        queue_id, got_uid, timestamp, job = requests.get_nowait()
        assert (queue_id, got_uid, job) == (3, uid, {"ids": [1, 2]}) and isinstance(timestamp, float)
        assert spec.response_buffer[uid] is item
        kind = LoopResponseType.STREAMING if streaming else LoopResponseType.REGULAR
        messages = [(uid, (None, LitAPIStatus.START, kind, 0))] + [(uid, (*a, kind, 0)) for a in answers]
        connector = SimpleNamespace(lit_apis=[None], any_stream=lambda: streaming)
        await response_queue_to_buffer(Transport(messages), spec.response_buffer, 3, connector)
        try:
            if streaming:
                return [out async for out in spec.outputs(item)]
            return await spec.output(item)
        finally:
            spec.release(uid)
            assert uid not in spec.response_buffer

    ok = ls.LitAPI.format_encoded_response(None, {"text": "a"})  # a streamed dict, as the worker loop encodes it
    streamed = asyncio.run(exchange(True, [(ok, LitAPIStatus.OK), ("{}", LitAPIStatus.OK),
                                           ("", LitAPIStatus.FINISH_STREAMING)]))
    assert streamed == [({"text": "a"}, False), ({}, False)]
    last = ls.LitAPI.format_encoded_response(None, {"text": "b", "usage": {}})  # carried by the finishing message
    streamed = asyncio.run(exchange(True, [(ok, LitAPIStatus.OK), (last, LitAPIStatus.FINISH_STREAMING),
                                           (ok, LitAPIStatus.OK)]))
    assert streamed == [({"text": "a"}, False), ({"text": "b", "usage": {}}, False)]
    failed = asyncio.run(exchange(True, [(ok, LitAPIStatus.OK), (pickle.dumps(ValueError("boom")), LitAPIStatus.ERROR)]))
    assert failed[0] == ({"text": "a"}, False) and failed[1][1] is True and isinstance(failed[1][0], ValueError)
    assert asyncio.run(exchange(False, [({"probs": [[1.0]]}, LitAPIStatus.OK)])) == ({"probs": [[1.0]]}, False)

    # a continuous worker's step: one message for every stream of a front end, each stream reads its own outputs
    from lit_llm.serve._litserve_adapter import STEP_UID

    class Sent:  # the transport as the worker's loop sees it
        def __init__(self):
            self.messages = []

        def send(self, item, consumer_id):
            self.messages.append((consumer_id, item))

    (a, item_a), (b, item_b) = spec.submit({}, streaming=True), spec.submit({}, streaming=True)
    requests.get_nowait(), requests.get_nowait()
    loop, sent = ContinuousLoop(), Sent()
    loop._worker_id = 0
    loop.response_queue_ids, loop.active_sequences = {a: 3, b: 3}, {a: {}, b: {}}
    api = SimpleNamespace(encode_response=lambda x: x,
                          format_encoded_response=lambda x: ls.LitAPI.format_encoded_response(None, x))
    loop._send([Output(a, {"text": "a"}, LitAPIStatus.OK), Output(b, {"text": "b"}, LitAPIStatus.FINISH_STREAMING)],
               api, sent)
    loop._send([Output(a, {"text": "c"}, LitAPIStatus.FINISH_STREAMING)], api, sent)
    assert [(q, uid) for q, (uid, _) in sent.messages] == [(3, STEP_UID), (3, STEP_UID)]  # one message per step
    assert loop.response_queue_ids == {} and loop.active_sequences == {}  # finished streams leave the loop
    connector = SimpleNamespace(lit_apis=[None], any_stream=lambda: True)
    asyncio.run(response_queue_to_buffer(Transport([m for _, m in sent.messages]), spec.response_buffer, 3, connector))

    async def read(item):  # a stream that got nothing would wait for ever
        async def outputs():
            return [out async for out in spec.outputs(item)]
        return await asyncio.wait_for(outputs(), timeout=5)

    assert asyncio.run(read(item_a)) == [({"text": "a"}, False), ({"text": "c"}, False)]
    assert asyncio.run(read(item_b)) == [({"text": "b"}, False)]
    spec.release(a), spec.release(b)
    error, is_error = asyncio.run(exchange(False, [(pickle.dumps(KeyError("k")), LitAPIStatus.ERROR)]))
    assert is_error and isinstance(error, KeyError)

    # the FastAPI app that LitServer serves, with a spec's routes on it
    class Echo(ls.LitAPI):
        def setup(self, device):
            pass

        def predict(self, x):
            return x

    routes = QueueSpec()
    routes.add_endpoint("/v1/echo", lambda: {}, ["GET"])
    app = fastapi_app(ls.LitServer(Echo(spec=routes), accelerator="cpu"))
    assert isinstance(app, FastAPI) and "/v1/echo" in {r.path for r in app.routes}


@pytest.mark.slow
def test_importing_lit_llm_serve_does_not_import_lightning():
    """The schemas and the command import without Lightning: the workers import what loads a model in setup."""
    import subprocess
    import sys

    code = "import sys, lit_llm.serve; print(sorted(m for m in ('lightning', 'lit_llm.tasks') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_refuses_bad_setups_before_starting(tmp_path):
    lm = write_lm_checkpoint(tmp_path / "lm.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serve(str(tmp_path / "missing.ckpt"), port=free_port())
    with pytest.raises(ValueError, match="does not generate text"):
        serve(str(write_lm_checkpoint(tmp_path / "bert.ckpt", "debug-bert")), port=free_port())
    with pytest.raises(ValueError, match="max_prompt_tokens must be in 1..64"):
        serve(str(lm), port=free_port(), max_prompt_tokens=65)
    with pytest.raises(ValueError, match="host must be one of"):
        serve(str(lm), host="example.com")
    with pytest.raises(ValueError, match="decodes from the KV cache.*--batching static"):
        serve(str(lm), port=free_port(), use_cache=False)
    with pytest.raises(ValueError, match="batching must be"):
        serve(str(lm), port=free_port(), batching="dynamic")


def test_a_port_in_use_is_one_error_line_before_the_checkpoint_is_read(tmp_path, capsys):
    """A server already on the port (or one left behind) is reported as one ``error:`` line, exit code 2, before
    the checkpoint is even read: no model is loaded, no worker started, no traceback."""
    from lit_llm.cli import main
    from lit_llm.errors import UsageError

    missing = str(tmp_path / "missing.ckpt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port} is in use.*pass --port"):
            serve(missing, port=port)
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--checkpoint", missing, "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: Cannot listen on 127.0.0.1:{port}")
    with pytest.raises(FileNotFoundError):  # the port is free again: on to the next check
        serve(missing, port=port)


def test_allowed_hosts_are_the_localhost_names_unless_configured():
    """The Host names a server answers (DNS rebinding: a web page's requests carry its own domain as Host)."""
    from lit_llm.errors import UsageError
    from lit_llm.serve.command import allowed_host_names

    local = ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_host_names("127.0.0.1", None, None) == local
    assert allowed_host_names("127.0.0.1", KEY, ["API.example.com", "*.lan.example", "::1", "10.0.0.5", "fe80::1"]) \
        == local + ["api.example.com", "*.lan.example", "10.0.0.5", "[fe80::1]"]
    assert allowed_host_names("127.0.0.1", None, ["a.example", "*"]) == ["*"]
    # a public server with a key: the key is what guards it (a web page cannot send it), so any name reaches it
    assert allowed_host_names("0.0.0.0", KEY, None) == ["*"]
    assert allowed_host_names("::", KEY, ["gpu.example"]) == local + ["gpu.example"]
    with pytest.raises(UsageError, match="DNS rebinding.*--allowed_hosts"):  # public, keyless: name the hosts
        allowed_host_names("0.0.0.0", None, None)
    assert allowed_host_names("0.0.0.0", None, ["10.0.0.5"]) == local + ["10.0.0.5"]
    assert allowed_host_names("0.0.0.0", None, "gpu1.lan, 10.0.0.5") == local + ["gpu1.lan", "10.0.0.5"]  # the CLI's
    assert allowed_host_names("0.0.0.0", None, "*") == ["*"]  # --allowed_hosts gpu1.lan,10.0.0.5 / '*'
    for bad in ("a*.example.com", "example.com:8000", "http://example.com", ""):
        with pytest.raises(UsageError, match="allowed_hosts"):
            allowed_host_names("127.0.0.1", None, [bad])


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_public_host_without_an_api_key_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, host):
    from lit_llm.cli import main

    monkeypatch.delenv("LIT_LLM_API_KEY", raising=False)
    missing = str(tmp_path / "missing.ckpt")  # refused before the checkpoint is even looked at
    with pytest.raises(ValueError, match=f"--host {re.escape(host)} serves every network .* no API key is set: pass"
                                         r" --api_key KEY or set \$LIT_LLM_API_KEY,"
                                         " or pass --allow_public_without_key true"):
        serve(missing, host=host)
    with pytest.raises(SystemExit) as exit_:  # the command line: one error line, exit code 2
        main(["serve", "--checkpoint", missing, "--host", host])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1].startswith(f"error: --host {host} serves every network") and len(err) == 1
    # a key (flag or variable) or the explicit opt-out lets it go on, to the next check: the missing checkpoint. The
    # opt-out also needs the host names clients use (or "*"): any web page could reach a keyless server otherwise
    with pytest.raises(ValueError, match="DNS rebinding"):
        serve(missing, host=host, allow_public_without_key=True)
    for kwargs in ({"api_key": KEY}, {"allow_public_without_key": True, "allowed_hosts": ["*"]}):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            serve(missing, host=host, port=free_port(), **kwargs)
    monkeypatch.setenv("LIT_LLM_API_KEY", KEY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serve(missing, host=host, port=free_port())


# ---------------------------------------------------------------------------------------------- a language model
@pytest.fixture(scope="module")
def lm_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_lm")
    ckpt = write_lm_checkpoint(tmp / "lm.ckpt")
    env = {**cli_env(tmp), "LIT_LLM_API_KEY": KEY}
    server = ServerProcess(ckpt, ["--max_tokens", "32", "--max_prompt_tokens", "48", "--feedback_store",
                                  "feedback.jsonl", "--allowed_hosts", "[api.example.com, '*.lan.example']"],
                           env=env, log=tmp / "server.log", cwd=tmp)
    with server:
        yield server, ckpt, tmp
    assert not _group_alive(server.proc.pid)  # the front end and the model workers are all gone
    assert not (tmp / "client.py").exists()  # LitServe's client-file generation stays off


@pytest.fixture(scope="module")
def client(lm_server):
    server, _, _ = lm_server
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.mark.slow
def test_completion_matches_local_greedy_generation_with_true_usage(lm_server, client):
    _, ckpt, _ = lm_server
    model, tok = load_checkpoint(ckpt)
    prompt = "the acting is"
    ids = encode(tok, prompt)
    local = tok.decode(generate_tokens(model, torch.tensor([ids]), 12, temperature=0)[0, len(ids):].tolist())
    r = client.completions.create(model="lm", prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == local and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 12, len(ids) + 12)
    assert r.model == "lm" and r.object == "text_completion"


@pytest.mark.slow
def test_seed_top_p_and_stop(client):
    kw = dict(model="lm", prompt="a story about", max_tokens=16, temperature=1.0, top_p=0.9)
    a, b = (client.completions.create(**kw, seed=7).choices[0].text for _ in range(2))
    others = {client.completions.create(**kw, seed=s).choices[0].text for s in (8, 9, 10)}
    assert a == b  # the same seed, the same sample
    assert others - {a}  # other seeds, other samples
    full = client.completions.create(model="lm", prompt="a story about", max_tokens=16, temperature=0).choices[0].text
    stop = full[6:8]
    r = client.completions.create(model="lm", prompt="a story about", max_tokens=16, temperature=0, stop=[stop, "\x00"])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_neutral_openai_fields_that_clients_send_are_accepted_and_others_refused(client):
    """presence_penalty: 0, frequency_penalty: 0, logprobs: false... (sent by common clients) used to be 400s."""
    import openai

    neutral = dict(presence_penalty=0, frequency_penalty=0, logit_bias={})
    plain = client.completions.create(model="lm", prompt="the plot", max_tokens=8, temperature=0).choices[0].text
    assert client.completions.create(model="lm", prompt="the plot", max_tokens=8, temperature=0, logprobs=0,
                                      **neutral).choices[0].text == plain
    chat = client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          logprobs=False, **neutral)
    assert chat.choices[0].message.content is not None
    for field, value in (("presence_penalty", 0.5), ("frequency_penalty", -1.0), ("logit_bias", {"5": 10})):
        with pytest.raises(openai.BadRequestError, match=f"{field} is not supported by this server"):
            client.completions.create(model="lm", prompt="x", max_tokens=2, **{field: value})


@pytest.mark.slow
def test_streaming_completion_and_chat_give_the_same_text(client):
    kw = dict(model="lm", prompt="the plot", max_tokens=20, temperature=0.8, seed=3)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how was the movie"}]
    chat = client.chat.completions.create(model="lm", messages=messages, max_tokens=10, seed=5)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 10
    stream = list(client.chat.completions.create(model="lm", messages=messages, max_tokens=10, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == chat.choices[0].message.content
    counts = lambda u: (u.prompt_tokens, u.completion_tokens, u.total_tokens)  # noqa: E731
    assert counts(stream[-1].usage) == counts(chat.usage)
    assert [m.id for m in client.models.list()] == ["lm"]


@pytest.mark.slow
def test_bad_requests_get_4xx_that_say_why_and_the_server_keeps_serving(lm_server, client):
    server, _, _ = lm_server
    url, auth = f"{server.base_url}/v1/completions", {"Authorization": f"Bearer {KEY}"}

    def post(body, headers=auth):
        r = httpx.post(url, content=body if isinstance(body, str) else json.dumps(body),
                       headers={"Content-Type": "application/json", **headers}, timeout=30)
        return r.status_code, r.json()["error"]["message"]

    status, msg = post('{"prompt": "x", ')
    assert status == 400 and "not valid JSON" in msg
    status, msg = post({"prompt": "x", "max_tokens": 4, "best_of": 3})
    assert status == 400 and "Unknown field 'best_of'" in msg
    status, msg = post({"prompt": "the " * 60, "max_tokens": 4})
    assert status == 400 and "accepts at most 48" in msg and "max_prompt_tokens" in msg
    status, msg = post({"prompt": "x", "max_tokens": -3})
    assert status == 400 and "max_tokens" in msg
    status, msg = post({"prompt": "x", "max_tokens": 33})
    assert status == 400 and "limit of 32" in msg
    status, msg = post({"prompt": "x", "model": "gpt-4"})
    assert status == 404 and "serves 'lm'" in msg
    status, msg = post({"prompt": "x", "seed": 2**70})
    assert status == 400 and "seed" in msg
    status, msg = post({"prompt": "x", "n": 2})
    assert status == 400 and "n=1" in msg
    status, msg = post({"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "API key" in msg
    status, _ = post({"prompt": "x"}, headers={})
    assert status == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="lm", prompt="x", max_tokens=0)
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # no key needed by load balancers
    # still serving: up to 3 tokens (sampled, so it may end at [EOS] sooner)
    done = client.completions.create(model="lm", prompt="still", max_tokens=3)
    assert done.choices[0].finish_reason in ("length", "stop") and 1 <= done.usage.completion_tokens <= 3
    # OpenAI-style nulls mean the defaults; a near-zero temperature is (nearly) greedy, not a crash
    r = httpx.post(url, json={"prompt": "x", "temperature": None, "top_p": None, "n": None}, headers=auth).json()
    assert r["usage"]["completion_tokens"] == 16 and r["choices"][0]["finish_reason"] == "length"
    tiny = client.completions.create(model="lm", prompt="the plot", max_tokens=5, temperature=1e-30)
    greedy = client.completions.create(model="lm", prompt="the plot", max_tokens=5, temperature=0)
    assert tiny.choices[0].text == greedy.choices[0].text
    parts = client.chat.completions.create(model="lm", max_tokens=4, seed=1, messages=[
        {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]}])
    plain = client.chat.completions.create(model="lm", max_tokens=4, seed=1, messages=[
        {"role": "developer", "content": "be brief"}])
    assert parts.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.slow
def test_lone_surrogates_in_any_text_field_get_a_400(lm_server, client):
    """A lone surrogate (U+D800..U+DFFF, not a character; JSON can carry one as an escape, and Python's JSON
    reader lets its UTF-8-like bytes through too) in a prompt, a chat message, the model name, a stop string, a
    feedback text or a field name: a 400 in OpenAI's shape naming the field, not a 500 and a reset connection."""
    server, _, _ = lm_server
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    chat = '{"messages": [{"role": "user", "content": %s}], "max_tokens": 2}'
    cases = [("/v1/completions", '{"prompt": %s, "max_tokens": 2}', "prompt"),
             ("/v1/completions", '{"prompt": "x", "model": %s}', "model"),
             ("/v1/completions", '{"prompt": "x", "stop": ["a", %s]}', "stop"),
             ("/v1/completions", '{"prompt": [%s]}', "prompt"),
             ("/v1/chat/completions", chat, "messages.0.content"),
             ("/v1/chat/completions", chat % '[{"type": "text", "text": %s}]', "messages.0.content"),
             ("/v1/chat/completions", '{"model": %s, "messages": [{"role": "user", "content": "hi"}]}', "model"),
             ("/v1/feedback", '{"request": %s, "rating": 1}', "request"),
             ("/v1/feedback", '{"request": "q", "corrected_text": %s}', "corrected_text")]
    for path, body, field in cases:
        for lone in (b'"a\\ud800b"', b'"\\udfff"', b'"a\xed\xa0\x80"'):  # the JSON escape; the raw bytes
            raw = body.encode().replace(b"%s", lone)
            r = httpx.post(f"{server.base_url}{path}", content=raw, headers=headers, timeout=30)
            assert r.status_code == 400, (path, raw, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert error["param"].startswith(field) and "lone surrogate" in error["message"], (raw, error)
    for body in (b'{"prompt": "x", "\\ud800": 1}', b'{"prompt": "x", "stream_options": {"\\ud800": 1}}'):  # in a name
        r = httpx.post(f"{server.base_url}/v1/completions", content=body, headers=headers, timeout=30)
        assert r.status_code == 400 and "field name or text holds a lone surrogate" in r.text, r.text
    # still serving: up to 3 tokens (sampled, so it may end at [EOS] sooner)
    done = client.completions.create(model="lm", prompt="still", max_tokens=3)
    assert done.choices[0].finish_reason in ("length", "stop") and 1 <= done.usage.completion_tokens <= 3


@pytest.mark.slow
def test_a_host_header_that_does_not_name_this_server_is_refused(lm_server):
    """DNS rebinding: a web page whose domain is made to resolve to 127.0.0.1 sends its own domain as Host. The
    server answers only localhost names and the names given to --allowed_hosts (here api.example.com and
    *.lan.example), with any port; every other Host gets 400, /health included."""
    server, _, _ = lm_server
    auth = {"Authorization": f"Bearer {KEY}"}

    def status(host: str, path: str = "/v1/models") -> int:
        return httpx.get(f"{server.base_url}{path}", headers={**auth, "Host": host}, timeout=30).status_code

    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "lan.example",
                 "api.example.com.evil.example", "localhost.evil.example", "[::2]"):
        assert status(host) == 400 and status(host, "/health") == 400, host
    for host in (f"127.0.0.1:{server.port}", "localhost", f"LOCALHOST:{server.port}", "[::1]:80", "api.example.com",
                 "a.lan.example:443"):
        assert status(host) == 200 and status(host, "/health") == 200, host
    r = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "x", "max_tokens": 2},
                   headers={**auth, "Host": "evil.example"}, timeout=30)
    assert r.status_code == 400 and r.text == "Invalid host header"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_drains_in_flight_requests_then_stops_every_child_and_frees_the_port(tmp_path, sig):
    """``kill PID`` (SIGTERM) or Ctrl+C (SIGINT) to the server's own process, not its group: a stream in flight
    is sent to its end (within --drain_timeout), then every process the server started is gone (the front end,
    the model worker, the queue manager, multiprocessing's resource tracker), the server exits 0, and the port can
    be bound again at once."""
    import os
    import signal
    import time

    import psutil

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    log = tmp_path / "server.log"
    args = ["--max_tokens", "3000", "--drain_timeout", "30", "--feedback_store", str(tmp_path / "fb.jsonl")]
    server = ServerProcess(ckpt, args, env=cli_env(tmp_path), log=log).start()
    try:
        children = psutil.Process(server.proc.pid).children(recursive=True)
        assert len(children) >= 3, children  # the queue manager, the model worker, the front end
        body = {"prompt": "the film", "max_tokens": 3000, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}  # about 2 s of decoding here
        with httpx.Client(timeout=60) as client, \
                client.stream("POST", f"{server.base_url}/v1/completions", json=body) as r:
            events = (line[6:] for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(next(events))["choices"][0]["text"] is not None
            os.kill(server.proc.pid, getattr(signal, sig))  # the server process alone, as `kill PID` does
            deadline = time.monotonic() + 10
            while "draining" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                time.sleep(0.05)  # the front end has been told to stop; the stream goes on
            assert "draining" in log.read_text(errors="replace")
            rest = list(events)
        assert rest[-1] == "[DONE]" and json.loads(rest[-2])["usage"]["completion_tokens"] == 3000  # drained
        assert server.proc.wait(timeout=60) == 0

        def alive(p):
            try:
                return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 30
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in children if alive(p)]
        with socket.socket() as again:  # as a new server binds it (uvicorn sets SO_REUSEADDR too)
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", server.port))
            again.listen()
        assert f"stopped on {sig}" in log.read_text(errors="replace")
    finally:
        server.stop()


@pytest.mark.slow
def test_fifty_concurrent_requests_all_succeed_and_do_not_mix(lm_server, client):
    def one(i):
        r = client.completions.create(model="lm", prompt="same prompt", max_tokens=8, temperature=1.0, seed=i % 2)
        return i, r.choices[0].text, r.usage.completion_tokens

    prompts = ["the film", "a very long and rather boring movie about", "it", "what a"]

    def greedy(i):
        prompt = prompts[i % len(prompts)]
        return prompt, client.completions.create(model="lm", prompt=prompt, max_tokens=6 + i % 5, temperature=0)

    with ThreadPoolExecutor(max_workers=50) as pool:
        sampled = pool.map(one, range(25))
        greedy_results = pool.map(greedy, range(25))
        results, greedy_results = list(sampled), list(greedy_results)
    assert len(results) == 25 and all(n == 8 for _, _, n in results)
    by_seed = [{text for i, text, _ in results if i % 2 == s} for s in (0, 1)]
    assert len(by_seed[0]) == 1 and len(by_seed[1]) == 1  # each answer belongs to its own request
    # prompts of different lengths decoded in the same batches give what each gives alone
    _, ckpt, _ = lm_server
    model, tok = load_checkpoint(ckpt)
    for i, (prompt, r) in enumerate(greedy_results):
        ids = encode(tok, prompt)
        n = 6 + i % 5
        assert r.choices[0].text == tok.decode(generate_tokens(model, torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist())


@pytest.mark.slow
def test_static_batching_server_gives_each_request_what_it_gets_alone(tmp_path):
    """``--batching static`` (LitServe gathers a batch that then decodes to its end): concurrent greedy requests
    of different lengths answer what local generation gives each alone."""
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    model, tok = load_checkpoint(ckpt)
    prompts = ["the film", "a very long and rather boring movie about", "it", "what a"]
    args = ["--batching", "static", "--max_batch_size", "4", "--batch_timeout", "0.2", "--feedback_store",
            str(tmp_path / "fb.jsonl")]
    with ServerProcess(ckpt, args, env=cli_env(tmp_path), log=tmp_path / "server.log") as server:
        def one(i):
            body = {"prompt": prompts[i % 4], "max_tokens": 5 + i, "temperature": 0}
            return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).json()

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(one, range(8)))
    for i, r in enumerate(answers):
        ids = encode(tok, prompts[i % 4])
        local = generate_tokens(model, torch.tensor([ids]), 5 + i, temperature=0)[0, len(ids):].tolist()
        assert r["choices"][0]["text"] == tok.decode(local)


@pytest.mark.slow
def test_feedback_endpoint_appends_to_the_store(lm_server):
    server, _, tmp = lm_server
    url, auth = f"{server.base_url}/v1/feedback", {"Authorization": f"Bearer {KEY}"}
    ok = httpx.post(url, json={"request": "Q ", "response": "A", "corrected_text": "better"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["object"] == "feedback"
    bad = httpx.post(url, json={"request": "Q ", "response": "A", "rating": 3}, headers=auth)
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]
    wrong_kind = httpx.post(url, json={"kind": "classification", "request": "Q", "corrected_label": 1}, headers=auth)
    assert wrong_kind.status_code == 400 and "completion" in wrong_kind.json()["error"]["message"]
    records = list(FeedbackStore(tmp / "feedback.jsonl").records())
    assert [r["id"] for r in records] == [ok.json()["id"]]
    assert records[0]["kind"] == "completion" and records[0]["model"] == "lm"


# ---------------------------------------------------------------------------------------------- a classifier
def _classify(server: ServerProcess, texts, timeout=60) -> dict:
    r = httpx.post(f"{server.base_url}/v1/classify", json={"input": texts}, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def _classifier_config(tmp: Path, lm: Path, root: Path, train: str, max_steps: int, fmt=None) -> Path:
    data = {"train": train, "val": train, "max_length": 32, "batch_size": 8}
    if fmt:
        data["format"] = fmt
    cfg = {
        "trainer": {"max_steps": max_steps, "limit_val_batches": 1, "check_val_every_n_epoch": None,
                    "val_check_interval": max_steps, "default_root_dir": str(root), "enable_progress_bar": False,
                    "logger": False, "enable_model_summary": False},
        "model": {"class_path": "lit_llm.tasks.SequenceClassifier",
                  "init_args": {"init_from": str(lm), "label_names": ["negative", "positive"], "head_dropout": 0.0,
                                "optimizer": {"learning_rate": 3e-3, "warmup_steps": 0}}},
        "data": {"class_path": "lit_llm.data.labelled.ClassificationDataModule", "init_args": data},
    }
    path = tmp / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_classifier_serving_batches_and_the_feedback_loop_corrects_it(tmp_path):
    """serve a classifier -> a user corrects one answer through /v1/feedback -> fit --ckpt_path continues on
    the feedback store -> serve the new checkpoint -> the corrected example gets the corrected label."""
    lm = write_lm_checkpoint(tmp_path / "lm.ckpt")
    first = _classifier_config(tmp_path, lm, tmp_path / "v1", str(SST2_TRAIN), 20)
    run_cli(["fit", "--config", str(first)], tmp_path, tmp_path)
    v1 = tmp_path / "v1" / "checkpoints" / "last.ckpt"
    store = tmp_path / "feedback.jsonl"
    texts = [line.split(" ", 1)[1] for line in SST2_TRAIN.read_text().splitlines()[:12]]
    args = ["--feedback_store", str(store), "--max_batch_size", "8", "--batch_timeout", "0.3"]
    reference = SequenceClassifier.restore(v1)
    with ServerProcess(v1, args, env=cli_env(tmp_path), log=tmp_path / "v1.log") as server:
        one = _classify(server, texts[0])
        many = _classify(server, texts)
        # texts are cut to block_size (64) with [EOS] kept, as training cuts them to max_length
        lengths = [min(len(encode(reference.tokenizer, t)) + 1, 64) for t in texts]
        assert many["usage"]["prompt_tokens"] == sum(lengths)
        assert [d["truncated"] for d in many["data"]] == [len(encode(reference.tokenizer, t)) + 1 > 64 for t in texts]
        assert any(d["truncated"] for d in many["data"])
        with ThreadPoolExecutor(max_workers=12) as pool:  # concurrent requests: LitServe batches them
            single = list(pool.map(lambda t: _classify(server, t), texts))
        assert max(r["batch_requests"] for r in single) > 1
        assert one["data"][0]["label"] == single[0]["data"][0]["label"] == many["data"][0]["label"]
        for i, r in enumerate(single):  # padding with other requests' texts changes nothing
            for name, p in r["data"][0]["probs"].items():
                assert p == pytest.approx(many["data"][i]["probs"][name], abs=1e-5)
        # the server's probabilities are the restored model's
        from lit_llm.data.labelled import frame_examples, pad_examples
        ids, mask = pad_examples(reference.tokenizer, frame_examples(reference.tokenizer, texts, True, 64))
        with torch.no_grad():
            local = reference.eval()(ids, mask).softmax(-1)
        got = torch.tensor([[d["probs"]["negative"], d["probs"]["positive"]] for d in many["data"]])
        torch.testing.assert_close(got, local, atol=1e-5, rtol=1e-4)

        target = texts[0]
        predicted = one["data"][0]["label"]
        corrected = "positive" if predicted == "negative" else "negative"
        fb = httpx.post(f"{server.base_url}/v1/feedback", json={"request": target, "response": predicted,
                                                                "corrected_label": corrected})
        assert fb.status_code == 200
        unknown = httpx.post(f"{server.base_url}/v1/feedback", json={"request": target, "corrected_label": "neutral"})
        assert unknown.status_code == 400 and "not a class" in unknown.json()["error"]["message"]
        bad = httpx.post(f"{server.base_url}/v1/classify", json={"input": []})
        assert bad.status_code == 400 and "1 to 32 texts" in bad.json()["error"]["message"]
        bad = httpx.post(f"{server.base_url}/v1/classify", json={"input": "ok", "top_k": 2})
        assert bad.status_code == 400 and "top_k" in bad.json()["error"]["message"]

    # continue training the served checkpoint (optimizer, step and all) on what users corrected
    second = _classifier_config(tmp_path, lm, tmp_path / "v2", str(store), 50, fmt="feedback")
    run_cli(["fit", "--config", str(second), "--ckpt_path", str(v1)], tmp_path, tmp_path)
    v2 = tmp_path / "v2" / "checkpoints" / "last.ckpt"
    assert torch.load(v2, weights_only=True)["global_step"] == 50  # resumed at 20, not restarted
    with ServerProcess(v2, args, env=cli_env(tmp_path), log=tmp_path / "v2.log") as server:
        after = _classify(server, target)["data"][0]
    assert after["label"] == corrected and after["probs"][corrected] > 0.5


# ---------------------------------------------------------------------------------------------- reloads
def _greedy(model, tok, prompt: str, n: int) -> str:
    ids = encode(tok, prompt)
    return tok.decode(generate_tokens(model, torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist())


def _as_classifier(lm: Path, out: Path, classes: int = 2) -> Path:
    """``lm``'s weights and tokenizer as a classifier checkpoint (task ``classification``; no head): the wrong kind
    to serve in a language model's place."""
    ckpt = torch.load(lm, weights_only=True)
    ckpt["lit_llm"] = {**ckpt["lit_llm"], "task": "classification", "num_classes": classes, "pooling": "last"}
    ckpt["state_dict"] = {"backbone." + k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, out)
    return out


def _truncated(ckpt: Path, out: Path) -> Path:
    out.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return out


@pytest.fixture(scope="module")
def two_lms(tmp_path_factory):
    """Two language models with the same tokenizer and different (random) weights, and one with another tokenizer."""
    tmp = tmp_path_factory.mktemp("reload")
    return (write_lm_checkpoint(tmp / "a.ckpt", seed=0), write_lm_checkpoint(tmp / "b.ckpt", seed=1),
            write_lm_checkpoint(tmp / "other_tokenizer.ckpt", vocab=200))


def test_a_reload_is_checked_before_anything_is_swapped(two_lms, tmp_path):
    """What cannot take the served checkpoint's place without a restart is refused with what is wrong, by the
    front end, before a worker loads anything; and the HTTP route is off without an API key unless allowed."""
    import asyncio

    from lit_llm.checkpoint import CheckpointError
    from lit_llm.serve.protocol import APIError
    from lit_llm.serve.specs import check_replacement

    a, b, other = two_lms
    served = read_served(str(a), None, None, 64, 8)
    check_replacement(served, str(b))  # same task, tokenizer and limits: fine
    for path, message in [(_as_classifier(a, tmp_path / "clf.ckpt"), "is a classifier checkpoint, but this server"
                                                                       " serves a language model"),
                          (write_lm_checkpoint(tmp_path / "bert.ckpt", "debug-bert"), "does not generate text"),
                          (other, "another tokenizer"),
                          (_truncated(a, tmp_path / "torn.ckpt"), "truncated or corrupted")]:
        with pytest.raises(CheckpointError, match=message):
            check_replacement(served, str(path))
    with pytest.raises(CheckpointError, match="block of 64 tokens, shorter than the prompts of up to 100"):
        check_replacement(replace(served, max_prompt_tokens=100), str(b))
    classifier = read_served(str(_as_classifier(a, tmp_path / "clf2.ckpt")), None, None, 64, 8)
    check_replacement(classifier, str(_as_classifier(b, tmp_path / "clf2b.ckpt")))
    with pytest.raises(CheckpointError, match="is a language model checkpoint, but this server serves a classifier"):
        check_replacement(classifier, str(b))
    with pytest.raises(CheckpointError, match=r"has the classes \['0', '1', '2'\], and the served classifier"):
        check_replacement(classifier, str(_as_classifier(b, tmp_path / "clf3.ckpt", classes=3)))
    spec = CompletionSpec(served, FeedbackStore(tmp_path / "fb.jsonl"))  # reload False: a server without a key
    with pytest.raises(APIError, match="Reloading over HTTP is off.*--allow_reload true") as refused:
        asyncio.run(spec.reload(None, None))
    assert refused.value.status == 403


def test_a_reload_swaps_every_worker_or_none_and_running_requests_finish_on_the_old_model(two_lms, tmp_path):
    """Two workers (as two processes would, on one ReloadBoard): a reload loads the new checkpoint in each, and
    swaps once all have; a request that was decoding goes on on the old model to its end, one that starts after
    the swap decodes on the new, and each says which (system_fingerprint). A checkpoint that a worker cannot load
    calls the reload off in every worker; so does a timeout; and one reload runs at a time."""
    import gc
    import threading
    import time
    import weakref

    from litserve.utils import LitAPIStatus

    from lit_llm.serve import ContinuousGenerationAPI
    from lit_llm.serve.flow import CheckpointRef, ReloadError
    from lit_llm.serve.protocol import APIError

    a, b, _ = two_lms
    served = replace(read_served(str(a), None, None, 64, 8), workers=2)
    spec = CompletionSpec(served, FeedbackStore(tmp_path / "fb.jsonl"))
    continuous = ContinuousGenerationAPI(str(a), spec, max_batch_size=4)
    static = GenerationAPI(str(a), spec)
    continuous.setup("cpu")
    static.setup("cpu")
    stop = threading.Event()
    followers = [threading.Thread(target=api.follow_reloads, args=(stop,), daemon=True) for api in (continuous, static)]
    for t in followers:
        t.start()
    try:
        (model_a, tok), (model_b, _) = load_checkpoint(a), load_checkpoint(b)
        fp_a, fp_b = CheckpointRef.of(a).fingerprint, CheckpointRef.of(b).fingerprint
        old_text, new_text = _greedy(model_a, tok, "the film", 30), _greedy(model_b, tok, "the film", 30)
        assert old_text != new_text
        old_model = weakref.ref(continuous.model)

        got = {"old": [], "new": []}

        def step():
            for out in continuous.step(None):
                assert out.status != LitAPIStatus.ERROR, out.output
                if out.output:
                    got[out.uid].append(out.output)

        continuous.add_request("old", _job(tok, "the film", 30))
        for _ in range(5):
            step()
        done = spec.reload_checkpoint(str(b))  # returns once both workers serve b to new requests
        assert (done["generation"], done["workers"], done["system_fingerprint"]) == (1, 2, fp_b)
        assert done["previous"]["system_fingerprint"] == fp_a
        assert continuous.current.fingerprint == static.current.fingerprint == fp_b
        continuous.add_request("new", _job(tok, "the film", 30))
        while continuous.has_active_requests():
            step()
        for uid, text, fp in (("old", old_text, fp_a), ("new", new_text, fp_b)):
            assert "".join(m.text for m in got[uid]) == text, uid  # all of it from one model
            assert got[uid][0].system_fingerprint == fp and all(m.system_fingerprint is None for m in got[uid][1:])
        gc.collect()
        assert old_model() is None  # freed with its last request
        static_out = list(static.predict(_job(tok, "the film", 30, stream=False)))
        assert static_out[0].text == new_text and static_out[0].system_fingerprint == fp_b

        # a file the workers cannot load (past the front end's checks, e.g. replaced meanwhile): called off in both
        torn = _truncated(a, tmp_path / "torn.ckpt")
        with pytest.raises(ReloadError, match="truncated or corrupted") as failed:
            spec.reloads.reload(CheckpointRef.of(torn), timeout=60)
        assert failed.value.reason == "checkpoint"
        assert continuous.current.fingerprint == static.current.fingerprint == fp_b
        assert spec.reloads.current() == (1, CheckpointRef.of(b))
        # the front end refuses it first, with a 4xx, naming what goes on serving
        with pytest.raises(APIError, match=f"Reload refused; .*b.ckpt \\({fp_b}\\) goes on serving: .*truncated") as e:
            spec.reload_checkpoint(str(torn))
        assert e.value.status == 400
        with pytest.raises(APIError, match="does not exist") as e:
            spec.reload_checkpoint(str(tmp_path / "missing.ckpt"))
        assert e.value.status == 404
        # with the path served unchanged, a reload without a path reads it again
        assert spec.reload_checkpoint()["generation"] == 3 and continuous.current.generation == 3
    finally:
        stop.set()
        for t in followers:
            t.join(5)

    # nobody follows: the reload times out, called off; and a second one meanwhile is refused as busy
    late = threading.Thread(target=lambda: pytest.raises(ReloadError, spec.reloads.reload, CheckpointRef.of(a), 1.0))
    late.start()
    time.sleep(0.2)
    with pytest.raises(ReloadError, match="Another reload") as busy:
        spec.reloads.reload(CheckpointRef.of(a), 1.0)
    late.join()
    assert busy.value.reason == "busy" and spec.reloads.current()[0] == 3
    with pytest.raises(ReloadError, match=r"model worker\(s\) \[0, 1\] did not load") as slow:
        spec.reloads.reload(CheckpointRef.of(a), 0.1)
    assert slow.value.reason == "timeout" and spec.reloads.current()[0] == 3


@pytest.fixture(scope="module")
def reload_server(two_lms, tmp_path_factory):
    """One server for the reload tests: two model workers, an API key, long completions allowed. It serves
    ``served.ckpt``, a copy of ``a.ckpt``, so that a test can replace the file at the path served."""
    import shutil

    a, _, _ = two_lms
    tmp = tmp_path_factory.mktemp("reload_server")
    shutil.copyfile(a, tmp / "served.ckpt")
    env = {**cli_env(tmp), "LIT_LLM_API_KEY": KEY}
    args = ["--workers", "2", "--max_tokens", "3000", "--feedback_store", str(tmp / "fb.jsonl")]
    with ServerProcess(tmp / "served.ckpt", args, env=env, log=tmp / "server.log", cwd=tmp) as server:
        yield server, tmp


def _post(server: ServerProcess, path: str, body: Optional[dict] = None, key: Optional[str] = KEY,
          timeout: float = 120) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=timeout)


def _served_fingerprint(server: ServerProcess) -> str:
    r = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    return r.json()["data"][0]["system_fingerprint"]


@pytest.mark.slow
def test_a_reload_mid_stream_finishes_the_stream_on_the_old_model_and_serves_the_new_one_after(two_lms, reload_server):
    """A greedy 1,500-token stream from model A is in flight when a reload to B returns (both workers swapped): the
    stream goes on to its end without an error, every token of it A's (its greedy text, byte for byte, and A's
    fingerprint on every event); the requests after the reload are B's."""
    import threading
    import time

    a, b, _ = two_lms
    server, tmp = reload_server
    assert _post(server, "/v1/admin/reload", {"checkpoint": str(tmp / "served.ckpt")}).status_code == 200
    (model_a, tok), (model_b, _) = load_checkpoint(a), load_checkpoint(b)
    n = 1500  # a few seconds of decoding here; the reload takes well under one
    events, ended = [], {}

    def stream():
        body = {"prompt": "the film", "max_tokens": n, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=120) as c, c.stream("POST", f"{server.base_url}/v1/completions", json=body,
                                                     headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        ended["at"] = time.monotonic()

    reader = threading.Thread(target=stream)
    reader.start()
    while not events and reader.is_alive():
        time.sleep(0.01)
    fp_old = _served_fingerprint(server)
    asked_at = time.monotonic()
    r = _post(server, "/v1/admin/reload", {"checkpoint": str(b)})
    reloaded_at = time.monotonic()
    print(f"reload took {reloaded_at - asked_at:.2f} s")
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["workers"] == 2 and done["checkpoint"] == str(b) and done["previous"]["system_fingerprint"] == fp_old
    assert "at" not in ended  # the stream was still running when every worker had swapped
    prompts = ("the film", "it is", "the film", "what a")
    later = [_post(server, "/v1/completions", {"prompt": p, "max_tokens": 30, "temperature": 0}).json()
             for p in prompts]
    reader.join(120)
    assert ended["at"] > reloaded_at and events[-1] == "[DONE]"
    print(f"the stream ended {ended['at'] - reloaded_at:.2f} s after the reload")
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    assert {c["system_fingerprint"] for c in chunks} == {fp_old}
    assert chunks[-1]["usage"]["completion_tokens"] == n
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == _greedy(model_a, tok, "the film", n)
    assert [r["system_fingerprint"] for r in later] == [done["system_fingerprint"]] * 4 and fp_old not in done.values()
    assert [r["choices"][0]["text"] for r in later] == [_greedy(model_b, tok, p, 30) for p in prompts] \
        != [_greedy(model_a, tok, p, 30) for p in prompts]
    assert _served_fingerprint(server) == done["system_fingerprint"]


@pytest.mark.slow
def test_a_bad_reload_is_refused_and_the_old_model_keeps_serving(two_lms, reload_server):
    """Without the key: 401. A missing file (404), a damaged one, a classifier, another tokenizer (400), an
    unknown field (400): each says what is wrong, and the model served goes on answering as before."""
    a, _, other = two_lms
    server, tmp = reload_server
    before = _post(server, "/v1/completions", {"prompt": "it is", "max_tokens": 8, "temperature": 0}).json()
    fp = _served_fingerprint(server)
    assert _post(server, "/v1/admin/reload", {}, key=None).status_code == 401
    assert _post(server, "/v1/admin/reload", {}, key="wrong").status_code == 401
    for body, status, message in [
            ({"checkpoint": str(tmp / "missing.ckpt")}, 404, "does not exist"),
            ({"checkpoint": str(_truncated(a, tmp / "torn.ckpt"))}, 400, "truncated or corrupted"),
            ({"checkpoint": str(_as_classifier(a, tmp / "clf.ckpt"))}, 400, "is a classifier checkpoint"),
            ({"checkpoint": str(other)}, 400, "another tokenizer"),
            ({"path": str(a)}, 400, "Unknown field 'path'")]:
        r = _post(server, "/v1/admin/reload", body)
        assert r.status_code == status and message in r.json()["error"]["message"], (body, r.text)
        if "Unknown" not in message:
            assert f"({fp}) goes on serving" in r.json()["error"]["message"]
        assert _served_fingerprint(server) == fp
    after = _post(server, "/v1/completions", {"prompt": "it is", "max_tokens": 8, "temperature": 0}).json()
    assert after["choices"] == before["choices"] and after["system_fingerprint"] == before["system_fingerprint"] == fp


@pytest.mark.slow
def test_sighup_reloads_the_file_at_the_path_served(two_lms, reload_server):
    """A training run renames a new last.ckpt over the old one; SIGHUP to the server makes it serve the new file."""
    import os
    import shutil
    import signal
    import time

    _, b, _ = two_lms
    server, tmp = reload_server
    served = tmp / "served.ckpt"
    assert _post(server, "/v1/admin/reload", {"checkpoint": str(served)}).status_code == 200
    fp = _served_fingerprint(server)
    shutil.copyfile(b, tmp / "served.ckpt.tmp")
    os.replace(tmp / "served.ckpt.tmp", served)  # as checkpoint_io writes a checkpoint
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while _served_fingerprint(server) == fp and time.monotonic() < deadline:
        time.sleep(0.1)
    new_fp = _served_fingerprint(server)
    assert new_fp != fp
    model_b, tok = load_checkpoint(b)
    answer = _post(server, "/v1/completions", {"prompt": "it is", "max_tokens": 8, "temperature": 0}).json()
    assert answer["system_fingerprint"] == new_fp and answer["choices"][0]["text"] == _greedy(model_b, tok, "it is", 8)
    assert "SIGHUP: reload" in (tmp / "server.log").read_text(errors="replace")
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200  # nothing else stopped


# ---------------------------------------------------------------------------------------------- GET /metrics
def _scrape(server: ServerProcess) -> dict:
    """/metrics of ``server``, without the samples of the /metrics route itself (each scrape adds to those)."""
    r = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {k: v for k, v in prometheus.samples(r.text).items() if ("route", "/metrics") not in k[1]}


def _sse_usage(response: httpx.Response) -> dict:
    """The usage a streamed answer ends with (``stream_options.include_usage``)."""
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    return [e["usage"] for e in events if e.get("usage")][-1]


@pytest.mark.slow
def test_metrics_count_exactly_what_a_load_sent_across_two_front_ends(reload_server):
    """A load of known requests (completions and chats, streamed and not, bad requests, feedback, an unauthorized
    scrape) against a server with two model workers and so two front ends: /metrics counts exactly what was sent
    and answered, and every scrape, whichever front end answers it, gives the same totals."""
    server, _ = reload_server
    url, auth = server.base_url, {"Authorization": f"Bearer {KEY}"}
    before = _scrape(server)
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # behind the API key

    def send(kind: str, i: int):
        body = {"prompt": f"it is {i}", "max_tokens": 3 + i % 4, "temperature": 0}
        if kind == "bad":
            return kind, httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 0}, headers=auth, timeout=60)
        if kind == "chat":
            body = {"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 3 + i % 4, "stream": True,
                    "stream_options": {"include_usage": True}}
            return kind, httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60)
        if kind == "stream":
            body.update(stream=True, stream_options={"include_usage": True})
        return kind, httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=60)

    load = ["plain"] * 8 + ["stream"] * 6 + ["chat"] * 4 + ["bad"] * 3
    with ThreadPoolExecutor(8) as pool:  # a new connection per request: the kernel spreads them over the front ends
        answers = list(pool.map(lambda a: send(*a), [(kind, i) for i, kind in enumerate(load)]))
    usage = {"/v1/completions": [0, 0], "/v1/chat/completions": [0, 0]}
    for kind, r in answers:
        assert r.status_code == (400 if kind == "bad" else 200), r.text
        if kind != "bad":
            u = r.json()["usage"] if kind == "plain" else _sse_usage(r)
            route = usage["/v1/chat/completions" if kind == "chat" else "/v1/completions"]
            route[0], route[1] = route[0] + u["prompt_tokens"], route[1] + u["completion_tokens"]
    for body in ({"request": "Q ", "response": "A", "rating": 1}, {"request": "Q ", "response": "A", "rating": -1},
                 {"request": "Q ", "response": "A", "corrected_text": "B"}):
        assert httpx.post(f"{url}/v1/feedback", json=body, headers=auth, timeout=30).status_code == 200

    pages = [_scrape(server) for _ in range(6)]
    assert all(page == pages[0] for page in pages), "front ends disagree"
    after = pages[0]

    def delta(name: str, **labels: str) -> float:
        return prometheus.value(after, name, **labels) - prometheus.value(before, name, **labels)

    assert delta("lit_llm_http_requests_total", route="/v1/completions", status="200") == 14
    assert delta("lit_llm_http_requests_total", route="/v1/completions", status="400") == 3
    assert delta("lit_llm_http_requests_total", route="/v1/chat/completions", status="200") == 4
    assert delta("lit_llm_http_requests_total", route="/v1/feedback", status="200") == 3
    assert prometheus.total(after, "lit_llm_http_requests_total") - prometheus.total(before, "lit_llm_http_requests_total") == 24
    assert delta("lit_llm_http_request_duration_seconds_count", route="/v1/completions") == 17
    assert delta("lit_llm_time_to_first_token_seconds_count", route="/v1/completions") == 6
    assert delta("lit_llm_time_to_first_token_seconds_count", route="/v1/chat/completions") == 4
    for route, (prompt, generated) in usage.items():
        assert delta("lit_llm_prompt_tokens_total", route=route) == prompt
        assert delta("lit_llm_generated_tokens_total", route=route) == generated > 0
    assert delta("lit_llm_feedback_total", kind="completion", rating="good", correction="none") == 1
    assert delta("lit_llm_feedback_total", kind="completion", rating="bad", correction="none") == 1
    assert delta("lit_llm_feedback_total", kind="completion", rating="none", correction="text") == 1
    assert delta("lit_llm_rejected_requests_total", reason="queue_full") == 0
    assert prometheus.value(after, "lit_llm_queue_depth", default=-1) == 0
    info = [dict(labels) for (name, labels) in after if name == "lit_llm_model_info"]
    assert info and info[0]["workers"] == "2" and info[0]["task"] == "completion"
    unauthorized = prometheus.samples(httpx.get(f"{url}/metrics", headers=auth, timeout=30).text)
    assert prometheus.value(unauthorized, "lit_llm_http_requests_total", route="/metrics", status="401") >= 1
