"""The speed-up ladder: every method at every gen length on the same problems, one JSON.

Speed (``--n`` problems per gen length): batch 1, one run, **methods interleaved per
problem** (problem *i*: every method, the starting method rotating with *i*) so machine noise
hits all methods alike. Latency is the wall time of one :func:`dpad.generate` call; tok/s
counts response tokens only (prompt and EOS padding excluded); the speed-up of a method is
vanilla's mean latency over its own mean latency at the same gen length, in the same run.

Accuracy (optional, ``--accuracy-n`` problems): every non-vanilla method at every gen length
against vanilla at ``--accuracy-baseline-gen`` (256) on the same problems; these runs may be
batched (``--accuracy-batch-size``) since they are not timed.

Every finished (problem, method) appends one line to ``PREFIX.records.jsonl`` and rewrites
``PREFIX.json`` / ``PREFIX.md``, so an interrupted run leaves its data; ``--resume`` skips the
records already there. The PNG is drawn at the end of each gen length.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, writable_dir
from ..eval.methods import LADDER, canonical_method

__all__ = ["DEFAULT_GEN_LENGTHS", "DEFAULT_METHODS", "TARGETS", "LadderSettings", "run_ladder", "build_result",
           "markdown", "text_table"]

DEFAULT_METHODS: tuple[str, ...] = (*LADDER[:6], "et+parallel+prefix", *LADDER[6:])
"""The paper's ladder plus ``et+parallel+prefix`` (Fast-dLLM with early termination), the
baseline of the "dpad on top of parallel+prefix+et" factor."""
DEFAULT_GEN_LENGTHS: tuple[int, ...] = (256, 512, 1024, 2048)

TARGETS: tuple[dict[str, Any], ...] = (
    {"name": "parallel+prefix+dpad speed-up vs vanilla at gen 1024", "kind": "speedup",
     "method": "parallel+prefix+dpad", "gen_length": 1024, "target": 60.0},
    {"name": "parallel+prefix+dpad speed-up vs vanilla at gen 2048", "kind": "speedup",
     "method": "parallel+prefix+dpad", "gen_length": 2048, "target": 97.0},
    {"name": "dpad's factor on top of et+parallel+prefix at gen 1024 (latency ratio)", "kind": "factor",
     "method": "parallel+prefix+dpad", "baseline": "et+parallel+prefix", "gen_length": 1024, "target": 10.0},
    {"name": "dpad's factor on top of et+parallel+prefix at gen 2048 (latency ratio)", "kind": "factor",
     "method": "parallel+prefix+dpad", "baseline": "et+parallel+prefix", "gen_length": 2048, "target": 15.0},
    {"name": "accuracy within 2 points of vanilla at the baseline gen length (worst drop, points)",
     "kind": "accuracy", "target": -2.0},
)
"""What the ladder is reported against (copied into the JSON with the measured values)."""


@dataclass
class LadderSettings:
    """What a ladder run measures; stored in the JSON and checked by ``--resume``."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    gen_lengths: list[int] = field(default_factory=lambda: list(DEFAULT_GEN_LENGTHS))
    n: int = 10
    accuracy_n: int = 0
    accuracy_baseline_gen: int = 256
    accuracy_methods: list[str] | None = None  # None: every non-vanilla method
    accuracy_batch_size: int = 8
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 2
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    compile: bool = False

    # fields that must match for --resume to continue a run (methods/lengths may grow)
    RESUME_KEYS = ("task", "task_options", "model", "revision", "preset", "overrides", "accuracy_baseline_gen", "dtype")

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("no methods given")
        self.methods = list(dict.fromkeys(canonical_method(m) for m in self.methods))
        if self.accuracy_methods is not None:
            self.accuracy_methods = list(dict.fromkeys(canonical_method(m) for m in self.accuracy_methods))
        if not self.gen_lengths or any(int(L) < 1 for L in self.gen_lengths):
            raise ConfigError(f"--gen-lengths {self.gen_lengths} is invalid: give positive integers")
        self.gen_lengths = [int(L) for L in self.gen_lengths]
        if self.n < 0 or self.accuracy_n < 0:
            raise ConfigError("--n and --accuracy-n must be >= 0")
        if self.n == 0 and self.accuracy_n == 0:
            raise ConfigError("nothing to do: --n 0 and --accuracy-n 0")
        if self.accuracy_batch_size < 1:
            raise ConfigError("--accuracy-batch-size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--threads must be >= 1")
        if "gen_length" in self.overrides:
            raise ConfigError("use --gen-lengths (plural) for the ladder, not --gen-length")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- aggregation


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _key(rec: dict[str, Any]) -> tuple[str, int, str, int]:
    return rec["phase"], int(rec["gen_length"]), rec["method"], int(rec["index"])


def build_result(settings: LadderSettings, records: Sequence[dict[str, Any]], *, env: dict[str, Any],
                 command: str, configs: dict[str, Any], complete: bool) -> dict[str, Any]:
    """Aggregate the per-problem records into the results-format JSON (kind ``ladder``)."""
    speed: dict[tuple[int, str], list[dict[str, Any]]] = {}
    acc: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        (speed if r["phase"] == "speed" else acc).setdefault((int(r["gen_length"]), r["method"]), []).append(r)

    base_key = (settings.accuracy_baseline_gen, "vanilla")
    base_recs = acc.get(base_key, [])
    base_acc = _mean([float(r["correct"]) for r in base_recs])
    base_by_index = {int(r["index"]): bool(r["correct"]) for r in base_recs}

    rows: list[dict[str, Any]] = []
    for L in settings.gen_lengths:
        # speed-up denominators use the problems every method of this gen length has finished
        vanilla = {int(r["index"]): r for r in speed.get((L, "vanilla"), [])}
        for m in settings.methods + [m for m in settings.accuracy_methods or [] if m not in settings.methods]:
            sp = speed.get((L, m), [])
            ac = acc.get((L, m), [])
            if not sp and not ac:
                continue
            row: dict[str, Any] = {"method": m, "gen_length": L, "n": len(sp)}
            if sp:
                lat = [float(r["latency_s"]) for r in sp]
                toks = [int(r["response_tokens"]) for r in sp]
                row.update(latency_s=_mean(lat), tok_s=sum(toks) / sum(lat) if sum(lat) > 0 else None,
                           nfe=_mean([int(r["nfe"]) for r in sp]), response_tokens=_mean(toks),
                           model_time_s=_mean([float(r.get("model_time_s") or 0.0) for r in sp]),
                           speed_accuracy=_mean([float(r["correct"]) for r in sp]))
                common = [i for i in (int(r["index"]) for r in sp) if i in vanilla]
                if common and m != "vanilla":
                    mine = {int(r["index"]): float(r["latency_s"]) for r in sp}
                    v_lat = sum(float(vanilla[i]["latency_s"]) for i in common)
                    m_lat = sum(mine[i] for i in common)
                    row["speedup_vs_vanilla"] = v_lat / m_lat if m_lat > 0 else None
                    row["speedup_n"] = len(common)
                elif m == "vanilla":
                    row["speedup_vs_vanilla"] = 1.0
                    row["speedup_n"] = len(sp)
                else:
                    row["speedup_vs_vanilla"] = None
            if ac:
                a = _mean([float(r["correct"]) for r in ac])
                row["accuracy"] = a
                row["accuracy_n"] = len(ac)
                same = [int(r["index"]) for r in ac if int(r["index"]) in base_by_index]
                if same:
                    mine_acc = sum(float(r["correct"]) for r in ac if int(r["index"]) in base_by_index) / len(same)
                    base_same = sum(float(base_by_index[i]) for i in same) / len(same)
                    row["accuracy_delta_points"] = 100.0 * (mine_acc - base_same)
            elif sp:
                row["accuracy"] = row["speed_accuracy"]
                row["accuracy_n"] = len(sp)
                row["accuracy_source"] = "speed problems"
            rows.append(row)

    result: dict[str, Any] = {
        "kind": "ladder",
        "complete": complete,
        "env": env,
        "model": settings.model or "embedded",
        "task": settings.task,
        "command": command,
        "caption": "dpad implies early termination; speed-up = vanilla latency / method latency at the "
                   "same gen length in the same run (batch 1, methods interleaved per problem).",
        "settings": settings.to_dict(),
        "configs": configs,
        "accuracy_baseline": {"method": "vanilla", "gen_length": settings.accuracy_baseline_gen,
                              "n": len(base_recs), "accuracy": base_acc},
        "rows": rows,
    }
    result["targets"] = _targets(rows)
    return result


def _targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["gen_length"], r["method"]): r for r in rows}
    out = []
    for t in TARGETS:
        t = dict(t)
        value: float | None = None
        if t["kind"] == "speedup":
            value = (by.get((t["gen_length"], t["method"])) or {}).get("speedup_vs_vanilla")
        elif t["kind"] == "factor":
            a = by.get((t["gen_length"], t["baseline"]), {}).get("latency_s")
            b = by.get((t["gen_length"], t["method"]), {}).get("latency_s")
            value = a / b if a and b else None
        elif t["kind"] == "accuracy":
            deltas = [r["accuracy_delta_points"] for r in rows
                      if r["method"] != "vanilla" and r.get("accuracy_delta_points") is not None]
            value = min(deltas) if deltas else None
        t["value"] = value
        t["met"] = None if value is None else bool(value >= t["target"])
        out.append(t)
    return out


def _f(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _row_cells(r: dict[str, Any]) -> list[str]:
    acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}"
    if r.get("accuracy") is not None and r.get("accuracy_n") != r.get("n"):
        acc += f" (n={r.get('accuracy_n')})"
    delta = "-" if r.get("accuracy_delta_points") is None else f"{r['accuracy_delta_points']:+.1f}"
    sp = "-" if r.get("speedup_vs_vanilla") is None else f"{r['speedup_vs_vanilla']:.2f}x"
    return [str(r["gen_length"]), r["method"], str(r.get("n", 0)), _f(r.get("latency_s"), ".3f"),
            _f(r.get("tok_s"), ".1f"), _f(r.get("nfe"), ".1f"), acc, delta, sp]


_HEAD = ["gen", "method", "n", "latency (s)", "tok/s", "NFE", "accuracy (%)", "Δacc (pts)", "speed-up"]


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    s = result["settings"]
    base = result["accuracy_baseline"]
    lines = [
        f"### Speed-up ladder: {result['model']} on {result['task']}",
        "",
        f"{env.get('device')} ({env.get('cpu')}{', ' + env['gpu'] if env.get('gpu') else ''}), "
        f"{env.get('threads')} threads, {env.get('dtype')}, torch {env.get('torch')}, git {env.get('git')}; "
        f"speed on {s['n']} problems per gen length, batch 1, one run, methods interleaved per problem."
        + ("" if result.get("complete") else " **Partial result (run not finished).**"),
        "",
        "| " + " | ".join(_HEAD) + " |",
        "|" + "|".join(["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]) + "|",
    ]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in result["rows"]]
    lines += [
        "",
        "*dpad implies early termination.* Speed-up = vanilla latency / method latency at the same gen "
        "length in the same run. tok/s counts response tokens only (prompt and EOS padding excluded). "
        + (f"Accuracy: {base['n']} problems per method; Δacc vs vanilla at gen {base['gen_length']} "
           f"({_f(None if base['accuracy'] is None else 100 * base['accuracy'], '.1f')}%) on the same problems."
           if base["n"] else "Accuracy: on the speed problems."),
        "",
        "Targets:",
        "",
    ]
    for t in result["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- {t['name']}: target {t['target']:g}, measured {_f(t['value'], '.2f')} ({mark})")
    return "\n".join(lines) + "\n"


def text_table(result: dict[str, Any]) -> str:
    rows = [_HEAD] + [_row_cells(r) for r in result["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    out = ["  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in rows]
    out.append("(dpad implies early termination; speed-up vs vanilla at the same gen length, same run)")
    return "\n".join(out)


# --------------------------------------------------------------------------- running


def _read_records(path: Path) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    if not path.exists():
        return recs
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
    return recs


def _check_resume(settings: Any, json_path: Path) -> None:
    """Refuse to continue a run recorded with other ``settings.RESUME_KEYS`` (ladder and frontier)."""
    if not json_path.exists():
        return
    try:
        old = json.loads(json_path.read_text()).get("settings", {})
    except json.JSONDecodeError:
        return
    new = settings.to_dict()
    diff = [k for k in type(settings).RESUME_KEYS if k in old and old[k] != new[k]]
    if diff:
        raise ConfigError(f"--resume: {json_path} was made with different {', '.join(diff)} "
                          f"({', '.join(f'{k}={old[k]!r}' for k in diff)}); use another --out or --overwrite")


def run_ladder(settings: LadderSettings, out_prefix: str | Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True, command: str | None = None,
               plot: bool = True, log: Any = print) -> dict[str, Any]:
    """Run (or continue) a ladder; returns the final result dict (also written to disk)."""
    import torch
    from tqdm.auto import tqdm

    from ..api import generate, load
    from ..eval.env import collect_env, command_line
    from ..eval.methods import model_family, resolve_config
    from ..eval.runner import dump_json, evaluate, model_generate_fn, sandbox_used
    from ..eval.tasks import get_task
    from ..models import read_config
    from .plot import plot_ladder

    settings.validate()
    prefix = Path(out_prefix)
    writable_dir(prefix.parent)
    paths = {"json": prefix.with_name(prefix.name + ".json"), "md": prefix.with_name(prefix.name + ".md"),
             "png": prefix.with_name(prefix.name + ".png"),
             "records": prefix.with_name(prefix.name + ".records.jsonl")}
    if paths["records"].exists() and not resume:
        if not overwrite:
            raise ConfigError(f"{paths['records']} exists: pass --resume to continue that run or "
                              "--overwrite to start over")
        for p in paths.values():
            p.unlink(missing_ok=True)
    if resume:
        _check_resume(settings, paths["json"])
    records = _read_records(paths["records"]) if resume else []
    done = {_key(r) for r in records}

    task = get_task(settings.task, **settings.task_options)
    n_problems = max(settings.n, settings.accuracy_n)
    samples = task.samples(n_problems)
    sandbox = sandbox_used(task)  # code tasks: refuse before the model loads when no OS sandbox exists
    if len(samples) < n_problems:
        log(f"[bench] only {len(samples)} problems available (asked for {n_problems})")

    family = model_family(settings.model, read_config(settings.model, settings.revision) if settings.model else None)
    configs: dict[str, Any] = {}

    def config_for(method: str, L: int) -> Any:
        key = f"{method}@{L}"
        if key not in configs:
            _, cfg = resolve_config(method, preset_name=settings.preset, family=family, task=settings.task,
                                    overrides={**settings.overrides, "gen_length": L})
            configs[key] = cfg
        return configs[key]

    acc_methods = settings.accuracy_methods or [m for m in settings.methods if m != "vanilla"]
    for L in settings.gen_lengths:  # validate every config before the model loads
        for m in settings.methods:
            config_for(m, L)
    if settings.accuracy_n:
        config_for("vanilla", settings.accuracy_baseline_gen)

    if settings.threads:
        torch.set_num_threads(settings.threads)
    lm = load(settings.model, device=settings.device, dtype=settings.dtype, revision=settings.revision,
              compile=settings.compile)
    env = collect_env(lm.model.device, next(lm.model.parameters()).dtype)
    env["interop_threads"] = torch.get_num_interop_threads()
    cmd = command or command_line()
    rec_fh = open(paths["records"], "a", encoding="utf-8")

    def save(complete: bool = False, draw: bool = False) -> dict[str, Any]:
        result = build_result(settings, records, env=env, command=cmd,
                              configs={k: v.to_dict() for k, v in configs.items()}, complete=complete)
        result["sandbox"] = sandbox
        result["files"] = {k: str(v) for k, v in paths.items()}
        dump_json(paths["json"], result)
        paths["md"].write_text(markdown(result))
        if draw and plot:
            plot_ladder(result, paths["png"])
        return result

    def add(rec: dict[str, Any]) -> None:
        records.append(rec)
        done.add(_key(rec))
        rec_fh.write(json.dumps(rec) + "\n")
        rec_fh.flush()

    try:
        # untimed warm-up of every code path (first-call overheads stay out of the timings)
        if samples:
            for m in settings.methods:
                cfg = config_for(m, settings.gen_lengths[0])
                generate(lm, samples[0].prompt, cfg.replace(gen_length=cfg.block_length, steps=None),
                         chat=task.chat)

        speed_samples = samples[: settings.n]
        for L in settings.gen_lengths:
            total = len(speed_samples) * len(settings.methods)
            left = sum(("speed", L, m, s.index) not in done for s in speed_samples for m in settings.methods)
            with tqdm(total=total, initial=total - left, desc=f"speed gen {L}", disable=not progress,
                      dynamic_ncols=True, unit="run") as bar:
                for i, s in enumerate(speed_samples):
                    k = i % len(settings.methods)
                    order = settings.methods[k:] + settings.methods[:k]
                    for m in order:
                        if ("speed", L, m, s.index) in done:
                            continue
                        bar.set_postfix_str(m)
                        cfg = config_for(m, L)
                        t0 = time.perf_counter()
                        g = generate(lm, s.prompt, cfg, chat=task.chat)
                        lat = time.perf_counter() - t0
                        sc = task.score(s, g.text or "")
                        add({"phase": "speed", "gen_length": L, "method": m, "index": s.index, "id": s.id,
                             "latency_s": lat, "model_time_s": g.stats.get("model_time_s"),
                             "response_tokens": g.stats.get("response_tokens", 0), "nfe": g.stats.get("nfe", 0),
                             "stopped_early": g.stats.get("stopped_early"), "correct": bool(sc["correct"]),
                             "extracted": sc.get("extracted"), "output": g.text})
                        save()
                        bar.update(1)
            save(draw=True)

        if settings.accuracy_n:
            acc_samples = samples[: settings.accuracy_n]
            gen_fn = model_generate_fn(lm, chat=task.chat, batch_size=settings.accuracy_batch_size)
            jobs = [(settings.accuracy_baseline_gen, "vanilla")] + [
                (L, m) for L in settings.gen_lengths for m in acc_methods]
            for L, m in jobs:
                todo_s = [s for s in acc_samples if ("accuracy", L, m, s.index) not in done]
                if not todo_s:
                    continue
                cfg = config_for(m, L)

                def on_record(r: dict[str, Any], L: int = L, m: str = m) -> None:
                    add({"phase": "accuracy", "gen_length": L, "method": m, "index": r["index"], "id": r["id"],
                         "latency_s": r["latency_s"], "response_tokens": r["response_tokens"], "nfe": r["nfe"],
                         "correct": r["correct"], "extracted": r.get("extracted"), "output": r["output"]})
                    save()

                evaluate(task, todo_s, cfg, gen_fn, batch_size=settings.accuracy_batch_size, progress=progress,
                         desc=f"accuracy {m} gen {L}", on_record=on_record)
        result = save(complete=True, draw=True)
    finally:
        rec_fh.close()
    return result
