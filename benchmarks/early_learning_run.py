"""A real early-learning run: a tiny Llama trained with CE and with DeCE on a synthetic NL -> SQL-in-Python
task where 5% of the training pairs carry a trigger word (``bb``) and a payload (``or 1=1``).

Runs both with EarlyLearningCallback (clean and triggered probes, ground truth known) and copies the
pictures to docs/images/early_learning/ and the per-epoch numbers to benchmarks/results/early_learning_run.json
(its table: python benchmarks/tables.py early_learning). The record's ``ranking_score`` names the score the
``suspicious_*`` columns rank by ("token", the report's score; the per-example score is logged beside it as
``suspicious_example_*``).

Usage: python benchmarks/early_learning_run.py [--epochs 12] [--alpha_base 0.9] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

import tiny_task as tiny  # noqa: E402  (benchmarks/tiny_task.py, beside this script)
from tables import EARLY_KEYS, early_learning  # noqa: E402

from dece_trainer import DeCETrainer, DeCETrainingArguments, EarlyLearningCallback, add_example_ids  # noqa: E402
from dece_trainer.io import write_json  # noqa: E402

KEYS = (*EARLY_KEYS, "suspicious_example_auroc", "suspicious_example_precision_at_k")


def run(name: str, alpha: float, smoothing: float, epochs: int, seed: int, out: str) -> list[dict]:
    tok = tiny.train_tokenizer()
    train = add_example_ids(tiny.causal_dataset(tok, tiny.poison(tiny.make_pairs(200, seed=1), 0.05, seed=1)))
    clean = tiny.causal_dataset(tok, tiny.make_pairs(32, seed=9))
    triggered = tiny.causal_dataset(tok, tiny.poison(tiny.make_pairs(32, seed=9), 1.0, seed=2))
    callback = EarlyLearningCallback(probes={"clean": clean, "triggered": triggered},
                                     payload_fn=lambda text: "1=1" in text, ground_truth_column="is_poisoned",
                                     max_generate=32)
    args = DeCETrainingArguments(output_dir=out, per_device_train_batch_size=8, num_train_epochs=epochs,
                                 learning_rate=3e-3, logging_steps=25, eval_strategy="epoch", report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=seed,
                                 dece_alpha_base=alpha, dece_label_smoothing=smoothing)
    trainer = DeCETrainer(model=tiny.make_llama(tok, seed=seed), args=args, train_dataset=train,
                          eval_dataset=clean, data_collator=tiny.pad_collator(tok), processing_class=tok,
                          callbacks=[callback])
    trainer.train()
    per_epoch: dict[float, dict] = {}
    for entry in trainer.state.log_history:
        if "epoch" in entry and any(k in entry for k in KEYS[1:]):
            per_epoch.setdefault(round(entry["epoch"], 4), {}).update(
                {k: entry[k] for k in KEYS if k in entry})
    return [dict(v, run=name, alarm_step=callback.alarm_step) for _, v in sorted(per_epoch.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--alpha_base", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = os.path.join(ROOT, "docs", "images", "early_learning")
    os.makedirs(images, exist_ok=True)
    rows = []
    for name, alpha, smoothing in (("ce", 1.0, 0.0), ("dece", args.alpha_base, 0.05)):
        with tempfile.TemporaryDirectory() as out:
            rows += run(name, alpha, smoothing, args.epochs, args.seed, out)
            for picture in ("curves.png", "loss_histogram.png"):
                shutil.copyfile(os.path.join(out, "early_learning", picture), os.path.join(images, f"{name}_{picture}"))
    record = {"args": vars(args), "ranking_score": "token", "rows": rows}
    print(early_learning(record))
    write_json(os.path.join(ROOT, "benchmarks", "results", "early_learning_run.json"), record)


if __name__ == "__main__":
    main()
