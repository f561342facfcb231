"""Matplotlib figures of the analysis commands (Agg backend, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DpadError


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DpadError("the analysis plots need matplotlib: pip install 'dpad-dllm[plot]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _lognorm(values: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm

    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return LogNorm(vmin=1e-6, vmax=1.0)
    return LogNorm(vmin=max(float(v.min()), float(v.max()) * 1e-4), vmax=float(v.max()))


def _masked(a: np.ndarray) -> np.ndarray:
    return np.ma.masked_where(~np.isfinite(a) | (a <= 0), a)


def attention_figure(path: Path, mean: np.ndarray, per_block: dict[int, np.ndarray], block_labels: list[str],
                     uniform: float, title: str, mass: dict[str, np.ndarray],
                     head_grid: np.ndarray | None = None, n_heads: int = 1) -> Path:
    """(a) layers x distance heatmap, (b) layer-average line (+ per layer), (c) blocks x distance,
    (d) first block, every (layer, head) x distance."""
    plt = _plt()
    n_layers, D = mean.shape
    fig, grid_axes = plt.subplots(2, 2, figsize=(15, 9.5))
    axes = grid_axes.ravel()
    ax = axes[0]
    im = ax.imshow(_masked(mean), aspect="auto", origin="lower", norm=_lognorm(mean), cmap="viridis",
                   interpolation="nearest", extent=(-0.5, D - 0.5, -0.5, n_layers - 0.5))
    ax.set_xlabel("distance d from the block end (suffix token)")
    ax.set_ylabel("layer")
    ax.set_title("(a) mean attention per suffix token, by layer (over the blocks that reach d)")
    fig.colorbar(im, ax=ax, label="attention (log)")

    ax = axes[1]
    d = np.arange(D)
    for layer in range(n_layers):
        ax.plot(d, mean[layer], lw=0.7, alpha=0.45, label=f"layer {layer}" if n_layers <= 8 else None)
    avg = np.nanmean(mean, axis=0)
    ax.plot(d, avg, color="black", lw=2.0, label="layer average (blocks that reach d)")
    first = per_block[min(per_block)].mean(0) if per_block else None
    if first is not None:
        ax.plot(np.arange(len(first)), first, color="black", lw=1.2, ls=":", label="layer average, first block")
    ax.axhline(uniform, color="grey", ls="--", lw=1, label=f"uniform over the view (1/S = {uniform:.2g})")
    ax.set_yscale("log")
    ax.set_xlabel("distance d from the block end")
    ax.set_ylabel("attention per token (mean over heads, block queries, steps)")
    ax.set_title("(b) attention vs distance")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[2]
    grid = np.stack([per_block[be].mean(0) if per_block[be].shape[1] == D else
                     np.pad(per_block[be].mean(0), (0, D - per_block[be].shape[1]), constant_values=np.nan)
                     for be in sorted(per_block)])
    im = ax.imshow(_masked(grid), aspect="auto", origin="lower", norm=_lognorm(grid), cmap="magma",
                   interpolation="nearest", extent=(-0.5, D - 0.5, -0.5, len(grid) - 0.5))
    ax.set_yticks(range(len(grid)))
    ax.set_yticklabels(block_labels, fontsize=7)
    ax.set_xlabel("distance d from the block end")
    ax.set_ylabel("block")
    ax.set_title("(c) per block (layer average)")
    fig.colorbar(im, ax=ax, label="attention (log)")
    ax = axes[3]
    if head_grid is not None:
        rows = head_grid.shape[0]
        im = ax.imshow(_masked(head_grid), aspect="auto", origin="lower", norm=_lognorm(head_grid),
                       cmap="viridis", interpolation="nearest",
                       extent=(-0.5, head_grid.shape[1] - 0.5, -0.5, rows - 0.5))
        for layer in range(1, rows // n_heads):
            ax.axhline(layer * n_heads - 0.5, color="white", lw=0.5)
        ax.set_yticks([layer * n_heads + (n_heads - 1) / 2 for layer in range(rows // n_heads)])
        ax.set_yticklabels([f"L{layer}" for layer in range(rows // n_heads)])
        ax.set_xlabel("distance d from the block end")
        ax.set_ylabel(f"layer (each row one of its {n_heads} heads)")
        ax.set_title("(d) first block, per head: spikes (mean over block queries, steps)")
        fig.colorbar(im, ax=ax, label="attention (log)")
    else:
        ax.axis("off")
    m = {k: float(np.mean(v)) for k, v in mass.items()}
    fig.suptitle(f"{title}\nattention mass of the block's queries (layer avg): prefix {m['prefix']:.1%}, "
                 f"block {m['block']:.1%}, suffix {m['suffix']:.1%}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def migration_figure(path: Path, example: dict[str, Any], offsets: np.ndarray, off_ratio: np.ndarray,
                     gain: np.ndarray, far_gain: float, share: dict[str, float], ratio: dict[str, float],
                     tokens: dict[str, float], title: str) -> Path:
    """(a) one problem's first-block attention in one head, before/after, removed tokens marked;
    (b) relative change of the attention on the tokens at each offset from a removed token (in its
    spike head) against the other regions' change; (c) where the removed mass went (spike heads)."""
    plt = _plt()
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    ax = axes[0]
    ax.plot(example["before_d"], example["before"], color="tab:blue", lw=1.2, label="full suffix (before)")
    ax.plot(example["after_d"], example["after"], color="tab:orange", lw=1.2, alpha=0.85,
            label="removed tokens dropped (after)")
    ax.scatter(example["removed_d"], example["removed_before"], color="red", marker="x", s=40, zorder=5,
               label="removed (their attention before)")
    ax.axvline(example["min_distance"] - 0.5, color="grey", ls=":", lw=1,
               label=f"removal threshold d >= {example['min_distance']}")
    ax.set_yscale("log")
    ax.set_xlabel("distance d from the block end")
    ax.set_ylabel("attention per token (mean over block queries, steps)")
    ax.set_title(f"(a) {example['label']}: first block")
    ax.legend(fontsize=7)

    ax = axes[1]
    rel = off_ratio - 1.0
    ok = np.isfinite(rel) & (offsets != 0)
    ax.bar(offsets[ok], rel[ok], color="tab:green", label="suffix neighbours at this offset")
    ax.annotate("removed\n(-100%)", (0, 0), xytext=(0, 8), textcoords="offset points", ha="center",
                color="red", fontsize=8)
    styles = {"other far suffix": ("tab:purple", "--"), "near suffix": ("tab:olive", ":"),
              "block": ("tab:brown", "-."), "prefix": ("tab:grey", "-")}
    for name, (c, ls) in styles.items():
        if np.isfinite(ratio.get(name, np.nan)):
            ax.axhline(ratio[name] - 1.0, color=c, ls=ls, lw=1.1, label=f"{name} (all tokens)")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(offsets)
    ax.set_xlabel("offset from a removed token")
    ax.set_ylabel("attention after / before - 1 (spike heads, pooled)")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ok_g = np.isfinite(gain) & (offsets != 0)
    ax.set_title(f"(b) relative gain next to the removed tokens\n(absolute: a neighbour gains "
                 f"{np.mean(gain[ok_g]):.1%} of a removed token's attention, a far token {far_gain:.2%})",
                 fontsize=9)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.0), hi + 0.45 * (hi - min(lo, 0.0)))
    ax.legend(fontsize=7, loc="upper center", ncol=2)

    ax = axes[2]
    names = list(share)
    vals = [share[n] for n in names]
    ax.barh(names, vals, color="tab:green")
    for i, n in enumerate(names):
        ax.text(max(vals[i], 0), i, f" {vals[i]:.0%}  (x{ratio[n]:.2f}, {tokens[n]:.0f} tok)", va="center",
                fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlim(min(0.0, min(vals)) - 0.02, max(vals) * 1.7 + 0.05)
    ax.invert_yaxis()
    ax.set_xlabel("share of the removed mass gained")
    ax.set_title("(c) where the removed mass went\n(x = after/before mass of the region, tokens per spike head)",
                 fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def keep_figure(path: Path, p: np.ndarray, expected: float, title: str, keep_map: np.ndarray | None = None,
                block_labels: Sequence[str] = (), run_rate: np.ndarray | None = None,
                run_counts: np.ndarray | None = None, sim_rate: np.ndarray | None = None,
                sim_draws: int = 0, bin_width: int = 1) -> Path:
    """p(d) with the expected kept count; with a run: the kept map and empirical rates vs p(d)."""
    plt = _plt()
    W = len(p)
    d = np.arange(W)
    clipped = np.minimum(p, 1.0)
    ncols = 1 if keep_map is None else 3
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.6), squeeze=False)
    ax = axes[0][0]
    ax.plot(d, p, color="tab:blue", lw=2, label=f"p(d)  (expected kept = sum min(1,p) = {expected:.1f})")
    if (p > 1).any():
        ax.plot(d, clipped, color="tab:blue", ls="--", lw=1, label="min(1, p(d))")
    ax.set_xlabel("distance d from the block end")
    ax.set_ylabel("keep probability")
    ax.set_ylim(0, max(1.05, float(p.max()) * 1.05))
    ax.set_title(f"keep probability, W={W}")
    ax.legend(fontsize=8)
    if keep_map is not None:
        from matplotlib.colors import ListedColormap

        ax = axes[0][1]
        cmap = ListedColormap(["#dddddd", "#1f4e99"]).with_extremes(bad="white")
        img = np.ma.masked_where(keep_map < 0, keep_map)
        ax.imshow(img, aspect="auto", origin="lower", cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, keep_map.shape[1] - 0.5, -0.5, keep_map.shape[0] - 0.5))
        ax.set_yticks(range(len(block_labels)))
        ax.set_yticklabels(block_labels, fontsize=7)
        ax.set_xlabel("distance d from the block end")
        ax.set_ylabel("block")
        kept = int((keep_map == 1).sum())
        ax.set_title(f"kept suffix tokens per block (blue; grey dropped, white past the end)\n"
                     f"{kept} kept in {keep_map.shape[0]} blocks", fontsize=9)
        ax = axes[0][2]
        ax.plot(d, clipped, color="tab:blue", lw=2, label="min(1, p(d))")
        if sim_rate is not None:
            ax.plot(d, sim_rate, color="tab:green", lw=0.8, alpha=0.8,
                    label=f"policy alone, {sim_draws} draws per distance")
        if run_rate is not None:
            centers = np.arange(len(run_rate)) * bin_width + (bin_width - 1) / 2
            ok = run_counts > 0 if run_counts is not None else np.ones(len(run_rate), bool)
            ax.plot(centers[ok], run_rate[ok], "o", color="tab:red", ms=4,
                    label=f"the decode's blocks ({bin_width}-token bins)")
        ax.set_xlabel("distance d from the block end")
        ax.set_ylabel("fraction kept")
        ax.set_ylim(0, 1.05)
        ax.set_title("empirical keep rate vs p(d)")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
