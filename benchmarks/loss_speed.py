"""Time and extra peak memory of one loss forward+backward on materialised logits, against baselines.

Methods, on the same (N, V) logits (``--dtype``, float32 by default), all forward+backward:
  * ``ce``:       F.cross_entropy(logits.float(), labels)
  * ``ce_ls``:    F.cross_entropy(logits.float(), labels, label_smoothing=0.05)
  * ``dece``:     dece_trainer.deceptive_cross_entropy (alpha=0.985, e=0.05; chunked, default chunk size)
  * ``dense_compiled``: torch.compile of the dense DeCE formula (skipped, with the reason, if compiling fails)
and ``floor``: one read of the logits, ``logits.amax()`` (forward only), the least any loss can do.

Everything runs in one process; every repeat times each method once in turn (interleaved), so drifting
machine load hits all methods alike. Reported: min and median seconds, ratios of the mins to ``ce_ls`` and
to ``floor``, and extra peak memory of one call (see :func:`extra_peak`; it includes the (N, V) gradient,
the same for every method).

Usage: python benchmarks/loss_speed.py [--shapes 2048x32000,2048x49152,2048x151936,8192x32000,8192x49152]
       [--dtype float32|bfloat16] [--repeats 5] [--device cpu|cuda] [--no-compile] [--json PATH]
Prints markdown tables and writes JSON (default benchmarks/results/loss_speed_<device>_<dtype>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from dece_trainer.io import write_json

ALPHA, SMOOTHING = 0.985, 0.05
DEFAULT_SHAPES = "2048x32000,2048x49152,2048x151936,8192x32000,8192x49152"


# ---- machine and memory (also used by head_memory.py and train_step.py) -----------------------------


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, AVX-512 flags, load average, torch version and threads; the GPU name on CUDA."""
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    info = {
        "cpu_model": model.group(1) if model else platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "avx512": sorted(set(re.findall(r"avx512[a-z_0-9]*", cpuinfo))),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def extra_peak(device: torch.device, result: dict):
    """Sets ``result["extra_peak_mib"]``: the block's peak memory above the memory before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the peak resident set size (VmHWM, reset through
    /proc/self/clear_refs) above the resident size before; in one process, since
    glibc maps large buffers with mmap and unmaps them when freed.
    """
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        before = _rss_kib("VmRSS") * 1024
    yield
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_kib("VmHWM") * 1024
    result["extra_peak_mib"] = (peak - before) / 2**20


def time_interleaved(steps: dict, repeats: int, device: torch.device) -> dict:
    """``steps``: name -> zero-argument callable. Returns name -> {"min_s", "median_s", "runs_s"}."""
    runs = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            runs[name].append(time.perf_counter() - start)
    return {name: {"min_s": min(r), "median_s": statistics.median(r), "runs_s": r} for name, r in runs.items()}


# ---- the losses -------------------------------------------------------------------------------------


def dense_dece(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The dense DeCE formula (t, p, q = a p + (1 - a) t, -sum t log q), as in the paper's code."""
    vocab = logits.shape[-1]
    one_hot = F.one_hot(labels, vocab).float()
    target = (1 - SMOOTHING) * one_hot + SMOOTHING / (vocab - 1) * (1 - one_hot)
    q = ALPHA * F.softmax(logits.float(), dim=-1) + (1 - ALPHA) * target
    return -(target * torch.log(q)).sum(-1).mean()


def losses(compile_dense: bool) -> dict:
    from dece_trainer import deceptive_cross_entropy

    methods = {
        "ce": lambda z, y: F.cross_entropy(z.float(), y),
        "ce_ls": lambda z, y: F.cross_entropy(z.float(), y, label_smoothing=SMOOTHING),
        "dece": lambda z, y: deceptive_cross_entropy(z, y, alpha=ALPHA, label_smoothing=SMOOTHING),
    }
    if compile_dense:
        methods["dense_compiled"] = torch.compile(dense_dece, dynamic=False)
    return methods


def step_fn(loss, logits, labels):
    def step():
        logits.grad = None
        loss(logits, labels).backward()
    return step


def bench_shape(tokens: int, vocab: int, dtype: torch.dtype, device: torch.device, repeats: int,
                compile_dense: bool) -> dict:
    torch.manual_seed(0)
    logits = (torch.randn(tokens, vocab, device=device) * 2).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device=device)
    steps, skipped, memory = {}, {}, {}
    for name, loss in losses(compile_dense).items():
        step = step_fn(loss, logits, labels)
        try:
            step()  # warm-up (compiles)
        except Exception as exc:  # noqa: BLE001 - a failing compile is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        memory[name] = {}
        logits.grad = None
        with extra_peak(device, memory[name]):
            step()
        steps[name] = step
    logits.grad = None
    steps["floor"] = lambda: logits.detach().amax()
    results = time_interleaved(steps, repeats, device)
    for name in memory:
        results[name]["extra_peak_mib"] = memory[name]["extra_peak_mib"]
    floor, ce_ls = results["floor"]["min_s"], results["ce_ls"]["min_s"]
    for r in results.values():
        r["vs_ce_ls"], r["vs_floor"] = r["min_s"] / ce_ls, r["min_s"] / floor
    return {"tokens": tokens, "vocab": vocab, "results": results, "skipped": skipped}


def print_table(shape: dict, dtype: str) -> None:
    logits_mib = shape["tokens"] * shape["vocab"] * torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    print(f"\nN={shape['tokens']}, V={shape['vocab']}, logits {dtype} ({logits_mib / 2**20:.0f} MiB)")
    print("| method | min (s) | median (s) | vs ce_ls | vs floor | extra peak (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in shape["results"].items():
        mem = f"{r['extra_peak_mib']:.0f}" if "extra_peak_mib" in r else "-"
        print(f"| {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['vs_ce_ls']:.2f}x | {r['vs_floor']:.1f}x "
              f"| {mem} |")
    for name, why in shape["skipped"].items():
        print(f"({name} skipped: {why})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxV")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd dense formula")
    parser.add_argument("--json", help="default: benchmarks/results/loss_speed_<device>_<dtype>.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    path = args.json or os.path.join(os.path.dirname(__file__), "results",
                                     f"loss_speed_{device.type}_{args.dtype}.json")
    record = {"machine": machine_info(device), "dtype": args.dtype, "alpha": ALPHA, "label_smoothing": SMOOTHING,
              "repeats": args.repeats, "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "shapes": []}
    print(json.dumps(record["machine"]))
    for spec in args.shapes.split(","):
        tokens, vocab = (int(x) for x in spec.lower().split("x"))
        shape = bench_shape(tokens, vocab, getattr(torch, args.dtype), device, args.repeats, not args.no_compile)
        print_table(shape, args.dtype)
        record["shapes"].append(shape)
        write_json(path, record)  # after every shape, so a long run that dies keeps what it measured
    record["load_average_end"] = os.getloadavg()
    write_json(path, record)
    print(f"\nload average at start {record['machine']['load_average']}, at end {record['load_average_end']}; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
