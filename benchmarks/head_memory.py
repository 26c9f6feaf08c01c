"""Extra peak memory and time of LM head + loss, forward+backward, at real models' head shapes.

Methods, on the same hidden states (N, d) and head weight (V, d), both requiring grad (``--frozen-weight``:
the weight does not, as under LoRA):
  * ``hf_ce``:      logits = hidden @ W^T materialised, then F.cross_entropy(logits.float(), labels), as
                    Hugging Face's causal-LM loss does
  * ``dece``:       the same materialised logits, then dece_trainer.deceptive_cross_entropy
  * ``fused_dece``: dece_trainer.ops.fused_linear_dece (no (N, V) logits)
  * ``trl_fused``:  TRL's chunked fused head (trl.kernels.ChunkedLogProbFunction, the kernel behind
                    ``add_fused_lm_head``, log-probabilities only), loss = -mean log p[y]; skipped if TRL is
                    missing or too old
Shapes: SmolLM2-135M (d=576, V=49,152) and Qwen2.5-0.5B (d=896, V=151,936), N=2048 tokens by default.
Extra peak memory is measured as in loss_speed.py (it includes grad_hidden and grad_weight); time is the
min and median of interleaved repeats.

Usage: python benchmarks/head_memory.py [--tokens 2048] [--dtype float32|bfloat16] [--repeats 3]
       [--device cpu|cuda] [--frozen-weight] [--json PATH]
Writes JSON (default benchmarks/results/head_memory_<device>_<dtype>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from loss_speed import extra_peak, machine_info, time_interleaved

from dece_trainer.io import write_json

ALPHA, SMOOTHING = 0.985, 0.05
HEADS = {"SmolLM2-135M": (576, 49_152), "Qwen2.5-0.5B": (896, 151_936)}
TRL_VOCAB_CHUNK = 32_768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16


def trl_loss():
    """TRL's fused head as add_fused_lm_head calls it, or None when TRL does not have it."""
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError:
        return None

    def loss(hidden, weight, labels):
        log_probs, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, labels, 1.0, TRL_VOCAB_CHUNK, None, 1.0, ())
        return -log_probs.mean()
    return loss


def methods() -> dict:
    from dece_trainer import deceptive_cross_entropy
    from dece_trainer.ops import fused_linear_dece

    found = {
        "hf_ce": lambda h, w, y: F.cross_entropy(F.linear(h, w).float(), y),
        "dece": lambda h, w, y: deceptive_cross_entropy(F.linear(h, w), y, alpha=ALPHA, label_smoothing=SMOOTHING),
        "fused_dece": lambda h, w, y: fused_linear_dece(h, w, y, alpha=ALPHA, label_smoothing=SMOOTHING).loss,
        "trl_fused": trl_loss(),
    }
    return {name: fn for name, fn in found.items() if fn is not None}


def bench_head(name: str, tokens: int, dtype: torch.dtype, device: torch.device, repeats: int,
               frozen_weight: bool) -> dict:
    d, vocab = HEADS[name]
    torch.manual_seed(0)
    hidden = torch.randn(tokens, d, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, d, device=device) / d**0.5).to(dtype).requires_grad_(not frozen_weight)
    labels = torch.randint(0, vocab, (tokens,), device=device)

    def step_fn(loss):
        def step():
            hidden.grad = weight.grad = None
            loss(hidden, weight, labels).backward()
        return step

    steps, memory = {}, {}
    for method, loss in methods().items():
        steps[method] = step = step_fn(loss)
        step()  # warm-up
        hidden.grad = weight.grad = None
        memory[method] = {}
        with extra_peak(device, memory[method]):
            step()
    results = time_interleaved(steps, repeats, device)
    for method, r in results.items():
        r["extra_peak_mib"] = memory[method]["extra_peak_mib"]
        r["memory_vs_hf_ce"] = r["extra_peak_mib"] / memory["hf_ce"]["extra_peak_mib"]
        if "trl_fused" in memory:
            r["memory_vs_trl_fused"] = r["extra_peak_mib"] / memory["trl_fused"]["extra_peak_mib"]
    skipped = {} if "trl_fused" in results else {"trl_fused": "trl.kernels.ChunkedLogProbFunction not importable"}
    return {"head": name, "hidden_size": d, "vocab": vocab, "tokens": tokens, "results": results,
            "skipped": skipped}


def print_table(head: dict) -> None:
    print(f"\n{head['head']}: N={head['tokens']}, d={head['hidden_size']}, V={head['vocab']}")
    print("| method | extra peak (MiB) | vs hf_ce | vs trl_fused | min (s) | median (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method, r in head["results"].items():
        vs_trl = f"{r['memory_vs_trl_fused']:.2f}x" if "memory_vs_trl_fused" in r else "-"
        print(f"| {method} | {r['extra_peak_mib']:.0f} | {r['memory_vs_hf_ce']:.2f}x | {vs_trl} | {r['min_s']:.2f} "
              f"| {r['median_s']:.2f} |")
    for method, why in head["skipped"].items():
        print(f"({method} skipped: {why})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frozen-weight", action="store_true", help="the head weight does not require grad")
    parser.add_argument("--json", help="default: benchmarks/results/head_memory_<device>_<dtype>.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    suffix = "_frozen" if args.frozen_weight else ""
    path = args.json or os.path.join(os.path.dirname(__file__), "results",
                                     f"head_memory_{device.type}_{args.dtype}{suffix}.json")
    record = {"machine": machine_info(device), "dtype": args.dtype, "frozen_weight": args.frozen_weight,
              "alpha": ALPHA, "label_smoothing": SMOOTHING, "repeats": args.repeats,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "heads": []}
    print(json.dumps(record["machine"]))
    for name in HEADS:
        head = bench_head(name, args.tokens, getattr(torch, args.dtype), device, args.repeats, args.frozen_weight)
        print_table(head)
        record["heads"].append(head)
        write_json(path, record)
    record["load_average_end"] = os.getloadavg()
    write_json(path, record)
    print(f"\nload average at start {record['machine']['load_average']}, at end {record['load_average_end']}; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
