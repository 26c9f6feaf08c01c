"""Draw docs/images/gradient.png (and gradient.json beside it): DeCE's gradient against the gold probability.

The curves are computed exactly (float64) from the formulas of docs/math.md for one token whose remaining
probability mass is spread evenly over the other V - 1 classes, and checked against autograd of
``dece_trainer.deceptive_cross_entropy`` (float32; ``alpha=1, label_smoothing=0`` for the cross-entropy
curve) before anything is drawn.

    python docs/scripts/gradient_figure.py          # needs matplotlib: pip install 'dece-trainer[plots]'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's dece_trainer

VOCAB = 32000  # a Llama / CodeLlama vocabulary
SMOOTHING = 0.05  # dece_label_smoothing's default (the paper's)
ALPHAS = [0.985, 0.9, 0.8, 0.5]
P_GOLD = np.logspace(-6, np.log10(0.999), 160)


def dece_gradients(p: np.ndarray, alpha: float, e: float, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(d loss / d z_y, d loss / d p_y) at gold probability ``p``, the rest spread evenly (docs/math.md)."""
    p_other = (1.0 - p) / (vocab - 1)
    t_gold, t_other = 1.0 - e, e / (vocab - 1)
    q_gold = alpha * p + (1.0 - alpha) * t_gold
    q_other = alpha * p_other + (1.0 - alpha) * t_other
    r_gold, r_other = alpha * p / q_gold, alpha * p_other / q_other  # r[k] = a p[k] / q[k]
    s = t_gold * r_gold + (vocab - 1) * t_other * r_other  # S = sum_k t[k] r[k]
    d_logit = p * s - t_gold * r_gold  # d loss / d z[y] = p[y] S - t[y] r[y]
    d_prob = -t_gold * alpha / q_gold  # w[y] = -t[y] a / q[y]
    return d_logit, d_prob


def compute_curves() -> dict:
    curves = {"vocab_size": VOCAB, "label_smoothing": SMOOTHING, "alphas": ALPHAS,
              "p_gold": P_GOLD.tolist(),
              "ce": {"d_logit": (P_GOLD - 1.0).tolist(), "d_prob": (-1.0 / P_GOLD).tolist()}, "dece": {}}
    for alpha in ALPHAS:
        d_logit, d_prob = dece_gradients(P_GOLD, alpha, SMOOTHING, VOCAB)
        curves["dece"][str(alpha)] = {
            "d_logit": d_logit.tolist(), "d_prob": d_prob.tolist(), "grad_bound": alpha / (1.0 - alpha),
            "suppression_threshold": (1.0 - alpha) * (1.0 - SMOOTHING) / alpha,
        }
    return curves


def float32_tolerance(curves: dict) -> float:
    """What float32 itself allows: 1.5x the largest error of PyTorch's own ``F.cross_entropy`` gradient on the CE
    curve (float32 logits, float64 formula), and at least 1e-5. Near ``p[y] = 1`` a float32 softmax over a 32k
    vocabulary loses part of the off-target mass to rounding, in ``F.cross_entropy`` as in any float32 loss."""
    import torch

    p = torch.tensor(curves["p_gold"], dtype=torch.float64)
    logits = ((1.0 - p) / (VOCAB - 1)).log().unsqueeze(1).repeat(1, VOCAB)
    logits[:, 0] = p.log()
    z = logits.float().requires_grad_()
    torch.nn.functional.cross_entropy(z, torch.zeros(len(p), dtype=torch.long), reduction="sum").backward()
    error = float((z.grad[:, 0].double() - torch.tensor(curves["ce"]["d_logit"])).abs().max())
    return max(1e-5, 1.5 * error)


def max_autograd_error(curves: dict) -> float:
    """Largest |formula - autograd| of the gold-logit gradient over every curve (float32 autograd)."""
    import torch

    from dece_trainer import deceptive_cross_entropy

    p = torch.tensor(curves["p_gold"], dtype=torch.float64)
    logits = ((1.0 - p) / (VOCAB - 1)).log().unsqueeze(1).repeat(1, VOCAB)
    logits[:, 0] = p.log()
    labels = torch.zeros(len(p), dtype=torch.long)
    # (alpha, smoothing, expected curve); alpha = 1 without smoothing is plain cross-entropy
    cases = [(1.0, 0.0, curves["ce"])] + [(float(a), SMOOTHING, c) for a, c in curves["dece"].items()]
    errors = []
    for alpha, smoothing, expected in cases:
        z = logits.float().requires_grad_()
        deceptive_cross_entropy(z, labels, alpha=alpha, label_smoothing=smoothing, reduction="sum").backward()
        errors.append(float((z.grad[:, 0].double() - torch.tensor(expected["d_logit"])).abs().max()))
    return max(errors)


def draw(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.array(curves["p_gold"])
    colors = ["tab:blue", "tab:green", "tab:orange", "tab:red"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    left.plot(p, curves["ce"]["d_logit"], color="black", lw=2.2, label="cross-entropy")
    right.plot(p, -np.array(curves["ce"]["d_prob"]), color="black", lw=2.2, label="cross-entropy: 1 / p")
    for color, (alpha, c) in zip(colors, curves["dece"].items()):
        left.plot(p, c["d_logit"], color=color, lw=1.8, label=f"DeCE, a = {alpha}")
        right.plot(p, -np.array(c["d_prob"]), color=color, lw=1.8,
                   label=f"DeCE, a = {alpha}: bound a/(1-a) = {c['grad_bound']:.3g}")
        right.axhline(c["grad_bound"], color=color, lw=0.8, ls=":")
        threshold = c["suppression_threshold"]
        _, d_prob = dece_gradients(np.array([threshold]), float(alpha), curves["label_smoothing"], curves["vocab_size"])
        right.plot([threshold], [-d_prob[0]], "o", color=color, ms=5)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("probability of the gold token, p[y]")
        ax.grid(True, which="major", alpha=0.3)
    left.set_ylabel("d loss / d z[y]  (gradient on the gold logit)")
    left.set_title("Gradient on the gold logit: CE pulls hardest on improbable\n"
                   "tokens (poison), DeCE lets them go", fontsize=11)
    left.set_ylim(-1.05, 0.05)
    left.legend(loc="center left", fontsize=9)
    right.set_yscale("log")
    right.set_ylabel("|d loss / d p[y]|")
    right.set_title("Gradient on the gold probability: unbounded under CE,\n"
                    "at most a/(1-a) under DeCE (dots: half of smoothed CE's)", fontsize=11)
    right.set_ylim(0.5, 2e6)
    right.legend(loc="upper right", fontsize=8)
    fig.text(0.5, 0.005, f"one token, vocabulary {curves['vocab_size']}, label smoothing {curves['label_smoothing']}, "
             "the other classes sharing 1 - p[y] evenly; drawn by docs/scripts/gradient_figure.py",
             ha="center", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    curves = compute_curves()
    error, tolerance = max_autograd_error(curves), float32_tolerance(curves)
    if error > tolerance:
        raise SystemExit(f"the formula and autograd disagree by {error:.3g} (float32 allows {tolerance:.3g})")
    curves["max_abs_error_vs_autograd"], curves["float32_tolerance"] = error, tolerance
    out = REPO_ROOT / "docs" / "images"
    draw(curves, out / "gradient.png")
    rounded = json.loads(json.dumps(curves), parse_float=lambda s: float(f"{float(s):.6g}"))
    (out / "gradient.json").write_text(json.dumps(rounded, indent=1) + "\n")
    print(f"wrote {out / 'gradient.png'} and gradient.json; formula vs autograd: max |difference| {error:.2e}")


if __name__ == "__main__":
    main()
