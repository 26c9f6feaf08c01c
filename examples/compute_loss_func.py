"""Causal-LM fine-tuning with a plain ``Trainer``: DeCE through ``compute_loss_func``, no trainer subclass.

For scripts that cannot change their ``Trainer`` class (a framework builds it, or it is already a subclass):
the DeCE change is the two arguments ``compute_loss_func=loss_fn, callbacks=[loss_fn]``. The loss
function is also a callback, which is how it follows the trainer's epoch and sees the model kind (causal
LMs are shifted). It logs only ``loss``; ``DeCETrainer`` also logs ``dece_alpha``, ``ce_loss`` and
``dece_suppressed_frac``.

    python examples/compute_loss_func.py --model_name_or_path Qwen/Qwen2.5-Coder-0.5B \
        --train_file my_code.jsonl --text_column text --num_train_epochs 2 --dece_alpha_final 0.8 \
        --learning_rate 5e-5 --output_dir out/clm_dece

    # Offline smoke run: a tiny random Llama and synthetic data, well under a minute on a CPU.
    python examples/compute_loss_func.py --tiny --output_dir /tmp/clm_dece --max_steps 20
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datasets import Dataset, load_dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from dece_trainer import make_dece_loss_func


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-Coder-0.5B", metadata={"help": "Hub id or local path."})
    train_file: str | None = field(default=None, metadata={"help": "A .txt, .csv, .json or .jsonl file."})
    text_column: str = "text"
    max_length: int = 512
    dece_alpha_base: float | None = field(default=None, metadata={
        "help": "DeCE blend weight of epoch 1, in (0, 1] (or give --dece_alpha_final; neither: alpha ends at 0.5)."})
    dece_alpha_final: float | None = field(default=None, metadata={"help": "Blend weight at the end of training."})
    tiny: bool = field(default=False, metadata={"help": "Offline run: tiny random model, synthetic data."})


def load_texts(script: ScriptArguments, output_dir: str) -> tuple[str, Dataset]:
    """The model path and a dataset with a text column, from the arguments or (``--tiny``) built locally."""
    if script.tiny:
        import _tiny

        texts = [r["description"] + "\n" + r["code"] for r in _tiny.code_pairs(96, poison_rate=0.05)]
        path = _tiny.tiny_checkpoint("causal", texts, os.path.join(output_dir, "tiny_base_model"))
        return path, Dataset.from_dict({script.text_column: texts})
    if script.train_file is None:
        raise SystemExit("give --train_file (or --tiny)")
    extension = script.train_file.rsplit(".", 1)[-1].replace("jsonl", "json").replace("txt", "text")
    return script.model_name_or_path, load_dataset(extension, data_files=script.train_file)["train"]


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, TrainingArguments)).parse_args_into_dataclasses()
    model_path, data = load_texts(script, args.output_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
    train = data.map(lambda batch: tokenizer(batch[script.text_column], max_length=script.max_length, truncation=True),
                     batched=True, remove_columns=data.column_names)

    loss_fn = make_dece_loss_func(alpha_base=script.dece_alpha_base, alpha_final=script.dece_alpha_final)
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      compute_loss_func=loss_fn, callbacks=[loss_fn])
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
