"""The AI-45° picture: safety (y) against capability (x), one labelled point per checkpoint, joined
in the given order (the ladder's path); points with a "seed" (a run's name) draw one path per seed. The "AI-45° law" (Shanghai AI Lab; the SafeWork-R1
report's frame) asks a model to sit on or above y = x as it gains capability.

    from nanosafe.plot import ai45_plot
    ai45_plot([{"name": "sft", "capability": 0.62, "safety": 0.41}, ...], "ai45.png")

Axes are fractions in [0, 1]. matplotlib is optional (`pip install nanosafe[plot]`), drawn with
the Agg canvas on a bare Figure: no global pyplot state or display."""
from __future__ import annotations

import math

def ai45_plot(points: list[dict], path: str, title: str = "AI-45°: safety vs capability"):
    """Write the PNG to `path`; returns the matplotlib Axes (its first lines are the ladder paths,
    one per seed in order of appearance; names are written beside the first seed's points)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("ai45_plot needs matplotlib: pip install nanosafe[plot]") from None
    if not points:
        raise ValueError("ai45_plot: no points to plot")
    for i, p in enumerate(points):
        for key in ("name", "capability", "safety"):
            if key not in p:
                raise ValueError(f"ai45_plot: point {i} has no {key!r}")
        for key in ("capability", "safety"):
            v = p[key]
            if not isinstance(v, (int, float)) or math.isnan(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"ai45_plot: point {i} ({p['name']}): {key} = {v!r}, "
                                 "expected a fraction in [0, 1]")
    paths = {}
    for p in points:
        paths.setdefault(p.get("seed"), []).append(p)
    fig = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for seed, pts in paths.items():  # the rungs, in order
        ax.plot([p["capability"] for p in pts], [p["safety"] for p in pts], "-o", zorder=3, clip_on=False,
                label=None if seed is None else str(seed))
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="45°: safety = capability")
    for i, p in enumerate(next(iter(paths.values()))):  # labels alternate above / below: neighbours sit close
        ax.annotate(str(p["name"]), (p["capability"], p["safety"]), textcoords="offset points",
                    xytext=(-12, 7 if i % 2 == 0 else -13), fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="capability", ylabel="safety", title=title, aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return ax
