"""Run a decoding method on a task: per-sample records, a summary JSON and a Markdown table.

:func:`evaluate` is the loop (generate a batch, score each output, hand each record to a
callback); :func:`run_eval` is what ``dpad eval`` does around it (pick the config, load the
model, shard samples across data-parallel ranks, write the files on rank 0).

Generation goes through :func:`dpad.generate` with the list of prompts of a batch; when that
function accepts ``batch_size`` (batched decoding in the engine) it is passed on. Latency and
tok/s are only meaningful with ``batch_size=1`` (one sample decoded at a time, as in the paper);
larger batches are for accuracy-only runs and their per-sample latency is the batch's wall time
divided by its size.

The files for ``--out DIR`` are ``DIR/{task}_{method}_gen{L}.samples.jsonl`` (one record per
sample: prompt, output, extracted answer, correct, latency, response tokens, NFE),
``.json`` (summary: accuracy, latency/sample, response tok/s, NFE/sample, env) and ``.md``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DecodeConfig
from ..errors import ConfigError, writable_dir
from .tasks import Sample, Task

__all__ = [
    "GenResult",
    "GenerateFn",
    "evaluate",
    "generate_accepts_batch_size",
    "markdown_table",
    "model_generate_fn",
    "run_eval",
    "sandbox_used",
    "stub_generate_fn",
    "summarize",
    "write_results",
]


@dataclass
class GenResult:
    """One generated output and its cost."""

    text: str
    response_tokens: int = 0
    nfe: int = 0
    latency_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


GenerateFn = Callable[[Sequence[Sample], DecodeConfig], list[GenResult]]


def generate_accepts_batch_size() -> bool:
    """Whether :func:`dpad.generate` takes ``batch_size`` (batched decoding in the engine)."""
    from ..api import generate

    try:
        return "batch_size" in inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return False


def _stats_subset(stats: dict[str, Any]) -> dict[str, Any]:
    keep = ("model_time_s", "total_time_s", "blocks_decoded", "stopped_early", "tokens_per_forward",
            "forwards_per_block", "kept_suffix_per_block")
    return {k: stats[k] for k in keep if k in stats}


def model_generate_fn(lm: Any, *, chat: bool | None = None, batch_size: int = 1) -> GenerateFn:
    """Decode with a loaded model: one :func:`dpad.generate` call per batch of prompts."""
    from ..api import generate

    pass_batch = generate_accepts_batch_size()

    def fn(samples: Sequence[Sample], cfg: DecodeConfig) -> list[GenResult]:
        prompts = [s.prompt for s in samples]
        kwargs: dict[str, Any] = {"batch_size": batch_size} if pass_batch else {}
        t0 = time.perf_counter()
        gens = generate(lm, prompts, cfg, chat=chat, **kwargs)
        wall = time.perf_counter() - t0
        if not isinstance(gens, list):
            gens = [gens]
        per = wall / max(1, len(samples))
        return [GenResult(text=g.text or "", response_tokens=int(g.stats.get("response_tokens", 0)),
                          nfe=int(g.stats.get("nfe", 0)), latency_s=per, stats=_stats_subset(g.stats))
                for g in gens]

    return fn


def stub_generate_fn(task: Task, kind: str) -> GenerateFn:
    """A model stand-in for testing the scoring pipeline: ``canonical`` returns the reference
    solution (must score 1.0), ``empty`` returns an empty string (must score 0)."""
    if kind not in ("canonical", "empty"):
        raise ConfigError(f"--model-stub {kind!r} is invalid: use canonical or empty")

    def fn(samples: Sequence[Sample], cfg: DecodeConfig) -> list[GenResult]:
        out = []
        for s in samples:
            t0 = time.perf_counter()
            text = task.canonical_output(s) if kind == "canonical" else ""
            out.append(GenResult(text=text, latency_s=time.perf_counter() - t0))
        return out

    return fn


def _chunks(items: Sequence[Sample], size: int) -> Iterable[Sequence[Sample]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate(task: Task, samples: Sequence[Sample], cfg: DecodeConfig, generate_fn: GenerateFn, *,
             batch_size: int = 1, progress: bool = True, desc: str | None = None,
             on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Generate and score every sample; returns one record per sample (in ``samples`` order)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid: must be >= 1")
    records: list[dict[str, Any]] = []
    correct = 0
    with tqdm(total=len(samples), desc=desc or f"{task.name}", disable=not progress, dynamic_ncols=True,
              unit="sample") as bar:
        for chunk in _chunks(samples, batch_size):
            gens = generate_fn(chunk, cfg)
            if len(gens) != len(chunk):
                raise RuntimeError(f"generate returned {len(gens)} outputs for {len(chunk)} prompts")
            for s, g in zip(chunk, gens, strict=True):
                sc = task.score(s, g.text)
                rec: dict[str, Any] = {
                    "index": s.index, "id": s.id, "prompt": s.prompt, "output": g.text,
                    "extracted": sc.get("extracted"), "correct": bool(sc["correct"]),
                    **{m: bool(sc[m]) for m in task.metrics},
                    "gold": sc.get("gold", s.reference if isinstance(s.reference, (str, int, float)) else None),
                    "latency_s": g.latency_s, "response_tokens": g.response_tokens, "nfe": g.nfe,
                    **{k: v for k, v in sc.items() if k not in ("correct", "extracted", "gold", *task.metrics)},
                    **g.stats,
                }
                records.append(rec)
                correct += rec["correct"]
                if on_record is not None:
                    on_record(rec)
            bar.update(len(chunk))
            bar.set_postfix(acc=f"{correct / len(records):.3f}")
    return records


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def summarize(records: Sequence[dict[str, Any]], task: Task) -> dict[str, Any]:
    """Accuracy per metric, latency/sample, response tok/s (EOS padding and prompt excluded),
    NFE/sample, response tokens/sample and tokens per forward."""
    lat = [float(r["latency_s"]) for r in records]
    toks = [int(r["response_tokens"]) for r in records]
    nfe = [int(r["nfe"]) for r in records]
    total_lat = sum(lat)
    return {
        "n": len(records),
        "accuracy": {m: _mean([float(r[m]) for r in records]) for m in task.metrics},
        "primary_metric": task.primary,
        "latency_s": _mean(lat),
        "tok_s": (sum(toks) / total_lat) if total_lat > 0 else math.nan,
        "nfe": _mean(nfe),
        "response_tokens": _mean(toks),
        "tokens_per_forward": (sum(toks) / sum(nfe)) if sum(nfe) else math.nan,
        "total_latency_s": total_lat,
    }


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(result: dict[str, Any]) -> str:
    """A Markdown table of an eval summary (one row)."""
    s = result["summary"]
    acc = " / ".join(f"{100 * v:.1f}" for v in s["accuracy"].values())
    names = " / ".join(s["accuracy"])
    lines = [
        f"**{result['task']}** on `{result['model']}` ({result['env'].get('device')}, "
        f"{result['env'].get('threads')} threads, batch {result['batch_size']})",
        "",
        f"| task | method | gen | n | {names} (%) | latency/sample (s) | tok/s | NFE/sample |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| {result['task']} | {result['method']} | {result['config']['gen_length']} | {s['n']} | {acc} | "
        f"{_fmt(s['latency_s'])} | {_fmt(s['tok_s'], 1)} | {_fmt(s['nfe'], 1)} |",
        "",
        "dpad implies early termination. tok/s counts response tokens only (prompt and EOS padding "
        "excluded)." + ("" if result["batch_size"] == 1 else
                        " Batched run: latency is the batch wall time divided by its size."),
        "",
        f"Sandbox for generated code: {result.get('sandbox', NO_CODE)}.",
    ]
    return "\n".join(lines) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dump_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON (NaN -> null) atomically (a reader never sees a half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=1, default=_json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_results(prefix: str | Path, records: Sequence[dict[str, Any]], result: dict[str, Any]) -> dict[str, str]:
    """Write ``prefix.samples.jsonl``, ``prefix.json`` and ``prefix.md``; returns their paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {"samples": str(prefix) + ".samples.jsonl", "summary": str(prefix) + ".json",
             "table": str(prefix) + ".md"}
    result["files"] = paths
    with open(paths["samples"] + ".tmp", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, default=_json_default) + "\n")
    os.replace(paths["samples"] + ".tmp", paths["samples"])
    dump_json(paths["summary"], result)
    Path(paths["table"]).write_text(markdown_table(result))
    return paths


NO_CODE = "not used (the task executes no generated code)"


def sandbox_used(task: Task) -> str:
    """The isolation layer generated code of ``task`` runs in (:func:`dpad.eval.sandbox.isolation_method`),
    or :data:`NO_CODE`. Raises :class:`~dpad.eval.sandbox.SandboxUnavailableError` (one line: install
    bubblewrap or pass --allow-unsandboxed) when the task would run code without OS isolation."""
    if not task.executes_code:
        return NO_CODE
    from .sandbox import require_isolation

    return require_isolation(task.allow_unsandboxed)


def _launcher_prefix(command: str, world_size: int) -> str:
    if world_size > 1 and command.startswith("dpad "):
        return f"torchrun --nproc_per_node {world_size} -m dpad.cli {command[5:]}"
    return command


def warm_up(lm: Any, prompt: str, cfg: DecodeConfig, chat: bool | None) -> None:
    """One short untimed decode so that lazy initialisation does not land in the first latency."""
    from ..api import generate

    generate(lm, prompt, cfg.replace(gen_length=cfg.block_length, steps=None), chat=chat)


def run_eval(*, task: Task, method: str | None = None, preset_name: str | None = None,
             overrides: dict[str, Any] | None = None, model: str | None = None, revision: str | None = None,
             device: str = "auto",
             dtype: str = "auto", threads: int | None = None, limit: int | None = None,
             out: str | Path = "eval_results", batch_size: int = 1, progress: bool = True,
             stub: str | None = None, command: str | None = None,
             generate_fn: GenerateFn | None = None,
             allow_unsandboxed: bool | None = None, compile: bool = False) -> dict[str, Any] | None:  # noqa: A002
    """Everything ``dpad eval`` does. Returns the result dict on rank 0 (None on other ranks).

    ``stub`` (``canonical``/``empty``) or ``generate_fn`` replace the model (tests). Tasks that
    execute generated code (humaneval, mbpp) need an OS sandbox (:mod:`dpad.eval.sandbox`); without
    one they are refused before the model loads unless ``allow_unsandboxed`` (default: the task's
    own setting). The summary's ``sandbox`` field says which isolation layer ran the code.
    """
    import torch

    from ..models import read_config
    from .env import collect_env, command_line
    from .methods import canonical_method, model_family, resolve_config
    from .parallel import init_distributed, shard

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} is invalid: must be >= 1")
    writable_dir(out, create=False)  # an unwritable --out fails now, not after the whole evaluation
    if method is not None:
        canonical_method(method)
    config_json = read_config(model, revision) if model is not None else None
    family = model_family(model, config_json)
    label, cfg = resolve_config(method, preset_name=preset_name, family=family, task=task.name,
                                overrides=overrides)
    samples = task.samples(limit)  # validates data before the model loads
    if allow_unsandboxed is not None:
        task.allow_unsandboxed = allow_unsandboxed
    sandbox = sandbox_used(task)  # refuses here, before any heavy work, when code would run unisolated
    ctx = init_distributed(device)
    try:
        if threads:
            torch.set_num_threads(threads)
        lm = None
        chat_used = task.chat
        dev_str, dtype_str = "none (stub)", None
        if generate_fn is None and stub is not None:
            generate_fn = stub_generate_fn(task, stub)
        elif generate_fn is None:
            from ..api import load

            lm = load(model, device=ctx.device_for(device), dtype=dtype, revision=revision, compile=compile)
            dev_str, dtype_str = str(lm.model.device), str(next(lm.model.parameters()).dtype)
            chat_used = task.chat if task.chat is not None else lm.is_chat
            generate_fn = model_generate_fn(lm, chat=chat_used, batch_size=batch_size)
            if samples:
                warm_up(lm, samples[0].prompt, cfg, chat_used)
        mine = shard(samples, ctx.rank, ctx.world_size)
        prefix = Path(out) / (f"{task.name}_{label}_gen{cfg.gen_length}" + (f"_stub-{stub}" if stub else ""))
        prefix.parent.mkdir(parents=True, exist_ok=True)
        part_path = Path(f"{prefix}.samples.rank{ctx.rank}.partial.jsonl")
        t0 = time.perf_counter()
        with open(part_path, "w", encoding="utf-8") as part:
            def stream(rec: dict[str, Any]) -> None:
                part.write(json.dumps(rec, default=_json_default) + "\n")
                part.flush()

            desc = f"{task.name} {label}" + (f" [rank {ctx.rank}/{ctx.world_size}]" if ctx.enabled else "")
            records = evaluate(task, mine, cfg, generate_fn, batch_size=batch_size,
                               progress=progress and ctx.is_main, desc=desc, on_record=stream)
        wall = time.perf_counter() - t0
        gathered = ctx.gather(records)
        walls = ctx.gather(wall)
        if not ctx.is_main:
            ctx.barrier()
            part_path.unlink(missing_ok=True)
            return None
        merged = sorted((r for rs in gathered for r in rs), key=lambda r: r["index"])
        result: dict[str, Any] = {
            "kind": "eval",
            "env": collect_env(dev_str, dtype_str, ctx.world_size),
            "model": model or "embedded",
            "model_revision": revision,
            "model_family": family,
            "chat": chat_used,
            "task": task.name,
            "task_options": task.describe(),
            "command": _launcher_prefix(command or command_line(), ctx.world_size),
            "method": label,
            "requested_method": method or (f"preset:{preset_name}" if preset_name else "vanilla"),
            "preset": preset_name,
            "config": cfg.to_dict(),
            "batch_size": batch_size,
            "batched_engine": generate_accepts_batch_size(),
            "stub": stub,
            "sandbox": sandbox,
            "wall_time_s": max(walls),
            "summary": summarize(merged, task),
        }
        s = result["summary"]
        result["rows"] = [{"method": label, "gen_length": cfg.gen_length, "n": s["n"], "latency_s": s["latency_s"],
                           "tok_s": s["tok_s"], "nfe": s["nfe"], "accuracy": s["accuracy"][task.primary],
                           **{f"accuracy_{m}": v for m, v in s["accuracy"].items()}}]
        write_results(prefix, merged, result)
        ctx.barrier()
        part_path.unlink(missing_ok=True)
        return result
    finally:
        ctx.close()
