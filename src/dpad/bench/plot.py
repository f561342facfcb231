"""Bar chart of a ladder result: speed-up over vanilla per method per gen length (log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_ladder"]


def plot_ladder(result: dict[str, Any], path: str | Path) -> Path | None:
    """Write a PNG like the DPad paper's figures; returns its path, or None without matplotlib
    or without any speed-up to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result.get("rows", []) if r.get("speedup_vs_vanilla")]
    if not rows:
        return None
    lengths = sorted({r["gen_length"] for r in rows})
    methods = [m for m in result.get("settings", {}).get("methods", []) if any(r["method"] == m for r in rows)]
    by = {(r["gen_length"], r["method"]): r["speedup_vs_vanilla"] for r in rows}
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 + 1.4 * len(lengths) * len(methods) / 5), 4.8))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(lengths))]
        ys = [by.get((L, m)) for L in lengths]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        if not pts:
            continue
        bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], width * 0.95, label=m, color=cmap(j))
        for b, (_, y) in zip(bars, pts, strict=True):
            ax.annotate(f"{y:.1f}x" if y < 100 else f"{y:.0f}x", (b.get_x() + b.get_width() / 2, y),
                        ha="center", va="bottom", fontsize=6, rotation=90, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xticks(range(len(lengths)), [f"gen {L}" for L in lengths])
    ax.set_ylabel("speed-up vs vanilla (latency, log scale)")
    env = result.get("env", {})
    ax.set_title(f"{result.get('model', '')} on {result.get('task', '')}: "
                 f"{env.get('device', '')}, {env.get('threads', '')} threads, batch 1", fontsize=10)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7, ncol=2, loc="upper left", frameon=False)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.margins(y=0.15)
    fig.text(0.01, 0.01, "dpad implies early termination", fontsize=7, color="grey")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
