"""DC-ViT's latency/accuracy family: measure, keep the frontier, compare, plot.

Each compressed model is timed against the dense teacher *back to back*, alternating the two call
by call (``models.latency.paired_latency``, over the one timer), so the drifting load of a shared
machine cancels in the ratio of adjacent calls. A method's frontier holds its models that no
other model of the method beats in both latency reduction and accuracy; the accuracy "at" a
latency reduction is read off the frontier by linear interpolation (the dense model is the
frontier's 0% point), so two methods are compared at exactly the same latency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (reduction, accuracy) points not beaten in both by another, by reduction ascending."""
    best = []
    for r, a in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not best or a > best[-1][1]:
            best.append((r, a))
    return best[::-1]


def clear_frontier(points: Sequence[tuple[float, float, float]]) -> list[int]:
    """Indices of the (accuracy, low, high) points that no other point beats clearly: at least
    as accurate and faster beyond both timing spreads (its low latency reduction above this
    one's high; ``paired_latency``'s 10th–90th percentiles). The strict ``frontier`` ranks by
    medians whose differences may be noise: on 2 shared cores a re-timing moved single
    reductions by up to 10 points and changed 3 of 10 strict members (BUILD_NOTES)."""
    return [i for i, (a, _, hi) in enumerate(points)
            if not any(j != i and aj >= a and lo_j > hi
                       for j, (aj, lo_j, _) in enumerate(points))]


def accuracy_at(front: Sequence[tuple[float, float]], reduction: float) -> float | None:
    """Accuracy on ``front`` at ``reduction``, linear between its points; left of its first point
    (the dense model is beaten by a faster one) that point's accuracy, since a faster model
    reaches it; None beyond its fastest point."""
    rs = [r for r, _ in front]
    if not front or reduction > rs[-1]:
        return None
    if reduction < rs[0]:
        return float(front[0][1])
    return float(np.interp(reduction, rs, [a for _, a in front]))


def plot(methods: dict[str, Sequence[dict]], dense_top1: float, path, title: str) -> None:
    """Accuracy vs measured latency reduction, one colour per method (error bars: the standard
    error over recovery seeds, ``top1_se``), its frontier (on the means) as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, pts), color in zip(methods.items(), ("C0", "C3", "C2", "C1"), strict=False):
        r = [100 * p["latency"]["reduction"] for p in pts]
        a = [p["top1"] for p in pts]
        ax.errorbar(r, a, yerr=[p.get("top1_se", 0.0) for p in pts], fmt="o", color=color,
                    ms=4, alpha=0.5, capsize=2)
        front = frontier([(0.0, dense_top1), *zip(r, a, strict=True)])
        ax.plot([f[0] for f in front], [f[1] for f in front], "-o", color=color, ms=4,
                label=f"{name} (frontier)")
    ax.scatter([0], [dense_top1], marker="*", s=120, color="k", label="dense task teacher",
               zorder=5)
    ax.set_xlabel("measured latency reduction vs dense (%)")
    ax.set_ylabel("task test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
