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
import pickle
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from litserve.loops import ContinuousBatchingLoop, Output
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

Status = LitAPIStatus
IDLE_WAIT_S = 0.001  # how long an idle continuous worker waits before it looks for requests again

LITSERVE_VERSION = "0.2.19"  # the version this module was written against and checked with


class QueueSpec(LitSpec):
    """A LitSpec whose routes put their own jobs on the queue to the model workers and read the answers."""

    def submit(self, job: Any, streaming: bool) -> tuple[uuid.UUID, ResponseBufferItem]:
        """Queue ``job`` for a model worker (its ``decode_request`` gets it as is); the answers arrive in the item."""
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


def _steps_until_output(lit_api, prev_outputs):
    """Decoding steps until one has something to send, or nothing is left to decode: steps whose requests are
    all non-streaming and mid-way run back to back on the decoding thread."""
    while True:
        outputs = lit_api.step(prev_outputs)
        if outputs or not lit_api.has_active_requests():
            return outputs


class ContinuousLoop(ContinuousBatchingLoop):
    """LitServe's continuous batching loop, with three changes:

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

    async def run(self, lit_api, *args, **kwargs):
        if not lit_api.has_active_requests():
            await asyncio.sleep(IDLE_WAIT_S)
            return
        await super().run(lit_api, *args, **kwargs)
