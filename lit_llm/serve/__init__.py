"""Serving a checkpoint: ``python -m lit_llm serve --checkpoint CKPT [--host 127.0.0.1 --port 8000]``.

Built on LitServe: its server runs the HTTP front end (FastAPI under uvicorn) and the model in separate worker
processes, queues requests between them, and batches concurrent requests for a model that takes batches. What
is ours is the OpenAI-compatible protocol, written as two LitServe specs:

- a causal language model gets ``POST /v1/completions`` and ``POST /v1/chat/completions`` (with ``stream``
  over server-sent events, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed`` and the token usage
  as counted by the model's tokenizer). Generation is batched continuously (``--batching continuous``, the
  default): a request joins the running batch at the next decoding step, in its own KV-cache row, and leaves
  it as soon as it ends, through LitServe's continuous batching loop. ``--batching static`` instead lets
  LitServe gather requests (``--max_batch_size``, ``--batch_timeout``) that then decode together to the end,
  left-padded with a mask. Either way each request samples with its own settings and seed, and gets the
  tokens it would get alone; ``--workers`` runs several model workers;
- a classifier (``SequenceClassifier``) checkpoint gets ``POST /v1/classify``: ``{"input": text or [texts]}``
  gives each text's label and class probabilities. Concurrent requests are batched by LitServe
  (``--max_batch_size``, ``--batch_timeout``) and padded together into one forward pass;
- both get ``GET /v1/models``, ``POST /v1/feedback`` (users' ratings and corrections, appended to a
  ``lit_llm.feedback`` store that fine-tuning reads), ``GET /metrics`` (Prometheus) and LitServe's ``GET /health``.

Requests are checked in the front end before they reach the model: unknown fields, a prompt longer than
``--max_prompt_tokens``, ``max_tokens`` above ``--max_tokens``, a lone surrogate in a text, a wrong API key and
malformed JSON get a 4xx with an OpenAI-style error body that says what was wrong. Beyond ``--max_queue`` requests
queued or running, the next gets 429 with ``Retry-After``; a client that disconnects has its request stopped in
the worker; feedback is limited per client (``--max_feedback_per_minute``, 429) and in total
(``--max_feedback_store_bytes``, 507). The server binds 127.0.0.1 unless told otherwise, and answers only the
``Host`` names it is given (localhost and ``--allowed_hosts``: DNS rebinding); with ``--api_key`` (or
``$LIT_LLM_API_KEY``) every route except ``/health`` needs ``Authorization: Bearer KEY`` (what the ``openai``
client sends) or ``X-API-Key: KEY``. SIGTERM or SIGINT lets the requests in flight finish (``--drain_timeout``),
then stops every process of the server.

Chat messages become one prompt as a plain transcript, ``"{role}: {content}\\n"`` per message followed by
``"assistant:"``: a from-scratch base model has no chat template of its own.

The package, by job: ``protocol`` (request schemas, OpenAI-style errors, the chat transcript), ``messages`` (what
the front end and the model workers send each other: jobs, completion pieces, class probabilities), ``worker`` (the
model workers and their batched decoding), ``specs`` (the LitServe specs that glue the
routes to the worker), ``flow`` (what the front ends and workers share: cancelled requests, the ``--max_queue``
count, and the ``ReloadBoard`` of ``POST /v1/admin/reload``), ``metrics`` (``GET /metrics``: counters shared by the
front ends), ``command`` (``read_served`` and the ``serve`` command) and ``_litserve_adapter`` (the only
module that touches LitServe internals). A server in a subprocess, for tests and benchmarks, is
``tests/helpers/server_process.py``.
"""

from lit_llm.serve.command import HOSTS, read_served, serve
from lit_llm.serve.messages import ClassifyJob, ClassProbabilities, CompletionJob, Piece, Usage
from lit_llm.serve.protocol import (
                                    APIError,
                                    ChatCompletionRequest,
                                    ChatMessage,
                                    ClassificationRequest,
                                    CompletionRequest,
                                    FeedbackRequest,
                                    chat_prompt,
                                    install_error_handlers,
)
from lit_llm.serve.specs import ClassifySpec, CompletionSpec, Served
from lit_llm.serve.worker import ClassifierAPI, Completion, ContinuousGenerationAPI, GenerationAPI, decode_static

__all__ = [
    "APIError", "ChatCompletionRequest", "ChatMessage", "ClassProbabilities", "ClassificationRequest", "ClassifierAPI",
    "ClassifyJob", "ClassifySpec", "Completion", "CompletionJob", "CompletionRequest", "CompletionSpec",
    "ContinuousGenerationAPI", "FeedbackRequest", "GenerationAPI", "HOSTS", "Piece", "Served", "Usage", "chat_prompt",
    "decode_static", "install_error_handlers", "read_served", "serve",
]
