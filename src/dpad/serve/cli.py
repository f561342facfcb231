"""``dpad serve``: the OpenAI-compatible server on one model (the embedded one by default)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from ..flags import add_decode_args, add_method_arg, add_model_args, float_in, int_in

    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions) with continuous batching",
        description="Serve a model over the OpenAI API. --method and the decoding flags set the server's defaults "
                    "(default: the family's fast method, parallel+prefix+dpad); a request may override them with "
                    "extra body fields (method, threshold, suffix, window, cache, preset, ...). "
                    "max_tokens is rounded UP to a multiple of block_length for decoding and the response is "
                    "cut to max_tokens tokens.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int_in(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: 'dpad-embedded', the hub id or the checkpoint directory name)")
    p.add_argument("--max-batch-size", type=int_in(1, 1024), default=8,
                   help="rows decoded at once (default 8)")
    p.add_argument("--max-batch-tokens", type=int_in(1, 1 << 24), default=8192,
                   help="continuous scheduler: tokens fed to the model per step (all its forwards); over it, "
                        "the rows that waited longest and then the cheapest steps go first and the rest wait a "
                        "step (the first row always runs). Rows that feed many tokens per committed token "
                        "(e.g. one token per step) take a share of the steps whatever this is (default 8192)")
    p.add_argument("--scheduler", choices=("continuous", "closed"), default="continuous",
                   help="continuous (default): a request joins the running batch at the next step and leaves "
                        "when it is final; closed: batches of requests with equal settings, each run to its end")
    p.add_argument("--max-queue", type=int_in(1, 1_000_000), default=64,
                   help="waiting requests before new ones get 429 (default 64)")
    p.add_argument("--batch-wait-ms", type=float_in(0, 60_000), default=10.0,
                   help="--scheduler closed: how long a batch waits for more compatible requests (default 10 ms)")
    p.add_argument("--shutdown-timeout", type=float_in(0, 3600), default=10.0,
                   help="on SIGTERM/SIGINT, seconds in-flight requests may still run before they are cancelled "
                        "(their clients get 503) and the server exits (default 10)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug", "trace"),
                   help="uvicorn log level (default info)")
    add_method_arg(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(ns: argparse.Namespace) -> int:
    from ..flags import method_config_from_args

    method, defaults = method_config_from_args(ns)
    try:
        import uvicorn  # noqa: F401

        from . import app as app_mod
    except ImportError as e:
        raise ConfigError(f"`dpad serve` needs FastAPI and uvicorn: pip install 'dpad-dllm[serve]' ({e})") from e
    sock = app_mod.bind_socket(ns.host, ns.port)  # a port in use or a bad host fails here, before the model loads
    try:
        import torch

        from ..api import load

        if ns.threads:
            torch.set_num_threads(ns.threads)
        lm = load(ns.model, device=ns.device, dtype=ns.dtype, revision=ns.revision, compile=ns.compile)
        model_id = ns.served_model_name or app_mod.default_model_id(ns.model)
        app = app_mod.create_app(lm, model_id=model_id, defaults=defaults, max_batch_size=ns.max_batch_size,
                                 max_queue=ns.max_queue, batch_wait_ms=ns.batch_wait_ms, scheduler=ns.scheduler,
                                 max_batch_tokens=ns.max_batch_tokens)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"dpad serve: model '{model_id}' on http://{shown}:{port}/v1 "
              f"(method {method}, gen_length {defaults.gen_length}, block {defaults.block_length}; {ns.scheduler} "
              f"batching: max batch {ns.max_batch_size}, "
              + (f"max batch tokens {ns.max_batch_tokens}, " if ns.scheduler == "continuous" else "")
              + f"queue {ns.max_queue})", flush=True)
        app_mod.run_server(app, sock, log_level=ns.log_level, shutdown_timeout=ns.shutdown_timeout)
    finally:
        sock.close()
    return 0
