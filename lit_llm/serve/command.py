"""The ``serve`` command: read the checkpoint's task, tokenizer and config, check the limits and the setup, and
run LitServe with the spec and model worker of the checkpoint's task, until SIGTERM or SIGINT stops it whole.
SIGHUP reloads the checkpoint (the file at the path served, read again) without a restart."""

from __future__ import annotations

import ipaddress
import multiprocessing as mp
import os
import re
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional, Union

import litserve as ls

from lit_llm.checkpoint import config_and_tokenizer, load_network, read_info
from lit_llm.errors import UsageError
from lit_llm.feedback import FeedbackStore
from lit_llm.serve._litserve_adapter import fastapi_app, front_ends, set_drain_timeout
from lit_llm.serve.flow import CheckpointRef
from lit_llm.serve.metrics import install_metrics
from lit_llm.serve.protocol import APIError, install_error_handlers, install_host_check
from lit_llm.serve.specs import ClassifySpec, CompletionSpec, Served
from lit_llm.serve.worker import ClassifierAPI, ContinuousGenerationAPI, GenerationAPI

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe can bind
LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]")  # Host names a server always answers (any port)
_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def allowed_host_names(host: str, api_key: Optional[str], allowed_hosts: Optional[Union[list[str], str]]) -> list[str]:
    """The ``Host`` header names (with any port) the server answers: the localhost names and ``allowed_hosts``;
    any (``["*"]``) when ``allowed_hosts`` holds ``*``, or when a public server (``host`` 0.0.0.0 or ::) has an
    API key and no list. A web page that points a domain of its own at this machine (DNS rebinding) sends that
    domain as Host: the list keeps it out. A key does too (a page cannot send it), so only a public server without
    one must be given its names."""
    if isinstance(allowed_hosts, str):  # --allowed_hosts gpu1.lan,10.0.0.5
        allowed_hosts = allowed_hosts.split(",")
    names: list[str] = []
    for given in allowed_hosts or []:
        name = str(given).strip().strip("'\"").lower()
        if name == "*":
            return ["*"]
        if ":" in name:  # an IPv6 address, which a Host header brackets
            try:
                name = f"[{ipaddress.IPv6Address(name.strip('[]')).compressed}]"
            except ValueError:
                name = ""
        elif not _HOST_NAME.fullmatch(name):
            name = ""
        if not name:
            raise UsageError(f"--allowed_hosts: {given!r} is not a host name (without the port: any port is accepted),"
                             " an IP address, '*.example.com' (its subdomains) or '*' (any)")
        if name not in LOCAL_HOST_NAMES and name not in names:
            names.append(name)
    if host != "127.0.0.1" and not allowed_hosts:
        if api_key:
            return ["*"]
        raise UsageError(f"--host {host} without an API key would answer any web page that points a name of its own at"
                         " this machine (DNS rebinding): pass --allowed_hosts with the names and addresses clients use,"
                         " e.g. --allowed_hosts gpu1.lan,10.0.0.5, or --allowed_hosts '*' to accept any")
    return [*LOCAL_HOST_NAMES, *names]


def check_port_free(host: str, port: int) -> None:
    """Raise ``UsageError`` if another socket listens on ``host:port``. Bound as uvicorn binds it (SO_REUSEADDR:
    connections of a server that just stopped, still in TIME_WAIT, do not hold the port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UsageError(f"Cannot listen on {host}:{port}: {host}:{port} is in use ({e.strerror}), by another"
                             " server or one left running: stop it, or pass --port") from e


def _say(text: str) -> None:
    """A line on stderr, safe in a signal handler (``print`` may be in the middle of writing)."""
    try:
        os.write(2, f"lit_llm serve: {text}\n".encode())
    except OSError:
        pass


class _Shutdown:
    """SIGTERM (``kill PID``, a container stopping) and SIGINT (Ctrl+C) in the serving process: stop the server
    and every process it started, after the front ends have had ``drain_timeout`` seconds to finish the requests
    they hold. Without it, SIGTERM killed this process alone and left the front ends serving on the port.

    The first signal tells each front end to stop (uvicorn: stop accepting connections, finish the requests in
    flight, at most ``drain_timeout`` seconds) and raises ``KeyboardInterrupt``, on which ``LitServer.run`` joins
    the front ends, then stops the model workers and the queue manager. A second signal kills whatever is left at
    once. On the way out every child still running is terminated, then killed."""

    def __init__(self, drain_timeout: float) -> None:
        self.drain_timeout = drain_timeout
        self.pid = os.getpid()
        self.signal: Optional[int] = None
        self.exiting = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "_Shutdown":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a process forked from this one (a front end, the queue manager) before it set
            return self._as_before(signum, frame)  # handlers of its own: what it would have done without ours
        name = signal.Signals(signum).name
        if self.signal is not None or self.exiting:
            _say(f"{name} again: killing the server's processes now")
            for child in mp.active_children():
                child.kill()
            return
        self.signal = signum
        _say(f"{name}: draining: requests in flight get up to {self.drain_timeout:g} s to finish (--drain_timeout),"
             " then every process of the server stops")
        for child in front_ends():
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        raise KeyboardInterrupt  # LitServer.run stops what it started

    def _as_before(self, signum: int, frame) -> None:
        previous = self.previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __exit__(self, *exc) -> None:
        self.exiting = True  # a signal from here on kills what is left
        try:
            children = mp.active_children()
            for child in children:
                child.terminate()
            deadline = time.monotonic() + 5
            for child in children:
                child.join(max(0.0, deadline - time.monotonic()))
                if child.is_alive():
                    child.kill()
                    child.join(1)
        finally:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
        if self.signal is not None:
            _say(f"stopped on {signal.Signals(self.signal).name}")


class _ReloadOnHangup:
    """SIGHUP to the serving process reloads the checkpoint: the file at the path served, read again (a
    ``last.ckpt`` that training keeps replacing), as ``POST /v1/admin/reload`` with no body does. The reload runs
    in a thread of its own and says how it went on stderr; the model served goes on serving if it fails.

    Only the serving process reloads: the front ends (forked from it, with this handler) ignore SIGHUP, and so do
    the model workers (``_WorkerAPI``), which a reload reaches through the ``ReloadBoard``."""

    def __init__(self, reload) -> None:
        self.reload = reload  # the spec's reload_checkpoint
        self.pid = os.getpid()
        self.previous = None

    def __enter__(self) -> "_ReloadOnHangup":
        if hasattr(signal, "SIGHUP"):  # not on Windows
            self.previous = signal.signal(signal.SIGHUP, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() == self.pid:
            threading.Thread(target=self._reload, name="lit_llm-sighup-reload", daemon=True).start()

    def _reload(self) -> None:
        _say("SIGHUP: reloading the checkpoint served")
        try:
            done = self.reload()
        except APIError as e:
            _say(f"SIGHUP: {e.message}")
        except Exception as e:  # noqa: BLE001 - said, and the server goes on as it was
            _say(f"SIGHUP: the reload failed ({type(e).__name__}: {e}); the model served goes on serving")
        else:
            _say(f"SIGHUP: reload {done['generation']}: serving {done['checkpoint']} ({done['system_fingerprint']})")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGHUP, self.previous)


def read_served(checkpoint: str, name: Optional[str], max_prompt_tokens: Optional[int], max_tokens: int,
                max_inputs: int, max_queue: int = 256, max_feedback_per_minute: float = 60.0) -> Served:
    """The checkpoint's task, tokenizer and config (memory-mapped: only the weights' shapes are read), with the
    limits checked."""
    path = Path(checkpoint)
    info = read_info(path, purpose="serve")  # FileNotFoundError, or CheckpointError for a file that is not ours
    # the config, the tokenizer and a language model's weights (names and shapes) checked before the server
    # says it is serving; a classifier's weights are checked by its restore, in the worker
    if info.task == "language_model":
        config, _, tokenizer = load_network(path, purpose="serve")
    else:
        config, tokenizer = config_and_tokenizer(info, path)
    task = "classification" if info.task == "classification" else "completion"
    if task == "completion" and not config.causal:
        raise ValueError(f"{path} holds a {config.family} encoder, which does not generate text: serve a causal"
                         " (gpt2/llama) checkpoint, or a classifier fine-tuned from this one")
    limit = config.block_size if max_prompt_tokens is None else max_prompt_tokens
    if not 1 <= limit <= config.block_size:
        raise ValueError(f"max_prompt_tokens must be in 1..{config.block_size} (the model's block_size), got {limit}")
    if max_tokens < 1 or max_inputs < 1 or max_queue < 1:
        raise ValueError(f"max_tokens, max_inputs and max_queue must be >= 1, got {max_tokens}, {max_inputs} and"
                         f" {max_queue}")
    if max_feedback_per_minute < 0:
        raise ValueError(f"max_feedback_per_minute must be >= 0 (0: no limit), got {max_feedback_per_minute}")
    labels = None
    if task == "classification":
        labels = list(info.label_names) if info.label_names else [str(i) for i in range(info.num_classes)]
    return Served(name=name or path.stem, task=task, tokenizer=tokenizer, config=config,
                  created=int(path.stat().st_mtime), max_prompt_tokens=limit, max_tokens=max_tokens,
                  max_inputs=max_inputs, label_names=labels, max_queue=max_queue,
                  max_feedback_per_minute=max_feedback_per_minute, checkpoint=CheckpointRef.of(path))


def serve(
    checkpoint: str,
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    allow_public_without_key: bool = False,
    allowed_hosts: Optional[Union[list[str], str]] = None,
    model_name: Optional[str] = None,
    feedback_store: str = "feedback.jsonl",
    max_feedback_per_minute: float = 60.0,
    max_feedback_store_bytes: int = 1 << 30,
    max_prompt_tokens: Optional[int] = None,
    max_tokens: int = 256,
    max_inputs: int = 32,
    max_queue: int = 256,
    batching: Literal["continuous", "static"] = "continuous",
    max_batch_size: Optional[int] = None,
    batch_timeout: float = 0.005,
    stream_interval: float = 0.02,
    workers: int = 1,
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto",
    use_cache: bool = True,
    timeout: float = 60.0,
    max_payload_bytes: int = 1 << 20,
    drain_timeout: float = 5.0,
    allow_reload: Optional[bool] = None,
    reload_timeout: float = 600.0,
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info",
    ui: bool = False,
) -> None:
    """Serve a checkpoint over HTTP: OpenAI-compatible completions and chat for a language model, /v1/classify for
    a classifier, plus /v1/models, /v1/feedback, /v1/admin/reload (another checkpoint, or the served path's new
    file, without a restart; SIGHUP does the same), /metrics (Prometheus) and /health.

    Args:
        checkpoint: a .ckpt written by ``fit`` (a causal language model or a SequenceClassifier).
        host: address to bind: 127.0.0.1 (this machine only), 0.0.0.0 or ::.
        port: TCP port.
        api_key: require this key (``Authorization: Bearer KEY``) on every route but /health (/metrics included).
            Default: ``$LIT_LLM_API_KEY``, else no key. Prefer the variable: a flag shows in the process list.
        allow_public_without_key: serve on 0.0.0.0 or :: (every network this machine is on) with no API key;
            refused otherwise, so that a public server is never open by mistake.
        allowed_hosts: the names in the ``Host`` header that the server answers, besides localhost, 127.0.0.1 and
            [::1] (any port): names, IP addresses, ``*.example.com`` for its subdomains, or ``*`` for any, as a
            list or separated by commas, e.g. ``--allowed_hosts gpu1.lan,10.0.0.5``. Another Host gets 400 (a web
            page that points a domain of its own at this machine, DNS rebinding, sends that domain). Default: the
            localhost names on 127.0.0.1; any on 0.0.0.0 or :: with an API key (a web page cannot send the key);
            a keyless public server must be given its names.
        model_name: the model id clients send and /v1/models lists (default: the checkpoint's file stem).
        feedback_store: JSON-lines file that POST /v1/feedback appends to.
        max_feedback_per_minute: most feedback records one client (by IP address) may send a minute, all at once
            if it likes; more get 429 with ``Retry-After``. 0: no limit.
        max_feedback_store_bytes: largest size of the feedback store; a record that would take it past this is
            answered 507 and not stored. 0: no cap.
        max_prompt_tokens: longest prompt accepted, in tokens (default: block_size); a longer one is refused.
            A classifier cuts longer texts to this length instead, as training cuts them to data.max_length,
            and marks them ``truncated``.
        max_tokens: most tokens one completion may ask for; also the default when a chat request names none.
        max_inputs: most texts in one /v1/classify request.
        max_queue: most requests queued for or running on the model workers at once (across all of them); one
            more is answered 429 at once, with ``Retry-After: 1``, instead of piling up.
        batching: how a language model's worker batches generation. ``continuous``: a request joins the
            running batch at the next decoding step and leaves it as soon as it ends, each with its own KV-cache
            row (``ContinuousGenerationAPI``). ``static``: LitServe gathers up to ``max_batch_size`` requests
            for ``batch_timeout`` and decodes them together to the end of the longest. Classifiers always batch
            statically (one forward pass per request).
        max_batch_size: most requests decoded together (continuous: the KV-cache rows; default 32), or batched
            together (static generation and classification; default 8). 1 turns batching off (static only).
        batch_timeout: seconds LitServe waits to fill a static batch.
        stream_interval: continuous batching: after a stream's first text, which is sent at once, the text of
            each this many seconds goes to the client as one event (each message crosses LitServe's queue
            between processes, which at 32 streams costs more than a decoding step); 0 sends every token's text.
        workers: model worker processes (each holds a copy of the model).
        accelerator: auto, cpu, cuda or mps.
        use_cache: generate with the KV cache (the output is the same without it, only slower).
        timeout: seconds a request may wait in the queue before it is answered 504.
        max_payload_bytes: largest request body accepted, in bytes (413 above it).
        drain_timeout: on SIGTERM or SIGINT (Ctrl+C), seconds the requests in flight get to finish (new
            connections are no longer accepted); then every process of the server stops and the port is free.
        allow_reload: whether ``POST /v1/admin/reload`` may replace the checkpoint served without a restart (the
            requests in flight finish on the old one). Default: on when the server has an API key, which the route
            then needs, and off without one (anyone who reaches the port could otherwise swap the model); ``true``
            turns it on without a key. SIGHUP to the server's process reloads the served path either way.
        reload_timeout: seconds every model worker gets to load a new checkpoint; past it the reload is called
            off and the old checkpoint goes on serving.
        log_level: uvicorn / LitServe log level.
        ui: also serve web pages at /ui (the ``ui`` extra, Gradio): a chat page (a classify page for a classifier)
            where users rate answers and give better ones, and a dashboard of the metrics and the feedback. The pages
            call this server's own API, with the user's API key; one front end then serves the API and the pages
            (Gradio keeps each page's session in its process). docs/deployment.md#web-pages.
    """
    if host not in HOSTS:
        raise ValueError(f"host must be one of {HOSTS} (LitServe binds those), got {host!r}")
    if not 1024 <= port <= 65535:
        raise ValueError(f"port must be in 1024..65535, got {port}")
    api_key = api_key or os.environ.get("LIT_LLM_API_KEY") or None
    if host != "127.0.0.1" and not api_key and not allow_public_without_key:  # before any work: nothing is bound
        raise ValueError(f"--host {host} serves every network this machine is on, and no API key is set: pass"
                         " --api_key KEY or set $LIT_LLM_API_KEY, or pass --allow_public_without_key true to serve"
                         " without one")
    hosts = allowed_host_names(host, api_key, allowed_hosts)
    check_port_free(host, port)  # before anything is read or started
    if drain_timeout < 0 or max_feedback_store_bytes < 0:
        raise ValueError(f"drain_timeout and max_feedback_store_bytes must be >= 0, got {drain_timeout} and"
                         f" {max_feedback_store_bytes}")
    if reload_timeout <= 0 or workers < 1:
        raise ValueError(f"reload_timeout must be > 0 and workers >= 1, got {reload_timeout} and {workers}")
    if batching not in ("continuous", "static"):
        raise ValueError(f"batching must be 'continuous' or 'static', got {batching!r}")
    continuous = batching == "continuous"
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if ui:  # the pages (the ui extra: without it, the CLI's one error line names it), before anything is read
        from lit_llm.serve import ui as web_pages
    served = read_served(checkpoint, model_name, max_prompt_tokens, max_tokens, max_inputs, max_queue,
                         max_feedback_per_minute)
    served = replace(served, workers=workers, reload=bool(api_key) if allow_reload is None else allow_reload,
                     reload_timeout=reload_timeout)
    continuous = continuous and served.task == "completion"  # a classifier answers in one forward pass
    if max_batch_size is None:
        max_batch_size = 32 if continuous else 8
    if continuous and not use_cache:
        raise ValueError("Continuous batching decodes from the KV cache: drop --use_cache false, or pass"
                         " --batching static to generate without the cache")
    store = FeedbackStore(feedback_store, max_feedback_store_bytes or None)
    folder = store.path.resolve().parent
    while not folder.exists():  # the store's folder is created on the first append: check where it would be
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"Cannot write the feedback store {store.path} ({folder} is not writable);"
                              " pass --feedback_store PATH somewhere writable")
    if served.task == "classification":
        api = ClassifierAPI(checkpoint, ClassifySpec(served, store), api_key, max_batch_size, batch_timeout)
    elif continuous:
        api = ContinuousGenerationAPI(checkpoint, CompletionSpec(served, store), api_key, max_batch_size, stream_interval)
    else:
        api = GenerationAPI(checkpoint, CompletionSpec(served, store), api_key, use_cache, max_batch_size, batch_timeout)
    api.cpu_threads = max(1, (os.cpu_count() or 1) // workers)
    if isinstance(api, ContinuousGenerationAPI):  # its event loop (requests in, answers out) needs a core too
        api.cpu_threads = max(1, api.cpu_threads - 1)
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=workers, timeout=timeout,
                          max_payload_size=max_payload_bytes, model_metadata={"name": served.name, "task": served.task})
    install_error_handlers(fastapi_app(server))
    install_host_check(fastapi_app(server), hosts)
    install_metrics(fastapi_app(server), api.spec.metrics)  # last: the outermost, so it counts what the others refuse
    set_drain_timeout(server, drain_timeout)
    if ui:
        training, note = (web_pages.training_labels_of(checkpoint, served.label_names)
                          if served.task == "classification" else (None, ""))
        api_url = f"http://{'[::1]' if host == '::' else '127.0.0.1'}:{port}"
        web_pages.mount_pages(fastapi_app(server), web_pages.Pages(
            api_url, served.name, served.task, bool(api_key), store.path.resolve(), served.label_names, training, note))
    routes = "/v1/classify" if served.task == "classification" else "/v1/completions, /v1/chat/completions"
    print(f"serving '{served.name}' ({served.task}) on http://{host}:{port}: {routes}, /v1/models, /v1/feedback,"
          f" /metrics, /health; feedback -> {Path(feedback_store).resolve()}; API key {'required' if api_key else 'off'};"
          f" Host {'any' if hosts == ['*'] else ', '.join(hosts)}; reload: SIGHUP"
          f"{', POST /v1/admin/reload' if served.reload else ''}"
          f"{f'; pages: http://{host}:{port}/ui' if ui else ''}", flush=True)
    with _Shutdown(drain_timeout), _ReloadOnHangup(api.spec.reload_checkpoint):
        try:
            server.run(host=host, port=port, generate_client_file=False, log_level=log_level,
                       **({"num_api_servers": 1} if ui else {}))  # the pages' sessions live in one process
        except KeyboardInterrupt:  # a signal before LitServer.run was waiting (while the workers loaded)
            pass
