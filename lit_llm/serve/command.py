"""The ``serve`` command: read the checkpoint's task, tokenizer and config, check the limits and the setup, and
run LitServe with the spec and model worker of the checkpoint's task."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, Optional

import litserve as ls

from lit_llm.checkpoint import read_info
from lit_llm.feedback import FeedbackStore
from lit_llm.serve._litserve_adapter import fastapi_app
from lit_llm.serve.protocol import install_error_handlers
from lit_llm.serve.specs import ClassifySpec, CompletionSpec, Served
from lit_llm.serve.worker import ClassifierAPI, ContinuousGenerationAPI, GenerationAPI

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe can bind


def read_served(checkpoint: str, name: Optional[str], max_prompt_tokens: Optional[int], max_tokens: int,
                max_inputs: int, max_queue: int = 256) -> Served:
    """The checkpoint's task, tokenizer and config (memory-mapped: the weights are not read), with the limits checked."""
    path = Path(checkpoint)
    info = read_info(path, purpose="serve")  # FileNotFoundError, or CheckpointError for a file that is not ours
    config = info.config
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
    labels = None
    if task == "classification":
        labels = list(info.label_names) if info.label_names else [str(i) for i in range(info.num_classes)]
    return Served(name=name or path.stem, task=task, tokenizer=info.load_tokenizer(), config=config,
                  created=int(path.stat().st_mtime), max_prompt_tokens=limit, max_tokens=max_tokens,
                  max_inputs=max_inputs, label_names=labels, max_queue=max_queue)


def serve(
    checkpoint: str,
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    allow_public_without_key: bool = False,
    model_name: Optional[str] = None,
    feedback_store: str = "feedback.jsonl",
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
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info",
) -> None:
    """Serve a checkpoint over HTTP: OpenAI-compatible completions and chat for a language model, /v1/classify for
    a classifier, plus /v1/models, /v1/feedback and /health.

    Args:
        checkpoint: a .ckpt written by ``fit`` (a causal language model or a SequenceClassifier).
        host: address to bind: 127.0.0.1 (this machine only), 0.0.0.0 or ::.
        port: TCP port.
        api_key: require this key (``Authorization: Bearer KEY``) on every route but /health. Default:
            ``$LIT_LLM_API_KEY``, else no key. Prefer the variable: a flag shows in the process list.
        allow_public_without_key: serve on 0.0.0.0 or :: (every network this machine is on) with no API key;
            refused otherwise, so that a public server is never open by mistake.
        model_name: the model id clients send and /v1/models lists (default: the checkpoint's file stem).
        feedback_store: JSON-lines file that POST /v1/feedback appends to.
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
        log_level: uvicorn / LitServe log level.
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
    if batching not in ("continuous", "static"):
        raise ValueError(f"batching must be 'continuous' or 'static', got {batching!r}")
    continuous = batching == "continuous"
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    served = read_served(checkpoint, model_name, max_prompt_tokens, max_tokens, max_inputs, max_queue)
    continuous = continuous and served.task == "completion"  # a classifier answers in one forward pass
    if max_batch_size is None:
        max_batch_size = 32 if continuous else 8
    if continuous and not use_cache:
        raise ValueError("Continuous batching decodes from the KV cache: drop --use_cache false, or pass"
                         " --batching static to generate without the cache")
    store = FeedbackStore(feedback_store)
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
