"""``dpad serve``: an OpenAI-compatible HTTP server with dynamic batching (``pip install dpad-dllm[serve]``).

Start it (the embedded model by default; decoding flags set the server's defaults)::

    dpad serve --port 8000 --max-batch-size 8 --preset llada-instruct-gsm8k-parallel --cache prefix
    dpad serve --model /path/to/LLaDA-8B-Instruct --device cuda --served-model-name llada

and use any OpenAI client::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="dpad-embedded", prompt="Mia has 3 apples ...", max_tokens=128,
                              extra_body={"threshold": 0.9, "suffix": "gaussian", "window": 128})

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true`` sends SSE
chunks ``data: {...}`` as each block is committed, then ``data: [DONE]``; ``stream_options.
include_usage`` adds a usage chunk), ``GET /v1/models``, ``GET /health``, ``GET /metrics``
(Prometheus text: requests by endpoint/status, latency and time-to-first-token histograms, prompt
and completion tokens, NFE, batches and batch sizes, queue gauges).

Request fields:

- ``max_tokens`` (chat: also ``max_completion_tokens``): diffusion LMs decode whole blocks, so the
  decode length is ``max_tokens`` rounded UP to a multiple of ``block_length``, and the response is
  cut to ``max_tokens`` tokens (``finish_reason: "length"``). Omitted: the server's ``gen_length``.
  ``prompt + rounded max_tokens`` beyond the model's context -> 400 ``context_length_exceeded``.
- ``temperature`` (default: the server's, 0 = greedy — not OpenAI's 1), ``top_p``, ``seed``
  (default: the server's, so equal requests give equal answers), ``stop`` (up to 16 strings),
  ``n`` (1 only), ``stream``, ``stream_options``; ``user``/``metadata`` and similar are ignored;
  penalties, ``logprobs``, ``echo``, ``best_of`` > 1, tools are refused with 400 unless neutral.
- dpad knobs as extra fields: ``preset`` and every :class:`~dpad.config.DecodeConfig` field not
  set by an OpenAI field (``threshold``, ``factor``, ``entropy_bound``, ``suffix`` — dpad's suffix
  policy, OpenAI's insertion suffix is not supported —, ``window``, ``sigma``, ``scale``, ``cache``,
  ``early_termination``, ``block_length``, ``steps``, ``confidence``, ``top_k``, ``compat``, ...),
  with DecodeConfig's ranges; a ``preset`` replaces the server's defaults, the other knobs
  override; ``null`` unsets an optional one (``threshold``, ``window``, ``steps``, ...). ``/v1/completions`` also takes ``chat`` (apply the chat template to a text
  prompt; default as :func:`dpad.generate`: when the tokenizer has one). Unknown fields -> 400.

Every field is validated (type, range, size against the model) before a request joins a batch;
an empty prompt (``""`` with ``chat: false``, or ``[]``) is unconditional generation. Errors use
OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: 400 for invalid fields and
malformed JSON (``param`` names the field), 404 ``model_not_found``, 413 for a body over 8 MiB,
429 when the queue holds ``--max-queue`` waiting requests and 503 while shutting down (both with
``Retry-After``), 500 only for the row a genuine server bug hit (the other rows of its batch
complete). SIGTERM: in-flight requests get ``--shutdown-timeout`` seconds (default 10), then their
rows are cancelled (checked before every forward) and the server exits. See docs/serve.md.

Scheduling: requests wait in a bounded queue; one worker thread decodes a batch at a time with
:func:`dpad.engine.decode_batch`. A batch is a group of requests whose decoding configs agree on
everything but the seed: a full group (``--max-batch-size``) starts at once, otherwise the oldest
request's group starts once that request has waited ``--batch-wait-ms``. Every row decodes exactly
what it would decode alone. A row leaves its batch as soon as its response is final (EOS, a stop
string, ``max_tokens``) or its client disconnects (seen within 0.25 s, then the row leaves before its next forward; a waiting request
is withdrawn from the queue at once).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerThread", "create_app"]


def __getattr__(name: str) -> Any:  # import FastAPI lazily: `dpad --help` must not need it
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
