"""Extra peak memory and time of one forward+backward of the loss, on CPU.

Compares, on the same (N, V) logits:
  * ``ce``:    torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=e)
  * ``dense``: a dense DeCE as in the paper's code (one-hot target, softmax, blend, log; all (N, V) float32)
  * ``dece``:  dece_trainer.deceptive_cross_entropy (chunked, recomputing backward)

Each measurement runs in a fresh subprocess: the peak resident set size (VmHWM, reset through
/proc/self/clear_refs) minus the resident size just before the loss call, so the logits themselves are
not counted and the gradient buffer is (it is the same for every method). Linux only.

Usage: python benchmarks/loss_memory.py [--tokens 8192] [--vocab 32000] [--dtype float32] [--repeats 3]
Prints a markdown table and writes the numbers as JSON (``--json``, default benchmarks/results/loss_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

METHODS = ("ce", "dense", "dece")
ALPHA, SMOOTHING = 0.985, 0.05


def dense_dece(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The straightforward dense formulation (the paper's code, without its clamp)."""
    vocab = logits.shape[-1]
    one_hot = F.one_hot(labels, vocab).float()
    target = (1 - SMOOTHING) * one_hot + SMOOTHING / (vocab - 1) * (1 - one_hot)
    q = ALPHA * F.softmax(logits.float(), dim=-1) + (1 - ALPHA) * target
    return -(target * torch.log(q)).sum(-1).mean()


def loss_fn(method: str):
    from dece_trainer import deceptive_cross_entropy

    return {
        "ce": lambda z, y: F.cross_entropy(z.float(), y, label_smoothing=SMOOTHING),
        "dense": dense_dece,
        "dece": lambda z, y: deceptive_cross_entropy(z, y, alpha=ALPHA, label_smoothing=SMOOTHING),
    }[method]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_one(method: str, tokens: int, vocab: int, dtype: str) -> dict:
    """Runs in the child process: extra peak MiB of the first call, then the median time of 3 more."""
    torch.manual_seed(0)
    logits = torch.randn(tokens, vocab).to(getattr(torch, dtype)).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,))
    fn = loss_fn(method)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    before = _rss_kib("VmRSS")
    fn(logits, labels).backward()
    peak = _rss_kib("VmHWM")
    times = []
    for _ in range(3):
        logits.grad = None
        start = time.perf_counter()
        fn(logits, labels).backward()
        times.append(time.perf_counter() - start)
    return {"extra_peak_mib": (peak - before) / 1024, "seconds": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=1, help="subprocess runs per method (median is reported)")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "loss_memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child, args.tokens, args.vocab, args.dtype)))
        return

    results = {}
    for method in METHODS:
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", method, "--tokens", str(args.tokens),
                                  "--vocab", str(args.vocab), "--dtype", args.dtype],
                                 check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[method] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    logits_mib = args.tokens * args.vocab * torch.tensor([], dtype=getattr(torch, args.dtype)).element_size() / 2**20
    print(f"N={args.tokens} tokens, V={args.vocab}, logits {args.dtype} ({logits_mib:.0f} MiB), "
          f"alpha={ALPHA}, e={SMOOTHING}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads\n")
    print("| loss | extra peak memory (MiB) | vs F.cross_entropy | fwd+bwd time (s) | vs F.cross_entropy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for method in METHODS:
        r = results[method]
        print(f"| {method} | {r['extra_peak_mib']:.0f} | {r['extra_peak_mib'] / results['ce']['extra_peak_mib']:.2f}x"
              f" | {r['seconds']:.3f} | {r['seconds'] / results['ce']['seconds']:.2f}x |")
    ratios = {
        "memory_dece_over_ce": results["dece"]["extra_peak_mib"] / results["ce"]["extra_peak_mib"],
        "memory_dece_over_dense": results["dece"]["extra_peak_mib"] / results["dense"]["extra_peak_mib"],
        "time_dece_over_ce": results["dece"]["seconds"] / results["ce"]["seconds"],
    }
    print("\n" + "  ".join(f"{k}={v:.3f}" for k, v in ratios.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    record = {"tokens": args.tokens, "vocab": args.vocab, "dtype": args.dtype, "torch": torch.__version__,
              "cpus": os.cpu_count(), "machine": platform.machine(), "results": results, "ratios": ratios}
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
