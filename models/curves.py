"""Training curves of preference tuning: loss, reward margin and preference accuracy, side by side."""

from __future__ import annotations

from pathlib import Path

PANELS = (
    ("loss", "loss"),
    ("margin", "reward margin (chosen - rejected)"),
    ("accuracy", "preference accuracy"),
)


def plot_preference_curves(history: list[dict], path: str | Path, title: str) -> None:
    """Train (per logged step) and validation (per evaluation) values of each panel's metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 3.8))
    for ax, (metric, label) in zip(axes, PANELS, strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            points = [(r["step"], r[f"{split}/{metric}"]) for r in history if f"{split}/{metric}" in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split, alpha=0.8 if split == "train" else 1)
        if metric == "accuracy":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
