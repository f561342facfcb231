"""The accuracy-speed frontier: every parallel-unmasking rule over a sweep of its knob, on the
same problems, on one base method (``parallel+prefix+dpad`` by default), with vanilla as a point.

A *point* is a rule and a knob value:

* ``threshold=T``: Fast-dLLM's confidence threshold;
* ``factor=F``: Fast-dLLM's factor rule;
* ``eb=G``: EB-sampler with entropy bound gamma = G nats;
* ``guard=S``: the dependency guard on threshold ``guard_base['threshold']``: no two positions
  within ``guard_base['dependency_distance']`` of each other in one step unless both have
  confidence >= S (``guard=never``: never).

Every point decodes the same ``n`` problems in the same fixed batches of ``batch_size`` rows
(accuracy, NFE per sample and response tokens do not depend on the batching: the loop is batch
invariant); latency is the batch's wall time divided by its rows, so it compares points measured
alike in one run, not batch-1 latency.

Vanilla (one token per step, full suffix, no cache) costs ``gen_length`` forwards per problem. Its
accuracy is measured through early termination (``et``), which decodes exactly vanilla's response
tokens (the blocks after the one holding the first EOS cannot change the response; checked by a
test and again here: vanilla itself runs on the first ``vanilla_n`` problems and the JSON counts
how many of its outputs equal et's). Vanilla's NFE is exactly ``gen_length`` (also measured on that
subset), its latency is measured on that subset.

``vanilla_records`` imports vanilla's own records (a ladder's or a frontier's records file, matched
by problem id) instead of decoding those problems again; the et job then runs only on the others.

Each finished batch appends its records to ``PREFIX.records.jsonl`` and rewrites ``PREFIX.json`` /
``PREFIX.md``; ``--resume`` skips finished batches. The PNG is drawn at the end. Files, resume,
model loading (revision, compile, threads) and warm-up are the ladder's too: :mod:`dpad.bench.runner`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..rules import RULES as RULE_SPECS
from ..rules import rule_fields
from .runner import BenchRun, RunSettings, fmt, mean, read_records

__all__ = ["DEFAULT_SWEEP", "RULES", "FrontierSettings", "build_result", "markdown", "parse_sweep", "run_frontier",
           "text_table"]

RULES: dict[str, str] = {**{s.short: s.name for s in RULE_SPECS.values()}, "guard": "dependency_threshold"}
"""Sweep name -> the DecodeConfig field its knob sets: every registered rule (:data:`dpad.rules.RULES`)
by its short name, and ``guard``, the dependency guard's strict bound."""

DEFAULT_SWEEP: dict[str, list[Any]] = {
    "threshold": [0.9, 0.95, 0.99, 0.999],
    "factor": [1.0, 0.25, 0.05],
    "eb": [0.3, 0.1, 0.03, 0.01],
    "guard": [0.95, 0.99, "never"],
}
_RULE_FIELDS = rule_fields()


def parse_sweep(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["threshold=0.9,0.99", "eb=0.1"]`` -> ``{"threshold": [0.9, 0.99], "eb": [0.1]}``."""
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, vals = str(spec).partition("=")
        name = name.strip().lower()
        if not sep or name not in RULES or not vals.strip():
            raise ConfigError(f"--sweep {spec!r} is invalid: use RULE=V1,V2,... with RULE one of "
                              f"{', '.join(RULES)} (e.g. eb=0.1,0.01)")
        for v in vals.split(","):
            v = v.strip()
            if name == "guard" and v == "never":
                out.setdefault(name, []).append("never")
                continue
            try:
                out.setdefault(name, []).append(float(v))
            except ValueError as e:
                raise ConfigError(f"--sweep {spec!r}: {v!r} is not a number") from e
    return out


@dataclass
class FrontierSettings(RunSettings):
    """What a frontier run measures (besides the model, task and decoding of :class:`RunSettings`);
    stored in the JSON and checked by ``--resume``."""

    sweep: dict[str, list[Any]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_SWEEP.items()})
    base_method: str = "parallel+prefix+dpad"
    guard_base: dict[str, Any] = field(default_factory=lambda: {"threshold": 0.9, "dependency_distance": 1})
    n: int = 300
    batch_size: int = 32
    vanilla: bool = True
    vanilla_n: int = 32
    vanilla_records: str | None = None

    RESUME_KEYS = (*RunSettings.RESUME_KEYS, "base_method", "guard_base", "n", "batch_size")

    def validate(self) -> None:
        from ..eval.methods import canonical_method

        super().validate()
        self.base_method = canonical_method(self.base_method)
        if self.n < 1 or self.batch_size < 1:
            raise ConfigError("--n and --batch-size must be >= 1")
        if not 0 <= self.vanilla_n <= self.n:
            raise ConfigError(f"--vanilla-n {self.vanilla_n} is invalid: must be in [0, --n={self.n}]")
        unknown = sorted(set(self.sweep) - set(RULES))
        if unknown:
            raise ConfigError(f"unknown rule(s) {', '.join(unknown)}; rules are {', '.join(RULES)}")
        if not any(self.sweep.values()) and not self.vanilla:
            raise ConfigError("nothing to do: empty sweep and no vanilla")
        if "gen_length" in self.overrides and not isinstance(self.overrides["gen_length"], int):
            raise ConfigError("--gen-length must be an integer")
        bad = sorted(set(self.overrides) & set(_RULE_FIELDS))
        if bad:
            raise ConfigError(f"{', '.join(bad)} is set by the sweep: use --sweep instead")

    def points(self) -> list[tuple[str, str, Any, dict[str, Any]]]:
        """[(label, rule, value, rule fields)] in sweep order."""
        out = []
        for rule, values in self.sweep.items():
            for v in values:
                fields_: dict[str, Any] = dict.fromkeys(_RULE_FIELDS)
                if rule == "guard":
                    fields_.update(self.guard_base)
                    fields_["dependency_threshold"] = None if v == "never" else float(v)
                else:
                    fields_[RULES[rule]] = float(v)
                out.append((f"{rule}={v:g}" if isinstance(v, float) else f"{rule}={v}", rule, v, fields_))
        return out


# --------------------------------------------------------------------------- aggregation


def _row(label: str, rule: str, value: Any, recs: Sequence[dict[str, Any]], base: dict[int, bool]) -> dict[str, Any]:
    lat = [float(r["latency_s"]) for r in recs]
    toks = [int(r["response_tokens"]) for r in recs]
    row: dict[str, Any] = {"point": label, "rule": rule, "value": value, "method": recs[0]["method"],
                           "n": len(recs), "accuracy": mean([float(r["correct"]) for r in recs]),
                           "nfe": mean([int(r["nfe"]) for r in recs]), "latency_s": mean(lat),
                           "tok_s": sum(toks) / sum(lat) if sum(lat) > 0 else None, "response_tokens": mean(toks)}
    same = [r for r in recs if int(r["index"]) in base]
    if same:
        mine = sum(float(r["correct"]) for r in same) / len(same)
        theirs = sum(float(base[int(r["index"])]) for r in same) / len(same)
        row["accuracy_delta_points"] = 100.0 * (mine - theirs)
        row["delta_n"] = len(same)
        row["accuracy_on_vanilla_problems"] = mine
    return row


def build_result(settings: FrontierSettings, records: Sequence[dict[str, Any]], *, env: dict[str, Any],
                 command: str, configs: dict[str, Any], complete: bool) -> dict[str, Any]:
    """Aggregate the per-problem records into the results-format JSON (kind ``frontier``)."""
    by: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    for r in records:  # one record per (point, problem): the first (e.g. vanilla's own over et's)
        if (r["point"], int(r["index"])) not in seen:
            seen.add((r["point"], int(r["index"])))
            by.setdefault(r["point"], []).append(r)
    et = by.get("vanilla", [])
    base = {int(r["index"]): bool(r["correct"]) for r in et}
    vcfg = configs.get("vanilla") or {}
    gen = int(vcfg.get("steps") or vcfg.get("gen_length") or settings.overrides.get("gen_length", 256))
    rows: list[dict[str, Any]] = []
    vanilla_row: dict[str, Any] | None = None
    if et:
        vanilla_row = _row("vanilla", "vanilla", None, et, base)
        direct = by.get("vanilla-direct", [])
        et_by = {int(r["index"]): r for r in et}
        sources: dict[str, int] = {}
        for r in et:
            sources[r.get("measured_as", "et")] = sources.get(r.get("measured_as", "et"), 0) + 1
        et_only = [r for r in et if r.get("measured_as", "et") == "et"]
        vanilla_row.update(method="vanilla", accuracy_measured_as=", ".join(f"{k} on {v}" for k, v in sources.items()),
                           et_nfe=mean([int(r["nfe"]) for r in et_only]),
                           et_latency_s=mean([float(r["latency_s"]) for r in et_only]), nfe=float(gen),
                           nfe_source="exact (gen_length forwards: one token per step)", latency_s=None, tok_s=None, direct_n=len(direct))
        itself = [r for r in et if r.get("measured_as", "et") != "et"]
        if itself and not direct:
            vanilla_row.update(latency_s=mean([float(r["latency_s"]) for r in itself]),
                               latency_source=f"vanilla itself on {len(itself)} problems (imported)")
        if direct:
            vanilla_row.update(
                latency_s=mean([float(r["latency_s"]) for r in direct]),
                direct_nfe=mean([int(r["nfe"]) for r in direct]),
                direct_accuracy=mean([float(r["correct"]) for r in direct]),
                direct_identical_to_et=sum(1 for r in direct if int(r["index"]) in et_by
                                           and r["output"] == et_by[int(r["index"])]["output"]),
                latency_source=f"vanilla itself on the first {len(direct)} problems")
        rows.append(vanilla_row)
    for label, rule, value, _ in settings.points():
        if by.get(label):
            rows.append(_row(label, rule, value, by[label], base))

    selected = None
    full = [r for r in rows if r["rule"] != "vanilla" and r["n"] == settings.n]
    if vanilla_row is not None:
        ok = [r for r in full if r.get("accuracy_delta_points") is not None and r["accuracy_delta_points"] >= -1.0]
        if ok:
            best = min(ok, key=lambda r: (r["nfe"], -r["accuracy"]))
            selected = {"point": best["point"], "rule": best["rule"], "value": best["value"],
                        "accuracy": best["accuracy"], "nfe": best["nfe"], "latency_s": best["latency_s"],
                        "accuracy_delta_points": best["accuracy_delta_points"], "delta_n": best["delta_n"],
                        "criterion": "fewest NFE/sample with accuracy >= vanilla - 1 point on the problems vanilla "
                                     f"has run ({best['delta_n']} of {settings.n})"}
            t09 = next((r for r in full if r["point"] == "threshold=0.9"), None)
            if t09:
                selected["nfe_vs_threshold0.9"] = best["nfe"] / t09["nfe"]
    return {
        "kind": "frontier", "complete": complete, "env": env, "model": settings.model or "embedded",
        "task": settings.task, "command": command,
        "caption": (f"Every rule on {settings.base_method} (dpad implies early termination) over a sweep of its knob, "
                    f"same {settings.n} problems for every point, batches of {settings.batch_size} rows; latency = "
                    "batch wall time / rows (on a shared CPU it follows the machine's load: compare it only between "
                    "points run in one process at one time). Vanilla's accuracy is measured through et (identical responses), its "
                    "NFE is gen_length (exact) and its latency is vanilla's own on a subset."),
        "settings": settings.to_dict(), "configs": configs, "rows": rows, "selected": selected,
    }


_HEAD = ["point", "method", "n", "accuracy (%)", "Δacc vs vanilla (pts)", "NFE/sample", "latency (s)", "tok/s"]


def _cells(r: dict[str, Any]) -> list[str]:
    acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}"
    d = "-" if r.get("accuracy_delta_points") is None else f"{r['accuracy_delta_points']:+.2f}"
    if r.get("delta_n") is not None and r.get("delta_n") != r["n"]:
        d += f" (on {r['delta_n']})"
    label = r["point"] + (f" (accuracy: {r['accuracy_measured_as']})" if r["rule"] == "vanilla" else "")
    return [label, r["method"], str(r["n"]), acc, d, fmt(r.get("nfe"), ".2f"), fmt(r.get("latency_s"), ".3f"),
            fmt(r.get("tok_s"), ".1f")]


def _partial_note(result: dict[str, Any]) -> str:
    n = result["settings"]["n"]
    rules = [r for r in result["rows"] if r["rule"] != "vanilla"]
    v = next((r for r in result["rows"] if r["rule"] == "vanilla"), None)
    if rules and all(r["n"] == n for r in rules) and v is not None and v["n"] < n:
        return (f" **Every rule point ran on all {n} problems; vanilla (the costly point) on the first {v['n']}:** "
                "its accuracy and every Δ are on those problems.")
    return " **Partial result (run not finished).**"


def markdown(result: dict[str, Any]) -> str:
    env, s = result["env"], result["settings"]
    lines = [f"### Accuracy-speed frontier: {result['model']} on {result['task']} "
             f"({json.dumps(s['task_options']) if s['task_options'] else 'default problems'})", "",
             f"{env.get('device')} ({env.get('cpu')}), {env.get('threads')} threads, {env.get('dtype')}, "
             f"torch {env.get('torch')}, git {env.get('git')}. " + result["caption"]
             + ("" if result.get("complete") else _partial_note(result)), "",
             "| " + " | ".join(_HEAD) + " |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    v = next((r for r in result["rows"] if r["rule"] == "vanilla"), None)
    if v:
        lines += ["", f"Vanilla: accuracy {100 * v['accuracy']:.1f}% on {v['n']} problems ({v['accuracy_measured_as']}; "
                      f"et: {fmt(v.get('et_nfe'), '.1f')} NFE/sample, {fmt(v.get('et_latency_s'), '.3f')} s); "
                      f"NFE {v['nfe']:.0f} = gen_length"
                      + (f"; vanilla itself on the first {v['direct_n']} problems: NFE {fmt(v.get('direct_nfe'), '.1f')}, "
                         f"latency {fmt(v.get('latency_s'), '.3f')} s, accuracy {100 * v['direct_accuracy']:.1f}%, "
                         f"{v.get('direct_identical_to_et')}/{v['direct_n']} outputs identical to et's"
                         if v.get("direct_n") else "") + "."]
    sel = result.get("selected")
    if sel:
        ratio = sel.get("nfe_vs_threshold0.9")
        lines += ["", f"**Selected** ({sel['criterion']}): `{sel['point']}` — accuracy {100 * sel['accuracy']:.1f}% "
                      f"on {result['settings']['n']} ({sel['accuracy_delta_points']:+.1f} pts vs vanilla on the "
                      f"{sel['delta_n']} paired problems), {sel['nfe']:.2f} NFE/sample"
                      + (f" ({ratio:.2f}x threshold 0.9's)" if ratio else "") + "."]
    return "\n".join(lines) + "\n"


def text_table(result: dict[str, Any]) -> str:
    rows = [_HEAD] + [_cells(r) for r in result["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in rows]
    sel = result.get("selected")
    if sel:
        out.append(f"selected: {sel['point']} (accuracy {100 * sel['accuracy']:.1f}%, {sel['nfe']:.2f} NFE/sample)")
    return "\n".join(out)


# --------------------------------------------------------------------------- running


def run_frontier(settings: FrontierSettings, out_prefix: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, command: str | None = None,
                 plot: bool = True, only: Sequence[str] | None = None, log: Any = print) -> dict[str, Any]:
    """Run (or continue) a frontier; returns the final result dict (also written to disk).

    ``only``: run just these points (labels such as ``eb=0.1``, ``vanilla``, ``vanilla-direct``);
    several such processes may append to one records file, and a last ``--resume`` run without
    ``only`` finds everything done and writes the complete JSON, Markdown and PNG."""
    from ..eval.tasks import get_task
    from .plot import plot_frontier

    configs: dict[str, Any] = {}

    def build(records: list[dict[str, Any]], env: dict[str, Any], cmd: str, complete: bool) -> dict[str, Any]:
        return build_result(settings, records, env=env, command=cmd, configs=configs, complete=complete)

    run = BenchRun(settings, out_prefix, key=lambda r: (r["point"], int(r["index"])), build=build,
                   markdown=markdown, plot=plot_frontier if plot else None, resume=resume, overwrite=overwrite,
                   command=command)
    task = get_task(settings.task, **settings.task_options)

    jobs: list[tuple[str, str, Any, Any, int]] = []  # (label, rule, value, cfg, n)
    for label, rule, value, fields_ in settings.points():
        jobs.append((label, rule, value, run.resolve(settings.base_method).replace(**fields_), settings.n))
    if settings.vanilla:
        jobs.append(("vanilla", "vanilla", None, run.resolve("et"), settings.n))
        if settings.vanilla_n:
            jobs.append(("vanilla-direct", "vanilla", None, run.resolve("vanilla"), settings.vanilla_n))
    configs.update({label: cfg.to_dict() for label, _, _, cfg, _ in jobs})  # every config valid before loading
    if only:
        unknown = sorted(set(only) - set(configs))
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: not a point of this sweep ({', '.join(configs)})")
        jobs = [j for j in jobs if j[0] in set(only)]

    samples = task.samples(settings.n)
    if len(samples) < settings.n:
        raise ConfigError(f"the task has only {len(samples)} problems (asked for --n {settings.n})")
    run.load()
    with run:
        if settings.vanilla_records and settings.vanilla:
            _import_vanilla(run, task, samples, Path(settings.vanilla_records), log)
        jobs = [j for j in jobs if any((j[0], s.index) not in run.done for s in samples[:j[4]])]
        if samples:
            run.warm_up([cfg for _, _, _, cfg, _ in jobs], samples[0].prompt, task.chat)
        for job in jobs:
            _decode_point(run, task, samples, job, progress)
    if only:  # other processes may hold the rest: take everything this file has now
        run.reread()
    labels_n = {lb: settings.n for lb, *_ in settings.points()}
    if settings.vanilla:
        labels_n["vanilla"] = settings.n
        if settings.vanilla_n:
            labels_n["vanilla-direct"] = settings.vanilla_n
    complete = all((lb, s.index) in run.done for lb, n in labels_n.items() for s in samples[:n])
    return run.save(complete=complete, draw=True)


def _import_vanilla(run: BenchRun, task: Any, samples: Sequence[Any], src: Path, log: Any) -> None:
    """Vanilla's own records (a ladder's or a frontier's records file, matched by problem id) as the
    frontier's vanilla point, rescored with this task."""
    if not src.exists():
        raise ConfigError(f"--vanilla-records {src}: no such file")
    gen = int(run.settings.overrides.get("gen_length", 256))
    theirs = {r["id"]: r for r in read_records(src)
              if r.get("method") == "vanilla" and r.get("phase", "accuracy") == "accuracy"
              and r.get("point", "vanilla-direct") == "vanilla-direct" and int(r.get("gen_length", gen)) == gen}
    imported = []
    for smp in samples:
        r = theirs.get(smp.id)
        if r is None or ("vanilla", smp.index) in run.done:
            continue
        sc = task.score(smp, r.get("output") or "")
        imported.append({"point": "vanilla", "rule": "vanilla", "value": None, "method": "vanilla",
                         "measured_as": f"vanilla itself (imported from {src.name})", "index": smp.index,
                         "id": smp.id, "correct": bool(sc["correct"]), "extracted": sc.get("extracted"),
                         "nfe": int(r["nfe"]), "response_tokens": int(r["response_tokens"]),
                         "latency_s": float(r["latency_s"]), "batch_size": r.get("batch_size"),
                         "output": r.get("output")})
    if imported:
        run.add(*imported)
    log(f"[frontier] imported vanilla's own records for {len(imported)} problems from {src}")


def _decode_point(run: BenchRun, task: Any, samples: Sequence[Any], job: tuple[str, str, Any, Any, int],
                  progress: bool) -> None:
    """One point on its first ``n`` problems, in the fixed batches of ``batch_size`` rows (finished
    batches skipped); latency = the batch's wall time / its rows."""
    from tqdm.auto import tqdm

    from ..api import generate

    label, rule, value, cfg, n = job
    bs = run.settings.batch_size
    todo = [[s for s in samples[i:min(i + bs, n)] if (label, s.index) not in run.done] for i in range(0, n, bs)]
    todo = [c for c in todo if c]
    method = cfg.method_name() if rule != "vanilla" else ("et" if label == "vanilla" else "vanilla")
    with tqdm(total=len(todo), desc=label, disable=not progress, dynamic_ncols=True, unit="batch") as bar:
        for chunk in todo:
            t0 = time.perf_counter()
            gens = generate(run.lm, [s.prompt for s in chunk], cfg, chat=task.chat, batch_size=bs)
            per = (time.perf_counter() - t0) / len(chunk)
            recs = []
            for s, g in zip(chunk, gens, strict=True):
                sc = task.score(s, g.text or "")
                recs.append({"point": label, "rule": rule, "value": value, "method": method,
                             **({"measured_as": "et"} if label == "vanilla" else {}),
                             "index": s.index, "id": s.id, "correct": bool(sc["correct"]),
                             "extracted": sc.get("extracted"), "nfe": int(g.stats.get("nfe", 0)),
                             "response_tokens": int(g.stats.get("response_tokens", 0)), "latency_s": per,
                             "batch_size": len(chunk), "output": g.text})
            run.add(*recs)
            run.save()
            bar.update(1)
