"""A run's picture: task accuracy against measured speed, dense vs specialist vs baselines."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure  # the OO API: no pyplot, no GUI backend

from taco_jax import files


def speed_accuracy_plot(report: dict, labels: dict[str, str], path: str | os.PathLike) -> bool:
    """Top-1 vs measured speedup over dense at the report's largest batch, one panel per
    runtime of ``report["speed"]`` (error bars: the 10–90% spread of the interleaved rounds);
    the dense teacher at 1x. ``labels``: row name -> legend text. Written atomically; False
    (nothing written) when the report has no speed measured."""
    panels = []
    for runtime, rows in report.get("speed", {}).items():
        timed = [r for r in rows.values() if isinstance(r, dict) and "taco" in r]
        if timed:
            panels.append((runtime, max(timed, key=lambda r: r["batch"])))
    if not panels:
        return False
    accuracy = {"taco": report["compressed"]["top1"]}
    accuracy.update({name: b["compressed"]["top1"] for name, b in report["baselines"].items()
                     if isinstance(b, dict) and "compressed" in b})
    fig = Figure(figsize=(5 * len(panels), 4), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (runtime, row) in zip(axes, panels, strict=True):
        ax.plot([1.0], [report["dense"]["top1"]], "k*", ms=12, label="dense task teacher")
        for i, name in enumerate(n for n in accuracy if n in row):
            speed, (lo, hi) = row[name]["speedup"], row[name]["spread"]
            ax.errorbar([speed], [accuracy[name]], xerr=[[speed - lo], [hi - speed]],
                        fmt="os^vDP"[i % 6], capsize=3, label=labels.get(name, name))
        ax.axvline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(f"measured speedup over dense, batch {row['batch']} ({runtime})")
        ax.set_ylabel("task top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{', '.join(report['task']['classes'])}: {report['task']['shots']} shots, "
                 f"{report.get('pattern', '')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with files.replaced_atomically(path) as tmp:
        fig.savefig(tmp)
    return True
