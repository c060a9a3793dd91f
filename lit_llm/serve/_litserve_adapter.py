"""Every use of LitServe internals in lit_llm, in one place. Written against litserve 0.2.19.

LitServe's public API (``LitAPI``, ``LitServer``, ``OpenAISpec``) gives a spec the routes it declares, but not a way
for a route to put a job of its own on the queue to the model workers and read the answers: its own
``OpenAISpec`` does that with the internals below. We need it because our routes check and tokenize a request
in the front end (a 4xx that says what was wrong, before the model sees it), serve several routes
(``/v1/completions``, ``/v1/chat/completions``, ``/v1/classify``, ``/v1/models``, ``/v1/feedback``) from one model
worker, and answer worker errors and streamed text in OpenAI's shape. What this module relies on, as litserve
0.2.19 has it:

- ``litserve.specs.base.LitSpec`` (not exported by ``litserve`` or ``litserve.specs``): the base of a custom spec.
  ``LitSpec.setup(server)`` sets ``response_buffer`` (``LitServer.response_buffer``: uid -> ``ResponseBufferItem``)
  and ``request_queue`` (``LitServer._get_request_queue(api_path)``); the server sets ``spec.response_queue_id``
  in ``LitServer._start_server``.
- the request queue's item ``(response_queue_id, uid, time.monotonic(), payload)``, unpacked by the worker loops
  (``litserve.loops``);
- ``litserve.utils.ResponseBufferItem(event, response_queue)``: ``response_queue_to_buffer`` appends a streaming
  job's ``(data, status)`` to ``response_queue``, or sets a job's ``response`` to it, and sets ``event``;
- ``litserve.utils.LitAPIStatus.ERROR``, the status of a worker's error, which comes pickled (or as a
  ``PickleableHTTPException``); streamed outputs come JSON-encoded (``LitAPI.format_encoded_response``);
- ``LitServer.app``, the FastAPI app, on which we install error handlers (the apps LitServe runs are shallow
  copies of it, made in ``LitServer._start_server``).

- ``litserve.loops.ContinuousBatchingLoop`` and ``Output``: the loop drives a ``LitAPI`` through
  ``add_request(uid, request)``, ``has_capacity()``, ``has_active_requests()`` and ``step(prev_outputs) ->
  list[Output]``, sends each output through ``encode_response`` and ``format_encoded_response``, and closes a
  stream on ``LitAPIStatus.FINISH_STREAMING``, whose data it sends like any other output (LitServe's own
  ``data_streamer`` drops it; ``QueueSpec.outputs`` reads it, so a worker's last output can finish its stream
  in one message instead of two through the queue). Its ``run`` returns at once while no request is active, and the
  base loop calls it again with only ``asyncio.sleep(0)`` between calls: an idle worker would spin a CPU core;
  and ``run`` sleeps 10 ms after a ``step`` that returned no output. Its ``step(prev_outputs, lit_api,
  lit_spec)`` is a coroutine that runs ``lit_api.step`` off the event loop. ``ContinuousLoop`` changes both
  (see its docstring).

- the worker loop's ``response_queue_ids`` (uid -> the front end's queue id, set in ``prefill``),
  ``mark_completed(uid)``, ``put_response(transport, response_queue_id, uid, data, status, response_type)`` and
  ``put_error_response``, which ``ContinuousLoop.run`` uses to send one message per decoding step; and the front
  end's ``response_queue_to_buffer``, which appends a streaming message's ``(data, status)`` to its uid's
  ``response_queue`` with ``append`` and sets the ``event``: ``QueueSpec`` registers a ``_Demux`` there for the
  step messages' uid.

- for stopping on SIGTERM and SIGINT (``serve``'s ``_Shutdown``): ``LitServer.run`` answers a
  ``KeyboardInterrupt`` raised while it waits by stopping everything it started (``_perform_graceful_shutdown``:
  each front end is sent SIGTERM and given ``LitServer.uvicorn_graceful_timeout`` seconds, which is also uvicorn's
  ``timeout_graceful_shutdown``, to finish its requests; then the model workers and the queue manager); the
  front-end processes are ``multiprocessing`` children named ``LitServer-N``, the model workers
  ``inference-worker``.

``tests/test_serve.py::test_the_litserve_internals_the_adapter_uses_are_there`` fails when any of these change.

What litserve 0.2.19 does not have, checked in its source: any notion of a client that disconnects (no route,
loop or ``LitAPI`` hook sees it; a worker decodes an abandoned request to its end) and any bound on the request
queue. Both are ours and use no LitServe internals: ``flow.CancelBoard`` (shared memory that the front ends write
and the workers read before each decoding step; Starlette cancels a stream whose client has gone, and
``specs._Stream`` reports it) and ``flow.Admission`` (the ``--max_queue`` count, checked before a request is
tokenized).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import pickle
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from litserve.loops import ContinuousBatchingLoop, Output
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem

Status = LitAPIStatus
logger = logging.getLogger(__name__)
IDLE_WAIT_S = 0.001  # how long an idle continuous worker waits before it looks for requests again

LITSERVE_VERSION = "0.2.19"  # the version this module was written against and checked with

# The uid of the message that carries a continuous worker's outputs of one decoding step for every stream of a front
# end: one message through LitServe's queue per step, not one per stream (``ContinuousLoop.run``, ``_Demux``).
STEP_UID = uuid.UUID("6c69746c-6c6d-4000-8000-000000000001")


class _Demux:
    """The ``response_queue`` of the ``STEP_UID`` entry of a front end's response buffer. LitServe's
    ``response_queue_to_buffer`` appends each message it receives for that uid, ``(outputs, status)``, here; each
    output ``(uid, data, status)`` goes on to its own stream's entry, as if it had come as a message of its own."""

    def __init__(self, response_buffer: dict) -> None:
        self.response_buffer = response_buffer

    def append(self, response: Any) -> None:
        outputs, _ = response
        for uid, data, status in outputs:
            item = self.response_buffer.get(uid)
            if item is not None:  # a stream that was released (its client gone) drops its outputs
                item.response_queue.append((data, status))
                item.event.set()


class QueueSpec(LitSpec):
    """A LitSpec whose routes put their own jobs on the queue to the model workers and read the answers."""

    def submit(self, job: Any, streaming: bool) -> tuple[uuid.UUID, ResponseBufferItem]:
        """Queue ``job`` for a model worker (its ``decode_request`` gets it as is); the answers arrive in the item."""
        if STEP_UID not in self.response_buffer:  # in the front end's own process, where the buffer lives
            self.response_buffer[STEP_UID] = ResponseBufferItem(event=asyncio.Event(),
                                                                response_queue=_Demux(self.response_buffer))
        uid = uuid.uuid4()
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque() if streaming else None)
        self.response_buffer[uid] = item
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        return uid, item

    def release(self, uid: uuid.UUID) -> None:
        """Forget a job: answers that still arrive for it are dropped."""
        self.response_buffer.pop(uid, None)

    async def outputs(self, item: ResponseBufferItem) -> AsyncIterator[tuple[Any, bool]]:
        """A streaming job's outputs as the worker yields them, ``(output, False)``, until it finishes; a worker
        error ends them as ``(error, True)``. The message that finishes the stream may carry the last output
        (the continuous worker's do; LitServe's streaming loop sends an empty one)."""
        while True:
            await item.event.wait()
            while item.response_queue:
                data, status = item.response_queue.popleft()
                if status == LitAPIStatus.ERROR:
                    yield worker_error(data), True
                    return
                if status == LitAPIStatus.FINISH_STREAMING:
                    if data:
                        yield json.loads(data), False
                    return
                yield json.loads(data), False
            item.event.clear()

    async def output(self, item: ResponseBufferItem) -> tuple[Any, bool]:
        """A non-streaming job's output, ``(output, False)``, or ``(error, True)``."""
        await item.event.wait()
        response, status = item.response
        if status == LitAPIStatus.ERROR:
            return worker_error(response), True
        return response, False


def worker_error(response: Any) -> Any:
    """A worker's error as LitServe sends it (pickled, or a PickleableHTTPException) as the error object; bytes
    that do not unpickle are returned as they are."""
    if isinstance(response, bytes):
        try:
            response = pickle.loads(response)
        except Exception:  # noqa: BLE001 - an unreadable error is still an error
            pass
    return response


def fastapi_app(server):
    """The FastAPI app of a ``LitServer``, to install exception handlers on before ``run``."""
    return server.app


def set_drain_timeout(server, seconds: float) -> None:
    """How long, once told to stop, each front end of ``server`` may go on serving the requests it holds before
    it is killed (uvicorn's graceful shutdown, then LitServe's join of the process)."""
    server.uvicorn_graceful_timeout = seconds


def front_ends() -> list:
    """The HTTP front-end processes (uvicorn) that this process's ``LitServer.run`` started."""
    return [p for p in mp.active_children() if p.name.startswith("LitServer-")]


def in_model_worker() -> bool:
    """Whether this process is one of LitServe's model (inference) workers."""
    return mp.current_process().name == "inference-worker"


def _steps_until_output(lit_api, prev_outputs):
    """Decoding steps until one has something to send, or nothing is left to decode: steps whose requests are
    all non-streaming and mid-way run back to back on the decoding thread."""
    while True:
        outputs = lit_api.step(prev_outputs)
        if outputs or not lit_api.has_active_requests():
            return outputs


class ContinuousLoop(ContinuousBatchingLoop):
    """LitServe's continuous batching loop, with four changes:

    - the outputs of one decoding step travel to each front end as one message (uid ``STEP_UID``, read by
      ``_Demux``), where LitServe sends one message per stream: each is a synchronous round trip through the
      queue manager's process, and at 32 streams those cost more than the step's decoding did;

    - a step with nothing to send (every running request is a non-streaming one, mid-way) does not end the
      loop's ``step``: LitServe's ``run`` sleeps 10 ms after an empty step, which made each decoding step
      cost 12 ms instead of 2 on the debug model. The next step runs at once instead, on the decoding thread
      (a round trip through the event loop per step cost another millisecond);
    - an idle worker waits a millisecond between looks for work instead of spinning a core;
    - every decoding step runs on one thread of its own rather than on whichever thread of asyncio's default
      pool is free, so that torch's intra-op threads stay one team."""

    _decoder = None  # made in the worker process: the loop is pickled to it, and an executor does not pickle

    async def step(self, prev_outputs, lit_api, lit_spec):
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit_llm-decode")
        return await asyncio.get_running_loop().run_in_executor(self._decoder, _steps_until_output, lit_api,
                                                                prev_outputs)

    async def run(self, lit_api, device, worker_id, request_queue, transport, *args, **kwargs):
        if not lit_api.has_active_requests():
            await asyncio.sleep(IDLE_WAIT_S)
            return
        try:
            outputs = None
            while lit_api.has_active_requests():
                outputs = await self.step(outputs, lit_api, lit_api.spec)
                self._send(outputs, lit_api, transport)
        except Exception as e:  # as LitServe's loop does: every stream it tracks gets the error
            logger.exception("Error in continuous batching loop: %s", e)
            for uid, response_queue_id in self.response_queue_ids.items():
                self.put_error_response(transport, response_queue_id, uid, e, LoopResponseType.STREAMING)
            self.response_queue_ids.clear()
            self.active_sequences.clear()

    def _send(self, outputs: list[Output], lit_api, transport) -> None:
        """One step's outputs, one message per front end; an error goes alone, as LitServe sends it."""
        per_front_end: dict[int, list] = defaultdict(list)
        for out in outputs:
            response_queue_id = self.response_queue_ids[out.uid]
            data = lit_api.format_encoded_response(lit_api.encode_response(out.output))
            if out.status == LitAPIStatus.ERROR:
                self.put_error_response(transport, response_queue_id, out.uid, data, LoopResponseType.STREAMING)
            else:
                per_front_end[response_queue_id].append((out.uid, data, out.status))
            if out.status in (LitAPIStatus.ERROR, LitAPIStatus.FINISH_STREAMING):
                self.mark_completed(out.uid)
        for response_queue_id, batch in per_front_end.items():
            self.put_response(transport, response_queue_id, STEP_UID, batch, LitAPIStatus.OK,
                              LoopResponseType.STREAMING)
