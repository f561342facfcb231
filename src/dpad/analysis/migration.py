"""Attention migration: drop the distant suffix tokens the block attends to most, see where the
attention mass goes and whether the decoded answer changes (the seed paper's figure 3).

Per problem:

1. decode with the full suffix while recording the block queries' attention (per head);
2. in every recorded block (or the first ``remove_blocks``), pick ``top`` suffix tokens at distance
   ``>= min_distance`` from the block end (selection below) — removed from that block's view only;
3. decode again with an :class:`~dpad.engine.suffix.Explicit` policy whose kept set per block is
   the full suffix minus that block's removed positions (the view is physically shorter; every
   other token keeps its RoPE position), recording the attention again;
4. compare the first block's attention before/after, and the two answers.

Selection (``select``):

- ``spike`` (default): the tokens whose attention stands out most in *some* head — the score of a
  token is the max over (layer, head) of its attention divided by that head's median attention on
  the far suffix (``d >= min_distance``) of the block. Head-averaged curves hide such spikes.
  Because attention decays with distance, this still favours tokens just past ``min_distance``.
- ``local``: the same, but against the median of the token's suffix neighbours within 8 positions:
  isolated peaks, wherever they are.
- ``mean``: the highest layer- and head-averaged attention (mostly the tokens just past
  ``min_distance``, because attention decays with distance).

Migration is measured in each removed token's *spike head* (the head where its score peaks): the
removed mass is compared with the change of the mass on its suffix neighbours (``|offset| <=
radius``), on the other far suffix tokens, the near suffix, the block and the prefix. Each head's
attention sums to 1 before and after, so the changes add up to the removed mass.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeConfig
from ..engine.suffix import Explicit
from ..errors import ConfigError
from .attention import ForwardAttention, block_position_attention, recorded_decode
from .common import Prompt, env_info, response_text, write_csv, write_json

REGIONS = ("neighbours", "other far suffix", "near suffix", "block", "prefix")
SELECT = ("spike", "local", "mean")


def spike_scores(kp: np.ndarray, heads: np.ndarray, block_end: int, min_distance: int, local: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per key: the max over (layer, head) of its attention divided by a baseline of that head, and
    the flat index ``layer * H + head`` where it peaks. ``heads`` is ``[n_layers, H, S]``.

    Baseline: the head's median attention on the far suffix (``d >= min_distance``) of the block;
    with ``local > 0``, the median of the suffix tokens within ``local`` positions of the key (the
    key excluded), which scores isolated peaks rather than the slowly decaying near suffix."""
    if local > 0:
        suf = np.nonzero(kp >= block_end)[0]
        base = np.full(heads.shape, np.inf)
        if len(suf):
            v = heads[:, :, suf].astype(np.float64)
            pad = np.pad(v, ((0, 0), (0, 0), (local, local)), constant_values=np.nan)
            win = np.lib.stride_tricks.sliding_window_view(pad, 2 * local + 1, axis=2).copy()
            win[..., local] = np.nan
            with warnings.catch_warnings():  # all-NaN windows (a 1-token suffix) -> NaN, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(win, axis=-1)
            base[:, :, suf] = np.where(np.isfinite(med), med, np.inf)
    else:
        far = kp >= block_end + min_distance
        ref = heads[:, :, far] if far.any() else heads
        base = np.median(ref, axis=2, keepdims=True)
    ratio = heads / np.maximum(base, 1e-12)
    flat = ratio.reshape(-1, ratio.shape[-1])
    return flat.max(0), flat.argmax(0)


LOCAL_RADIUS = 8  # --select local: baseline window (tokens on each side)


def choose_removals(records: list[ForwardAttention], min_distance: int, top: int, remove_blocks: int = 0,
                    select: str = "spike") -> dict[int, list[int]]:
    """``{block_end: positions}``: per recorded block (the first ``remove_blocks`` when > 0), the
    ``top`` suffix positions at distance >= ``min_distance`` with the highest score (see ``select``)."""
    if min_distance < 0 or top < 0:
        raise ConfigError("--min-distance and --top must be >= 0")
    if select not in SELECT:
        raise ConfigError(f"--select must be one of {', '.join(SELECT)}")
    ends = sorted({r.block_end for r in records})
    if remove_blocks > 0:
        ends = ends[:remove_blocks]
    chosen: dict[int, list[int]] = {}
    for be in ends:
        kp, attn = block_position_attention(records, be, heads=select != "mean")
        cand = np.nonzero(kp >= be + min_distance)[0]
        if not len(cand) or top == 0:
            continue
        if select == "mean":
            score = attn.mean(0)
        else:
            score = spike_scores(kp, attn, be, min_distance, LOCAL_RADIUS if select == "local" else 0)[0]
        order = cand[np.argsort(-score[cand], kind="stable")][:top]
        chosen[be] = sorted(int(p) for p in kp[order])
    return chosen


def removal_policy(removed: dict[int, list[int]], prompt_len: int, cfg: DecodeConfig) -> Explicit:
    """Explicit kept sets for every block: the full suffix minus that block's removed positions."""
    L = prompt_len + cfg.gen_length
    sets = {}
    for b in range(cfg.num_blocks):
        be = prompt_len + (b + 1) * cfg.block_length
        drop = set(removed.get(be, ()))
        sets[be] = [p for p in range(be, L) if p not in drop]
    return Explicit(sets)


@dataclass
class BlockShift:
    """One block's attention before/after the removal, measured in the removed tokens' spike heads."""

    block_end: int
    removed: list[int]
    spike_heads: dict[int, tuple[int, int]]  # removed position -> (layer, head)
    removed_mass: float = 0.0  # summed over the spike heads
    n_heads: int = 0  # spike heads
    regions: dict[str, float] = field(default_factory=dict)  # mass change per region (spike heads)
    region_tokens: dict[str, float] = field(default_factory=dict)  # per spike head
    before_sum: dict[str, float] = field(default_factory=dict)
    after_sum: dict[str, float] = field(default_factory=dict)
    offsets: dict[int, list[float]] = field(default_factory=dict)  # gain / removed token's attention
    offset_sums: dict[int, list[float]] = field(default_factory=dict)  # offset -> [before, after] sums
    far_token_gain: list[float] = field(default_factory=list)  # per head: mean other-far gain / removed
    layer_avg_regions: dict[str, float] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)


def block_shift(before: list[ForwardAttention], after: list[ForwardAttention], block_end: int,
                block_length: int, removed: list[int], min_distance: int, radius: int,
                local: int = 0) -> BlockShift:
    """Compare one block's attention before/after removing ``removed`` from its view."""
    bp, bh = block_position_attention(before, block_end, heads=True)
    ap, ah = block_position_attention(after, block_end, heads=True)
    rem_set = set(removed)
    if rem_set & set(ap.tolist()):
        raise ConfigError("a removed position is still in the view after the removal")
    bidx = {p: i for i, p in enumerate(bp.tolist())}
    H = bh.shape[1]
    _, arg = spike_scores(bp, bh, block_end, min_distance, local)
    spike = {p: divmod(int(arg[bidx[p]]), H) for p in removed}
    bs = block_end - block_length
    b_in_after = np.array([bidx[p] for p in ap.tolist()])

    def regions_for(rem: np.ndarray) -> tuple[list[str], list[int | None]]:
        """Region of every key of the after-view, and its signed offset from the nearest of ``rem``."""
        regs: list[str] = []
        offs: list[int | None] = []
        for p in ap.tolist():
            off = None
            if p < bs:
                reg = "prefix"
            elif p < block_end:
                reg = "block"
            else:
                if len(rem):
                    near = int(rem[np.argmin(np.abs(rem - p))])
                    if abs(p - near) <= radius:
                        off = p - near
                reg = ("neighbours" if off is not None else
                       "other far suffix" if p - block_end >= min_distance else "near suffix")
            regs.append(reg)
            offs.append(off)
        return regs, offs

    sh = BlockShift(block_end, sorted(removed), spike)
    sh.regions = dict.fromkeys(REGIONS, 0.0)
    sh.before_sum = dict.fromkeys(REGIONS, 0.0)
    sh.after_sum = dict.fromkeys(REGIONS, 0.0)
    sh.region_tokens = dict.fromkeys(REGIONS, 0)
    best, best_mass = None, -1.0
    used = sorted(set(spike.values()))
    for lh in used:
        b, a = bh[lh], ah[lh]
        b_kept = b[b_in_after]
        mine = sorted(p for p in removed if spike[p] == lh)
        regs, offs = regions_for(np.array(mine, dtype=np.int64))
        sh.removed_mass += float(sum(b[bidx[p]] for p in removed))  # every removed token leaves this head
        for k in REGIONS:
            sel = np.array([r == k for r in regs])
            sh.region_tokens[k] += int(sel.sum())
            sh.before_sum[k] += float(b_kept[sel].sum())
            sh.after_sum[k] += float(a[sel].sum())
            sh.regions[k] += float((a[sel] - b_kept[sel]).sum())
        far = np.array([r == "other far suffix" for r in regs])
        mean_removed = float(sum(b[bidx[p]] for p in mine)) / len(mine)
        if far.any() and mean_removed > 0:
            sh.far_token_gain.append(float((a[far] - b_kept[far]).mean()) / mean_removed)
        sh.offsets.setdefault(0, []).extend([-1.0] * len(mine))
        for j, (q, off) in enumerate(zip(ap.tolist(), offs, strict=True)):
            if off is None:
                continue
            base = float(b[bidx[q - off]])
            if base > 0:
                sh.offsets.setdefault(off, []).append(float(a[j] - b_kept[j]) / base)
            acc = sh.offset_sums.setdefault(off, [0.0, 0.0])
            acc[0] += float(b_kept[j])
            acc[1] += float(a[j])
        mass_here = float(sum(b[bidx[p]] for p in mine))
        if mass_here > best_mass:
            best, best_mass = lh, mass_here
    sh.n_heads = len(used)
    sh.region_tokens = {k: v / max(1, len(used)) for k, v in sh.region_tokens.items()}
    # layer/head-averaged view of the same comparison (neighbours of every removed token)
    regs, _ = regions_for(np.array(sorted(removed), dtype=np.int64))
    bl, al = bh.mean(axis=(0, 1)), ah.mean(axis=(0, 1))
    sh.layer_avg_regions = {"removed tokens": -float(sum(bl[bidx[p]] for p in removed))}
    for k in REGIONS:
        sel = np.array([r == k for r in regs])
        sh.layer_avg_regions[k] = float((al[sel] - bl[b_in_after][sel]).sum())
    if best is not None:
        suf_b, suf_a = bp >= block_end, ap >= block_end
        sh.example = {"head": best, "before_d": bp[suf_b] - block_end, "before": bh[best][suf_b],
                      "after_d": ap[suf_a] - block_end, "after": ah[best][suf_a],
                      "removed_d": [p - block_end for p in sorted(removed)],
                      "removed_before": [float(bh[best][bidx[p]]) for p in sorted(removed)]}
    return sh


@dataclass
class ProblemResult:
    index: int
    removed_total: int
    removed_first_block: list[int]
    response_full: str
    response_removed: str
    correct_full: bool | None
    correct_removed: bool | None
    identical: bool
    same_answer: bool
    nfe_full: int
    nfe_removed: int
    seconds: float


def analyze_migration(lm: Any, prompts: list[Prompt], cfg: DecodeConfig, out: Path | str, *,
                      min_distance: int = 32, top: int = 8, remove_blocks: int = 0, radius: int = 3,
                      select: str = "spike", label: str = "", indices: list[int] | None = None
                      ) -> dict[str, Any]:
    """``dpad analyze migration``: writes ``migration.png``, ``migration.csv`` (one row per problem),
    ``migration_attention.csv`` (first block, per problem, position and spike head: attention
    before/after) and ``migration.json`` (summary). Returns the summary."""
    from ..scoring import gsm8k_extract_strict, gsm8k_score
    from . import plots

    if not prompts:
        raise ConfigError("no problems to analyse (--n-problems must be >= 1)")
    if radius < 1:
        raise ConfigError("--radius must be >= 1")
    if select not in SELECT:
        raise ConfigError(f"--select must be one of {', '.join(SELECT)}")
    out = Path(out)
    indices = indices if indices is not None else list(range(len(prompts)))
    results: list[ProblemResult] = []
    shifts: list[tuple[int, BlockShift]] = []
    att_rows: list[list[Any]] = []
    t_all = time.perf_counter()
    head_blocks = 1 if select == "mean" else -1
    local = LOCAL_RADIUS if select == "local" else 0
    for idx, pr in zip(indices, prompts, strict=True):
        t0 = time.perf_counter()
        P = len(pr.ids)
        full, rec_full = recorded_decode(lm, pr, cfg, head_blocks=head_blocks)
        removed = choose_removals(rec_full, min_distance, top, remove_blocks, select)
        cut, rec_cut = recorded_decode(lm, pr, cfg, policy=removal_policy(removed, P, cfg), head_blocks=1)
        be0 = P + cfg.block_length
        if removed.get(be0):
            sh = block_shift(rec_full, rec_cut, be0, cfg.block_length, removed[be0], min_distance, radius, local)
            shifts.append((idx, sh))
            bp, bh = block_position_attention(rec_full, be0, heads=True)
            ap, ah = block_position_attention(rec_cut, be0, heads=True)
            aidx = {p: i for i, p in enumerate(ap.tolist())}
            for lh in sorted(set(sh.spike_heads.values())):
                for i, p in enumerate(bp.tolist()):
                    j = aidx.get(p)
                    att_rows.append([idx, lh[0], lh[1], p, p - be0, float(bh[lh][i]),
                                     float(ah[lh][j]) if j is not None else 0.0, int(p in sh.spike_heads)])
        t_full, t_cut = response_text(lm, full), response_text(lm, cut)
        ok_full = ok_cut = None
        if pr.solution is not None:
            ok_full = bool(gsm8k_score(t_full, pr.solution)["strict"])
            ok_cut = bool(gsm8k_score(t_cut, pr.solution)["strict"])
        results.append(ProblemResult(
            index=idx, removed_total=sum(len(v) for v in removed.values()),
            removed_first_block=[p - be0 for p in removed.get(be0, [])],
            response_full=t_full, response_removed=t_cut, correct_full=ok_full, correct_removed=ok_cut,
            identical=full.generated[: full.response_length] == cut.generated[: cut.response_length],
            same_answer=gsm8k_extract_strict(t_full) == gsm8k_extract_strict(t_cut),
            nfe_full=full.nfe, nfe_removed=cut.nfe, seconds=round(time.perf_counter() - t0, 2)))
    elapsed = time.perf_counter() - t_all

    write_csv(out / "migration.csv", list(ProblemResult.__dataclass_fields__),
              [[v if not isinstance(v, list) else " ".join(map(str, v)) for v in asdict(r).values()]
               for r in results])
    write_csv(out / "migration_attention.csv",
              ["problem", "layer", "head", "position", "distance", "attention_before", "attention_after",
               "removed"], att_rows)

    n = len(results)
    scored = [r for r in results if r.correct_full is not None]
    summary: dict[str, Any] = {
        "model": label or "model", "config": cfg.to_dict(), "method": cfg.method_name(),
        "n_problems": n, "problem_indices": indices, "select": select, "min_distance": min_distance,
        "top": top, "remove_blocks": remove_blocks or "every decoded block", "radius": radius,
        "fraction_identical_responses": sum(r.identical for r in results) / n,
        "fraction_same_answer": sum(r.same_answer for r in results) / n,
        "accuracy_full": (sum(bool(r.correct_full) for r in scored) / len(scored)) if scored else None,
        "accuracy_removed": (sum(bool(r.correct_removed) for r in scored) / len(scored)) if scored else None,
        "mean_removed_per_problem": float(np.mean([r.removed_total for r in results])),
        "seconds": round(elapsed, 1), "env": env_info(lm),
    }
    offsets = np.arange(-radius, radius + 1)
    files = ["migration.csv", "migration_attention.csv", "migration.json"]
    if shifts:
        removed_mass = sum(s.removed_mass for _, s in shifts)
        share = {k: sum(s.regions[k] for _, s in shifts) / removed_mass for k in REGIONS}
        ratio = {k: (sum(s.after_sum[k] for _, s in shifts) / sum(s.before_sum[k] for _, s in shifts))
                 if sum(s.before_sum[k] for _, s in shifts) > 0 else float("nan") for k in REGIONS}
        tokens = {k: float(np.mean([s.region_tokens[k] for _, s in shifts])) for k in REGIONS}
        gain = np.array([np.mean([v for _, s in shifts for v in s.offsets.get(int(o), [])] or [np.nan])
                         for o in offsets])
        far_gain = float(np.mean([g for _, s in shifts for g in s.far_token_gain] or [np.nan]))
        off_ratio = []
        for o in offsets:
            sb = sum(s.offset_sums.get(int(o), [0.0, 0.0])[0] for _, s in shifts)
            sa = sum(s.offset_sums.get(int(o), [0.0, 0.0])[1] for _, s in shifts)
            off_ratio.append(sa / sb if sb > 0 else (0.0 if o == 0 else np.nan))
        off_ratio = np.array(off_ratio)
        layer_avg = {k: float(np.mean([s.layer_avg_regions[k] for _, s in shifts]))
                     for k in ("removed tokens", *REGIONS)}
        summary["first_block"] = {
            "problems": len(shifts),
            "spike_heads_per_problem": float(np.mean([s.n_heads for _, s in shifts])),
            "removed_mass_per_spike_head": removed_mass / sum(s.n_heads for _, s in shifts),
            "share_of_removed_mass_gained": share,
            "after_over_before": ratio,
            "tokens_per_region": tokens,
            "gain_by_offset_over_removed": {int(o): float(g) for o, g in zip(offsets, gain, strict=True)},
            "gain_per_other_far_token_over_removed": far_gain,
            "after_over_before_by_offset": {int(o): float(r) for o, r in zip(offsets, off_ratio, strict=True)},
            "layer_head_average_mass_change": layer_avg,
        }
        ex_idx, ex = shifts[0]
        layer, head = ex.example["head"]
        example = {**ex.example, "label": f"problem {ex_idx}, layer {layer} head {head}",
                   "min_distance": min_distance}
        acc = ""
        if summary["accuracy_full"] is not None:
            acc = f"; accuracy {summary['accuracy_full']:.0%} full vs {summary['accuracy_removed']:.0%} removed"
        title = (f"{summary['model']}: remove {top} {select}-selected suffix tokens at d >= {min_distance} "
                 f"per block ({cfg.method_name()}, gen {cfg.gen_length}); {n} problems: "
                 f"{summary['fraction_identical_responses']:.0%} identical responses, "
                 f"{summary['fraction_same_answer']:.0%} same answer{acc}")
        plots.migration_figure(out / "migration.png", example, offsets, off_ratio, gain, far_gain, share, ratio,
                               tokens, title)
        files.insert(0, "migration.png")
    else:
        summary["first_block"] = None
        summary["note"] = (f"no first-block suffix token at distance >= {min_distance}: nothing removed "
                           "in the first block, no figure")
    summary["files"] = files
    write_json(out / "migration.json", summary)
    return summary
