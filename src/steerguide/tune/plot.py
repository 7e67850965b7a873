"""`probes.png`: every probe on the trade-off plane (x: subject fidelity, y: text alignment, as in
`steerguide report`), the judged front, CFG's curve through its scales, and the chosen setting with its
95% bootstrap intervals."""

from __future__ import annotations

import os
from pathlib import Path

from steerguide.tune.probes import Probe
from steerguide.tune.search import LINEAR, pareto_front


def plot_probes(
    path: str | Path,
    probes: dict,
    chosen: Probe,
    intervals: dict[str, tuple[float, float, float]],
    names: tuple[str, str],
    title: str,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [p.judged for p in probes.values()]
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=110)
    groups = {
        "PG, ω constant": [j for j in judged if not j.knob.is_cfg and j.knob.schedule != LINEAR],
        "PG, ω rising linearly to 1": [j for j in judged if not j.knob.is_cfg and j.knob.schedule == LINEAR],
    }
    for (label, items), marker in zip(groups.items(), ("o", "s"), strict=True):
        if items:
            sc = ax.scatter(
                [j.fidelity for j in items],
                [j.text for j in items],
                c=[j.knob.omega for j in items],
                cmap="viridis",
                vmin=0,
                vmax=1,
                marker=marker,
                s=28,
                label=label,
                alpha=0.85,
            )
    cfg = sorted((j for j in judged if j.knob.is_cfg), key=lambda j: j.knob.scale)
    if cfg:
        ax.plot([j.fidelity for j in cfg], [j.text for j in cfg], "-^", color="tab:red", label="CFG (ω = 1)")
        for j in cfg:
            ax.annotate(f"w={j.knob.scale:g}", (j.fidelity, j.text), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color="tab:red")
    front = pareto_front(judged)
    ax.plot([j.fidelity for j in front], [j.text for j in front], "--", color="0.4", lw=1, label="judged front")
    f, t = intervals["fidelity"], intervals["text"]
    ax.errorbar(
        [f[0]], [t[0]], xerr=[[f[0] - f[1]], [f[2] - f[0]]], yerr=[[t[0] - t[1]], [t[2] - t[0]]],
        fmt="*", color="black", markersize=16, capsize=3, label=f"chosen: {chosen.knob.label}",
    )
    if any(groups.values()):
        fig.colorbar(sc, ax=ax, label="ω (at the start of sampling)")
    ax.set_xlabel(f"subject fidelity ({names[0]})")
    ax.set_ylabel(f"text alignment ({names[1]})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
