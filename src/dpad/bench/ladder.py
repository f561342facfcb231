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
records already there. The PNG is redrawn after each problem's methods (an interrupted run's shows its
partial gen length, marked). Files, resume, model loading
and warm-up are the frontier's too: :mod:`dpad.bench.runner`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DecodeConfig
from ..errors import ConfigError
from ..eval.methods import LADDER, canonical_method
from .runner import BenchRun, RunSettings, fmt, mean

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
class LadderSettings(RunSettings):
    """What a ladder run measures (besides the model, task and decoding of :class:`RunSettings`);
    stored in the JSON and checked by ``--resume``."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    gen_lengths: list[int] = field(default_factory=lambda: list(DEFAULT_GEN_LENGTHS))
    n: int = 10
    accuracy_n: int = 0
    accuracy_baseline_gen: int = 256
    accuracy_methods: list[str] | None = None  # None: every non-vanilla method
    accuracy_batch_size: int = 8

    # fields that must match for --resume to continue a run (methods/lengths may grow)
    RESUME_KEYS = (*RunSettings.RESUME_KEYS, "accuracy_baseline_gen")

    def validate(self) -> None:
        super().validate()
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
        if "gen_length" in self.overrides:
            raise ConfigError("use --gen-lengths (plural) for the ladder, not --gen-length")


# --------------------------------------------------------------------------- aggregation


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
    base_acc = mean([float(r["correct"]) for r in base_recs])
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
                row.update(latency_s=mean(lat), tok_s=sum(toks) / sum(lat) if sum(lat) > 0 else None,
                           nfe=mean([int(r["nfe"]) for r in sp]), response_tokens=mean(toks),
                           model_time_s=mean([float(r.get("model_time_s") or 0.0) for r in sp]),
                           speed_accuracy=mean([float(r["correct"]) for r in sp]))
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
                a = mean([float(r["correct"]) for r in ac])
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


def _row_cells(r: dict[str, Any]) -> list[str]:
    acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}"
    if r.get("accuracy") is not None and r.get("accuracy_n") != r.get("n"):
        acc += f" (n={r.get('accuracy_n')})"
    delta = "-" if r.get("accuracy_delta_points") is None else f"{r['accuracy_delta_points']:+.1f}"
    sp = "-" if r.get("speedup_vs_vanilla") is None else f"{r['speedup_vs_vanilla']:.2f}x"
    return [str(r["gen_length"]), r["method"], str(r.get("n", 0)), fmt(r.get("latency_s"), ".3f"),
            fmt(r.get("tok_s"), ".1f"), fmt(r.get("nfe"), ".1f"), acc, delta, sp]


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
           f"({fmt(None if base['accuracy'] is None else 100 * base['accuracy'], '.1f')}%) on the same problems."
           if base["n"] else "Accuracy: on the speed problems."),
        "",
        "Targets:",
        "",
    ]
    for t in result["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- {t['name']}: target {t['target']:g}, measured {fmt(t['value'], '.2f')} ({mark})")
    return "\n".join(lines) + "\n"


def text_table(result: dict[str, Any]) -> str:
    rows = [_HEAD] + [_row_cells(r) for r in result["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    out = ["  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in rows]
    out.append("(dpad implies early termination; speed-up vs vanilla at the same gen length, same run)")
    return "\n".join(out)


# --------------------------------------------------------------------------- running


def run_ladder(settings: LadderSettings, out_prefix: str | Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True, command: str | None = None,
               plot: bool = True, log: Any = print) -> dict[str, Any]:
    """Run (or continue) a ladder; returns the final result dict (also written to disk)."""
    from ..eval.runner import sandbox_used
    from ..eval.tasks import get_task
    from .plot import plot_ladder

    configs: dict[str, DecodeConfig] = {}

    def build(records: list[dict[str, Any]], env: dict[str, Any], cmd: str, complete: bool) -> dict[str, Any]:
        return build_result(settings, records, env=env, command=cmd, complete=complete,
                            configs={k: v.to_dict() for k, v in configs.items()})

    run = BenchRun(settings, out_prefix, key=_key, build=build, markdown=markdown, plot=plot_ladder if plot else None,
                   resume=resume, overwrite=overwrite, command=command)
    task = get_task(settings.task, **settings.task_options)
    n_problems = max(settings.n, settings.accuracy_n)
    samples = task.samples(n_problems)
    sandbox = sandbox_used(task)  # code tasks: refuse before the model loads when no OS sandbox exists
    if len(samples) < n_problems:
        log(f"[bench] only {len(samples)} problems available (asked for {n_problems})")

    def config_for(method: str, L: int) -> DecodeConfig:
        key = f"{method}@{L}"
        if key not in configs:
            configs[key] = run.resolve(method, gen_length=L)
        return configs[key]

    for L in settings.gen_lengths:  # validate every config before the model loads
        for m in settings.methods:
            config_for(m, L)
    if settings.accuracy_n:
        config_for("vanilla", settings.accuracy_baseline_gen)

    run.load()
    with run:
        if samples:
            run.warm_up([config_for(m, settings.gen_lengths[0]) for m in settings.methods], samples[0].prompt,
                        task.chat)
        for L in settings.gen_lengths:
            _speed_phase(run, task, samples[: settings.n], L, config_for, progress, sandbox)
            run.save(draw=True, sandbox=sandbox)
        if settings.accuracy_n:
            _accuracy_phase(run, task, samples[: settings.accuracy_n], config_for, progress, sandbox)
        return run.save(complete=True, draw=True, sandbox=sandbox)


def _speed_phase(run: BenchRun, task: Any, samples: Sequence[Any], L: int, config_for: Any, progress: bool,
                 sandbox: Any) -> None:
    """Batch 1, one run: problem i decodes every method, the starting method rotating with i."""
    from tqdm.auto import tqdm

    from ..api import generate

    methods = run.settings.methods
    total = len(samples) * len(methods)
    left = sum(("speed", L, m, s.index) not in run.done for s in samples for m in methods)
    with tqdm(total=total, initial=total - left, desc=f"speed gen {L}", disable=not progress,
              dynamic_ncols=True, unit="run") as bar:
        for i, s in enumerate(samples):
            k = i % len(methods)
            todo = [m for m in methods[k:] + methods[:k] if ("speed", L, m, s.index) not in run.done]
            for m in todo:
                bar.set_postfix_str(m)
                t0 = time.perf_counter()
                g = generate(run.lm, s.prompt, config_for(m, L), chat=task.chat)
                lat = time.perf_counter() - t0
                sc = task.score(s, g.text or "")
                run.add({"phase": "speed", "gen_length": L, "method": m, "index": s.index, "id": s.id,
                         "latency_s": lat, "model_time_s": g.stats.get("model_time_s"),
                         "response_tokens": g.stats.get("response_tokens", 0), "nfe": g.stats.get("nfe", 0),
                         "stopped_early": g.stats.get("stopped_early"), "correct": bool(sc["correct"]),
                         "extracted": sc.get("extracted"), "output": g.text})
                run.save(sandbox=sandbox, draw=m == todo[-1])  # the PNG after each problem's last method
                bar.update(1)


def _accuracy_phase(run: BenchRun, task: Any, samples: Sequence[Any], config_for: Any, progress: bool,
                    sandbox: Any) -> None:
    """Untimed (batched) accuracy runs: vanilla at the baseline gen length, then every accuracy method
    at every gen length."""
    from ..eval.runner import evaluate, model_generate_fn

    s_ = run.settings
    acc_methods = s_.accuracy_methods or [m for m in s_.methods if m != "vanilla"]
    gen_fn = model_generate_fn(run.lm, chat=task.chat, batch_size=s_.accuracy_batch_size)
    jobs = [(s_.accuracy_baseline_gen, "vanilla")] + [(L, m) for L in s_.gen_lengths for m in acc_methods]
    for L, m in jobs:
        todo = [s for s in samples if ("accuracy", L, m, s.index) not in run.done]
        if not todo:
            continue

        def on_record(r: dict[str, Any], L: int = L, m: str = m) -> None:
            run.add({"phase": "accuracy", "gen_length": L, "method": m, "index": r["index"], "id": r["id"],
                     "latency_s": r["latency_s"], "response_tokens": r["response_tokens"], "nfe": r["nfe"],
                     "correct": r["correct"], "extracted": r.get("extracted"), "output": r["output"]})
            run.save(sandbox=sandbox)

        evaluate(task, todo, config_for(m, L), gen_fn, batch_size=s_.accuracy_batch_size, progress=progress,
                 desc=f"accuracy {m} gen {L}", on_record=on_record)
