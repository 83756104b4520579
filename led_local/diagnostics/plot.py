"""``inspect --plot``: the depth-entropy figure and the per-position trace (matplotlib, Agg).

(a) mean full-vocabulary entropy per block output with its interquartile band, LED's window
shaded and the final layer marked, ln0 and ln1 side by side; every block with
``--all-layers``, LED's depths otherwise. (b) per position: the final layer's entropy, the
largest depth-posterior entropy max_j H_j (ln0, ln1) and the exploration gate.
"""

from __future__ import annotations

import os

import numpy as np

from led_local.diagnostics.inspect import NORMS
from led_local.errors import LedError


def _curve(steps: list[dict], norm: str, n_layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Block indices (l_out-i) and per-position entropies (positions, blocks) for one norm."""
    if "layers" in steps[0]:
        return np.arange(n_layer), np.array([s["layers"][norm] for s in steps])
    depth = np.array([s[norm]["depth_entropy"] for s in steps])  # depth j: l_out-(L-2-j)
    blocks = n_layer - 2 - np.arange(1, depth.shape[1] + 1)
    return blocks[::-1], depth[:, ::-1]


def plot_inspection(responses: list[dict], path: str | os.PathLike, *, n_layer: int,
                    depths: int, title: str) -> None:
    """Write the two-panel PNG of ``responses`` (inspect's JSON responses) to ``path``.

    The entropy panel uses the positions inside LED's scope (all when none is)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [s for r in responses for s in r["steps"]]
    if not steps:
        raise LedError("`plot`: no response position to plot")
    inside = [s for s in steps if s["in_scope"]] or steps
    fig = Figure(figsize=(10.0, 7.0))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2)
    final = np.array([s["entropy_final"] for s in inside])
    top = None
    for col, norm in enumerate(NORMS):
        ax = fig.add_subplot(grid[0, col], sharey=top)
        top = top or ax
        x, h = _curve(inside, norm, n_layer)
        q1, med, q3 = np.percentile(h, [25, 50, 75], axis=0)
        ax.axvspan(n_layer - 1 - depths - 0.5, n_layer - 3 + 0.5, color="tab:orange",
                   alpha=0.15, label=f"LED depths 1..{depths - 1}")
        ax.fill_between(x, q1, q3, color="tab:blue", alpha=0.25, label="interquartile")
        ax.plot(x, h.mean(axis=0), color="tab:blue", marker=".", label="mean")
        ax.plot(x, med, color="tab:blue", linestyle=":", linewidth=1, label="median")
        ax.vlines(n_layer - 1, *np.percentile(final, [25, 75]), color="tab:red")
        ax.plot([n_layer - 1], [final.mean()], color="tab:red", marker="*", markersize=12,
                linestyle="none", label="final layer (logits)")
        ax.set_title(f"{norm}: {'final norm, then' if norm == 'ln1' else 'raw states through'}"
                     " the LM head", fontsize=10)
        ax.set_xlabel("block output l_out-i")
        ax.grid(True, alpha=0.3)
        if col == 0:
            ax.set_ylabel("entropy (nats)")
            ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    pos = np.arange(len(steps))
    ax.plot(pos, [s["entropy_final"] for s in steps], color="tab:red", linewidth=1,
            label="final layer entropy (nats)")
    for norm, color in zip(NORMS, ("tab:blue", "tab:green")):
        ax.plot(pos, [max(s[norm]["posterior_entropy"]) for s in steps], color=color,
                linewidth=1, label=f"max_j H_j ({norm})")
    ax.plot(pos, [s["gate"] for s in steps], color="black", linewidth=1, alpha=0.6,
            label="gate 1 - max(q)")
    edge = 0
    for r in responses[:-1]:
        edge += len(r["steps"])
        ax.axvline(edge - 0.5, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xlabel("response position")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=90)
    except OSError as exc:
        raise LedError(f"`plot`: cannot write {os.fspath(path)!r}: {exc}") from None
