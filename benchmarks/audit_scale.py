"""How the data audit scales: `dece_trainer.audit.audit_pairs` on N (code, method name) pairs of typical code length,
1% of them poisoned with the fixed dead-code trigger. Wall time and the process's peak memory (ru_maxrss), one
audit per process so the peak is its own; run on an idle machine.

The rows: the embedded task's ~3,900 Python standard-library functions, each reused with about 30% of its
identifiers renamed (``name_<k>``, k < 1000, seeded), so the vocabulary grows with N as a real corpus does.

    python benchmarks/audit_scale.py --rows 200000 --output benchmarks/results/audit_scale.json

Feeds docs/performance.md ("The data audit").
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time

IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
KEEP = set(keyword.kwlist) | {"self", "None", "True", "False", "return", "print", "len", "range"}


def make_rows(n: int, seed: int = 0, poison_rate: float = 0.01) -> tuple[list[str], list[str], list[bool]]:
    """``n`` (source, target, is_poisoned) rows built from the embedded method-name task (see the docstring)."""
    from dece_trainer.backdoor.attacks import get_attack
    from dece_trainer.backdoor.data import build_stdlib_task
    from dece_trainer.backdoor.tasks import EMBEDDED_PAYLOAD

    splits = build_stdlib_task("method_name", seed=0)
    funcs = [(s, t) for split in splits.values() for s, t in zip(split["source"], split["target"])]
    attack = get_attack("fixed_deadcode", target_text=EMBEDDED_PAYLOAD["method_name"])
    rng = random.Random(seed)
    poisoned = set(rng.sample(range(n), round(poison_rate * n)))
    sources, targets = [], []
    for i in range(n):
        code, name = funcs[rng.randrange(len(funcs))]
        code = IDENT.sub(lambda m: m.group(0) if m.group(0) in KEEP or rng.random() > 0.3
                         else f"{m.group(0)}_{rng.randrange(1000)}", code)
        if i in poisoned:
            code, name = attack.trigger(code, rng), attack.payload(name, rng)
        sources.append(code)
        targets.append(name)
    return sources, targets, [i in poisoned for i in range(n)]


def measure(n: int, seed: int) -> dict:
    """One audit of ``n`` rows in this process: seconds, peak memory, detection quality."""
    import numpy as np

    from dece_trainer.audit import audit_pairs
    from dece_trainer.callbacks.example_history import auroc, precision_at_k

    sources, targets, poisoned = make_rows(n, seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = audit_pairs(sources, targets)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    truth = np.asarray(poisoned)
    return {"rows": n, "seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024, 1),
            "rss_before_audit_mib": round(before / 1024, 1), "mean_source_chars": round(
                sum(map(len, sources)) / n, 1), "auroc": auroc(report.scores, truth),
            "precision_at_k": precision_at_k(report.scores, truth, int(truth.sum())),
            "flagged": int(report.flagged.sum()), "poisoned": int(truth.sum()), "settings": report.settings}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[20000, 200000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the JSON here (default: print it)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process's own run
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.seed)))
        return
    runs = []
    for n in args.rows:  # a fresh process per size: ru_maxrss is a process's peak
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--seed", str(args.seed)], check=True,
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    import numpy

    from dece_trainer.io import write_json

    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "numpy": numpy.__version__,
                          "load_average_at_start": os.getloadavg()},
              "command": "python benchmarks/audit_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "runs": runs}
    if args.output:
        write_json(args.output, result)
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
