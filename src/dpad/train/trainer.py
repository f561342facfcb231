"""The training loop for the embedded model (see the package docstring for the recipe)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..models import ModelArgs, Transformer, init_weights, save

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
EQ_RE = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)")


@dataclass
class TrainConfig:
    out: str = "runs/embedded"
    device: str = "auto"
    seed: int = 0
    dim: int = 256
    layers: int = 6
    heads: int = 8
    hidden: int = 768
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    batch_tokens: int = 32768
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 20000
    time_limit_min: float = 0.0  # 0 = no limit; else the LR schedule follows max(step, time) progress
    stop_after_steps: int = 0  # >0: save and stop at this step (continue later with --resume)
    eps: float = 1e-3
    short_frac: float = 0.5
    max_pad_short: int = 32
    long_min: int = 64
    long_max: int = 1088
    pool_size: int = 200_000
    eval_every_s: float = 120.0
    eval_n: int = 256
    eval_gen: int = 128
    final_test_n: int = 500
    final_test_gen: int = 256
    ckpt_every_s: float = 600.0
    threads: int = 2
    amp: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU
    resume: str = ""
    tokenizer: str = ""  # a prebuilt tokenizer directory (default: build it here)
    init_from: str = ""


# ----------------------------------------------------------------------------- data


def _gen_chunk(job: tuple[str, int, int]) -> list[tuple[str, str, int]]:
    from ..synthetic import arith

    split, n, seed = job
    return [(p.question, p.solution, p.answer) for p in arith.generate(split, n, seed=seed)]


def make_problems(split: str, n: int, seed: int, workers: int = 1) -> list[tuple[str, str, int]]:
    """n problems of a split, generated in chunks (deterministic for a given n and seed)."""
    chunk = 5000
    jobs = [(split, min(chunk, n - i), seed * 100_003 + i // chunk) for i in range(0, n, chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_gen_chunk, jobs)
    else:
        parts = [_gen_chunk(j) for j in jobs]
    return [p for part in parts for p in part]


class Encoder:
    """Fast encoding with the `tokenizers` library (no transformers needed in the loop)."""

    def __init__(self, tok_dir: Path) -> None:
        from tokenizers import Tokenizer

        from ..synthetic.tokenizer import format_prompt

        self.tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        self.format_prompt = format_prompt
        self.eos_id = self.tok.token_to_id("<|eos|>")
        self.mask_id = self.tok.token_to_id("<|mask|>")
        self.vocab_size = self.tok.get_vocab_size()

    def encode_pairs(self, problems: list[tuple[str, str, int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        prompts = self.tok.encode_batch([self.format_prompt(q) for q, _, _ in problems], add_special_tokens=False)
        sols = self.tok.encode_batch([s for _, s, _ in problems], add_special_tokens=False)
        P = [np.asarray(e.ids, dtype=np.int64) for e in prompts]
        R = [np.asarray(e.ids + [self.eos_id], dtype=np.int64) for e in sols]
        return P, R

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class Batcher:
    """Builds LLaDA-SFT batches: prompt + response padded with EOS to a sampled canvas length."""

    def __init__(self, P: list[np.ndarray], R: list[np.ndarray], cfg: TrainConfig, eos_id: int, seed: int) -> None:
        self.P, self.R, self.cfg, self.eos = P, R, cfg, eos_id
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, T] and a response mask [B, T] (True where the loss may apply)."""
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.short_frac:
            idx = rng.integers(0, len(self.P), size=64)
            lens = [len(self.P[i]) + len(self.R[i]) + int(rng.integers(0, cfg.max_pad_short + 1)) for i in idx]
            T = max(lens)
        else:
            r = int(math.exp(rng.uniform(math.log(cfg.long_min), math.log(cfg.long_max))))
            idx = rng.integers(0, len(self.P), size=8)
            T = max(len(self.P[i]) + max(r, len(self.R[i])) for i in idx)
        B = max(1, cfg.batch_tokens // T)
        idx = rng.integers(0, len(self.P), size=B)
        T = max(T, max(len(self.P[i]) + len(self.R[i]) for i in idx))
        ids = np.full((B, T), self.eos, dtype=np.int64)
        resp = np.zeros((B, T), dtype=bool)
        for b, i in enumerate(idx):
            p, r = self.P[i], self.R[i]
            ids[b, : len(p)] = p
            ids[b, len(p): len(p) + len(r)] = r
            resp[b, len(p):] = True
        return torch.from_numpy(ids), torch.from_numpy(resp)


# ----------------------------------------------------------------------------- loss / eval


def sft_loss(model: Transformer, ids: torch.Tensor, resp: torch.Tensor, mask_id: int, eos_id: int, eps: float,
             gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """LLaDA SFT loss: mask response tokens with prob t (per row), CE / t / response length."""
    B, T = ids.shape
    dev = ids.device
    u = (torch.arange(B, device=dev, dtype=torch.float32) + torch.rand(B, generator=gen, device=dev)) / B
    t = eps + (1 - eps) * u[torch.randperm(B, generator=gen, device=dev)]
    masked = (torch.rand(B, T, generator=gen, device=dev) < t[:, None]) & resp
    x = torch.where(masked, torch.full_like(ids, mask_id), ids)
    hidden = model(x, return_hidden=True)
    rows, cols = masked.nonzero(as_tuple=True)
    logits = model.head(hidden[rows, cols]).float()
    ce = F.cross_entropy(logits, ids[rows, cols], reduction="none")
    resp_len = resp.sum(1).clamp(min=1).float()
    loss = (ce / t[rows] / resp_len[rows]).sum() / B
    with torch.no_grad():
        not_eos = ids[rows, cols] != eos_id
        ans_ce = ce[not_eos].mean().item() if not_eos.any() else float("nan")
    return loss, {"ce": ce.mean().item(), "answer_ce": ans_ce}


@torch.no_grad()
def quick_decode(model: Transformer, prompts: list[np.ndarray], gen_length: int, block: int,
                 mask_id: int, pad_id: int, batch: int = 128) -> list[list[int]]:
    """Greedy low-confidence decoding, one token per step, block-wise (left-padded batches).

    A leading indicator for training only; the product's decode loop is ``dpad.engine``.
    """
    outs: list[list[int]] = []
    dev = model.device
    for s in range(0, len(prompts), batch):
        ps = prompts[s: s + batch]
        Lp = max(len(p) for p in ps)
        B, T = len(ps), Lp + gen_length
        ids = torch.full((B, T), mask_id, dtype=torch.long, device=dev)
        key_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        pos = torch.zeros(B, T, dtype=torch.long, device=dev)
        for b, p in enumerate(ps):
            pad = Lp - len(p)
            ids[b, :pad] = pad_id
            ids[b, pad:Lp] = torch.as_tensor(p, device=dev)
            key_mask[b, :pad] = False
            pos[b, pad:] = torch.arange(T - pad, device=dev)
        for b0 in range(Lp, T, block):
            b1 = b0 + block
            for _ in range(block):
                logits = model(ids, pos, key_mask=key_mask, logits_range=(b0, b1)).float()
                probs = logits.softmax(-1)
                conf, x0 = probs.max(-1)
                still = ids[:, b0:b1] == mask_id
                conf = torch.where(still, conf, torch.full_like(conf, -1.0))
                j = conf.argmax(-1)
                r = torch.arange(B, device=dev)
                ok = still[r, j]
                ids[r[ok], b0 + j[ok]] = x0[r[ok], j[ok]]
        for b in range(B):
            outs.append(ids[b, Lp:].tolist())
    return outs


def score_outputs(texts: list[str], problems: list[tuple[str, str, int]]) -> dict:
    correct = copied = eq_total = eq_right = 0
    for text, (q, _, ans) in zip(texts, problems, strict=True):
        m = STRICT_RE.search(text)
        if m and m.group(1).replace(",", "").rstrip(".") == str(ans):
            correct += 1
        eqs = EQ_RE.findall(text)
        if eqs:
            a, _, b, _ = eqs[0]
            qnums = set(re.findall(r"\d+", q))
            copied += int(a in qnums or b in qnums)
        for a, op, b, c in eqs:
            eq_total += 1
            a_, b_, c_ = int(a), int(b), int(c)
            val = {"+": a_ + b_, "-": a_ - b_, "*": a_ * b_, "/": a_ / b_ if b_ else None}[op]
            eq_right += int(val == c_)
    n = max(1, len(texts))
    return {"accuracy": correct / n, "copy_rate": copied / n, "equation_accuracy": eq_right / max(1, eq_total)}


def evaluate(model: Transformer, enc: Encoder, problems: list[tuple[str, str, int]], gen_length: int,
             block: int = 32) -> dict:
    was_training = model.training
    model.eval()
    P, _ = enc.encode_pairs(problems)
    outs = quick_decode(model, P, gen_length, block, enc.mask_id, enc.eos_id)
    texts = []
    for o in outs:
        if enc.eos_id in o:
            o = o[: o.index(enc.eos_id)]
        texts.append(enc.decode(o))
    model.train(was_training)
    res = score_outputs(texts, problems)
    res["sample"] = texts[0]
    return res


# ----------------------------------------------------------------------------- loop


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, progress)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def _write_checkpoint(model: Transformer, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int,
                      elapsed: float, tok_dir: Path, history: list[dict], rng_state: dict) -> None:
    out = Path(cfg.out)
    save(model, out, max_shard_mb=15)
    for f in tok_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    state_dir = out / "train_state"
    state_dir.mkdir(exist_ok=True)
    torch.save({"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "config": asdict(cfg),
                "rng": rng_state}, state_dir / "state.pt")
    (out / "train_history.json").write_text(json.dumps({"config": asdict(cfg), "step": step,
                                                        "elapsed_s": elapsed, "history": history}, indent=1))


def train(cfg: TrainConfig) -> dict:
    from tqdm import tqdm

    from ..synthetic.tokenizer import build_tokenizer

    torch.set_num_threads(cfg.threads)
    dev = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "_tokenizer"
    if cfg.tokenizer:
        shutil.copytree(cfg.tokenizer, tok_dir, dirs_exist_ok=True)
    else:
        build_tokenizer(tok_dir)
    enc = Encoder(tok_dir)

    workers = min(16, os.cpu_count() or 1)
    t0 = time.time()
    train_probs = make_problems("train", cfg.pool_size, cfg.seed, workers)
    P, R = enc.encode_pairs(train_probs)
    val_probs = make_problems("validation", cfg.eval_n, cfg.seed + 1)
    print(f"[data] {len(P)} training problems in {time.time() - t0:.1f}s; mean prompt {np.mean([len(p) for p in P]):.1f} "
          f"tokens, mean response {np.mean([len(r) for r in R]):.1f} tokens", flush=True)

    args = ModelArgs(arch="llada", vocab_size=enc.vocab_size, dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads,
                     n_kv_heads=cfg.heads, hidden_dim=cfg.hidden, rope_theta=cfg.rope_theta, norm_eps=1e-5,
                     max_seq_len=cfg.max_seq_len, mask_token_id=enc.mask_id, eos_token_id=enc.eos_id,
                     pad_token_id=enc.eos_id)
    model = Transformer(args)
    init_weights(model, seed=cfg.seed)
    step, elapsed0, history = 0, 0.0, []
    opt_state = None
    rng_state: dict = {}
    if cfg.resume or cfg.init_from:
        from ..models import load

        src = cfg.resume or cfg.init_from
        model.load_state_dict(load(src, tokenizer=False).model.state_dict())
        if cfg.resume:
            st = torch.load(Path(src) / "train_state" / "state.pt", weights_only=False)
            opt_state, step, elapsed0, rng_state = st["optimizer"], st["step"], st["elapsed"], st["rng"]
            prev = json.loads((Path(src) / "train_history.json").read_text())
            history = prev.get("history", [])
    model.to(dev).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            **({"fused": True} if dev.type == "cuda" else {}))
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    batcher = Batcher(P, R, cfg, enc.eos_id, seed=cfg.seed + 7 + step)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 11 + step)
    if rng_state.get("batcher") is not None:
        batcher.rng.bit_generator.state = rng_state["batcher"]
    if rng_state.get("gen") is not None:
        gen.set_state(rng_state["gen"])
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and dev.type == "cuda")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"[model] {model.num_parameters() / 1e6:.2f}M parameters on {dev}, amp={'bf16' if use_amp else 'off'}",
          flush=True)

    limit_s = cfg.time_limit_min * 60
    start = time.time()
    last_eval = last_ckpt = start
    tokens = 0
    bar = tqdm(total=cfg.max_steps, initial=step, mininterval=5, file=sys.stderr, dynamic_ncols=True)

    def progress() -> float:
        p = step / cfg.max_steps
        if limit_s > 0:
            p = max(p, (time.time() - start + elapsed0) / limit_s)
        return p

    def snapshot() -> dict:
        return {"batcher": batcher.rng.bit_generator.state, "gen": gen.get_state()}

    while progress() < 1.0 and not (cfg.stop_after_steps and step >= cfg.stop_after_steps):
        lr = _lr(cfg, step, progress())
        for g in opt.param_groups:
            g["lr"] = lr
        ids, resp = batcher.next()
        ids, resp = ids.to(dev, non_blocking=True), resp.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, info = sft_loss(model, ids, resp, enc.mask_id, enc.eos_id, cfg.eps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens += ids.numel()
        now = time.time()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", ans_ce=f"{info['answer_ce']:.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{tokens / (now - start):.0f}")
        bar.update(1)
        if now - last_eval >= cfg.eval_every_s:
            ev = evaluate(model, enc, val_probs, cfg.eval_gen)
            rec = {"step": step, "elapsed_s": round(now - start + elapsed0, 1), "loss": loss.item(),
                   "answer_ce": info["answer_ce"], **{k: v for k, v in ev.items() if k != "sample"}}
            history.append(rec)
            print(f"\n[eval] {json.dumps(rec)}\n[sample] {ev['sample']!r}", flush=True)
            last_eval = time.time()
        if now - last_ckpt >= cfg.ckpt_every_s:
            _write_checkpoint(model, opt, cfg, step, time.time() - start + elapsed0, tok_dir, history, snapshot())
            last_ckpt = time.time()
    bar.close()
    elapsed = time.time() - start + elapsed0
    if cfg.stop_after_steps and step >= cfg.stop_after_steps and progress() < 1.0:
        _write_checkpoint(model, opt, cfg, step, elapsed, tok_dir, history, snapshot())
        print(f"[paused] step {step}: continue with --resume {cfg.out}", flush=True)
        return {"step": step, "elapsed_s": elapsed, "paused": True}
    ev = evaluate(model, enc, val_probs, cfg.eval_gen)
    history.append({"step": step, "elapsed_s": round(elapsed, 1), **{k: v for k, v in ev.items() if k != "sample"}})
    final: dict = {"step": step, "elapsed_s": elapsed, "tokens_seen_this_run": tokens, "validation": ev}
    if cfg.final_test_n > 0:
        test_probs = make_problems("test", cfg.final_test_n, cfg.seed + 2)
        final["test"] = evaluate(model, enc, test_probs, cfg.final_test_gen)
    _write_checkpoint(model, opt, cfg, step, elapsed, tok_dir, history, snapshot())
    (out / "train_final.json").write_text(json.dumps(final, indent=1))
    print(f"[done] {json.dumps(final)}", flush=True)
    return final


# numeric settings that must be >= 1 (the others are >= 0); every number is finite and bounded
_AT_LEAST_ONE = {"dim", "layers", "heads", "hidden", "max_seq_len", "batch_tokens", "max_steps",
                 "eval_gen", "final_test_gen", "pool_size", "threads", "long_min", "long_max"}


def build_parser() -> Any:
    """``dpad train``'s flags: one per TrainConfig field (one-line errors, ranged numbers)."""
    from ..flags import ArgumentParser, float_in, int_in

    ap = ArgumentParser(prog="dpad train", description="Train the embedded tiny dLLM (LLaDA SFT recipe).")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ: Any = type(f.default)
        if typ is int:
            typ = int_in(1 if f.name in _AT_LEAST_ONE else 0, 10**9)
        elif typ is float:
            typ = float_in(0.0, 1e9)
        ap.add_argument(flag, type=typ, default=f.default)
    return ap


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0
