"""Bar chart of a ladder result: speed-up over vanilla per method per gen length (log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_frontier", "plot_ladder"]


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


def plot_frontier(result: dict[str, Any], path: str | Path) -> Path | None:
    """Accuracy vs NFE per sample and vs latency: one curve per rule (knob values annotated),
    vanilla as a star, the vanilla - 1 point line dashed, the selected point circled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result.get("rows", []) if r.get("accuracy") is not None]
    if not rows:
        return None
    vanilla = next((r for r in rows if r["rule"] == "vanilla"), None)
    rules = list(dict.fromkeys(r["rule"] for r in rows if r["rule"] != "vanilla"))
    cmap = plt.get_cmap("tab10")
    sel = (result.get("selected") or {}).get("point")
    n_all = result.get("settings", {}).get("n")
    # with vanilla on a subset, every point is drawn on vanilla's problems (comparable); the
    # JSON/Markdown also give each point's accuracy on all problems
    paired = vanilla is not None and vanilla.get("n") != n_all
    acc_key = "accuracy_on_vanilla_problems" if paired else "accuracy"
    rows = [r for r in rows if r.get(acc_key) is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.0))
    for ax, key, xlabel in ((axes[0], "nfe", "NFE per sample (log)"),
                            (axes[1], "latency_s", "latency per sample, s (batched wall time / rows; log)")):
        for j, rule in enumerate(rules):
            pts = [r for r in rows if r["rule"] == rule and r.get(key)]  # in sweep (knob) order
            if not pts:
                continue
            xs, ys = [r[key] for r in pts], [100 * r[acc_key] for r in pts]
            ax.plot(xs, ys, "-o", color=cmap(j), label=rule, ms=4, lw=1.2)
            for r, x, y in zip(pts, xs, ys, strict=True):
                v = r["value"]
                ax.annotate(f"{v:g}" if isinstance(v, float) else str(v), (x, y), fontsize=6, color=cmap(j),
                            xytext=(3, 3), textcoords="offset points")
                if r["point"] == sel:
                    ax.plot([x], [y], "o", ms=11, mfc="none", mec="black", mew=1.2,
                            label=f"selected: {sel}")
        if vanilla is not None and vanilla.get(key):
            ax.plot([vanilla[key]], [100 * vanilla["accuracy"]], "*", ms=13, color="black",
                    label=f"vanilla (n={vanilla['n']})")
        if vanilla is not None:
            ax.axhline(100 * vanilla["accuracy"] - 1.0, color="grey", lw=0.8, ls="--",
                       label=f"vanilla - 1 pt (n={vanilla['n']})")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"accuracy (%) on the {vanilla['n']} problems vanilla ran" if paired else "accuracy (%)")
        ax.grid(alpha=0.25, which="both")
    axes[0].legend(fontsize=7, loc="lower right", frameon=False)
    s = result.get("settings", {})
    env = result.get("env", {})
    fig.suptitle(f"{result.get('model', '')} on {result.get('task', '')} {s.get('task_options') or ''}: "
                 f"rules on {s.get('base_method', '')}, n={s.get('n')} per rule point (same problems), "
                 f"{env.get('device', '')}, {env.get('threads', '')} threads", fontsize=10)
    fig.text(0.01, 0.01, "dpad implies early termination; vanilla's accuracy measured through et (identical "
             "responses) where not run itself; vanilla's NFE = gen_length", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
