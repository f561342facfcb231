"""OpenAI request validation and response shapes for ``/v1/completions`` and ``/v1/chat/completions``.

Every invalid request raises :class:`ApiError` whose ``param`` names the offending field; the app
turns it into the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``.

``max_tokens`` -> ``gen_length``: dLLMs decode whole blocks, so ``gen_length`` is ``max_tokens``
rounded UP to the next multiple of ``block_length``; the response is then cut to ``max_tokens``
tokens (finish_reason ``length``). Without ``max_tokens`` the server's default ``gen_length`` is used.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .. import config as C
from ..api import check_text as api_check_text
from ..config import DecodeConfig, preset
from ..errors import ConfigError, short_repr
from ..eval.methods import LADDER, method_config

# OpenAI fields accepted and ignored (when they hold their neutral value, see NEUTRAL).
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options",
           "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias", "echo",
           "best_of", "tool_choice", "tools", "response_format", "modalities", "reasoning_effort"}
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logprobs": (None, False, 0),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "echo": (None, False), "best_of": (None, 1),
    "tool_choice": (None, "none", "auto"), "tools": (None, []), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "reasoning_effort": (None,),
}
COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "n"}


_OPENAI_SET = ("gen_length", "temperature", "top_p", "seed")  # set by OpenAI's own fields (max_tokens -> gen_length)
_JSON_TYPES: dict[type, type | tuple[type, ...]] = {bool: bool, str: str, int: int, float: (int, float)}


def _knobs() -> dict[str, type | tuple[type, ...]]:
    """Every DecodeConfig field is an extra body field (its JSON type from :data:`~dpad.config.FIELDS`),
    except those OpenAI's own fields set (max_tokens -> gen_length, temperature, top_p, seed)."""
    out: dict[str, type | tuple[type, ...]] = {"preset": str, "method": str}
    out.update({k.name: _JSON_TYPES[k.type] for k in C.FIELDS.values() if k.name not in _OPENAI_SET})
    return out


# dpad decoding knobs accepted as extra body fields, with their JSON types; null unsets the optional ones
KNOBS = _knobs()
NULLABLE = {name for name in KNOBS if name in C.FIELDS and C.FIELDS[name].nullable}
MAX_STOP = 16
MAX_STOP_CHARS = 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def payload(self) -> dict:
        """What the scheduler's error event carries (plain data: status + the error body's fields)."""
        return {"status": self.status, "message": self.message, "param": self.param, "code": self.code,
                "type": self.type}

    @classmethod
    def from_payload(cls, p: dict) -> ApiError:
        return cls(p["status"], p["message"], p.get("param"), p.get("code"), p.get("type", "server_error"))


@dataclass
class ParsedRequest:
    kind: str  # "completion" | "chat"
    prompt: Any  # text / ids (completion) or messages (chat)
    cfg: DecodeConfig
    max_tokens: int
    stop: list[str]
    stream: bool
    include_usage: bool
    chat_template: bool | None  # completions: apply the chat template (None: dpad's default)


def _type_name(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in ts))


def _check_type(name: str, v: Any, t: type | tuple[type, ...]) -> None:
    ts = t if isinstance(t, tuple) else (t,)
    ok = isinstance(v, ts) and not (isinstance(v, bool) and bool not in ts)
    if not ok:
        raise ApiError(400, f"'{name}' must be {_type_name(t)}, got {type(v).__name__} {short_repr(v)}", name)


def check_text(name: str, s: str) -> str:
    """Text must be valid Unicode: JSON can carry lone surrogates (``"\\ud800"``) that no tokenizer
    accepts."""
    try:
        return api_check_text(s, f"'{name}'")
    except ConfigError as e:
        raise ApiError(400, str(e), name) from e


def round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def parse(body: Any, kind: str, *, model_id: str, defaults: DecodeConfig,
          max_len: int | None = None) -> ParsedRequest:
    """Validate an OpenAI (chat) completion request and build its DecodeConfig.

    Every field is checked (type, range, size) here, before the request can join a batch;
    ``max_len`` (the model's context) bounds ``max_tokens``. Raises :class:`ApiError`."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_envelope(body, kind, model_id)
    stream, include_usage = _parse_stream(body)
    prompt = _parse_prompt(body) if kind == "completion" else _parse_messages(body)
    chat_template = None
    if kind == "completion" and body.get("chat") is not None:
        _check_type("chat", body["chat"], bool)
        chat_template = body["chat"]
    stops = _parse_stop(body)
    cfg, max_tokens = _decode_config(body, kind, defaults, max_len)
    return ParsedRequest(kind, prompt, cfg, max_tokens, stops, stream, include_usage, chat_template)


def _check_envelope(body: dict, kind: str, model_id: str) -> None:
    """No unknown fields, the served model, OpenAI fields we ignore only at their neutral value, n = 1."""
    main_field = "prompt" if kind == "completion" else "messages"
    allowed = COMMON | IGNORED | set(KNOBS) | {main_field}
    allowed |= {"chat"} if kind == "completion" else {"max_completion_tokens"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(short_repr(u, 40) for u in unknown[:5]) + (f" (+{len(unknown) - 5} more)"
                                                                      if len(unknown) > 5 else "")
        raise ApiError(400, f"unrecognized request argument(s): {names}", short_repr(unknown[0], 40).strip("'"))

    model = body.get("model")
    if model is None:
        raise ApiError(400, "'model' is required", "model")
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {type(model).__name__}", "model")
    if model != model_id:
        raise ApiError(404, f"The model {short_repr(model)} does not exist; this server serves '{model_id}'",
                       "model", "model_not_found")
    for name in sorted(set(body) & IGNORED):
        if name in NEUTRAL and not any(_same(body[name], v) for v in NEUTRAL[name]):
            raise ApiError(400, f"'{name}' is not supported by this server (got {short_repr(body[name])})", name,
                           "unsupported_parameter")
    n = body.get("n")
    if n is not None:
        _check_type("n", n, int)
        if n != 1:
            raise ApiError(400, f"'n' must be 1 (got {short_repr(n)}): one choice per request", "n")


def _parse_stream(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    _check_type("stream", stream, bool)
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise ApiError(400, "'stream_options' must be an object", "stream_options")
        iu = so.get("include_usage")
        if iu is not None:
            _check_type("stream_options.include_usage", iu, bool)
            include_usage = iu
    return stream, include_usage


def _parse_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"'stop' holds {len(stops)} strings; at most {MAX_STOP}", "stop")
    if any(s == "" for s in stops):
        raise ApiError(400, "'stop' strings must not be empty", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"'stop' strings must be at most {MAX_STOP_CHARS} characters", "stop")
    for s_ in stops:
        check_text("stop", s_)
    return stops


def _decode_config(body: dict, kind: str, defaults: DecodeConfig, max_len: int | None) -> tuple[DecodeConfig, int]:
    """The request's DecodeConfig (the preset or the server's defaults, then the knobs and OpenAI's own
    fields) and its max_tokens; a ConfigError becomes a 400 whose param is the field it names."""
    knobs: dict[str, Any] = {}
    for name, t in KNOBS.items():
        if name in NULLABLE and name in body and body[name] is None:
            knobs[name] = None  # explicit null unsets a server default (e.g. the threshold)
        elif body.get(name) is not None:
            _check_type(name, body[name], t)
            knobs[name] = body[name]
    pname = knobs.pop("preset", None)
    method = knobs.pop("method", None)
    if pname is not None:
        try:
            base_cfg = preset(pname)
        except ConfigError as e:
            raise ApiError(400, str(e), "preset") from e
    else:
        base_cfg = defaults
    if method is not None:  # the method's switches on the preset's or the server's parameters (as dpad eval)
        try:
            base_cfg = method_config(method, base_cfg)
        except ConfigError as e:
            raise ApiError(400, str(e), "method") from e
    base = base_cfg.to_dict()
    d = dict(base)
    base_steps = d.get("steps")
    d["steps"] = None
    d.update(knobs)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            _check_type(name, body[name], (int, float))
            d[name] = body[name]  # DecodeConfig checks the range (finite, top_p in (0, 1])
    if d.get("top_p") is not None and not isinstance(d["top_p"], bool) and d["top_p"] == 1:
        d["top_p"] = None  # top_p = 1 keeps every token: the same as no filter
    if body.get("seed") is not None:
        _check_type("seed", body["seed"], int)
        d["seed"] = body["seed"]
    mt_name = "max_tokens"
    max_tokens = body.get("max_tokens")
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        if max_tokens is not None and not _same(max_tokens, body["max_completion_tokens"]):
            raise ApiError(400, "'max_tokens' and 'max_completion_tokens' differ: give only one",
                           "max_completion_tokens")
        mt_name, max_tokens = "max_completion_tokens", body["max_completion_tokens"]
    block = d["block_length"]
    if not isinstance(block, int) or block < 1:
        raise ApiError(400, f"'block_length' must be an integer >= 1, got {block!r}", "block_length")
    if max_tokens is not None:
        _check_type(mt_name, max_tokens, int)
        if max_tokens < 1:
            raise ApiError(400, f"'{mt_name}' must be >= 1, got {short_repr(max_tokens)}", mt_name)
        if max_len is not None and max_tokens > max_len:
            raise ApiError(400, f"This model's maximum context length is {max_len} tokens; {mt_name}="
                                f"{short_repr(max_tokens)} asks for more", mt_name, "context_length_exceeded")
        d["gen_length"] = round_up(max_tokens, block)
    else:
        d["gen_length"] = round_up(int(d["gen_length"]), block)
        max_tokens = d["gen_length"]
    if "steps" not in knobs and base_steps is not None and d["gen_length"] == base["gen_length"] \
            and block == base["block_length"]:
        d["steps"] = base_steps
    extra = d.pop("extra", {}) or {}
    try:
        cfg = DecodeConfig(**{f.name: d[f.name] for f in fields(DecodeConfig) if f.name in d}, extra=extra)
    except ConfigError as e:
        param = e.field
        msg = str(e)
        if param == "gen_length":
            param = mt_name if body.get(mt_name) is not None else "block_length"
        if param == "suffix":
            msg += " ('suffix' is dpad's suffix policy; OpenAI's insertion suffix is not supported)"
        raise ApiError(400, msg, param) from e
    except (TypeError, ValueError, OverflowError) as e:
        raise ApiError(400, f"invalid decoding option: {short_repr(str(e), 200)}") from e
    return cfg, int(max_tokens)


def _parse_prompt(body: dict) -> Any:
    if "prompt" not in body or body["prompt"] is None:
        raise ApiError(400, "'prompt' is required", "prompt")
    p = body["prompt"]
    if isinstance(p, str):
        return check_text("prompt", p)
    if isinstance(p, list):
        if len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
            if isinstance(p, str):
                return check_text("prompt", p)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return [int(t) for t in p]
        if len(p) > 1 and all(isinstance(t, (str, list)) for t in p):
            raise ApiError(400, "'prompt' holds several prompts; send one prompt per request", "prompt")
    raise ApiError(400, "'prompt' must be a string or a list of token ids", "prompt")


ROLES = ("system", "user", "assistant", "developer", "tool")


def _parse_messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if msgs is None:
        raise ApiError(400, "'messages' is required", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"'{where}.role' must be one of {', '.join(ROLES)}, got {short_repr(role)}",
                           f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"'{where}.content' parts must be {{'type': 'text', 'text': ...}}",
                                   f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(400, f"'{where}.content' must be a string", f"{where}.content")
        check_text(f"{where}.content", content)
        out.append({"role": "user" if role == "developer" else role, "content": content})
    return out


def request_schema(kind: str) -> dict:
    """The request body's JSON schema (for ``/openapi.json``, and the fuzz test draws from it), built
    from the same tables and bounds :func:`parse` enforces."""
    text = {"type": "string"}
    props: dict[str, Any] = {
        "model": text,
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": C.FIELDS["temperature"].json_schema(),
        "top_p": C.FIELDS["top_p"].json_schema(),
        "seed": C.FIELDS["seed"].json_schema(),
        "stop": {"anyOf": [text, {"type": "array", "items": text, "maxItems": MAX_STOP}]},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "n": {"type": "integer", "minimum": 1, "maximum": 1},
        "preset": {"enum": sorted(C.PRESETS) + sorted(f"{n}-parallel" for n in C.PRESETS)},
        "method": {"type": "string", "description": "a decoding method as in dpad eval, e.g. "
                                                    + ", ".join(LADDER) + " (vanilla: the reference, one token "
                                                    "per step); its switches apply to the server's parameters"},
    }
    for name in KNOBS:  # dpad's knobs: type, range and null where they may be unset, from DecodeConfig's FIELDS
        if name in C.FIELDS:
            props[name] = C.FIELDS[name].json_schema()
    for name in sorted(IGNORED - {"stream_options"}):
        props[name] = {"description": "accepted and ignored when it holds its neutral value"}
    if kind == "completion":
        props["prompt"] = {"anyOf": [text, {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                     {"type": "array", "items": text, "minItems": 1, "maxItems": 1}]}
        props["chat"] = {"type": "boolean"}
        main = "prompt"
    else:
        part = {"type": "object", "properties": {"type": {"enum": ["text"]}, "text": text},
                "required": ["type", "text"]}
        msg = {"type": "object", "required": ["role", "content"],
               "properties": {"role": {"enum": list(ROLES)},
                              "content": {"anyOf": [text, {"type": "array", "items": part}]}}}
        props["messages"] = {"type": "array", "items": msg, "minItems": 1}
        props["max_completion_tokens"] = props["max_tokens"]
        main = "messages"
    schema = {"type": "object", "required": ["model", main], "properties": props, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells booleans from numbers (``0 == False`` in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    try:
        return a == b
    except RecursionError:
        return False
