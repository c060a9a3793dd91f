"""The OpenAI-compatible protocol: request schemas, errors in OpenAI's shape, the chat transcript and the
hold-back of text that could still grow into a stop string.

No LitServe and no torch here: FastAPI and pydantic only.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, Optional, Sequence, Union

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lit_llm import chat

logger = logging.getLogger(__name__)
LONE_SURROGATE = ("holds a lone surrogate (U+D800..U+DFFF, e.g. an unpaired \\ud800 escape), which is not a character;"
                  " send valid Unicode text")


# ---------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status, as OpenAI does."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def _writable(text: Optional[str]) -> Optional[str]:
    """``text`` with any lone surrogate written as its escape (``\\ud800``): one cannot be encoded as UTF-8, and an
    error message that repeats a client's field name may hold one."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                    headers: Optional[dict[str, str]] = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": _writable(message), "type": kind, "param": _writable(param),
                                   "code": code}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    """One readable sentence per problem of a request body that failed its schema, and the first field named."""
    parts, first = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        field = ".".join(loc) or None
        if err.get("type") == "json_invalid":
            parts.append(f"The request body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})")
            continue
        if err.get("type") == "string_unicode":  # a string pydantic could not read: a lone surrogate (in a name)
            first = first or field
            parts.append(f"{f'Invalid {field!r}: a' if field else 'A'} field name or text {LONE_SURROGATE}")
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
        return _error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return _error_response(400, message, field, "invalid_request")

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s", request.url.path)
        return _error_response(500, "Internal server error; see the server log")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(Exception, on_other)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def install_host_check(app, allowed_hosts: Sequence[str]) -> None:
    """Answer only requests whose ``Host`` is one of ``allowed_hosts`` (any port; ``*.example.com`` for its
    subdomains; ``*`` for any): another Host gets 400 "Invalid host header" (Starlette's ``TrustedHostMiddleware``).
    A web page that points a domain of its own at this machine (DNS rebinding) sends that domain as Host."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    if "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)


# ---------------------------------------------------------------------------------------------- text
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> bool:
    """Whether ``value`` (a string, or lists and dicts of them) holds a lone surrogate: JSON can carry one as an
    escape (``"\\ud800"``), and Python's JSON reader lets its UTF-8-like bytes through too, but it is not a
    character, and the tokenizers, the feedback store and the JSON answers cannot take it."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, (list, tuple)):
        return any(_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    return False


# ---------------------------------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, not silently ignored

    @field_validator("*")
    @classmethod
    def _whole_characters(cls, value: Any) -> Any:
        if _lone_surrogate(value):
            raise ValueError(LONE_SURROGATE)
        return value


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
    # fields common clients send at their neutral value: accepted there, refused where they would change the
    # answer in a way this server cannot honour (no penalties, log-probabilities or logit biases)
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: Optional[Union[bool, int]] = None
    top_logprobs: Optional[int] = None
    logit_bias: Optional[dict[str, float]] = None

    @field_validator("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias")
    @classmethod
    def _neutral(cls, value: Any, info) -> Any:
        if value not in (None, 0, False, {}):
            raise ValueError(f"{info.field_name} is not supported by this server; omit it or send its neutral value"
                             f" ({'{}' if info.field_name == 'logit_bias' else 'false' if info.field_name == 'logprobs' else 0})")
        return value

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
    conversation_id: Optional[str] = None  # groups the records of one conversation (serve --ui's pages send one)


class ReloadRequest(_Strict):
    """``POST /v1/admin/reload``: the checkpoint to serve from now on; without one (or without a body), the file at
    the path served now, read again (a ``last.ckpt`` that a training run keeps replacing)."""

    checkpoint: Optional[str] = Field(None, min_length=1, max_length=4096)


def chat_prompt(messages: list[ChatMessage], eos: str = "") -> str:
    """The transcript the model continues (``lit_llm.chat``'s template, as instruction tuning trained it): one
    ``role: content`` line per message, each assistant turn closed by ``eos``, then ``assistant:``."""
    return chat.prompt([{"role": m.role, "content": m.text()} for m in messages], eos=eos)
