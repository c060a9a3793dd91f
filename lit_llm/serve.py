"""Serving a checkpoint: ``python -m lit_llm serve --checkpoint CKPT [--host 127.0.0.1 --port 8000]``.

Built on LitServe: its server runs the HTTP front end (FastAPI under uvicorn) and the model in separate worker
processes, queues requests between them, and batches concurrent requests for a model that takes batches. What
is ours is the OpenAI-compatible protocol, written as two LitServe specs:

- a causal language model gets ``POST /v1/completions`` and ``POST /v1/chat/completions`` (with ``stream``
  over server-sent events, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed`` and the token usage
  as counted by the model's tokenizer). Requests that arrive together are batched by LitServe
  (``--max_batch_size``, ``--batch_timeout``) and decoded together with the KV cache, left-padded with a
  mask, each with its own sampling settings and seed; ``--workers`` runs several model workers;
- a classifier (``SequenceClassifier``) checkpoint gets ``POST /v1/classify``: ``{"input": text or [texts]}``
  gives each text's label and class probabilities. Concurrent requests are batched by LitServe
  (``--max_batch_size``, ``--batch_timeout``) and padded together into one forward pass;
- both get ``GET /v1/models``, ``POST /v1/feedback`` (users' ratings and corrections, appended to a
  ``lit_llm.feedback`` store that fine-tuning reads) and LitServe's ``GET /health``.

Requests are checked in the front end before they reach the model: unknown fields, a prompt longer than
``--max_prompt_tokens``, ``max_tokens`` above ``--max_tokens``, a wrong API key and malformed JSON get a 4xx
with an OpenAI-style error body that says what was wrong. The server binds 127.0.0.1 unless told otherwise;
with ``--api_key`` (or ``$LIT_LLM_API_KEY``) every route except ``/health`` needs ``Authorization: Bearer KEY``
(what the ``openai`` client sends) or ``X-API-Key: KEY``.

Chat messages become one prompt as a plain transcript, ``"{role}: {content}\\n"`` per message followed by
``"assistant:"``: a from-scratch base model has no chat template of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import secrets
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional, Union

import litserve as ls
import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from tokenizers import Tokenizer

from lit_llm.data.labelled import frame_examples, pad_examples
from lit_llm.data.tokenizer import encode
from lit_llm.feedback import FeedbackStore
from lit_llm.generate import iter_batch_tokens, iter_tokens, load_checkpoint, sample_next
from lit_llm.model import ModelConfig
from lit_llm.modules.language_model import CKPT_KEY

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe can bind
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status, as OpenAI does."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    """One readable sentence per problem of a request body that failed its schema, and the first field named."""
    parts, first = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        field = ".".join(loc) or None
        if err.get("type") == "json_invalid":
            parts.append(f"The request body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})")
            continue
        first = first or field
        if field is None:
            parts.append("The request body must be a JSON object (and sent with Content-Type: application/json)")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"Unknown field '{field}'; remove it (this server does not support it)")
        elif err.get("type") == "missing":
            parts.append(f"Missing required field '{field}'")
        else:
            parts.append(f"Invalid '{field}': {err.get('msg')}")
    return "; ".join(parts) or "Invalid request", first


def install_error_handlers(app) -> None:
    """Answer schema errors with 400 (the OpenAI API's status for a bad request) and every error in OpenAI's shape."""

    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.param, exc.code)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return _error_response(400, message, field, "invalid_request")

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail))

    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s", request.url.path)
        return _error_response(500, "Internal server error; see the server log")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(Exception, on_other)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


# ---------------------------------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, not silently ignored


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    # null means the default, as in OpenAI's API
    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**63)  # what torch.Generator.manual_seed takes
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = None
    user: Optional[str] = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: Optional[int]) -> Optional[int]:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported; send several requests for several samples")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(None, ge=1)  # None: 16 (OpenAI's default), at most the server's limit


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class ClassificationRequest(_Strict):
    model: Optional[str] = None
    input: Union[str, list[str]]


class FeedbackRequest(_Strict):
    kind: Optional[Literal["completion", "classification"]] = None  # default: what the server serves
    request: str
    response: Optional[str] = None
    rating: Optional[int] = None
    corrected_label: Optional[Union[int, str]] = None
    corrected_text: Optional[str] = None
    model: Optional[str] = None


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The plain transcript a base model continues: one ``role: content`` line per message, then ``assistant:``."""
    return "".join(f"{m.role}: {m.text()}\n" for m in messages) + "assistant:"


# ---------------------------------------------------------------------------------------------- model side
def _held_back(text: str, stops: list[str]) -> int:
    """How much of ``text`` may be sent now: not a tail that could still grow into a stop string, nor a
    trailing U+FFFD (a multi-byte character whose other bytes are still to come)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    safe = len(text) - hold
    while safe > 0 and text[safe - 1] == "\ufffd":
        safe -= 1
    return safe


class CompletionText:
    """One completion's text as its tokens arrive: where it ends ([EOS], a stop string, ``max_tokens``) and
    which text is final and may be sent.

    ``push`` returns ``{"text": delta}`` (``{}`` while nothing new is final) and, once the completion ends, the
    last message ``{"text", "finish_reason", "usage"}``. The stop string itself is not returned, and
    ``completion_tokens`` counts every token the model sampled."""

    def __init__(self, tok: Tokenizer, prompt: list[int], max_tokens: int, stops: Optional[list[str]] = None) -> None:
        self.tok, self.prompt, self.max_tokens, self.stops = tok, prompt, max_tokens, stops or []
        self.prompt_tokens = len(prompt)
        # the completion is decoded after its prompt: WordPiece and Metaspace (unigram) decoders drop the
        # space before a sequence's first word, which here is not the first word
        self.prefix = tok.decode(prompt)
        self.eos = tok.token_to_id("[EOS]")
        self.ids: list[int] = []
        self.sampled, self.sent, self.text = 0, 0, ""
        self.finish: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    def push(self, token: int) -> dict[str, Any]:
        self.sampled += 1
        if token == self.eos:
            return self._end("stop")
        self.ids.append(token)
        self.text = self._decode()
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._end("stop")
        if self.sampled >= self.max_tokens:
            return self._end("length")
        safe = _held_back(self.text, self.stops)
        if safe <= self.sent:
            return {}
        delta, self.sent = self.text[self.sent : safe], safe
        return {"text": delta}

    def _decode(self) -> str:
        """The completion's text (special tokens such as [UNK] and [PAD] are not text)."""
        full = self.tok.decode(self.prompt + self.ids)
        return full[len(self.prefix) :] if full.startswith(self.prefix) else self.tok.decode(self.ids)

    def _end(self, reason: str) -> dict[str, Any]:
        self.finish = reason
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.sampled,
                 "total_tokens": self.prompt_tokens + self.sampled}
        return {"text": self.text[self.sent :], "finish_reason": reason, "usage": usage}


def _sampler(temperature: float, top_p: float, seed: Optional[int], device) -> Callable[[torch.Tensor], torch.Tensor]:
    """(1, V) logits -> (1, 1) token with this request's settings and its own seeded generator."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return lambda logits: sample_next(logits, temperature, None, top_p if top_p < 1 else None, generator)


def stream_completion(model, tok: Tokenizer, ids: list[int], max_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0, stops: Optional[list[str]] = None, seed: Optional[int] = None,
                      use_cache: bool = True) -> Iterator[dict[str, Any]]:
    """One completion after ``ids``, as ``CompletionText`` messages (empty ones left out). Past
    ``block_size`` the context slides (``iter_tokens``)."""
    state = CompletionText(tok, ids, max_tokens, stops)
    device = next(model.parameters()).device
    sample = _sampler(temperature, top_p, seed, device)
    for token in iter_tokens(model, torch.tensor([ids], device=device), max_tokens, use_cache=use_cache, sample=sample):
        message = state.push(int(token))
        if message:
            yield message
        if state.done:
            return


def stream_batch(model, tok: Tokenizer, jobs: list[dict], use_cache: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Several completions decoded together (``iter_batch_tokens``): per step, one message per job (``{}`` for
    nothing new or a finished job). Each job samples with its own settings and seed, so its tokens are those
    it would get alone. Stops early once every job has ended."""
    device = next(model.parameters()).device
    states = [CompletionText(tok, j["ids"], j["max_tokens"], j["stop"]) for j in jobs]
    samplers = [_sampler(j["temperature"], j["top_p"], j["seed"], device) for j in jobs]

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([f(logits[r : r + 1]) for r, f in enumerate(samplers)])

    pad = tok.token_to_id("[PAD]") or 0
    steps = max(j["max_tokens"] for j in jobs)
    for tokens in iter_batch_tokens(model, [j["ids"] for j in jobs], steps, sample, use_cache, pad):
        yield [{} if st.done else st.push(int(t)) for st, t in zip(states, tokens.tolist())]
        if all(st.done for st in states):
            return


def _fits_together(jobs: list[dict], block_size: int) -> bool:
    return max(len(j["ids"]) for j in jobs) + max(j["max_tokens"] for j in jobs) <= block_size


class _WorkerAPI:
    """What both model workers share: the optional API key, checked by LitServe on every route it registers
    (``LitAPI.authorize``), and the CPU threads of a worker: ``serve`` splits the cores between the workers (each torch process would
    otherwise take them all, and N workers would fight over them)."""

    api_key: Optional[str] = None
    cpu_threads: Optional[int] = None

    def _use_threads(self, device: str) -> None:
        if str(device).startswith("cpu") and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def authorize(self, request: Request) -> None:
        if not self.api_key or request.url.path == "/health":
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not secrets.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "Invalid or missing API key: send 'Authorization: Bearer KEY' (the openai client's"
                           " api_key) or 'X-API-Key: KEY'", code="invalid_api_key")


class GenerationAPI(_WorkerAPI, ls.LitAPI):
    """The model worker of a causal checkpoint. LitServe hands it up to ``max_batch_size`` requests that
    arrived within ``batch_timeout`` of each other; they are decoded together with the KV cache and each
    streams its own text. A batch whose longest prompt plus largest ``max_tokens`` exceeds ``block_size``
    runs one request after the other instead (each then slides its context past the block)."""

    def __init__(self, checkpoint: str, spec: "CompletionSpec", api_key: Optional[str] = None, use_cache: bool = True,
                 max_batch_size: int = 8, batch_timeout: float = 0.005):
        super().__init__(spec=spec, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint, self.api_key, self.use_cache = checkpoint, api_key, use_cache

    def setup(self, device: str) -> None:
        self._use_threads(device)
        self.model, self.tokenizer = load_checkpoint(self.checkpoint, device)

    def decode_request(self, request: dict) -> dict:
        return request  # the front end already tokenized and checked it

    def batch(self, jobs: list[dict]) -> list[dict]:
        return jobs

    def _one(self, job: dict) -> Iterator[dict]:
        return stream_completion(self.model, self.tokenizer, job["ids"], job["max_tokens"], job["temperature"],
                                 job["top_p"], job["stop"], job["seed"], self.use_cache)

    def _steps(self, jobs: list[dict]) -> Iterator[list[dict]]:
        """Per step, one message per job."""
        if len(jobs) > 1 and _fits_together(jobs, self.model.config.block_size):
            yield from stream_batch(self.model, self.tokenizer, jobs, self.use_cache)
            return
        for i, job in enumerate(jobs):
            for message in self._one(job):
                yield [message if k == i else {} for k in range(len(jobs))]

    def predict(self, jobs: Union[dict, list[dict]]) -> Iterator:
        single = isinstance(jobs, dict)  # max_batch_size 1: LitServe's unbatched loop
        jobs = [jobs] if single else jobs
        # a client that does not stream gets one message from the worker instead of one per token
        parts: list[list[str]] = [[] for _ in jobs]
        for step in self._steps(jobs):
            out = []
            for job, part, message in zip(jobs, parts, step):
                if message and not job["stream"]:
                    part.append(message["text"])
                    message = {**message, "text": "".join(part)} if "usage" in message else {}
                out.append(message)
            if any(out):  # LitServe sends one message per request of each list: skip steps with nothing to say
                yield out[0] if single else out

    def unbatch(self, steps: Iterator) -> Iterator:
        return steps

    def encode_response(self, outputs: Iterator) -> Iterator:
        yield from outputs


class ClassifierAPI(_WorkerAPI, ls.LitAPI):
    """The model worker of a classifier checkpoint: LitServe hands it up to ``max_batch_size`` concurrent
    requests at once, whose texts are padded into one forward pass."""

    def __init__(self, checkpoint: str, spec: "ClassifySpec", api_key: Optional[str] = None, max_batch_size: int = 8,
                 batch_timeout: float = 0.005):
        super().__init__(spec=spec, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint, self.api_key = checkpoint, api_key

    def setup(self, device: str) -> None:
        from lit_llm.modules import SequenceClassifier

        self._use_threads(device)
        model = SequenceClassifier.restore(self.checkpoint)
        if hasattr(model.backbone, "peft_config"):
            model.merge_lora()  # the same logits with plain modules
        self.model = model.to(device).eval()
        self.device = device

    def decode_request(self, request: dict) -> dict:
        return request

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs

    @torch.inference_mode()
    def predict(self, jobs: Union[dict, list[dict]]) -> Union[dict, list[dict]]:
        single = isinstance(jobs, dict)
        jobs = [jobs] if single else jobs
        rows = [ids for job in jobs for ids in job["ids"]]
        input_ids, mask = pad_examples(self.model.tokenizer, rows)
        probs = self.model(input_ids.to(self.device), mask.to(self.device)).float().softmax(-1).cpu().tolist()
        out, start = [], 0
        for job in jobs:
            n = len(job["ids"])
            out.append({"probs": probs[start : start + n], "batch_requests": len(jobs)})
            start += n
        return out[0] if single else out

    def unbatch(self, outputs: list[dict]) -> list[dict]:
        return outputs

    def encode_response(self, output: dict) -> dict:
        return output


# ---------------------------------------------------------------------------------------------- HTTP side
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


class _Spec(LitSpec):
    """Routes shared by both kinds of server: the model list and the feedback store."""

    def __init__(self, served: Served, store: FeedbackStore, api_path: str) -> None:
        super().__init__()
        self.served, self.store, self.api_path = served, store, api_path
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/feedback", self.feedback, ["POST"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    def check_model(self, name: Optional[str]) -> None:
        if name and name != self.served.name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.served.name}'"
                           " (GET /v1/models)", "model", "model_not_found")

    def tokenize(self, text: str, field: str) -> list[int]:
        try:
            return encode(self.served.tokenizer, text)
        except ValueError as e:
            raise APIError(400, f"'{field}': {e}", field, "invalid_text") from e

    async def models(self) -> dict:
        s = self.served
        return {"object": "list", "data": [{"id": s.name, "object": "model", "created": s.created, "owned_by": "lit_llm",
                                            "task": s.task, "max_prompt_tokens": s.max_prompt_tokens}]}

    def feedback(self, body: FeedbackRequest) -> dict:  # plain def: FastAPI runs the fsync'd append in a thread
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
        return {"id": stored["id"], "object": "feedback", "created": stored["time"]}

    # -------------------------------------------------------------- the queue to the model workers
    def _submit(self, job: dict, streaming: bool) -> tuple[uuid.UUID, ResponseBufferItem]:
        uid = uuid.uuid4()
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque() if streaming else None)
        self.response_buffer[uid] = item
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        return uid, item


def _raise_worker_error(response: Any) -> None:
    """A worker's error (LitServe sends it pickled) as an answer: its own status if it has one, else a 500
    whose detail goes to the server log, not to the client."""
    if isinstance(response, bytes):
        try:
            response = pickle.loads(response)
        except Exception:  # noqa: BLE001 - an unreadable error is still an error
            pass
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

    def _job(self, body: _Sampling, prompt: str, max_tokens: Optional[int], field: str) -> dict:
        s = self.served
        self.check_model(body.model)
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
        return {"ids": ids, "max_tokens": max_tokens, "stop": body.stops(), "seed": body.seed,
                "temperature": 1.0 if body.temperature is None else body.temperature,
                "top_p": 1.0 if body.top_p is None else body.top_p, "stream": bool(body.stream)}

    async def completions(self, body: CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, f"Send one prompt per request (got {len(prompts)})", "prompt")
        limit = body.max_tokens if body.max_tokens is not None else min(16, self.served.max_tokens)
        job = self._job(body, prompts[0], limit, "prompt")
        return await self._answer(job, body, chat=False)

    async def chat_completions(self, body: ChatCompletionRequest):
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        job = self._job(body, chat_prompt(body.messages), limit, "messages")
        return await self._answer(job, body, chat=True)

    async def _answer(self, job: dict, body: _Sampling, chat: bool):
        uid, item = self._submit(job, streaming=True)
        chunks = self._chunks(uid, item)
        try:
            first = await chunks.__anext__()  # a queue timeout or a failed worker is still a plain HTTP error
        except BaseException:
            self.response_buffer.pop(uid, None)
            raise
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uid.hex[:24]}", "created": int(time.time()),
                "model": self.served.name}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._sse(first, chunks, meta, chat, include_usage), media_type="text/event-stream")
        parts, last = [first["text"]], first
        async for chunk in chunks:
            parts.append(chunk["text"])
            last = chunk
        text = "".join(parts)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": last["finish_reason"]}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last["finish_reason"]}
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                "usage": last["usage"]}

    async def _chunks(self, uid: uuid.UUID, item: ResponseBufferItem) -> AsyncIterator[dict]:
        try:
            async for data, status in self.data_streamer(item.response_queue, item.event, send_status=True):
                if status == LitAPIStatus.ERROR:
                    _raise_worker_error(data)
                message = json.loads(data)
                if message:  # {}: nothing new for this request in a step of its batch
                    yield message
                if "usage" in message:  # its last message; the rest of its batch may still be running
                    return
        finally:
            self.response_buffer.pop(uid, None)

    async def _sse(self, first: dict, chunks: AsyncIterator[dict], meta: dict, chat: bool,
                   include_usage: bool) -> AsyncIterator[str]:
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
            chunk = first
            while True:
                yield event([choice(chunk["text"], chunk.get("finish_reason"))])
                if "usage" in chunk:
                    if include_usage:
                        yield event([], chunk["usage"])
                    break
                chunk = await chunks.__anext__()
        except APIError as e:
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': 'server_error', 'code': e.code}})}\n\n"
        yield "data: [DONE]\n\n"


class ClassifySpec(_Spec):
    """``POST /v1/classify``: labels and class probabilities of one text or a list of texts."""

    def __init__(self, served: Served, store: FeedbackStore) -> None:
        super().__init__(served, store, "/v1/classify")
        self.add_endpoint("/v1/classify", self.classify, ["POST"])

    async def classify(self, body: ClassificationRequest) -> dict:
        s = self.served
        self.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(texts) <= s.max_inputs:
            raise APIError(400, f"'input' takes 1 to {s.max_inputs} texts per request (serve --max_inputs), got"
                           f" {len(texts)}", "input")
        try:  # cut to max_prompt_tokens as training cuts to data.max_length, with [EOS] / [CLS] [SEP] kept
            full = frame_examples(s.tokenizer, texts, s.config.causal, max_length=1 << 30)
        except Exception:  # characters the vocabulary lacks: name the text and the characters
            for i, text in enumerate(texts):
                self.tokenize(text, f"input[{i}]")
            raise
        rows = frame_examples(s.tokenizer, texts, s.config.causal, max_length=s.max_prompt_tokens)
        uid, item = self._submit({"ids": rows}, streaming=False)
        try:
            await item.event.wait()
        finally:
            self.response_buffer.pop(uid, None)
        response, status = item.response
        if status == LitAPIStatus.ERROR:
            _raise_worker_error(response)
        names = s.label_names
        data = []
        for i, probs in enumerate(response["probs"]):
            k = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": names[k], "label_id": k, "probs": dict(zip(names, probs)),
                         "truncated": len(full[i]) > len(rows[i])})
        n_tokens = sum(len(r) for r in rows)
        return {"object": "list", "model": s.name, "data": data, "batch_requests": response["batch_requests"],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# ---------------------------------------------------------------------------------------------- command
def read_served(checkpoint: str, name: Optional[str], max_prompt_tokens: Optional[int], max_tokens: int,
                max_inputs: int) -> Served:
    """The checkpoint's task, tokenizer and config (memory-mapped: the weights are not read), with the limits checked."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; pass the .ckpt file that fit wrote")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    extra = ckpt.get(CKPT_KEY)
    if not extra or not extra.get("tokenizer"):
        raise ValueError(f"{path} carries no lit_llm model config and tokenizer; it was not written by `lit_llm fit`")
    config = ModelConfig.from_dict(extra["model_config"])
    task = "classification" if extra.get("task") == "classification" else "completion"
    if task == "completion" and not config.causal:
        raise ValueError(f"{path} holds a {config.family} encoder, which does not generate text: serve a causal"
                         " (gpt2/llama) checkpoint, or a classifier fine-tuned from this one")
    limit = config.block_size if max_prompt_tokens is None else max_prompt_tokens
    if not 1 <= limit <= config.block_size:
        raise ValueError(f"max_prompt_tokens must be in 1..{config.block_size} (the model's block_size), got {limit}")
    if max_tokens < 1 or max_inputs < 1:
        raise ValueError(f"max_tokens and max_inputs must be >= 1, got {max_tokens} and {max_inputs}")
    labels = None
    if task == "classification":
        labels = (ckpt.get("hyper_parameters") or {}).get("label_names") or extra.get("label_names")
        labels = list(labels) if labels else [str(i) for i in range(extra["num_classes"])]
    return Served(name=name or path.stem, task=task, tokenizer=Tokenizer.from_str(extra["tokenizer"]), config=config,
                  created=int(path.stat().st_mtime), max_prompt_tokens=limit, max_tokens=max_tokens,
                  max_inputs=max_inputs, label_names=labels)


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    model_name: Optional[str] = None,
    feedback_store: str = "feedback.jsonl",
    max_prompt_tokens: Optional[int] = None,
    max_tokens: int = 256,
    max_inputs: int = 32,
    max_batch_size: int = 8,
    batch_timeout: float = 0.005,
    workers: int = 1,
    accelerator: str = "auto",
    use_cache: bool = True,
    timeout: float = 60.0,
    max_payload_bytes: int = 1 << 20,
    log_level: str = "info",
) -> None:
    """Serve a checkpoint over HTTP: OpenAI-compatible completions and chat for a language model, /v1/classify for
    a classifier, plus /v1/models, /v1/feedback and /health.

    Args:
        checkpoint: a .ckpt written by ``fit`` (a causal language model or a SequenceClassifier).
        host: address to bind: 127.0.0.1 (this machine only), 0.0.0.0 or ::.
        port: TCP port.
        api_key: require this key (``Authorization: Bearer KEY``) on every route but /health. Default:
            ``$LIT_LLM_API_KEY``, else no key. Prefer the variable: a flag shows in the process list.
        model_name: the model id clients send and /v1/models lists (default: the checkpoint's file stem).
        feedback_store: JSON-lines file that POST /v1/feedback appends to.
        max_prompt_tokens: longest prompt accepted, in tokens (default: block_size); a longer one is refused.
            A classifier cuts longer texts to this length instead, as training cuts them to data.max_length,
            and marks them ``truncated``.
        max_tokens: most tokens one completion may ask for; also the default when a chat request names none.
        max_inputs: most texts in one /v1/classify request.
        max_batch_size: most concurrent requests LitServe batches together: decoded together (generation) or
            padded into one forward pass (classification). 1 turns batching off.
        batch_timeout: seconds LitServe waits to fill a batch.
        workers: model worker processes (each holds a copy of the model).
        accelerator: auto, cpu, cuda or mps.
        use_cache: generate with the KV cache (the output is the same without it, only slower).
        timeout: seconds a request may wait in the queue before it is answered 504.
        max_payload_bytes: largest request body accepted, in bytes (413 above it).
        log_level: uvicorn / LitServe log level.
    """
    if host not in HOSTS:
        raise ValueError(f"host must be one of {HOSTS} (LitServe binds those), got {host!r}")
    if not 1024 <= port <= 65535:
        raise ValueError(f"port must be in 1024..65535, got {port}")
    api_key = api_key or os.environ.get("LIT_LLM_API_KEY") or None
    served = read_served(checkpoint, model_name, max_prompt_tokens, max_tokens, max_inputs)
    store = FeedbackStore(feedback_store)
    folder = store.path.resolve().parent
    while not folder.exists():  # the store's folder is created on the first append: check where it would be
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"Cannot write the feedback store {store.path} ({folder} is not writable);"
                              " pass --feedback_store PATH somewhere writable")
    if served.task == "classification":
        api = ClassifierAPI(checkpoint, ClassifySpec(served, store), api_key, max_batch_size, batch_timeout)
    else:
        api = GenerationAPI(checkpoint, CompletionSpec(served, store), api_key, use_cache, max_batch_size, batch_timeout)
    api.cpu_threads = max(1, (os.cpu_count() or 1) // workers)
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=workers, timeout=timeout,
                          max_payload_size=max_payload_bytes, model_metadata={"name": served.name, "task": served.task})
    install_error_handlers(server.app)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(f"Cannot listen on {host}:{port} ({e.strerror}); another server holds it: pass --port") from e
    routes = "/v1/classify" if served.task == "classification" else "/v1/completions, /v1/chat/completions"
    print(f"serving '{served.name}' ({served.task}) on http://{host}:{port}: {routes}, /v1/models, /v1/feedback,"
          f" /health; feedback -> {Path(feedback_store).resolve()}; API key {'required' if api_key else 'off'}",
          flush=True)
    server.run(host=host, port=port, generate_client_file=False, log_level=log_level)


# ---------------------------------------------------------------------------------------------- launching
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m lit_llm serve`` in a subprocess on a free loopback port, for tests, benchmarks and notebooks.

    LitServe runs the front end and the model workers as child processes, so the server starts in a process
    group of its own and ``stop`` signals the whole group: killing only the parent would leave the workers.

    Args:
        checkpoint: the .ckpt to serve.
        args: more ``serve`` flags, e.g. ``["--max_batch_size", "4"]``.
        env: the environment (default: this one).
        log: file that receives the server's stdout and stderr (default: discarded).
        cwd: the server's working directory (a relative ``--feedback_store`` is found there).
        startup_timeout: seconds to wait for /health to answer 200.
    """

    def __init__(self, checkpoint: str | Path, args: Optional[list[str]] = None, env: Optional[dict] = None,
                 log: Optional[str | Path] = None, cwd: Optional[str | Path] = None,
                 startup_timeout: float = 180.0) -> None:
        self.checkpoint, self.args, self.env, self.log, self.cwd = str(checkpoint), list(args or []), env, log, cwd
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.proc = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        import subprocess
        import sys
        import urllib.request

        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "lit_llm", "serve", "--checkpoint", self.checkpoint, "--host", "127.0.0.1",
               "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True)  # its own process group: stop() ends it whole
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = Path(self.log).read_text(errors="replace")[-3000:] if self.log else ""
                raise RuntimeError(f"lit_llm serve exited with {self.proc.returncode} before it was ready:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"lit_llm serve did not answer /health within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after 15 s."""
        import signal

        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()  # reap the leader, or it lingers as a zombie in the group
                time.sleep(0.2)
            if not _group_alive(self.proc.pid):
                break
        self.proc.wait(timeout=5)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
