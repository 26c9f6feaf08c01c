"""Pick DeCE's alpha_base from a bench ``results.json`` using validation probes only (never the test split).

Rule, fixed before the runs: the largest alpha_base whose last-epoch triggered-validation ASR is at most
``--max_asr`` (default 0.05); if none qualifies, the smallest alpha tried. Prints the choice and the
evidence as JSON.

    python benchmarks/choose_alpha.py runs/lyra/results.json
"""

from __future__ import annotations

import argparse
import json


def last_curve(record: dict) -> dict:
    return record["curves"][-1] if record.get("curves") else {}


def choose(records: list[dict], max_asr: float) -> dict:
    dece = [r for r in records if r["loss"] == "dece"]
    if not dece:
        raise ValueError("no DeCE cell in the results: nothing to choose from")
    evidence = {r["alpha_base"]: {"probe_triggered_asr": last_curve(r).get("probe_triggered_asr"),
                                  "probe_clean_nll": last_curve(r).get("probe_clean_nll")} for r in dece}
    ok = [a for a, e in evidence.items() if (e["probe_triggered_asr"] if e["probe_triggered_asr"] is not None
                                             else float("inf")) <= max_asr]
    chosen = max(ok) if ok else min(evidence)
    return {"alpha_base": chosen, "rule": f"largest alpha with validation ASR <= {max_asr}", "evidence": evidence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--max_asr", type=float, default=0.05)
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as f:
        records = json.load(f)["cells"]
    print(json.dumps(choose(records, args.max_asr)))


if __name__ == "__main__":
    main()
