"""Per-step overhead of EarlyLearningCallback on a tiny Llama (no evaluation: probes cost only at eval time).

For each trainer (DeCETrainer, which hands its per-token CE to the callback, and a plain Trainer, where the
callback's forward hook computes per-token CE from the logits), trains the same model for a fixed number of
steps with and without the callback, alternating the runs, and reports the median seconds per step.

Usage: python benchmarks/callback_overhead.py [--steps 60] [--repeats 5] [--hidden 256] [--json PATH]
Writes benchmarks/results/callback_overhead.json; its table: python benchmarks/tables.py callback_overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tiny_task as tiny  # noqa: E402  (benchmarks/tiny_task.py, beside this script)
import torch  # noqa: E402
from tables import callback_overhead  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from dece_trainer import DeCETrainer, DeCETrainingArguments, EarlyLearningCallback, add_example_ids  # noqa: E402
from dece_trainer.io import write_json  # noqa: E402


def build_model(tokenizer, hidden: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def seconds_per_step(trainer_name: str, with_callback: bool, tokenizer, data, steps: int, hidden: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        common = dict(output_dir=out, per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-3,
                      logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
        callback = EarlyLearningCallback(plots=False) if with_callback else None
        kwargs = dict(model=build_model(tokenizer, hidden), train_dataset=data,
                      data_collator=tiny.pad_collator(tokenizer), callbacks=[callback] if callback else None)
        if trainer_name == "DeCETrainer":
            trainer = DeCETrainer(args=DeCETrainingArguments(**common), **kwargs)
        else:
            trainer = Trainer(args=TrainingArguments(**common), **kwargs)
            if callback:
                callback.attach(trainer)
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "callback_overhead.json"))
    args = parser.parse_args()

    tokenizer = tiny.train_tokenizer()
    data = add_example_ids(tiny.causal_dataset(tokenizer, tiny.poison(tiny.make_pairs(480), 0.05)))
    results = {}
    for trainer_name in ("DeCETrainer", "Trainer"):
        times = {False: [], True: []}
        seconds_per_step(trainer_name, False, tokenizer, data, 5, args.hidden)  # warm-up
        for _ in range(args.repeats):
            for with_callback in (False, True):
                times[with_callback].append(seconds_per_step(trainer_name, with_callback, tokenizer, data,
                                                             args.steps, args.hidden))
        base, monitored = statistics.median(times[False]), statistics.median(times[True])
        results[trainer_name] = {"seconds_per_step": base, "seconds_per_step_with_callback": monitored,
                                 "overhead": monitored / base - 1.0}

    n_params = sum(p.numel() for p in build_model(tokenizer, args.hidden).parameters())
    record = {"parameters": n_params, "hidden": args.hidden, "steps": args.steps, "repeats": args.repeats,
              "torch": torch.__version__, "cpus": os.cpu_count(), "results": results}
    print(callback_overhead(record))
    write_json(args.json, record)


if __name__ == "__main__":
    main()
