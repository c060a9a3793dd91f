"""The model worker: the LitServe ``LitAPI``s that hold a checkpoint's model (one per worker process), and
the decoding they run. Each request is a ``Completion`` (its text, sampler, model and what its client is sent),
whichever way its tokens are scheduled: ``decode_static`` (a batch decoded together to its end, or one job alone
with a sliding context) or ``ContinuousGenerationAPI`` (rows that join and leave at any step). What crosses to the
front end is ``lit_llm.serve.messages``.

Only LitServe's public ``LitAPI`` is used here. What loads a model (``load_checkpoint``, ``SequenceClassifier``,
which brings Lightning) is imported in the worker's ``setup``, so that importing ``lit_llm.serve`` stays light.

Reloads (``serve``'s ``POST /v1/admin/reload`` and SIGHUP): each worker follows the ``ReloadBoard`` from a thread
of its own, loads the new checkpoint beside the model it serves, and, once every worker has, swaps its
``current`` model (``_LoadedModel``). A request holds the ``_LoadedModel`` it started on to its end, so the requests in
flight finish on the old weights while the new ones start on the new; the old model is freed with its last request.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Container, Iterator, Optional, Union

import litserve as ls
import torch
from fastapi import Request
from tokenizers import Tokenizer

from lit_llm.completion import CompletionText
from lit_llm.data.tokenizer import special_id
from lit_llm.generate import ContinuousBatch, iter_batch_tokens, iter_tokens, sample_next, sample_rows
from lit_llm.serve._litserve_adapter import ContinuousLoop, Output, Status, in_model_worker
from lit_llm.serve.flow import RELOAD_POLL_S, CheckpointRef
from lit_llm.serve.messages import ClassifyJob, ClassProbabilities, CompletionJob, Piece, to_wire
from lit_llm.serve.protocol import APIError

if TYPE_CHECKING:
    from lit_llm.serve.specs import ClassifySpec, CompletionSpec

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- decoding
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


Cancelled = Callable[[], Container[int]]  # the ids of the jobs whose clients have gone (CancelBoard.cancelled)


@dataclass(eq=False)
class _LoadedModel:
    """The model a worker starts requests on: one checkpoint's, from load to the last request that started on it.
    A reload replaces a worker's ``current`` one; each request keeps the one it started on (``Completion.served``)
    to its end."""

    model: torch.nn.Module
    generation: int  # the ReloadBoard's: 0 for the checkpoint serve started with
    fingerprint: str  # ``system_fingerprint`` of the answers it gives (CheckpointRef.fingerprint)
    rows: Optional[ContinuousBatch] = None  # continuous batching: the KV-cache rows of the requests decoding on it


class Completion:
    """One ``CompletionJob`` on a model worker, from its first token to its last, whichever way its tokens are
    scheduled (alone, in a static batch, in a continuous batch): its text (``CompletionText``), its sampling
    settings and seeded generator, the model it decodes on, and what its client is sent. ``push`` takes each
    sampled token and gives the ``Piece`` for the client, or None: a client that does not stream gets one piece,
    the last, with the whole text; the first piece sent names the checkpoint that answers (its fingerprint)."""

    def __init__(self, job: CompletionJob, tok: Tokenizer, device, served: Optional[_LoadedModel] = None) -> None:
        self.job, self.served = job, served
        self.state = CompletionText(tok, job.ids, job.max_tokens, job.stop)
        self.temperature, self.top_p, self.generator = _sampling(job.temperature, job.top_p, job.seed, device)
        self.gathered: list[str] = []  # the text so far of a client that does not stream
        self.told = False  # whether its first piece has gone

    @property
    def done(self) -> bool:
        return self.state.done

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, V) logits -> (1, 1) token with this job's settings and generator."""
        return sample_next(logits, self.temperature, None, self.top_p if self.top_p < 1 else None, self.generator)

    def stop_if_gone(self, gone: Container[int]) -> None:
        """End the completion if its client has gone (its job id is in ``gone``), and log how far it got."""
        if not self.done and self.job.id is not None and self.job.id in gone:
            self.state.cancel()
            logger.warning("client gone: stopped job %x after %d of %d tokens", self.job.id, self.state.sampled,
                           self.state.max_tokens)

    def push(self, token: int) -> Optional[Piece]:
        piece = self.state.push(token)
        if piece is None:
            return None
        if not self.job.stream:
            self.gathered.append(piece.text)
            if not piece.last:
                return None
            piece = replace(piece, text="".join(self.gathered))
        if not self.told and self.served is not None:
            piece, self.told = replace(piece, system_fingerprint=self.served.fingerprint), True
        return piece


def _stop_gone(runs: list[Completion], cancelled: Optional[Cancelled]) -> None:
    if cancelled is not None:
        gone = cancelled()
        for run in runs:
            run.stop_if_gone(gone)


def decode_static(model, tok: Tokenizer, jobs: list[CompletionJob], served: Optional[_LoadedModel] = None,
                  use_cache: bool = True, cancelled: Optional[Cancelled] = None) -> Iterator[list[Optional[Piece]]]:
    """Jobs decoded to their ends as one batch (static batching): per step with something to send, one piece or None
    per job. They decode together (``iter_batch_tokens``, left-padded) when the longest prompt plus the largest
    ``max_tokens`` fits ``block_size``, else one after the other, each sliding its context past the block
    (``iter_tokens``). Each job samples with its own settings and seed, so its tokens are those it would get alone.
    A job whose ``id`` is in ``cancelled()`` (checked before each token) ends with nothing more to send."""
    device = next(model.parameters()).device
    runs = [Completion(job, tok, device, served) for job in jobs]
    _stop_gone(runs, cancelled)
    if all(run.done for run in runs):
        return
    if len(jobs) > 1 and (max(len(j.ids) for j in jobs) + max(j.max_tokens for j in jobs)
                          <= model.config.block_size):

        def sample(logits: torch.Tensor) -> torch.Tensor:
            return torch.cat([run.sample(logits[r : r + 1]) for r, run in enumerate(runs)])

        for tokens in iter_batch_tokens(model, [j.ids for j in jobs], max(j.max_tokens for j in jobs), sample,
                                        use_cache, special_id(tok, "pad") or 0):
            _stop_gone(runs, cancelled)
            step = [None if run.done else run.push(t) for run, t in zip(runs, tokens.tolist())]
            if any(step):
                yield step
            if all(run.done for run in runs):
                return
        return
    for k, run in enumerate(runs):
        _stop_gone(runs, cancelled)  # a client gone while the jobs before it decoded: not even a prefill
        if run.done:
            continue
        ids = torch.tensor([run.job.ids], device=device)
        for token in iter_tokens(model, ids, run.job.max_tokens, use_cache=use_cache, sample=run.sample):
            _stop_gone(runs, cancelled)
            if run.done:
                break
            piece = run.push(int(token))
            if piece is not None:
                yield [piece if i == k else None for i in range(len(runs))]
            if run.done:
                break


# ---------------------------------------------------------------------------------------------- model workers
class _WorkerAPI:
    """What both model workers share: the optional API key, checked by LitServe on every route it registers
    (``LitAPI.authorize``); the CPU threads of a worker: ``serve`` splits the cores between the workers (each torch
    process would otherwise take them all, and N workers would fight over them); and reloads of the checkpoint
    (``follow_reloads``)."""

    api_key: Optional[str] = None
    cpu_threads: Optional[int] = None
    checkpoint: str
    current: _LoadedModel

    def _load(self, path: str, device: str) -> torch.nn.Module:
        """The model of the checkpoint at ``path``, on ``device``, ready for requests (each worker's own)."""
        raise NotImplementedError

    def _loaded(self, model: torch.nn.Module, generation: int, fingerprint: str) -> _LoadedModel:
        return _LoadedModel(model, generation, fingerprint)

    def _setup_model(self, device: str) -> None:
        """Load the checkpoint served now (the one ``serve`` started with, or the last one reloaded), and follow
        the reloads that come: from a thread of its own in a model worker; ``follow_reloads`` elsewhere (tests)."""
        board = self.spec.reloads
        self.device_name = device
        self.worker_slot = board.join()
        generation, ref = board.current()
        ref = ref or CheckpointRef.of(self.checkpoint)
        self.current = self._loaded(self._load(ref.path, device), generation, ref.fingerprint)
        board.serving(self.worker_slot, generation)
        if in_model_worker():
            threading.Thread(target=self.follow_reloads, name="lit_llm-reload", daemon=True).start()

    def follow_reloads(self, stop: Optional[threading.Event] = None, poll: float = RELOAD_POLL_S) -> None:
        """Carry out the reloads of the ``ReloadBoard`` until ``stop`` is set: load each checkpoint asked beside the
        model served (requests go on meanwhile), vote, and swap ``current`` once every worker is ready. The swap is
        one assignment: a request holds the ``_LoadedModel`` it started on, so the ones in flight finish on the old
        model, which is freed with the last of them."""
        board, handled = self.spec.reloads, self.current.generation
        stop = stop or threading.Event()
        while not stop.wait(poll):
            generation, ref = board.asked()
            if generation <= handled or ref is None:
                continue
            handled = generation
            if board.outcome(generation) is False:  # called off before this worker got to it
                continue
            loaded, failure = None, None
            try:
                loaded = self._loaded(self._load(ref.path, self.device_name), generation, ref.fingerprint)
                if not ref.unchanged():
                    failure = ("changed", f"{ref.path} was replaced while it was being loaded (a training run"
                               " writing a new checkpoint?); reload again")
            except (ValueError, OSError) as e:  # CheckpointError, FileNotFoundError: the file
                failure = ("checkpoint", f"{ref.path}: {e}")
            except Exception as e:  # noqa: BLE001 - out of memory, a broken install: the old model goes on serving
                logger.exception("reload: loading %s failed", ref.path)
                failure = ("worker", f"{type(e).__name__}: {e}")
            if failure is not None:
                loaded = None
                logger.warning("reload %d refused by model worker %d: %s", generation, self.worker_slot, failure[1])
                board.vote(self.worker_slot, generation, failure[0], failure[1])
                continue
            board.vote(self.worker_slot, generation)
            while (outcome := board.outcome(generation)) is None and not stop.wait(poll):
                pass
            if outcome:
                self.current = loaded  # the requests that start from here on decode on it
                board.serving(self.worker_slot, generation)
                logger.warning("reload %d: model worker %d serves %s (%s) to new requests", generation,
                               self.worker_slot, ref.path, ref.fingerprint)
            loaded = None

    def _use_threads(self, device: str) -> None:
        if str(device).startswith("cpu") and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    @staticmethod
    def _leave_signals_to_the_server() -> None:
        """Ctrl+C sends SIGINT to every process of the terminal's group: a model worker ignores it, and the server
        stops it once the front ends have finished their requests (``serve``'s ``_Shutdown``). SIGHUP (a reload,
        when sent to the server) is ignored too: the reload reaches the workers through the ``ReloadBoard``."""
        if in_model_worker():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if hasattr(signal, "SIGHUP"):  # not on Windows
                signal.signal(signal.SIGHUP, signal.SIG_IGN)

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
        self._leave_signals_to_the_server()
        self._use_threads(device)
        self._setup_model(device)

    def _load(self, path: str, device: str) -> torch.nn.Module:
        from lit_llm.generate import load_checkpoint

        model, tokenizer = load_checkpoint(path, device, purpose="serving")
        if not hasattr(self, "tokenizer"):  # a reload keeps it: the front end checked that the new one is the same
            self.tokenizer = tokenizer
        return model

    @property
    def model(self) -> torch.nn.Module:
        """The model new requests start on."""
        return self.current.model

    def decode_request(self, request: CompletionJob) -> CompletionJob:
        return request  # the front end already tokenized and checked it

    def batch(self, jobs: list[CompletionJob]) -> list[CompletionJob]:
        return jobs

    def predict(self, jobs: Union[CompletionJob, list[CompletionJob]]) -> Iterator:
        """Per decoding step with something to send, a piece (or None) per job; one piece for one job
        (``max_batch_size`` 1: LitServe's unbatched loop). A job whose client has gone (the spec's ``CancelBoard``)
        stops there."""
        single = isinstance(jobs, CompletionJob)
        served = self.current  # the batch decodes on it to its end, whatever a reload swaps in meanwhile
        for step in decode_static(served.model, self.tokenizer, [jobs] if single else jobs, served, self.use_cache,
                                  self.spec.board.cancelled):
            yield step[0] if single else step

    def unbatch(self, steps: Iterator) -> Iterator:
        return steps

    def encode_response(self, outputs: Iterator) -> Iterator:
        for out in outputs:  # each job's piece as JSON (LitServe's streaming loops send dicts as JSON)
            yield [to_wire(piece) for piece in out] if isinstance(out, list) else to_wire(out)


class _Running(Completion):
    """A completion on the continuous worker, and where it decodes: a row of its model's ``ContinuousBatch``, or
    its own sliding ``iter_tokens`` when it does not fit a row."""

    token: Optional[int] = None  # the token to feed its row at the next step
    solo: Optional[Iterator[torch.Tensor]] = None
    held: str = ""  # streamed text not sent yet (``stream_interval``)
    last_sent: Optional[float] = None  # when its last piece left (None: nothing sent yet)


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
    for the client (0 sends every token's text as it comes).

    Each model (``_LoadedModel``) has its own rows. After a reload swaps in a new one, the requests prefilled from then
    on take rows of the new model, while those running go on in the rows of the old: a step runs one forward per
    model in use, and the old model (and its KV cache) is freed when its last request ends."""

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
        self.inbox: deque[tuple[str, CompletionJob]] = deque()
        self.running: dict[str, _Running] = {}
        self.pad = special_id(self.tokenizer, "pad") or 0

    def _loaded(self, model: torch.nn.Module, generation: int, fingerprint: str) -> _LoadedModel:
        return _LoadedModel(model, generation, fingerprint, ContinuousBatch(model, self.max_batch_size))

    @property
    def rows(self) -> ContinuousBatch:
        """The KV-cache rows of the requests on the current model."""
        return self.current.rows

    def _models_in_use(self) -> list[_LoadedModel]:
        """The models with requests in rows: the current one and any older one whose requests have not ended."""
        return list({id(run.served): run.served for run in self.running.values() if run.served.rows.keys}.values())

    def add_request(self, uid: str, request: CompletionJob) -> None:
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
            self.current.rows = ContinuousBatch(self.model, self.max_batch_size)
            return [Output(uid, e, Status.ERROR) for uid in uids]

    def _step(self) -> list[Output]:
        out: list[Output] = []
        gone = self.spec.board.cancelled()
        for uid, run in list(self.running.items()):
            run.stop_if_gone(gone)
            if run.done:
                self._finish(uid, out)
        for served in self._models_in_use():  # one forward per model for every sequence in its rows, one sampling
            keys = list(served.rows.keys)
            logits = served.rows.step(torch.tensor([self.running[k].token for k in keys], device=self.device))
            for uid, token in zip(keys, self._sample(keys, logits).tolist()):
                self._push(uid, token, out)
        for uid, run in list(self.running.items()):  # the ones that do not fit a row: one token each
            if run.solo is not None:
                self._push(uid, int(next(run.solo)), out)
        current = self.current  # the requests that start in this step start on it (a reload may swap it meanwhile)
        while self.inbox:  # the requests that arrived since the last step: prefill, first token
            uid, job = self.inbox.popleft()
            run = self.running[uid] = _Running(job, self.tokenizer, self.device, current)
            if current.rows.fits(len(job.ids), job.max_tokens):
                self._push(uid, int(self._sample([uid], current.rows.add(uid, job.ids)[None])[0]), out)
            else:
                run.solo = iter_tokens(current.model, torch.tensor([job.ids], device=self.device), job.max_tokens,
                                       use_cache=True,
                                       sample=lambda logits, uid=uid: self._sample([uid], logits)[:, None])
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
        piece = run.push(token)
        if piece is not None and run.held:  # what was held back goes first
            piece, run.held = replace(piece, text=run.held + piece.text), ""
        if run.done:
            self._finish(uid, out, piece)
        elif piece is not None:
            now = time.monotonic()
            if run.last_sent is not None and now - run.last_sent < self.stream_interval:
                run.held = piece.text  # a streamed piece, not the first: text only
            else:
                run.last_sent = now
                out.append(Output(uid, piece, Status.OK))

    def _finish(self, uid: str, out: list[Output], last: Optional[Piece] = None) -> None:
        """The sequence leaves: its row is free for the next request, and LitServe closes its stream with the
        message that carries its ``last`` output (one message through the queue, not two)."""
        run = self.running.pop(uid)
        if uid in run.served.rows.keys:
            run.served.rows.remove(uid)
        if run.served is not self.current and not any(r.served is run.served for r in self.running.values()):
            logger.warning("reload: the last request on %s has ended; its model is freed", run.served.fingerprint)
        out.append(Output(uid, last or "", Status.FINISH_STREAMING))

    def encode_response(self, output: Any) -> Any:
        return output.to_wire() if isinstance(output, Piece) else output  # "" or an error: as LitServe sends them


class ClassifierAPI(_WorkerAPI, ls.LitAPI):
    """The model worker of a classifier checkpoint: LitServe hands it up to ``max_batch_size`` concurrent
    requests at once, whose texts are padded into one forward pass."""

    def __init__(self, checkpoint: str, spec: ClassifySpec, api_key: Optional[str] = None, max_batch_size: int = 8,
                 batch_timeout: float = 0.005):
        super().__init__(spec=spec, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint, self.api_key = checkpoint, api_key

    def setup(self, device: str) -> None:
        from lit_llm.data.labelled import pad_examples

        self.pad_examples = pad_examples
        self._leave_signals_to_the_server()
        self._use_threads(device)
        self.device = device
        self._setup_model(device)

    def _load(self, path: str, device: str) -> torch.nn.Module:
        from lit_llm.tasks import SequenceClassifier

        model = SequenceClassifier.restore(path)
        if hasattr(model.backbone, "peft_config"):
            model.merge_lora()  # the same logits with plain modules
        return model.to(device).eval()

    @property
    def model(self) -> torch.nn.Module:
        return self.current.model

    def decode_request(self, request: ClassifyJob) -> ClassifyJob:
        return request

    def batch(self, inputs: list[ClassifyJob]) -> list[ClassifyJob]:
        return inputs

    @torch.inference_mode()
    def predict(self, jobs: Union[ClassifyJob, list[ClassifyJob]]) -> Union[ClassProbabilities, list[ClassProbabilities]]:
        single = isinstance(jobs, ClassifyJob)
        jobs = [jobs] if single else jobs
        served = self.current
        rows = [ids for job in jobs for ids in job.ids]
        input_ids, mask = self.pad_examples(served.model.tokenizer, rows)
        probs = served.model(input_ids.to(self.device), mask.to(self.device)).float().softmax(-1).cpu().tolist()
        out, start = [], 0
        for job in jobs:
            out.append(ClassProbabilities(probs[start : start + len(job.ids)], len(jobs), served.fingerprint))
            start += len(job.ids)
        return out[0] if single else out

    def unbatch(self, outputs: list[ClassProbabilities]) -> list[ClassProbabilities]:
        return outputs

    def encode_response(self, output: ClassProbabilities) -> ClassProbabilities:
        return output  # pickled through the queue, as a non-streaming answer is
