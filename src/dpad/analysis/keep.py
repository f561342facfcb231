"""DPad's keep probability p(d) and the kept-set map of a real decode.

p(d) = a * phi(k * d / (W - 1)) for the distance d = 0..W-1 from the block end (0 beyond the
window), drawn once per block (``dpad.engine.suffix.GaussianDecay``); the expected number of kept
suffix tokens per block is sum_d min(1, p(d)) (over the distances the block's suffix has).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeConfig
from ..engine.suffix import GaussianDecay, gaussian_keep_prob
from ..errors import ConfigError
from .common import Prompt, write_csv, write_json


def keep_prob(window: int, sigma: float, scale: float) -> np.ndarray:
    """p(d) for d = 0..W-1 exactly as the engine draws it (float32 table, may exceed 1)."""
    if window < 1:
        raise ConfigError(f"-W/--window must be >= 1, got {window}")
    if not sigma > 0 or not scale > 0:
        raise ConfigError("-k/--sigma and -a/--scale must be > 0")
    return gaussian_keep_prob(window, sigma, scale).double().numpy()


def expected_kept(p: np.ndarray, available: int | None = None) -> float:
    """sum of min(1, p(d)) over the first ``available`` distances (all by default)."""
    q = p if available is None else p[:available]
    return float(np.minimum(q, 1.0).sum())


def keep_map(kept_per_block: Sequence[Sequence[int]], block_ends: Sequence[int], length: int,
             width: int) -> np.ndarray:
    """``[n_blocks, width]``: 1 kept, 0 dropped, -1 past the canvas end (no token at that distance)."""
    m = np.full((len(block_ends), width), -1, dtype=np.int8)
    for i, (be, kept) in enumerate(zip(block_ends, kept_per_block, strict=True)):
        avail = max(0, min(width, length - be))
        m[i, :avail] = 0
        d = np.asarray(kept, dtype=np.int64) - be
        if len(d) and (d.min() < 0 or d.max() >= width):
            raise ConfigError(f"kept position outside [block end, block end + {width}) in block {i}")
        m[i, d] = 1
    return m


def empirical_rate(kmap: np.ndarray, bin_width: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distance bin: ``(rate, kept, available)`` over the blocks of a keep map (rate NaN when no
    block has a token there)."""
    if bin_width < 1:
        raise ConfigError("--bin must be >= 1")
    kept = (kmap == 1).sum(0).astype(float)
    avail = (kmap >= 0).sum(0).astype(float)
    nb = -(-kmap.shape[1] // bin_width)
    pad = nb * bin_width - kmap.shape[1]
    kb = np.pad(kept, (0, pad)).reshape(nb, bin_width).sum(1)
    ab = np.pad(avail, (0, pad)).reshape(nb, bin_width).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(ab > 0, kb / np.maximum(ab, 1), np.nan)
    return rate, kb, ab


def simulate_rate(window: int, sigma: float, scale: float, draws: int, seed: int = 0) -> np.ndarray:
    """Keep rate per distance of the engine's GaussianDecay policy alone over ``draws`` blocks with a
    full window of suffix (no model)."""
    pol = GaussianDecay(window, sigma, scale)
    pol.reset(seed)
    counts = np.zeros(window)
    for _ in range(draws):
        counts[pol.kept(0, window).numpy()] += 1
    return counts / max(draws, 1)


def analyze_keep(out: Path | str, window: int, sigma: float, scale: float, *, lm: Any = None,
                 prompt: Prompt | None = None, cfg: DecodeConfig | None = None, draws: int = 2000,
                 bin_width: int = 16, label: str = "") -> dict[str, Any]:
    """``dpad analyze keep``: ``keep.png`` + ``keep.csv`` (+ ``keep_map.csv`` and a decode with
    ``suffix='gaussian'`` when ``lm``/``prompt``/``cfg`` are given) and ``keep.json``."""
    from ..engine.loop import check_length, decode
    from . import plots
    from .common import env_info, response_text

    out = Path(out)
    p = keep_prob(window, sigma, scale)
    exp = expected_kept(p)
    summary: dict[str, Any] = {"window": window, "sigma_k": sigma, "scale_a": scale,
                               "expected_kept_per_block": exp, "p_max": float(p.max()),
                               "distances_with_p_ge_1": int((p >= 1).sum())}
    sim = simulate_rate(window, sigma, scale, draws, seed=0) if draws > 0 else None
    title = (f"DPad keep probability p(d) = a*phi(k*d/(W-1)), W={window}, k={sigma:g}, a={scale:g}: "
             f"expected kept per block = {exp:.1f}")
    rows: list[list[Any]] = []
    if lm is None:
        for d in range(window):
            rows.append([d, float(p[d]), float(min(1.0, p[d])), float(sim[d]) if sim is not None else ""])
        write_csv(out / "keep.csv", ["distance", "p", "p_clipped", "sim_rate"], rows)
        plots.keep_figure(out / "keep.png", p, exp, title)
        summary["files"] = ["keep.png", "keep.csv", "keep.json"]
        write_json(out / "keep.json", summary)
        return summary

    if prompt is None or cfg is None:
        raise ConfigError("--run needs a prompt and a decode config")
    cfg = cfg.replace(suffix="gaussian", window=window, sigma=sigma, scale=scale)
    check_length(len(prompt.ids), cfg, lm.args.max_seq_len)
    t0 = time.perf_counter()
    res = decode(lm.model, prompt.ids, cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id,
                 eot_id=lm.eot_token_id)
    secs = time.perf_counter() - t0
    P, L = len(prompt.ids), len(prompt.ids) + cfg.gen_length
    ends = [P + (b + 1) * cfg.block_length for b in range(res.blocks_decoded)]
    width = min(window, cfg.gen_length)
    kmap = keep_map(res.kept_per_block, ends, L, width)
    rate1, kept1, avail1 = empirical_rate(kmap, 1)
    rate_b, _, avail_b = empirical_rate(kmap, bin_width)
    for d in range(window):
        in_map = d < width
        rows.append([d, float(p[d]), float(min(1.0, p[d])), float(sim[d]) if sim is not None else "",
                     int(kept1[d]) if in_map else 0, int(avail1[d]) if in_map else 0,
                     float(rate1[d]) if in_map else float("nan")])
    write_csv(out / "keep.csv", ["distance", "p", "p_clipped", "sim_rate", "run_kept", "run_available",
                                 "run_rate"], rows)
    write_csv(out / "keep_map.csv", ["block", "block_end", "distance", "kept"],
              [[i, be, d, int(kmap[i, d])] for i, be in enumerate(ends) for d in range(width) if kmap[i, d] >= 0])
    labels = [f"{i} ({int((kmap[i] == 1).sum())}/{expected_kept(p, max(0, L - be)):.0f})"
              for i, be in enumerate(ends)]
    title += (f"\n{label or 'model'}: decode with suffix=gaussian ({cfg.method_name()}, gen {cfg.gen_length}, "
              f"block {cfg.block_length}); block labels: kept/expected")
    plots.keep_figure(out / "keep.png", p, exp, title, keep_map=kmap, block_labels=labels, run_rate=rate_b,
                      run_counts=avail_b, sim_rate=sim[:width] if sim is not None else None, sim_draws=draws,
                      bin_width=bin_width)
    # how far the run's rate strays from p(d), in binomial standard errors per bin
    pb = np.pad(np.minimum(p[:width], 1.0), (0, -width % bin_width))
    pw = np.pad((kmap >= 0).sum(0).astype(float), (0, -width % bin_width)).reshape(-1, bin_width)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bin = (pb.reshape(-1, bin_width) * pw).sum(1) / pw.sum(1)
        z = (rate_b - p_bin) / np.sqrt(p_bin * (1 - p_bin) / avail_b)
    summary.update({
        "model": label or "model", "prompt": prompt.text, "config": cfg.to_dict(),
        "response": response_text(lm, res), "nfe": res.nfe, "decode_seconds": round(secs, 2),
        "blocks": [{"block": i, "block_end": be, "kept": int((kmap[i] == 1).sum()),
                    "expected": expected_kept(p, max(0, L - be))} for i, be in enumerate(ends)],
        "run_rate_max_abs_z": float(np.nanmax(np.abs(z[np.isfinite(z)]))) if np.isfinite(z).any() else None,
        "env": env_info(lm),
        "files": ["keep.png", "keep.csv", "keep_map.csv", "keep.json"],
    })
    if prompt.solution is not None:
        from ..scoring import gsm8k_score

        summary["correct"] = bool(gsm8k_score(summary["response"], prompt.solution)["strict"])
    write_json(out / "keep.json", summary)
    return summary
