"""The model worker: the LitServe ``LitAPI``s that hold a checkpoint's model (one per worker process), and
the decoding they run (one completion, or a batch decoded together with the KV cache).

Only LitServe's public ``LitAPI`` is used here. What loads a model (``load_checkpoint``, ``SequenceClassifier``,
which brings Lightning) is imported in the worker's ``setup``, so that importing ``lit_llm.serve`` stays light.
"""

from __future__ import annotations

import logging
import secrets
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Container, Iterator, Optional, Union

import litserve as ls
import torch
from fastapi import Request
from tokenizers import Tokenizer

from lit_llm.generate import ContinuousBatch, iter_batch_tokens, iter_tokens, sample_next, sample_rows
from lit_llm.serve._litserve_adapter import ContinuousLoop, Output, Status, in_model_worker
from lit_llm.serve.protocol import APIError, _held_back

if TYPE_CHECKING:
    from lit_llm.serve.specs import ClassifySpec, CompletionSpec

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- decoding
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

    def cancel(self) -> None:
        """The client has gone: the completion ends here, with nothing more to send."""
        self.finish = "cancelled"

    def _end(self, reason: str) -> dict[str, Any]:
        self.finish = reason
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.sampled,
                 "total_tokens": self.prompt_tokens + self.sampled}
        return {"text": self.text[self.sent :], "finish_reason": reason, "usage": usage}


def _sampling(temperature: float, top_p: float, seed: Optional[int], device) -> tuple[float, float, torch.Generator]:
    """A request's temperature and top-p as sampling uses them, and its own seeded generator."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    # logits are sampled in float32: a positive temperature or top_p below its smallest normal number (5e-324 from
    # a client) would round to 0 there and give NaN probabilities; at the smallest normal both mean greedy
    tiny = torch.finfo(torch.float32).tiny
    return temperature if temperature == 0 else max(temperature, tiny), max(top_p, tiny), generator


def _sampler(temperature: float, top_p: float, seed: Optional[int], device) -> Callable[[torch.Tensor], torch.Tensor]:
    """(1, V) logits -> (1, 1) token with this request's settings and its own seeded generator."""
    temperature, top_p, generator = _sampling(temperature, top_p, seed, device)
    return lambda logits: sample_next(logits, temperature, None, top_p if top_p < 1 else None, generator)


Cancelled = Callable[[], Container[int]]  # the ids of the jobs whose clients have gone (CancelBoard.cancelled)


def _stop_gone(states: list[CompletionText], job_ids: list[Optional[int]], cancelled: Optional[Cancelled]) -> None:
    """End the completions whose clients have gone, and log how far each got."""
    if cancelled is None:
        return
    gone = cancelled()
    for state, job_id in zip(states, job_ids):
        if not state.done and job_id is not None and job_id in gone:
            state.cancel()
            logger.warning("client gone: stopped job %x after %d of %d tokens", job_id, state.sampled, state.max_tokens)


def stream_completion(model, tok: Tokenizer, ids: list[int], max_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0, stops: Optional[list[str]] = None, seed: Optional[int] = None,
                      use_cache: bool = True, job_id: Optional[int] = None,
                      cancelled: Optional[Cancelled] = None) -> Iterator[dict[str, Any]]:
    """One completion after ``ids``, as ``CompletionText`` messages (empty ones left out). Past
    ``block_size`` the context slides (``iter_tokens``). It stops, silently, once ``cancelled()`` holds
    ``job_id`` (checked before each token)."""
    state = CompletionText(tok, ids, max_tokens, stops)
    _stop_gone([state], [job_id], cancelled)
    if state.done:
        return
    device = next(model.parameters()).device
    sample = _sampler(temperature, top_p, seed, device)
    for token in iter_tokens(model, torch.tensor([ids], device=device), max_tokens, use_cache=use_cache, sample=sample):
        _stop_gone([state], [job_id], cancelled)
        if state.done:
            return
        message = state.push(int(token))
        if message:
            yield message
        if state.done:
            return


def stream_batch(model, tok: Tokenizer, jobs: list[dict], use_cache: bool = True,
                 cancelled: Optional[Cancelled] = None) -> Iterator[list[dict[str, Any]]]:
    """Several completions decoded together (``iter_batch_tokens``): per step, one message per job (``{}`` for
    nothing new or a finished job). Each job samples with its own settings and seed, so its tokens are those
    it would get alone. A job whose ``id`` is in ``cancelled()`` (checked before each step) ends with nothing
    more to send. Stops early once every job has ended."""
    device = next(model.parameters()).device
    states = [CompletionText(tok, j["ids"], j["max_tokens"], j["stop"]) for j in jobs]
    job_ids = [j.get("id") for j in jobs]
    _stop_gone(states, job_ids, cancelled)
    if all(st.done for st in states):
        return
    samplers = [_sampler(j["temperature"], j["top_p"], j["seed"], device) for j in jobs]

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([f(logits[r : r + 1]) for r, f in enumerate(samplers)])

    pad = tok.token_to_id("[PAD]") or 0
    steps = max(j["max_tokens"] for j in jobs)
    for tokens in iter_batch_tokens(model, [j["ids"] for j in jobs], steps, sample, use_cache, pad):
        _stop_gone(states, job_ids, cancelled)
        yield [{} if st.done else st.push(int(t)) for st, t in zip(states, tokens.tolist())]
        if all(st.done for st in states):
            return


def for_client(job: dict, part: list[str], message: dict[str, Any]) -> dict[str, Any]:
    """What to send the client of ``job``: a client that does not stream gets one message, the last (its text
    gathered in ``part``), instead of one per token."""
    if message and not job["stream"]:
        part.append(message["text"])
        return {**message, "text": "".join(part)} if "usage" in message else {}
    return message


def _fits_together(jobs: list[dict], block_size: int) -> bool:
    return max(len(j["ids"]) for j in jobs) + max(j["max_tokens"] for j in jobs) <= block_size


# ---------------------------------------------------------------------------------------------- model workers
class _WorkerAPI:
    """What both model workers share: the optional API key, checked by LitServe on every route it registers
    (``LitAPI.authorize``), and the CPU threads of a worker: ``serve`` splits the cores between the workers (each torch process would
    otherwise take them all, and N workers would fight over them)."""

    api_key: Optional[str] = None
    cpu_threads: Optional[int] = None

    def _use_threads(self, device: str) -> None:
        if str(device).startswith("cpu") and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    @staticmethod
    def _leave_signals_to_the_server() -> None:
        """Ctrl+C sends SIGINT to every process of the terminal's group: a model worker ignores it, and the server
        stops it once the front ends have finished their requests (``serve``'s ``_Shutdown``)."""
        if in_model_worker():
            signal.signal(signal.SIGINT, signal.SIG_IGN)

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

    def __init__(self, checkpoint: str, spec: CompletionSpec, api_key: Optional[str] = None, use_cache: bool = True,
                 max_batch_size: int = 8, batch_timeout: float = 0.005):
        super().__init__(spec=spec, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint, self.api_key, self.use_cache = checkpoint, api_key, use_cache

    def setup(self, device: str) -> None:
        from lit_llm.generate import load_checkpoint

        self._leave_signals_to_the_server()
        self._use_threads(device)
        self.model, self.tokenizer = load_checkpoint(self.checkpoint, device)

    def decode_request(self, request: dict) -> dict:
        return request  # the front end already tokenized and checked it

    def batch(self, jobs: list[dict]) -> list[dict]:
        return jobs

    def _one(self, job: dict) -> Iterator[dict]:
        return stream_completion(self.model, self.tokenizer, job["ids"], job["max_tokens"], job["temperature"],
                                 job["top_p"], job["stop"], job["seed"], self.use_cache, job.get("id"),
                                 self.spec.board.cancelled)

    def _steps(self, jobs: list[dict]) -> Iterator[list[dict]]:
        """Per step, one message per job. A job whose client has gone (the spec's ``CancelBoard``) stops there."""
        if len(jobs) > 1 and _fits_together(jobs, self.model.config.block_size):
            yield from stream_batch(self.model, self.tokenizer, jobs, self.use_cache, self.spec.board.cancelled)
            return
        for i, job in enumerate(jobs):
            for message in self._one(job):
                yield [message if k == i else {} for k in range(len(jobs))]

    def predict(self, jobs: Union[dict, list[dict]]) -> Iterator:
        single = isinstance(jobs, dict)  # max_batch_size 1: LitServe's unbatched loop
        jobs = [jobs] if single else jobs
        parts: list[list[str]] = [[] for _ in jobs]
        for step in self._steps(jobs):
            out = [for_client(job, part, message) for job, part, message in zip(jobs, parts, step)]
            if any(out):  # LitServe sends one message per request of each list: skip steps with nothing to say
                yield out[0] if single else out

    def unbatch(self, steps: Iterator) -> Iterator:
        return steps

    def encode_response(self, outputs: Iterator) -> Iterator:
        yield from outputs


@dataclass
class _Running:
    """A completion on the continuous worker: its text so far, its sampler, and where it decodes (a row of the
    ``ContinuousBatch``, or its own sliding ``iter_tokens`` when it does not fit a row)."""

    job: dict
    state: CompletionText
    temperature: float
    top_p: float
    generator: torch.Generator
    part: list[str] = field(default_factory=list)
    token: Optional[int] = None  # the token to feed its row at the next step
    solo: Optional[Iterator[torch.Tensor]] = None
    held: str = ""  # streamed text not sent yet (``stream_interval``)
    last_sent: Optional[float] = None  # when its last message left (None: nothing sent yet)


class ContinuousGenerationAPI(GenerationAPI):
    """The model worker of a causal checkpoint with continuous batching (``serve --batching continuous``).

    LitServe's ``ContinuousBatchingLoop`` hands each request to ``add_request`` as soon as it arrives and there
    is room (``max_batch_size`` sequences), and calls ``step`` for as long as any is running. Each step feeds
    every running sequence its next token in one forward (``ContinuousBatch``: a KV-cache row per sequence, at
    its own length), then prefills the requests that arrived since the last step, which so get their first
    token in the step after they arrive. A finished sequence leaves at once and frees its row. A request whose
    prompt plus ``max_tokens`` exceeds ``block_size`` decodes beside the batch, one token per step, with its
    own sliding context. Each sequence samples with its own settings and seed, so its tokens are those it would
    get alone.

    ``add_request`` runs on the loop's event-loop thread while ``step`` runs in a worker thread, so new
    requests wait in a thread-safe inbox that only ``step`` reads.

    A step's outputs reach the front end as one message (``ContinuousLoop``). A stream's first text leaves at
    once, and after it the text of the next ``stream_interval`` seconds travels as one output, one SSE event
    for the client (0 sends every token's text as it comes)."""

    def __init__(self, checkpoint: str, spec: CompletionSpec, api_key: Optional[str] = None,
                 max_batch_size: int = 32, stream_interval: float = 0.0):
        ls.LitAPI.__init__(self, spec=spec, max_batch_size=max_batch_size, loop=ContinuousLoop())
        self.checkpoint, self.api_key, self.use_cache = checkpoint, api_key, True
        if stream_interval < 0:
            raise ValueError(f"stream_interval must be >= 0 seconds, got {stream_interval}")
        self.stream_interval = stream_interval

    def setup(self, device: str) -> None:
        super().setup(device)
        self.device = next(self.model.parameters()).device
        self.rows = ContinuousBatch(self.model, self.max_batch_size)
        self.inbox: deque[tuple[str, dict]] = deque()
        self.running: dict[str, _Running] = {}
        self.pad = self.tokenizer.token_to_id("[PAD]") or 0

    def add_request(self, uid: str, request: dict) -> None:
        self.inbox.append((uid, request))

    def has_capacity(self) -> bool:
        return len(self.running) + len(self.inbox) < self.max_batch_size

    def has_active_requests(self) -> bool:
        return bool(self.running or self.inbox)

    def step(self, prev_outputs: Optional[list[Output]]) -> list[Output]:
        try:
            return self._step()
        except Exception as e:  # noqa: BLE001 - every running request gets the error, and the worker goes on
            logger.exception("decoding step failed")
            uids = list(self.running) + [uid for uid, _ in self.inbox]
            self.running.clear()
            self.inbox.clear()
            self.rows = ContinuousBatch(self.model, self.max_batch_size)
            return [Output(uid, e, Status.ERROR) for uid in uids]

    def _step(self) -> list[Output]:
        out: list[Output] = []
        gone = self.spec.board.cancelled()
        for uid, run in list(self.running.items()):
            if run.job.get("id") is not None and run.job["id"] in gone:
                logger.warning("client gone: stopped job %x after %d of %d tokens", run.job["id"], run.state.sampled,
                               run.state.max_tokens)
                self._finish(uid, out)
        keys = list(self.rows.keys)
        if keys:  # one forward for every sequence in a row, and one sampling call
            logits = self.rows.step(torch.tensor([self.running[k].token for k in keys], device=self.device))
            for uid, token in zip(keys, self._sample(keys, logits).tolist()):
                self._push(uid, token, out)
        for uid, run in list(self.running.items()):  # the ones that do not fit a row: one token each
            if run.solo is not None:
                self._push(uid, int(next(run.solo)), out)
        while self.inbox:  # the requests that arrived since the last step: prefill, first token
            uid, job = self.inbox.popleft()
            run = _Running(job, CompletionText(self.tokenizer, job["ids"], job["max_tokens"], job["stop"]),
                           *_sampling(job["temperature"], job["top_p"], job["seed"], self.device))
            self.running[uid] = run
            if self.rows.fits(len(job["ids"]), job["max_tokens"]):
                self._push(uid, int(self._sample([uid], self.rows.add(uid, job["ids"])[None])[0]), out)
            else:
                run.solo = iter_tokens(self.model, torch.tensor([job["ids"]], device=self.device), job["max_tokens"],
                                       use_cache=True, sample=lambda logits, uid=uid: self._sample([uid], logits)[:, None])
                self._push(uid, int(next(run.solo)), out)
        return out

    def _sample(self, uids: list[str], logits: torch.Tensor) -> torch.Tensor:
        """(n, V) logits -> (n,) tokens, each row with its request's settings and generator."""
        runs = [self.running[uid] for uid in uids]
        return sample_rows(logits, torch.tensor([r.temperature for r in runs], device=logits.device),
                           torch.tensor([r.top_p for r in runs], device=logits.device), [r.generator for r in runs])

    def _push(self, uid: str, token: int, out: list[Output]) -> None:
        run = self.running[uid]
        run.token = token
        message = for_client(run.job, run.part, run.state.push(run.token))
        if message and run.held:  # what was held back goes first
            message = {**message, "text": run.held + message["text"]}
            run.held = ""
        if run.state.done:
            self._finish(uid, out, message)
        elif message:
            now = time.monotonic()
            if run.last_sent is not None and now - run.last_sent < self.stream_interval:
                run.held = message["text"]  # a streamed delta: {"text": ...}
            else:
                run.last_sent = now
                out.append(Output(uid, message, Status.OK))

    def _finish(self, uid: str, out: list[Output], last: Optional[dict] = None) -> None:
        """The sequence leaves: its row is free for the next request, and LitServe closes its stream with the
        message that carries its ``last`` output (one message through the queue, not two)."""
        if uid in self.rows.keys:
            self.rows.remove(uid)
        del self.running[uid]
        out.append(Output(uid, last or "", Status.FINISH_STREAMING))

    def encode_response(self, output: Any) -> Any:
        return output


class ClassifierAPI(_WorkerAPI, ls.LitAPI):
    """The model worker of a classifier checkpoint: LitServe hands it up to ``max_batch_size`` concurrent
    requests at once, whose texts are padded into one forward pass."""

    def __init__(self, checkpoint: str, spec: ClassifySpec, api_key: Optional[str] = None, max_batch_size: int = 8,
                 batch_timeout: float = 0.005):
        super().__init__(spec=spec, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint, self.api_key = checkpoint, api_key

    def setup(self, device: str) -> None:
        from lit_llm.data.labelled import pad_examples
        from lit_llm.tasks import SequenceClassifier

        self.pad_examples = pad_examples
        self._leave_signals_to_the_server()
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
        input_ids, mask = self.pad_examples(self.model.tokenizer, rows)
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
