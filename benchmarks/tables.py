"""Markdown tables for docs/performance.md from the benchmark scripts' JSON (benchmarks/results/).

Usage: python benchmarks/tables.py [--cuda] [loss_speed|head_memory|train_step ...]   (default: all that exist)
``--cuda``: the GPU results (``*_cuda_*.json``) instead of the CPU ones.
"""

from __future__ import annotations

import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FILES = {"loss_speed": "loss_speed_cpu_float32.json", "head_memory": "head_memory_cpu_float32.json",
         "train_step": "train_step_cpu.json"}
CUDA_FILES = {"loss_speed": "loss_speed_cuda_bfloat16.json", "head_memory": "head_memory_cuda_bfloat16.json",
              "train_step": "train_step_cuda.json"}


def machine_line(m: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in m.get("load_average", []))
    gpu = f" ({m['gpu']})" if m.get("gpu") else ""
    return (f"{m.get('cpu_model', '?')}, {m.get('cpu_cores', '?')} cores, AVX512: {m.get('avx512') or 'none'}, "
            f"torch {m.get('torch', '?')}, {m.get('device', '?')}{gpu}; load average before (1/5/15 min): {load}")


def loss_speed(d: dict) -> str:
    lines = [machine_line(d["machine"]), "",
             "| N x V | method | min s | median s | vs label-smoothed CE | vs read-once floor | extra peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for shape in d["shapes"]:
        for name, r in shape["results"].items():
            if not isinstance(r, dict) or "min_s" not in r:
                continue
            lines.append(f"| {shape['tokens']} x {shape['vocab']} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                         f"{r.get('vs_ce_ls', float('nan')):.2f}x | {r.get('vs_floor', float('nan')):.1f}x | "
                         f"{r.get('extra_peak_mib', float('nan')):.0f} |")
    return "\n".join(lines)


def head_memory(d: dict) -> str:
    lines = [machine_line(d["machine"]), "",
             "| head | method | min s | median s | extra peak MiB | peak vs HF CE | peak vs TRL fused |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for head in d["heads"]:
        results = head["results"]
        hf = results.get("hf_ce", {}).get("extra_peak_mib")
        trl = results.get("trl_fused", {}).get("extra_peak_mib")
        for name, r in results.items():
            peak = r["extra_peak_mib"]
            vs = lambda ref: f"{peak / ref:.2f}x" if ref else "-"  # noqa: E731
            shape = f"{head['head']} (d={head['hidden_size']}, V={head['vocab']}, N={head['tokens']})"
            lines.append(f"| {shape} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | {peak:.0f} | {vs(hf)} | "
                         f"{vs(trl)} |")
    return "\n".join(lines)


def train_step(d: dict) -> str:
    lines = [machine_line(d["machine"]), "",
             f"SmolLM2-shaped Llama, {d['layers']} layers, batch {d['batch']} x {d['seq']} tokens "
             f"(prompt half masked), {d['repeats']} interleaved rounds after a warm-up", "",
             "| dtype | trainer | min s/step | median s/step | vs its stock trainer (min) | extra peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    stock = {"trainer": "trainer", "dece": "trainer", "dece_unfused": "trainer", "sft": "sft", "dece_sft": "sft"}
    for dtype, results in d["results"].items():
        for name, r in results.items():
            ref = results.get(stock.get(name, name), r)
            lines.append(f"| {dtype} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                         f"{r['min_s'] / ref['min_s']:.2f}x | {r['extra_peak_mib']:.0f} |")
    return "\n".join(lines)


def main(names: list[str]) -> int:
    files = CUDA_FILES if "--cuda" in names else FILES
    names = [n for n in names if n != "--cuda"]
    for name in names or list(files):
        path = os.path.join(RESULTS, files[name])
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                print(f"### {name} ({os.path.relpath(path)})\n\n{globals()[name](json.load(f))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
