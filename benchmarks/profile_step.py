"""Profile of the decode step: host syncs, aten ops and time outside the model per batch forward,
at batch 1 and at a large batch, on the embedded model (CPU by default).

The decode is the embedded model's ``parallel+prefix+dpad`` (what ``dpad eval --method
parallel+prefix+dpad`` resolves to: threshold 0.99, prefix cache, DPad W=128 k=4 a=2, early
termination) at gen 256 over synthetic arith prompts, greedy.

- *host syncs*: reads of a device tensor's values by the host (``.tolist()``, ``.item()``,
  ``bool()``/``int()``/``float()`` of a tensor, and ops whose output size depends on the data:
  ``nonzero``, ``masked_select``, ``unique``), counted where dpad's engine or model code triggers
  them. DPad's kept sets are drawn on the host from each row's own CPU generator, so the reads in
  :mod:`dpad.engine.suffix` are not syncs on any device and are not counted.
- *aten ops*: every ``aten::`` event of the torch profiler (nested ones included), per forward.
- *time outside the model*: wall time of the decode minus the time of its forwards, as a share of
  the wall time (measured in a separate run without the profiler).

    python benchmarks/profile_step.py --threads 1 --batch-sizes 1 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim"}


def _in_host_code(stack: list[str]) -> bool:
    return any("engine/suffix.py" in f or "engine\\suffix.py" in f for f in stack)


def _dpad_frames(stack: list[str]) -> list[str]:
    return [f for f in stack if "/dpad/" in f.replace("\\", "/")]


class TolistCounter:
    """Counts ``Tensor.tolist`` calls made from dpad code (outside the suffix policies)."""

    def __init__(self) -> None:
        self.count = 0
        self._real = torch.Tensor.tolist

    def __enter__(self) -> TolistCounter:
        real = self._real

        def tolist(t: torch.Tensor) -> Any:  # noqa: ANN401
            frames = [f"{fs.filename}:{fs.lineno}" for fs in traceback.extract_stack(limit=12)]
            dp = _dpad_frames(frames)
            if dp and not _in_host_code(dp):
                self.count += 1
            return real(t)

        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.tolist = self._real  # type: ignore[method-assign]


def decode_all(eng, prompts: list[list[int]], cfg, batch: int):  # noqa: ANN001, ANN201
    """Decode the prompts in closed batches of ``batch`` on one engine (as a server keeps one)."""
    forwards = 0
    m0 = eng.runner.model_time
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        for p in prompts[i:i + batch]:
            eng.add(p, cfg)
        f0 = eng.forwards
        eng.run()
        forwards += eng.forwards - f0
    return time.perf_counter() - t0, forwards, eng.runner.model_time - m0


def profile(lm, prompts: list[list[int]], cfg, batch: int) -> dict[str, Any]:  # noqa: ANN001
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from dpad.engine import Engine

    eng = Engine(lm.model, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
    decode_all(eng, prompts[:batch], cfg, batch)  # warm-up
    wall, forwards, model = decode_all(eng, prompts, cfg, batch)  # timing, no profiler
    with TolistCounter() as tl, tprofile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        _, pforwards, _ = decode_all(eng, prompts, cfg, batch)
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    syncs = [e for e in aten if e.name in SYNC_OPS and _dpad_frames(e.stack) and not _in_host_code(_dpad_frames(e.stack))]
    by_op: dict[str, int] = {}
    for e in syncs:
        by_op[e.name] = by_op.get(e.name, 0) + 1
    return {"batch_size": batch, "prompts": len(prompts), "forwards": forwards,
            "host_syncs_per_forward": (len(syncs) + tl.count) / pforwards,
            "host_syncs": {"tolist": tl.count, **by_op},
            "aten_ops_per_forward": len(aten) / pforwards,
            "wall_s": wall, "model_s": model, "outside_model_share": (wall - model) / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--n", type=int, default=64, help="prompts decoded at every batch size")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_step")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import dpad
    from dpad.api import encode_prompt
    from dpad.eval.env import command_args, git_revision
    from dpad.eval.methods import resolve_config
    from dpad.synthetic import arith

    lm = dpad.load(device="cpu", dtype="float32")
    method, cfg = resolve_config("parallel+prefix+dpad", family="embedded", task="arith",
                                 overrides={"gen_length": args.gen_length})
    prompts = [encode_prompt(lm, p.question) for p in arith.generate("test", args.n, 0)]
    rows = []
    for b in args.batch_sizes:
        r = profile(lm, prompts, cfg, b)
        rows.append(r)
        print(f"batch {b:>3}: {r['host_syncs_per_forward']:.2f} host syncs / forward, "
              f"{r['aten_ops_per_forward']:.0f} aten ops / forward, {100 * r['outside_model_share']:.1f} % outside "
              f"the model ({r['forwards']} forwards, {r['wall_s']:.2f} s)", flush=True)
    base = rows[0]
    for r in rows:
        r["aten_ops_vs_first"] = r["aten_ops_per_forward"] / base["aten_ops_per_forward"]
    result = {
        "kind": "profile_step",
        "env": {"device": "cpu", "dtype": "float32", "threads": args.threads, "torch": torch.__version__,
                "git": git_revision(), "cpu": platform.processor() or platform.machine()},
        "model": "embedded", "task": "arith", "method": method, "config": cfg.to_dict(),
        "command": ("python benchmarks/profile_step.py " + command_args(sys.argv[1:] if argv is None else argv)).strip(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"### Decode step profile: {method}, gen {args.gen_length}, embedded model, CPU, {args.threads} thread(s)", "",
          "| batch | forwards | host syncs / forward | aten ops / forward | vs batch "
          f"{base['batch_size']} | time outside the model |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['batch_size']} | {r['forwards']} | {r['host_syncs_per_forward']:.2f} | "
                  f"{r['aten_ops_per_forward']:.0f} | {r['aten_ops_vs_first']:.2f}x | {100 * r['outside_model_share']:.1f} % |")
    md += ["", f"{args.n} prompts at every batch size. Host syncs: device reads triggered by the engine or model "
               "(`.tolist()`, scalars, data-dependent shapes); DPad's host-side kept-set draws excluded. aten ops: every "
               "profiler `aten::` event. Time outside the model: (wall - forward time) / wall, from a run without the "
               "profiler.", "", f"Command: `{result['command']}` (git {result['env']['git']}, torch {torch.__version__}).", ""]
    args.out.with_suffix(".md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
