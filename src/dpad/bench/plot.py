"""Plots of the benchmark results: the ladder (speed-up over vanilla per method per gen length, log
scale) and the accuracy-speed frontier."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LadderBar", "LadderGroup", "ladder_groups", "plot_frontier", "plot_ladder"]


@dataclass
class LadderBar:
    method: str
    speedup: float
    n: int  # problems the speed-up is measured on
    partial: bool  # on fewer problems than the run's n


@dataclass
class LadderGroup:
    """One gen length of the ladder plot: its bars, and why it is partial (``note``, '' if whole)."""

    gen_length: int
    bars: list[LadderBar]
    note: str


def ladder_groups(result: dict[str, Any]) -> list[LadderGroup]:
    """What :func:`plot_ladder` draws: one group per gen length that has speed rows, in order; a bar per
    method with a speed-up. A group is partial when a method is missing or ran on fewer problems than
    the run's ``n``, or its speed-ups rest on fewer (vanilla's problems so far); without vanilla it has
    no bars, only its note."""
    s = result.get("settings", {})
    n_all = int(s.get("n") or 0)
    rows = [r for r in result.get("rows", []) if r.get("n")]
    order = {m: i for i, m in enumerate(s.get("methods", []))}
    groups = []
    for L in sorted({r["gen_length"] for r in rows}):
        mine = sorted((r for r in rows if r["gen_length"] == L), key=lambda r: order.get(r["method"], len(order)))
        bars = [LadderBar(r["method"], r["speedup_vs_vanilla"], int(r.get("speedup_n") or r["n"]),
                          int(r.get("speedup_n") or r["n"]) < n_all) for r in mine if r.get("speedup_vs_vanilla")]
        notes = []
        if not any(r["method"] == "vanilla" for r in mine):
            notes.append("no vanilla yet: no speed-up")
        missing = [m for m in s.get("methods", []) if not any(r["method"] == m for r in mine)]
        if missing:
            notes.append(f"{len(missing)} method{'s' if len(missing) > 1 else ''} not run yet")
        short = sorted({b.n for b in bars if b.partial})
        if short:
            notes.append(f"speed-ups on {' or '.join(map(str, short))} of {n_all} problems")
        groups.append(LadderGroup(L, bars, "; ".join(notes)))
    return groups


def plot_ladder(result: dict[str, Any], path: str | Path) -> Path | None:
    """Write a PNG like the DPad paper's figures (speed-up per method, one group per gen length);
    returns its path, or None without matplotlib or without any speed row. Every gen length with rows
    is drawn: a partial group (see :func:`ladder_groups`) says so under its name, its partial bars are
    hatched and name their problem count, and an unfinished run says so in the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return None
    groups = ladder_groups(result)
    if not groups:
        return None
    n_all = result.get("settings", {}).get("n")
    methods = list(dict.fromkeys(b.method for g in groups for b in g.bars))
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 + 1.4 * len(groups) * len(methods) / 5) + 2.2, 5.2))
    for i, g in enumerate(groups):
        for b in g.bars:
            j = methods.index(b.method)
            x = i + (j - (len(methods) - 1) / 2) * width
            ax.bar([x], [b.speedup], width * 0.95, color=cmap(j), label=b.method if i == 0 or not any(
                b.method == c.method for h in groups[:i] for c in h.bars) else None,
                hatch="///" if b.partial else None, edgecolor="white" if b.partial else None, linewidth=0)
            text = f"{b.speedup:.1f}x" if b.speedup < 100 else f"{b.speedup:.0f}x"
            ax.annotate(text + (f" (n={b.n})" if b.partial else ""), (x, b.speedup), ha="center", va="bottom",
                        fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
        if not g.bars:
            ax.annotate("no speed-up yet", (i, 1.0), ha="center", va="bottom", fontsize=8, color="grey",
                        xytext=(0, 6), textcoords="offset points")
    ax.set_yscale("log")
    wrap = max(20, 5 * len(methods))  # characters that fit under one group
    labels = [f"gen {g.gen_length}" + ("\n" + textwrap.fill(f"partial: {g.note}", wrap) if g.note else "")
              for g in groups]
    ax.set_xticks(range(len(groups)), labels)
    for tick, g in zip(ax.get_xticklabels(), groups, strict=True):
        if g.note:
            tick.set_color("firebrick")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("speed-up vs vanilla (latency, log scale)")
    env = result.get("env", {})
    title = (f"{result.get('model', '')} on {result.get('task', '')}: {env.get('device', '')}, "
             f"{env.get('threads', '')} threads, batch 1, n={n_all} per gen length")
    if not result.get("complete", True):
        title += "\npartial result: the run is not finished"
    ax.set_title(title, fontsize=10, color="black" if result.get("complete", True) else "firebrick")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    handles, _ = ax.get_legend_handles_labels()
    if any(b.partial for g in groups for b in g.bars):
        handles.append(Patch(facecolor="lightgrey", hatch="///", edgecolor="white",
                             label=f"hatched: on fewer than {n_all} problems"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", which="both", alpha=0.25)
    top = max((b.speedup for g in groups for b in g.bars), default=1.0)
    ax.set_ylim(0.3, max(10.0, top) * 20)  # room above the tallest bar for its label (log scale)
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


def redraw(json_path: str | Path, png_path: str | Path | None = None) -> Path | None:
    """Draw the PNG of a written result (kind ``ladder`` or ``frontier``) again from its JSON, by
    default next to it (``PREFIX.json`` -> ``PREFIX.png``); the run and its records are not touched."""
    import json

    src = Path(json_path)
    result = json.loads(src.read_text(encoding="utf-8"))
    draw = {"ladder": plot_ladder, "frontier": plot_frontier}.get(result.get("kind"))
    if draw is None:
        raise ValueError(f"{src}: kind {result.get('kind')!r} has no plot (ladder or frontier)")
    return draw(result, Path(png_path) if png_path is not None else src.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    """``python -m dpad.bench.plot RESULT.json [...]``: redraw each result's PNG next to its JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dpad.bench.plot", description=redraw.__doc__)
    ap.add_argument("json", nargs="+", help="ladder or frontier result JSON (PREFIX.json)")
    for path in ap.parse_args(argv).json:
        out = redraw(path)
        print(out if out is not None else f"{path}: nothing drawn (no matplotlib, or no rows to draw)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
