"""``GET /metrics``: the server's counters in Prometheus's text format, correct across every process of the server.

LitServe runs ``--workers N`` model workers and, by default, as many HTTP front ends (uvicorn processes forked from
``serve``'s process), and a scrape reaches whichever front end accepts it. So each front end counting in its own
``prometheus_client`` registry would answer with its own share of the traffic, different from one scrape to the
next. Everything here is counted in the front ends (they see every request, its status and timing, and each
completion's usage, which carries the tokens generated), into one array of shared memory made before LitServe forks
them, as ``flow.py``'s counters are; a scrape reads that array and writes it out with ``prometheus_client``'s
metric families and exposition. ``prometheus_client``'s own multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) would
count correctly too, but it needs a directory emptied at every start (files left by an earlier run add to the
totals), the variable set before ``prometheus_client`` is first imported in each process, and a file per process
and metric that a long-running server with restarted front ends keeps growing; the label values here are known when
the server starts (the routes, status codes 100-599, the reasons and kinds below), so a fixed array is enough.
docs/deployment.md#monitoring lists the metrics.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import CollectorRegistry

_ctx = mp.get_context("spawn")  # as flow.py: the spec that holds the array is also sent to the spawned model workers

# the classic text format (what generate_latest writes); every Prometheus release reads it
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_ROUTE = "other"  # any path the server does not serve (a 404): one label value, however many paths are tried
# upper bounds of the histograms' buckets, in seconds (+Inf is added)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_REASONS = ("queue_full", "feedback_rate_limit")  # serve --max_queue, --max_feedback_per_minute (both 429)
FEEDBACK_KINDS = ("completion", "classification")
RATINGS = ("good", "bad", "none")  # a rating of 1, -1, or none given
CORRECTIONS = ("text", "label", "none")  # a corrected_text, a corrected_label, or neither
STATUSES = 600  # status codes 0..599, one slot each (LitServe and Starlette answer 1xx-5xx only)

# where MetricsMiddleware puts, in a request's ASGI scope, when the front end received it (time.perf_counter())
START_KEY = "lit_llm.start"


@dataclass(frozen=True)
class _Histogram:
    """Where one histogram per route lives in the array: per route, one count per bucket (not cumulative; the last
    one is +Inf), then the sum of the observations."""

    offset: int
    bounds: tuple[float, ...]
    routes: int

    @property
    def width(self) -> int:
        return len(self.bounds) + 2

    @property
    def size(self) -> int:
        return self.width * self.routes

    def slot(self, route: int, seconds: float) -> tuple[int, int]:
        """(the slot of the bucket ``seconds`` falls in, the slot of the sum) for ``route``."""
        bucket = next((i for i, bound in enumerate(self.bounds) if seconds <= bound), len(self.bounds))
        start = self.offset + self.width * route
        return start + bucket, start + len(self.bounds) + 1


@dataclass(frozen=True)
class ModelInfo:
    """What a scrape says of the model served beside the counters (``lit_llm_model_info`` and the queue gauges)."""

    model: str
    task: str
    system_fingerprint: str
    generation: int
    workers: int
    queue_depth: int
    queue_limit: int


class ServerMetrics:
    """The server's counters and histograms in one array of shared memory (doubles: counts are exact up to 2**53),
    written by every front end under the array's lock and read whole by a scrape.

    Made in ``serve``'s process before LitServe starts its processes (the spec makes it): the forked front ends
    share it, and the spawned model workers receive it with the spec (they do not write it)."""

    def __init__(self, routes: Sequence[str]) -> None:
        self.routes = tuple(dict.fromkeys([*routes, OTHER_ROUTE]))
        self._route_index = {r: i for i, r in enumerate(self.routes)}
        n_routes = len(self.routes)
        self._requests = 0  # per route: one slot per status code
        self._latency = _Histogram(n_routes * STATUSES, LATENCY_BUCKETS, n_routes)
        self._ttft = _Histogram(self._latency.offset + self._latency.size, TTFT_BUCKETS, n_routes)
        self._tokens = self._ttft.offset + self._ttft.size  # per route: prompt tokens, generated tokens
        self._rejected = self._tokens + 2 * n_routes
        self._feedback = self._rejected + len(REJECT_REASONS)
        size = self._feedback + len(FEEDBACK_KINDS) * len(RATINGS) * len(CORRECTIONS)
        self._values = _ctx.Array("d", size, lock=True)

    def route(self, path: str) -> str:
        """The ``route`` label of a request path: the path if the server serves it, else ``other``."""
        return path if path in self._route_index else OTHER_ROUTE

    def _add(self, *slots_and_amounts: tuple[int, float]) -> None:
        with self._values.get_lock():
            values = self._values.get_obj()
            for slot, amount in slots_and_amounts:
                values[slot] += amount

    # -- what the front ends count
    def request(self, route: str, status: int, seconds: float) -> None:
        """A request answered: its route, its status code and how long it took (to the last byte of a stream)."""
        r = self._route_index.get(route, self._route_index[OTHER_ROUTE])
        status = status if 0 <= status < STATUSES else 0
        bucket, total = self._latency.slot(r, seconds)
        self._add((self._requests + r * STATUSES + status, 1), (bucket, 1), (total, seconds))

    def first_token(self, route: str, seconds: float) -> None:
        """A streamed completion's first text was ready to send, ``seconds`` after its request arrived."""
        r = self._route_index.get(route, self._route_index[OTHER_ROUTE])
        bucket, total = self._ttft.slot(r, seconds)
        self._add((bucket, 1), (total, seconds))

    def tokens(self, route: str, prompt: int, generated: int) -> None:
        """The usage of one request: its prompt's tokens and the tokens the model generated for it."""
        r = self._route_index.get(route, self._route_index[OTHER_ROUTE])
        self._add((self._tokens + 2 * r, prompt), (self._tokens + 2 * r + 1, generated))

    def rejected(self, reason: str) -> None:
        """A request refused with 429 (``REJECT_REASONS``)."""
        self._add((self._rejected + REJECT_REASONS.index(reason), 1))

    def feedback(self, kind: str, rating: Optional[int], corrected_text: bool, corrected_label: bool) -> None:
        """A feedback record stored."""
        rating_name = {1: "good", -1: "bad"}.get(rating, "none")  # type: ignore[arg-type]
        correction = "text" if corrected_text else "label" if corrected_label else "none"
        k = (FEEDBACK_KINDS.index(kind) * len(RATINGS) + RATINGS.index(rating_name)) * len(CORRECTIONS)
        self._add((self._feedback + k + CORRECTIONS.index(correction), 1))

    # -- a scrape
    def snapshot(self) -> list[float]:
        """Every value, read at once under the lock."""
        with self._values.get_lock():
            return list(self._values.get_obj())

    def families(self, info: ModelInfo, values: Optional[list[float]] = None) -> Iterator:
        """The metric families of a scrape (``prometheus_client`` collector protocol)."""
        v = self.snapshot() if values is None else values
        requests = CounterMetricFamily("lit_llm_http_requests", "HTTP requests answered, by route and status code",
                                       labels=["route", "status"])
        for r, route in enumerate(self.routes):
            for status in range(STATUSES):
                count = v[self._requests + r * STATUSES + status]
                if count:
                    requests.add_metric([route, str(status)], count)
        yield requests
        yield self._histogram("lit_llm_http_request_duration_seconds", "Time from a request's arrival to the last"
                              " byte of its answer (a stream's included), by route", self._latency, v)
        yield self._histogram("lit_llm_time_to_first_token_seconds", "Time from a streamed completion's arrival to"
                              " its first text, by route", self._ttft, v)
        prompt = CounterMetricFamily("lit_llm_prompt_tokens", "Prompt tokens of the requests answered, by route",
                                     labels=["route"])
        generated = CounterMetricFamily("lit_llm_generated_tokens", "Tokens generated (completion_tokens of the"
                                        " usage; rate() gives tokens per second), by route", labels=["route"])
        for r, route in enumerate(self.routes):
            if v[self._tokens + 2 * r] or v[self._tokens + 2 * r + 1]:
                prompt.add_metric([route], v[self._tokens + 2 * r])
                generated.add_metric([route], v[self._tokens + 2 * r + 1])
        yield prompt
        yield generated
        rejected = CounterMetricFamily("lit_llm_rejected_requests", "Requests refused with 429: queue_full (serve"
                                       " --max_queue), feedback_rate_limit (--max_feedback_per_minute)",
                                       labels=["reason"])
        for i, reason in enumerate(REJECT_REASONS):
            rejected.add_metric([reason], v[self._rejected + i])
        yield rejected
        feedback = CounterMetricFamily("lit_llm_feedback", "Feedback records stored, by kind, rating (good: 1, bad:"
                                       " -1) and correction", labels=["kind", "rating", "correction"])
        i = self._feedback
        for kind in FEEDBACK_KINDS:
            for rating in RATINGS:
                for correction in CORRECTIONS:
                    possible = kind == info.task and correction != {"completion": "label"}.get(kind, "text")
                    if v[i] or possible:  # the served task's series from the start, at 0
                        feedback.add_metric([kind, rating, correction], v[i])
                    i += 1
        yield feedback
        yield GaugeMetricFamily("lit_llm_queue_depth", "Requests queued for or running on the model workers now,"
                                " across every front end", value=info.queue_depth)
        yield GaugeMetricFamily("lit_llm_queue_limit", "Most requests queued or running at once (serve --max_queue)",
                                value=info.queue_limit)
        model = InfoMetricFamily("lit_llm_model", "The model served: its name, task, the checkpoint's"
                                 " system_fingerprint and reload generation, and the model workers")
        model.add_metric([], {"model": info.model, "task": info.task, "system_fingerprint": info.system_fingerprint,
                              "generation": str(info.generation), "workers": str(info.workers)})
        yield model

    def _histogram(self, name: str, doc: str, h: _Histogram, v: list[float]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["route"])
        for r, route in enumerate(self.routes):
            start = h.offset + h.width * r
            counts = v[start : start + len(h.bounds) + 1]
            if not any(counts):
                continue
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(_bound, h.bounds), "+Inf"], counts):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([route], buckets, v[start + len(h.bounds) + 1])
        return family

    def exposition(self, info: ModelInfo) -> bytes:
        """A scrape's answer, in the text format of ``CONTENT_TYPE``."""
        registry = CollectorRegistry(auto_describe=False)  # only ours: no metrics of the front end's own process
        registry.register(_Collector(self, info))
        return generate_latest(registry)


class _Collector:
    def __init__(self, metrics: ServerMetrics, info: ModelInfo) -> None:
        self.metrics, self.info = metrics, info

    def collect(self) -> Iterator:
        return self.metrics.families(self.info)


def _bound(seconds: float) -> str:
    return repr(float(seconds))


class MetricsMiddleware:
    """ASGI middleware of the front end: counts every HTTP request in ``metrics`` (its route, its status and the
    time to its answer's last byte, counted just before that byte is sent), and puts when it arrived in its scope
    (``START_KEY``) for the first-token time.

    Plain ASGI (not Starlette's ``BaseHTTPMiddleware``, which would buffer streams and break their cancellation). It
    sits inside Starlette's ``ServerErrorMiddleware``, so an exception that escapes the app is counted as the 500
    that middleware answers."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope[START_KEY] = start
        status = 500  # until the answer starts: an exception that escapes is answered 500 outside
        counted = False

        def count() -> None:
            nonlocal counted
            if not counted:
                counted = True
                self.metrics.request(self.metrics.route(scope.get("path", "")), status, time.perf_counter() - start)

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()  # before the last byte leaves: a client that has its whole answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            count()  # an answer cut short (the client gone) or never started (an exception: a 500 outside)


def install_metrics(app, metrics: ServerMetrics) -> None:
    """Count every request the FastAPI ``app`` answers in ``metrics``. Installed last, so that it is the outermost
    of the app's own middleware: requests refused by the others (a wrong Host, a body too large) are counted too."""
    app.add_middleware(MetricsMiddleware, metrics=metrics)


def request_start(scope: dict) -> Optional[float]:
    """When the front end received the request of ``scope`` (``time.perf_counter()``), if ``MetricsMiddleware`` ran."""
    return scope.get(START_KEY)
