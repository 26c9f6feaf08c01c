"""Pictures of a run's early-learning dynamics (matplotlib, an optional extra)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plotting import pyplot, save_figure


def plot_curves(log_history: list[dict], path: str) -> bool:
    """Train loss, eval and probe metrics, alpha and ASR against the training step. False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False

    def series(key):
        pts = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        return [p[0] for p in pts], [p[1] for p in pts]

    keys = {k for e in log_history for k in e}
    loss_keys = [k for k in ("loss", "ce_loss", "eval_loss") if k in keys] + sorted(
        k for k in keys if k.startswith("probe_") and k.endswith("_nll"))
    rate_keys = sorted(k for k in keys if k.startswith("probe_") and k.endswith("_asr")) + [
        k for k in ("unlearned_frac", "dece_suppressed_frac", "dece_alpha") if k in keys]
    bleu_keys = sorted(k for k in keys if k.startswith("probe_") and k.endswith("_bleu"))
    panels = [("loss (nats)", loss_keys), ("share / alpha", rate_keys), ("BLEU", bleu_keys)]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, names) in zip(axes[:, 0], panels):
        for name in names:
            x, y = series(name)
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("training step")
    fig.suptitle("Early learning: clean fit vs. backdoor")
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_loss_histogram(history: Any, path: str, poisoned: np.ndarray | None = None, max_panels: int = 4) -> bool:
    """Per-example mean token CE (top) and worst-token CE (bottom) at a few epochs; poisoned and clean
    apart when ground truth is known. False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False

    epochs = history.num_epochs
    picks = sorted(set(np.linspace(0, epochs - 1, num=min(max_panels, epochs)).round().astype(int)))
    def worst_nll(epoch):
        return -np.log(np.clip(history.worst_prob[epoch].astype(np.float64), 1e-12, None))

    rows = [("mean token CE (nats)", lambda e: history.loss[e].astype(np.float64)),
            ("worst-token CE (nats)", worst_nll)]
    fig, axes = plt.subplots(2, len(picks), figsize=(3.2 * len(picks), 5.2), squeeze=False)
    for row, (label, values) in enumerate(rows):
        for col, epoch in enumerate(picks):
            ax = axes[row, col]
            value = values(epoch)
            seen = ~np.isnan(value)
            bins = np.linspace(value[seen].min(), value[seen].max() + 1e-6, 25) if seen.any() else 10
            if poisoned is not None:
                ax.hist(value[seen & ~poisoned], bins=bins, alpha=0.6, density=True, label="clean")
                ax.hist(value[seen & poisoned], bins=bins, alpha=0.6, density=True, label="poisoned")
                ax.legend(fontsize=7)
            else:
                ax.hist(value[seen], bins=bins, alpha=0.8, density=True)
            ax.set_title(f"epoch {epoch + 1}", fontsize=9)
            ax.set_xlabel(label, fontsize=8)
        axes[row, 0].set_ylabel("density")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
