"""The HTTP side: two LitServe specs that glue the OpenAI-compatible routes to the model worker. A request is
checked and tokenized here, in the front end, then queued for the worker (``_litserve_adapter``)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from fastapi.responses import StreamingResponse
from tokenizers import Tokenizer

from lit_llm.data.tokenizer import encode
from lit_llm.feedback import FeedbackStore
from lit_llm.serve._litserve_adapter import QueueSpec
from lit_llm.serve.protocol import (APIError, ChatCompletionRequest, ClassificationRequest, CompletionRequest,
                                    FeedbackRequest, _Sampling, chat_prompt)

if TYPE_CHECKING:
    from lit_llm.model import ModelConfig

logger = logging.getLogger(__name__)


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


class _Spec(QueueSpec):
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
        uid, item = self.submit(job, streaming=True)
        chunks = self._chunks(uid, item)
        try:
            first = await chunks.__anext__()  # a queue timeout or a failed worker is still a plain HTTP error
        except BaseException:
            self.release(uid)
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

    async def _chunks(self, uid: uuid.UUID, item) -> AsyncIterator[dict]:
        try:
            async for message, failed in self.outputs(item):
                if failed:
                    _raise_worker_error(message)
                if message:  # {}: nothing new for this request in a step of its batch
                    yield message
                if "usage" in message:  # its last message; the rest of its batch may still be running
                    return
        finally:
            self.release(uid)

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
        # Lightning comes with it: imported when a classifier is served (before LitServe forks the front end),
        # not with lit_llm.serve
        from lit_llm.data.labelled import frame_examples

        self.frame_examples = frame_examples

    async def classify(self, body: ClassificationRequest) -> dict:
        s = self.served
        self.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(texts) <= s.max_inputs:
            raise APIError(400, f"'input' takes 1 to {s.max_inputs} texts per request (serve --max_inputs), got"
                           f" {len(texts)}", "input")
        try:  # cut to max_prompt_tokens as training cuts to data.max_length, with [EOS] / [CLS] [SEP] kept
            full = self.frame_examples(s.tokenizer, texts, s.config.causal, max_length=1 << 30)
        except Exception:  # characters the vocabulary lacks: name the text and the characters
            for i, text in enumerate(texts):
                self.tokenize(text, f"input[{i}]")
            raise
        rows = self.frame_examples(s.tokenizer, texts, s.config.causal, max_length=s.max_prompt_tokens)
        uid, item = self.submit({"ids": rows}, streaming=False)
        try:
            response, failed = await self.output(item)
        finally:
            self.release(uid)
        if failed:
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
