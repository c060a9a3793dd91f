"""The HTTP side: two LitServe specs that glue the OpenAI-compatible routes to the model worker. A request is
checked and tokenized here, in the front end, then queued for the worker (``_litserve_adapter``)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from tokenizers import Tokenizer

from lit_llm import chat as chat_format
from lit_llm.checkpoint import CheckpointError, config_and_tokenizer, load_network, read_info
from lit_llm.data.tokenizer import encode
from lit_llm.feedback import FeedbackStore, FeedbackStoreFull
from lit_llm.serve._litserve_adapter import QueueSpec
from lit_llm.serve.flow import Admission, CancelBoard, CheckpointRef, RateLimit, ReloadBoard, ReloadError, new_job_id
from lit_llm.serve.messages import ClassifyJob, CompletionJob, Piece
from lit_llm.serve.metrics import CONTENT_TYPE, ModelInfo, ServerMetrics, request_start
from lit_llm.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    FeedbackRequest,
    ReloadRequest,
    _Sampling,
    chat_prompt,
)

if TYPE_CHECKING:
    from lit_llm.model import ModelConfig

logger = logging.getLogger(__name__)

# every path a server answers (ours, either task's, and LitServe's own): the ``route`` label values of /metrics
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/models", "/v1/feedback", "/v1/admin/reload",
          "/metrics", "/health", "/info", "/")


@dataclass
class Served:
    """What the front end knows of the checkpoint without loading its weights."""

    name: str
    task: str  # "completion" or "classification"
    tokenizer: Tokenizer
    config: ModelConfig
    created: int
    max_prompt_tokens: int
    max_tokens: int
    max_inputs: int
    label_names: Optional[list[str]] = None
    max_queue: int = 256  # most requests admitted to the model workers at once; more get 429
    max_feedback_per_minute: float = 60.0  # feedback records one client (IP) may send a minute; 0: no limit
    max_prompt_chars: Optional[int] = None  # longer texts are never tokenized whole (see prompt_char_limit)
    checkpoint: Optional[CheckpointRef] = None  # the file served at the start (reloads replace it: ReloadBoard)
    workers: int = 1  # model worker processes: a reload waits for every one of them
    reload: bool = False  # whether POST /v1/admin/reload may replace the checkpoint (SIGHUP always may)
    reload_timeout: float = 600.0  # seconds the workers get to load a new checkpoint before the reload is called off

    def __post_init__(self) -> None:
        if self.max_prompt_chars is None:
            self.max_prompt_chars = prompt_char_limit(self.tokenizer, self.max_prompt_tokens)


def check_replacement(served: Served, path: str) -> None:
    """Raise ``CheckpointError`` (a ValueError) naming the problem when the checkpoint at ``path`` cannot replace the
    one served without a restart: it must be a lit_llm checkpoint that loads (a language model's weights are
    checked against its config), of the same task, with the same tokenizer (the front ends tokenize with the one
    they started with), a block as long as the prompts the server accepts, and a classifier's classes."""
    restart = f"; to serve it, restart the server with --checkpoint {path}"
    info = read_info(path)  # FileNotFoundError, or CheckpointError for a damaged or foreign file
    task = "classification" if info.task == "classification" else "completion"
    if task != served.task:
        kinds = {"classification": "a classifier", "completion": "a language model"}
        raise CheckpointError(f"{path} is {kinds[task]} checkpoint, but this server serves"
                              f" {kinds[served.task]}{restart}")
    if task == "completion":
        config, _, tokenizer = load_network(path, purpose="serve")
        if not config.causal:
            raise CheckpointError(f"{path} holds a {config.family} encoder, which does not generate text: reload a"
                                  " causal (gpt2/llama) checkpoint")
    else:
        config, tokenizer = config_and_tokenizer(info, path)
        if config.causal != served.config.causal:
            raise CheckpointError(f"{path} is a classifier on another kind of backbone (causal: {config.causal}); the"
                                  f" server frames texts for the one it started with{restart}")
        labels = list(info.label_names) if info.label_names else [str(i) for i in range(info.num_classes or 0)]
        if labels != served.label_names:
            raise CheckpointError(f"{path} has the classes {labels}, and the served classifier {served.label_names}"
                                  f"{restart}")
    if tokenizer.to_str() != served.tokenizer.to_str():
        raise CheckpointError(f"{path} has another tokenizer than the checkpoint served, and the server tokenizes"
                              f" requests with the one it started with{restart}")
    if config.block_size < served.max_prompt_tokens:
        raise CheckpointError(f"{path} has a block of {config.block_size} tokens, shorter than the prompts of up to"
                              f" {served.max_prompt_tokens} tokens this server accepts (--max_prompt_tokens){restart}")


# how a reload that did not happen is answered: (status, code)
_RELOAD_REFUSED = {"busy": (409, "reload_in_progress"), "checkpoint": (400, "invalid_checkpoint"),
                   "changed": (409, "checkpoint_changed"), "worker": (500, "reload_failed"),
                   "timeout": (504, "reload_timeout")}


def prompt_char_limit(tok: Tokenizer, max_tokens: int) -> int:
    """Characters beyond which a text cannot fit in ``max_tokens`` tokens, with a 4x margin: no token of the
    vocabulary covers more than its own length in characters (a byte-level token's string has one character
    per byte). Only a text made mostly of what the tokenizer drops (runs of whitespace, accents it strips) or of
    very long unknown words could be longer and still fit; such a text is refused (or, to classify, cut)."""
    longest = max((len(t) for t in tok.get_vocab()), default=1)
    return max_tokens * max(1, longest) * 4


class _Stream(StreamingResponse):
    """A streamed answer that calls ``on_close()`` once it is over, whether sent to the end or cut short by a
    client that went away (Starlette then cancels the stream)."""

    def __init__(self, content, on_close, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()  # runs ``_sse``'s finally: the job's answers are released
            finally:
                self.on_close()


class _Spec(QueueSpec):
    """Routes shared by both kinds of server: the model list and the feedback store."""

    def __init__(self, served: Served, store: FeedbackStore, api_path: str) -> None:
        super().__init__()
        self.served, self.store, self.api_path = served, store, api_path
        self.board = CancelBoard()  # jobs whose clients have gone: the model workers stop decoding them
        self.admission = Admission(served.max_queue)
        self.feedback_limit = RateLimit(served.max_feedback_per_minute)
        self.reloads = ReloadBoard(served.workers, served.checkpoint)  # the checkpoint served, and its reloads
        self.metrics = ServerMetrics(ROUTES)  # GET /metrics: counted by every front end, in shared memory
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/feedback", self.feedback, ["POST"])
        self.add_endpoint("/v1/admin/reload", self.reload, ["POST"])
        self.add_endpoint("/metrics", self.prometheus, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    def check_model(self, name: Optional[str]) -> None:
        if name and name != self.served.name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.served.name}'"
                           " (GET /v1/models)", "model", "model_not_found")

    def admit(self) -> None:
        """Count a request that goes to the model workers, or refuse it at once with 429 when ``max_queue`` are
        already in (queued or running): a flood gets fast answers instead of piling up. Pair with ``leave``."""
        if not self.admission.try_enter():
            self.metrics.rejected("queue_full")
            raise APIError(429, f"The server is busy: {self.served.max_queue} requests are already queued or running"
                           " (serve --max_queue). Retry after a second.", code="server_busy",
                           headers={"Retry-After": "1"})

    def leave(self) -> None:
        self.admission.leave()

    def tokenize(self, text: str, field: str) -> list[int]:
        try:
            return encode(self.served.tokenizer, text)
        except ValueError as e:
            raise APIError(400, f"'{field}': {e}", field, "invalid_text") from e

    async def models(self) -> dict:
        s = self.served
        generation, ref = self.reloads.current()
        return {"object": "list", "data": [{"id": s.name, "object": "model", "created": s.created, "owned_by": "lit_llm",
                                            "task": s.task, "max_prompt_tokens": s.max_prompt_tokens,
                                            "checkpoint": os.path.basename(ref.path) if ref else None,
                                            "system_fingerprint": ref.fingerprint if ref else None,
                                            "generation": generation}]}

    async def prometheus(self) -> Response:
        """``GET /metrics``: the counters of every front end, in Prometheus's text format (``serve/metrics.py``)."""
        generation, ref = self.reloads.current()
        s = self.served
        info = ModelInfo(model=s.name, task=s.task, system_fingerprint=ref.fingerprint if ref else "",
                         generation=generation, workers=s.workers, queue_depth=self.admission.count,
                         queue_limit=s.max_queue)
        return Response(self.metrics.exposition(info), media_type=CONTENT_TYPE)

    async def reload(self, request: Request, body: Optional[ReloadRequest] = None) -> dict:
        """``POST /v1/admin/reload``: serve another checkpoint (or the served path's new file) from now on; the
        requests in flight finish on the old one. Answers once every model worker has swapped."""
        if not self.served.reload:
            raise APIError(403, "Reloading over HTTP is off on this server: it is on when the server has an API key"
                           " (--api_key or $LIT_LLM_API_KEY), or with serve --allow_reload true. SIGHUP to the"
                           " server's process reloads the served path either way", code="reload_disabled")
        return await run_in_threadpool(self.reload_checkpoint, body.checkpoint if body else None)

    def reload_checkpoint(self, path: Optional[str] = None) -> dict:
        """Check the checkpoint at ``path`` (default: the path served now) and have every model worker swap to it
        (``ReloadBoard.reload``); blocks until they have. A checkpoint that cannot replace the one served, or a
        reload that fails, is an ``APIError`` (4xx/5xx), and the model served before goes on serving."""
        _, now = self.reloads.current()
        path = path or (now.path if now else None)
        if not path:
            raise APIError(400, "Name the checkpoint to serve: {\"checkpoint\": PATH}", "checkpoint")
        serving = f"{now.path} ({now.fingerprint})" if now else "the model served"
        try:
            if not os.path.exists(path):
                raise FileNotFoundError(f"Checkpoint {path} does not exist (a relative path is from the server's"
                                        f" working directory, {os.getcwd()})")
            ref = CheckpointRef.of(path)
            check_replacement(self.served, ref.path)
            if not ref.unchanged():
                raise ReloadError("changed", f"{ref.path} was replaced while it was being checked; reload again")
            done = self.reloads.reload(ref, self.served.reload_timeout)
        except (ReloadError, ValueError, OSError) as e:  # CheckpointError, FileNotFoundError and the like: the file
            if isinstance(e, ReloadError):
                status, code = _RELOAD_REFUSED[e.reason]
            elif isinstance(e, FileNotFoundError):
                status, code = 404, "checkpoint_not_found"
            else:
                status, code = 400, "invalid_checkpoint"
            reason = e.message if isinstance(e, ReloadError) else str(e)
            logger.warning("reload of %s refused (%d): %s", path, status, reason)
            raise APIError(status, f"Reload refused; {serving} goes on serving: {reason}", "checkpoint", code) from None
        logger.warning("reload %d: serving %s (%s), was %s (%s)", done.generation, ref.path, ref.fingerprint,
                       done.previous.path, done.previous.fingerprint)
        return {"object": "reload", "model": self.served.name, "generation": done.generation, "checkpoint": ref.path,
                "system_fingerprint": ref.fingerprint, "workers": done.workers,
                "previous": {"checkpoint": done.previous.path, "system_fingerprint": done.previous.fingerprint}}

    def feedback(self, body: FeedbackRequest, request: Request) -> dict:  # plain def: the fsync'd append, in a thread
        client = request.client.host if request.client else "unknown"
        wait = self.feedback_limit.wait(client)
        if wait:
            self.metrics.rejected("feedback_rate_limit")
            raise APIError(429, f"Too much feedback from {client}: this server takes at most"
                           f" {self.served.max_feedback_per_minute:g} records a minute from one client (serve"
                           " --max_feedback_per_minute). Retry later.", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        record = body.model_dump(exclude_none=True)
        record["kind"] = record.get("kind") or self.served.task
        if record["kind"] != self.served.task:
            raise APIError(400, f"This server serves a {self.served.task} model; send kind '{self.served.task}'", "kind")
        self.check_model(record.get("model"))
        record["model"] = self.served.name
        label = record.get("corrected_label")
        names = self.served.label_names
        if label is not None and names is not None:
            if isinstance(label, str) and label not in names:
                raise APIError(400, f"corrected_label '{label}' is not a class of this model: {names}", "corrected_label")
            if isinstance(label, int) and not 0 <= label < len(names):
                raise APIError(400, f"corrected_label {label} is out of range: 0..{len(names) - 1}", "corrected_label")
        try:
            stored = self.store.append(record)
        except ValueError as e:
            raise APIError(400, str(e)) from e
        except FeedbackStoreFull as e:
            logger.warning("feedback refused: %s", e)
            raise APIError(507, "The feedback store is full (serve --max_feedback_store_bytes); the record was not"
                           " stored", code="feedback_store_full") from e
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            logger.error("feedback refused: %s", e)
            raise APIError(507, "The disk of the feedback store is full; the record was not stored",
                           code="feedback_store_full") from e
        self.metrics.feedback(stored["kind"], stored.get("rating"), stored.get("corrected_text") is not None,
                              stored.get("corrected_label") is not None)
        return {"id": stored["id"], "object": "feedback", "created": stored["time"]}


def _raise_worker_error(response: Any) -> None:
    """A worker's error as an answer: its own status if it has one, else a 500 whose detail goes to the server
    log, not to the client."""
    status = getattr(response, "status_code", None)
    if status is not None:
        raise APIError(status, str(getattr(response, "detail", response)))
    logger.error("model worker failed: %r", response)
    raise APIError(500, "The model worker failed; see the server log", code="internal_error")


class CompletionSpec(_Spec):
    """OpenAI ``/v1/completions`` and ``/v1/chat/completions`` for a causal language model."""

    def __init__(self, served: Served, store: FeedbackStore) -> None:
        super().__init__(served, store, "/v1/completions")
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])

    @property
    def stream(self) -> bool:
        return True

    def _job(self, body: _Sampling, prompt: str, max_tokens: Optional[int], field: str) -> CompletionJob:
        s = self.served
        if len(prompt) > s.max_prompt_chars:  # too long to fit whatever it holds: not worth tokenizing
            raise APIError(400, f"The prompt is {len(prompt)} characters, too long for this server's limit of"
                           f" {s.max_prompt_tokens} tokens (serve --max_prompt_tokens, at most the model's block_size)."
                           " Shorten the prompt.", field, "context_length_exceeded")
        ids = self.tokenize(prompt, field)
        if not ids:
            raise APIError(400, f"'{field}' is empty; send at least one character", field)
        if len(ids) > s.max_prompt_tokens:
            raise APIError(400, f"The prompt is {len(ids)} tokens; this server accepts at most {s.max_prompt_tokens}"
                           " (serve --max_prompt_tokens, at most the model's block_size). Shorten the prompt.",
                           field, "context_length_exceeded")
        if max_tokens is None:
            max_tokens = s.max_tokens
        if max_tokens > s.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of {s.max_tokens}"
                           " (serve --max_tokens)", "max_tokens")
        return CompletionJob(ids, max_tokens, body.stops(), 1.0 if body.temperature is None else body.temperature,
                             1.0 if body.top_p is None else body.top_p, body.seed, bool(body.stream), new_job_id())

    async def completions(self, body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, f"Send one prompt per request (got {len(prompts)})", "prompt")
        limit = body.max_tokens if body.max_tokens is not None else min(16, self.served.max_tokens)
        return await self._answer(body, prompts[0], limit, "prompt", chat=False, request=request)

    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        prompt = chat_prompt(body.messages, chat_format.eos_token(self.served.tokenizer))
        return await self._answer(body, prompt, limit, "messages", chat=True, request=request)

    async def _answer(self, body: _Sampling, prompt: str, max_tokens: Optional[int], field: str, chat: bool,
                      request: Optional[Request] = None):
        self.check_model(body.model)
        start = (request_start(request.scope) if request is not None else None) or time.perf_counter()
        route = "/v1/chat/completions" if chat else "/v1/completions"
        self.admit()
        streaming = False
        try:
            # tokenizing a long prompt takes a while: in a thread, so the event loop goes on serving others
            job = await run_in_threadpool(self._job, body, prompt, max_tokens, field)
            if chat:  # an answer ends where the transcript's next turn would begin (lit_llm.chat.STOP_STRINGS)
                job = job.with_stops(chat_format.STOP_STRINGS)
            uid, item = self.submit(job, streaming=True)
            chunks = self._chunks(uid, item)
            try:  # a queue timeout or a failed worker is still a plain HTTP error
                first = await self._unless_gone(chunks.__anext__(), request, job.id)
            except BaseException:
                self.release(uid)
                raise
            if first is None:  # the client went away while its job waited or ran: nobody reads this
                return Response(status_code=499)
            meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uid.hex[:24]}", "created": int(time.time()),
                    "model": self.served.name,  # the checkpoint that answers (one for all of it, across reloads)
                    "system_fingerprint": first.system_fingerprint}
            if body.stream:
                self.metrics.first_token(route, time.perf_counter() - start)
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                state = {"finished": False}  # set by _sse once the worker has sent the job's last message

                def on_close() -> None:
                    if not state["finished"]:  # the client went away: the worker stops decoding this job
                        self.board.cancel(job.id)
                    self.leave()

                events = self._sse(first, chunks, meta, chat, include_usage, state)
                streaming = True  # from here the stream leaves the queue when it closes
                return _Stream(events, on_close, media_type="text/event-stream")
            rest = await self._unless_gone(self._rest(chunks), request, job.id)
            if rest is None:  # the client went away: nobody reads this
                return Response(status_code=499)
            parts = [first.text] + [piece.text for piece in rest]
            last = rest[-1] if rest else first
            self.metrics.tokens(route, last.usage.prompt_tokens, last.usage.completion_tokens)
        finally:
            if not streaming:
                self.leave()
        text = "".join(parts)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": last.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                "usage": last.usage.as_dict()}

    @staticmethod
    async def _rest(chunks: AsyncIterator[Piece]) -> list[Piece]:
        return [chunk async for chunk in chunks]

    async def _unless_gone(self, work, request: Optional[Request], job_id: int, every: float = 0.25):
        """Await a job's answer(s), checking every ``every`` s whether its client is still there (once the answer
        streams, Starlette tells ``_Stream`` instead). If it has gone, the worker stops the job and this returns
        None."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=every)
                if done:
                    return task.result()
                if request is not None and await request.is_disconnected():
                    self.board.cancel(job_id)
                    return None
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # runs _chunks' finally: the job is released

    async def _chunks(self, uid: uuid.UUID, item) -> AsyncIterator[Piece]:
        """The pieces of a job's completion, to its last one (the rest of its batch may still be running)."""
        try:
            async for message, failed in self.outputs(item):
                if failed:
                    _raise_worker_error(message)
                try:
                    piece = Piece.from_wire(message)  # None: nothing new for this job in a step of its batch
                except ValueError:  # a worker of another version: an error for the client, not a cut stream
                    logger.exception("a model worker sent a message this front end cannot read")
                    raise APIError(500, "The model worker failed; see the server log", code="internal_error")
                if piece is not None:
                    yield piece
                    if piece.last:
                        return
        finally:
            self.release(uid)

    async def _sse(self, first: Piece, chunks: AsyncIterator[Piece], meta: dict, chat: bool,
                   include_usage: bool, state: dict) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list, usage: Optional[dict] = None) -> str:
            payload = {**meta, "object": kind, "choices": choices}
            if include_usage:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n"

        def choice(text: str, finish: Optional[str]) -> dict:
            if chat:
                return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        try:
            if chat:
                yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            piece = first
            while True:
                state["finished"] = piece.last
                yield event([choice(piece.text, piece.finish_reason)])
                if piece.last:
                    self.metrics.tokens("/v1/chat/completions" if chat else "/v1/completions",
                                        piece.usage.prompt_tokens, piece.usage.completion_tokens)
                    if include_usage:
                        yield event([], piece.usage.as_dict())
                    break
                piece = await chunks.__anext__()
        except APIError as e:
            state["finished"] = True  # the worker failed: nothing left to stop
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': 'server_error', 'code': e.code}})}\n\n"
        finally:
            await chunks.aclose()
        yield "data: [DONE]\n\n"


class ClassifySpec(_Spec):
    """``POST /v1/classify``: labels and class probabilities of one text or a list of texts."""

    def __init__(self, served: Served, store: FeedbackStore) -> None:
        super().__init__(served, store, "/v1/classify")
        self.add_endpoint("/v1/classify", self.classify, ["POST"])
        # Lightning comes with it: imported when a classifier is served (before LitServe forks the front end),
        # not with lit_llm.serve
        from lit_llm.data.labelled import frame_examples

        self.frame_examples = frame_examples

    def _frame(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Each text's ids cut to max_prompt_tokens as training cuts to data.max_length ([EOS] / [CLS] [SEP]
        kept), and whether it was cut."""
        s = self.served
        heads = [t[: s.max_prompt_chars] for t in texts]
        try:
            full = self.frame_examples(s.tokenizer, heads, s.config.causal, max_length=1 << 30)
        except Exception:  # characters the vocabulary lacks: name the text and the characters
            for i, text in enumerate(heads):
                self.tokenize(text, f"input[{i}]")
            raise
        rows = self.frame_examples(s.tokenizer, heads, s.config.causal, max_length=s.max_prompt_tokens)
        return rows, [len(t) > len(h) or len(f) > len(r) for t, h, f, r in zip(texts, heads, full, rows)]

    async def classify(self, body: ClassificationRequest) -> dict:
        s = self.served
        self.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(texts) <= s.max_inputs:
            raise APIError(400, f"'input' takes 1 to {s.max_inputs} texts per request (serve --max_inputs), got"
                           f" {len(texts)}", "input")
        self.admit()
        try:
            # a text beyond the character bound cannot fit: only its first max_prompt_chars characters are
            # tokenized (it is truncated either way); in a thread, so the event loop goes on serving others
            rows, truncated = await run_in_threadpool(self._frame, texts)
            uid, item = self.submit(ClassifyJob(rows), streaming=False)
            try:
                response, failed = await self.output(item)
            finally:
                self.release(uid)
        finally:
            self.leave()
        if failed:
            _raise_worker_error(response)
        names = s.label_names
        data = []
        for i, probs in enumerate(response.probs):
            k = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": names[k], "label_id": k, "probs": dict(zip(names, probs)),
                         "truncated": truncated[i]})
        n_tokens = sum(len(r) for r in rows)
        self.metrics.tokens("/v1/classify", n_tokens, 0)
        return {"object": "list", "model": s.name, "data": data, "batch_requests": response.batch_requests,
                "system_fingerprint": response.system_fingerprint,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
