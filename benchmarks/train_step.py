"""Time and extra peak memory of one training step (forward + backward) of a SmolLM2-shaped model, by trainer.

Trainers, on copies of the same randomly initialised model and the same batch (prompt half masked):
  * ``trainer``:      stock ``transformers.Trainer`` (the model's own cross-entropy on materialised logits)
  * ``sft``:          stock TRL ``SFTTrainer`` (TRL's fused LM head, no logits)
  * ``dece``:         ``DeCETrainer`` (fused LM head + DeCE, the default)
  * ``dece_unfused``: ``DeCETrainer(dece_fused_linear=False)`` (DeCE on materialised logits)
  * ``dece_sft``:     ``DeCESFTTrainer`` (TRL's fused head with the DeCE kernel)
  * ``dece_switched``: ``DeCETrainer`` after a ``ContinueWithCE`` switch (``set_loss_override(1, 0)``: plain CE
    through the fused DeCE head), the step a ``dece+continue`` run takes after its switch (opt-in: ``--trainers``)
The model: SmolLM2-135M's shapes (d=576, 9 heads / 3 KV heads, MLP 1536, V=49,152, tied embeddings) with
``--layers`` layers (default 6, so the head is not the whole model). Steps are timed interleaved (one of each
trainer per round), ``--repeats`` rounds after one warm-up round; min and median. Extra peak memory is
measured around one step per trainer as in ``loss_speed.py`` (CUDA: max allocated; CPU: peak RSS).

bf16 runs only where it is fast (CUDA with bf16, or a CPU with AVX512-BF16 / AMX), unless ``--dtypes`` says.

Usage: python benchmarks/train_step.py [--layers 6] [--batch 2] [--seq 256] [--repeats 3] [--dtypes auto]
Writes benchmarks/results/train_step_<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import warnings

import torch
from loss_speed import extra_peak, machine_info, time_interleaved

from dece_trainer.io import write_json

TRAINERS = ("trainer", "sft", "dece", "dece_unfused", "dece_sft")
OPT_IN = ("dece_switched",)


def fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def smollm2_shaped(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def batch_rows(batch: int, seq: int) -> list[dict]:
    """Random token rows; the first half of each is the prompt (masked in ``labels``, 0 in ``completion_mask``)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch):
        ids = torch.randint(3, 49_152, (seq,), generator=generator).tolist()
        half = seq // 2
        rows.append({"input_ids": ids, "attention_mask": [1] * seq, "labels": [-100] * half + ids[half:],
                     "completion_mask": [0] * half + [1] * (seq - half)})
    return rows


def build(name: str, model, rows: list[dict], out_dir: str, bf16: bool, tokenizer):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    common = dict(output_dir=os.path.join(out_dir, name), per_device_train_batch_size=len(rows), report_to=[],
                  use_cpu=not torch.cuda.is_available(), bf16=bf16, save_strategy="no", disable_tqdm=True,
                  dataloader_num_workers=0)
    plain = Dataset.from_list([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])
    if name == "trainer":
        return Trainer(model=model, args=TrainingArguments(**common), train_dataset=plain,
                       data_collator=default_data_collator)
    if name in ("dece", "dece_unfused", "dece_switched"):
        from dece_trainer import DeCETrainer, DeCETrainingArguments

        args = DeCETrainingArguments(**common, dece_alpha_base=0.9, dece_fused_linear=name != "dece_unfused")
        trainer = DeCETrainer(model=model, args=args, train_dataset=plain, data_collator=default_data_collator)
        if name == "dece_switched":
            trainer.set_loss_override(1.0, 0.0)
        return trainer
    sft_data = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]}
                                  for r in rows])
    if name == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=sft_data, processing_class=tokenizer)
    from dece_trainer.integrations.trl import DeCESFTConfig, DeCESFTTrainer

    return DeCESFTTrainer(model=model, args=DeCESFTConfig(**common, dece_alpha_base=0.9), train_dataset=sft_data,
                          processing_class=tokenizer)


def tokenizer_stub():
    """A tokenizer object for SFTTrainer's constructor (the data is already tokenised)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def step_fn(trainer):
    """One forward + backward through the trainer's own ``training_step`` on its first batch."""
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.to(trainer.args.device)
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    count = int((torch.as_tensor(batch["labels"])[:, 1:] != -100).sum()) if "labels" in batch else None

    def step():
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(batch), num_items_in_batch=count)
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="auto", help="auto (fp32, plus bf16 where fast), or e.g. fp32,bf16")
    parser.add_argument("--trainers", default=",".join(TRAINERS),
                        help=f"comma-separated, of {', '.join(TRAINERS + OPT_IN)}")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = (["fp32", "bf16"] if fast_bf16(device) else ["fp32"]) if args.dtypes == "auto" else \
        args.dtypes.split(",")
    names = args.trainers.split(",")
    unknown = sorted(set(names) - set(TRAINERS + OPT_IN))
    if unknown:
        parser.error(f"--trainers: unknown {', '.join(unknown)} (choose from {', '.join(TRAINERS + OPT_IN)})")
    base = smollm2_shaped(args.layers)
    rows = batch_rows(args.batch, args.seq)
    record = {"machine": machine_info(device), "layers": args.layers, "batch": args.batch, "seq": args.seq,
              "repeats": args.repeats, "results": {}}
    with tempfile.TemporaryDirectory() as out_dir:
        for dtype in dtypes:
            trainers = {n: build(n, copy.deepcopy(base), rows, out_dir, dtype == "bf16", tokenizer_stub())
                        for n in names}
            steps = {n: step_fn(t) for n, t in trainers.items()}
            for step in steps.values():  # warm-up round (and the fused path's first-batch check)
                step()
            memory = {}
            for n, step in steps.items():
                memory[n] = {}
                with extra_peak(device, memory[n]):
                    step()
            timing = time_interleaved(steps, args.repeats, device)
            record["results"][dtype] = {n: {**timing[n], **memory[n]} for n in names}
            for n in names:
                r = record["results"][dtype][n]
                print(f"{dtype} {n:13s} min {r['min_s']:.3f} s  median {r['median_s']:.3f} s  "
                      f"extra peak {r['extra_peak_mib']:.0f} MiB", flush=True)
            del trainers, steps
    path = args.json or os.path.join(os.path.dirname(__file__), "results", f"train_step_{device.type}.json")
    write_json(path, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
