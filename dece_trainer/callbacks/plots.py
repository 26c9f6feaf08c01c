"""Pictures of a run's early-learning dynamics (matplotlib, an optional extra)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plotting import pyplot, save_figure
from ..trainer.log_keys import ASR, BLEU, NLL, PROBE_PREFIX

MARKERS = ("o", "s", "^", "D", "v", "P")


def _is_probe_key(key: str, metric: str) -> bool:
    """Whether ``key`` is a probe set's ``metric`` (`dece_trainer.trainer.log_keys.probe_key`)."""
    return key.startswith(PROBE_PREFIX) and key.endswith(f"_{metric}")


def curve_panels(log_history: list[dict]) -> list[tuple[str, list[str], bool]]:
    """Which series go on which panel of `plot_curves`: ``(y label, keys, is_rate)``, empty panels left out.

    DeCE's training ``loss`` (and ``eval_dece_loss``) is a different quantity from cross-entropy, and smaller
    by construction at a lower alpha, so it gets its own panel; plain cross-entropy and negative
    log-likelihoods (``ce_loss``, ``eval_loss``, which dece-trainer reports as CE, probe NLL) share another. In
    a run without DeCE (no ``dece_alpha`` logged) the training ``loss`` is cross-entropy and joins them.
    """
    keys = {k for e in log_history for k in e}
    dece_run = "dece_alpha" in keys or "eval_dece_loss" in keys
    dece_keys = [k for k in ("loss", "eval_dece_loss") if k in keys] if dece_run else []
    ce_keys = ([] if dece_run else [k for k in ("loss",) if k in keys]) + [
        k for k in ("ce_loss", "eval_loss") if k in keys] + sorted(
        k for k in keys if _is_probe_key(k, NLL))
    if "eval_loss" not in keys and "eval_ce_loss" in keys:
        ce_keys.append("eval_ce_loss")
    rate_keys = sorted(k for k in keys if _is_probe_key(k, ASR)) + [
        k for k in ("unlearned_frac", "dece_suppressed_frac", "dece_alpha") if k in keys]
    bleu_keys = sorted(k for k in keys if _is_probe_key(k, BLEU))
    panels = [("DeCE loss (objective)", dece_keys, False), ("cross-entropy / NLL (nats)", ce_keys, False),
              ("share / alpha", rate_keys, True), ("BLEU", bleu_keys, False)]
    return [p for p in panels if p[1]]


def plot_curves(log_history: list[dict], path: str) -> bool:
    """Training and evaluation curves against the training step, one panel per kind of quantity (see
    `curve_panels`): the DeCE loss, cross-entropy/NLL, shares (ASR, unlearned, suppressed, alpha) on a 0-1
    axis, BLEU from 0. Every series keeps its markers above the axes, so one that stays at 0 (an attack success
    rate, say) is still seen. False without matplotlib; True and no file when nothing was logged."""
    plt = pyplot()
    if plt is None:
        return False

    def series(key):
        pts = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = curve_panels(log_history)
    if not panels:
        return True
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, names, is_rate) in zip(axes[:, 0], panels):
        top = 0.0
        for rank, name in enumerate(names):
            x, y = series(name)
            top = max([top, *[v for v in y if v == v]])
            # over the axes (clip_on=False, zorder above the spines), each later series over the earlier ones with
            # a smaller marker of another shape: series that coincide (two ASRs at 0) all stay visible
            ax.plot(x, y, marker=MARKERS[rank % len(MARKERS)], markersize=max(2.0, 6.0 - 1.0 * rank),
                    markevery=max(1, len(x) // 30), label=name, zorder=3 + rank, clip_on=False)
        if is_rate:
            ax.set_ylim(0.0, max(1.0, top) * 1.02)
        elif label == "BLEU":
            ax.set_ylim(bottom=0.0, top=max(1.0, top) * 1.05)
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
                for name, group in (("clean", seen & ~poisoned), ("poisoned", seen & poisoned)):
                    if group.any():  # a density of no rows is 0/0
                        ax.hist(value[group], bins=bins, alpha=0.6, density=True, label=name)
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
