"""Train a tiny Llama with DeCETrainer and dump its loss curve and final weights; run under torchrun or alone.

Usage: python tests/dist_train.py OUT_DIR PER_DEVICE_BATCH [GRAD_ACCUM] [monitor]
       torchrun --nproc_per_node 2 tests/dist_train.py OUT_DIR PER_DEVICE_BATCH [GRAD_ACCUM] [monitor]

With ``monitor``, an EarlyLearningCallback rides along and its per-epoch visit counts are dumped too.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from dece_trainer import DeCETrainer, DeCETrainingArguments, EarlyLearningCallback, add_example_ids  # noqa: E402
from tests import tiny  # noqa: E402


def main(out_dir: str, batch: int, grad_accum: int = 1, monitor: bool = False) -> None:
    tok = tiny.train_tokenizer()
    rows = tiny.poison(tiny.make_pairs(48, seed=3), 0.1, seed=3)
    for i, row in enumerate(rows):  # vary target lengths so micro-batches hold different token counts
        row["target"] = " ".join(row["target"].split()[: 8 + (i * 7) % 19])
    data = add_example_ids(tiny.causal_dataset(tok, rows))
    callback = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False) if monitor else None
    args = DeCETrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=grad_accum,
        max_steps=12 if monitor else 6, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
        per_device_eval_batch_size=4,
        dece_alpha_base=0.8, dece_alpha_schedule="continuous", dataloader_drop_last=True,
    )
    trainer = DeCETrainer(model=tiny.make_model("llama", tok), args=args, train_dataset=data,
                          data_collator=tiny.pad_collator(tok), callbacks=[callback] if monitor else None)
    trainer.train()
    # 45 rows: the processes' last batches are uneven, and the sampler repeats rows to even them out
    trainer.args.dataloader_drop_last = False
    metrics = trainer.evaluate(data.select(range(45)))
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        with open(os.path.join(out_dir, "curve.json"), "w") as f:
            curve = {k: [e[k] for e in logs] for k in ("loss", "ce_loss", "dece_alpha", "dece_suppressed_frac")}
            curve["eval"] = {k: metrics[k] for k in ("eval_loss", "eval_ce_loss", "eval_dece_loss")}
            json.dump(curve, f)
        state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, os.path.join(out_dir, "weights.safetensors"))
        if monitor:
            with open(os.path.join(out_dir, "monitor.json"), "w") as f:
                json.dump({"visits": [v.tolist() for v in callback.history.visits],
                           "loss": [[float(x) for x in v] for v in callback.history.loss],
                           "auroc": [e["suspicious_auroc"] for e in trainer.state.log_history
                                     if "suspicious_auroc" in e]}, f)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1,
         monitor=len(sys.argv) > 4 and sys.argv[4] == "monitor")
