"""Supervised fine-tuning of a decoder code LM with LoRA and TRL, defended by DeCE.

A TRL SFT script with prompt-completion data (the loss is on the completion only); the DeCE change is the
class pair ``DeCESFTConfig``/``DeCESFTTrainer`` in place of ``SFTConfig``/``SFTTrainer``, which also adds the
``--dece_*`` flags.

    pip install 'dece-trainer[trl]'
    # Lyra (NL -> Python with embedded SQL), as released poisoned with BadPre by the DeCE paper:
    python examples/sft_lora.py --model_name_or_path Qwen/Qwen2.5-Coder-0.5B \
        --train_file lyra/train_poisoned_5_badpre.csv --prompt_column src --completion_column tgt \
        --num_train_epochs 3 --dece_alpha_final 0.8 --learning_rate 2e-4 --output_dir out/sft_lora

    # Offline smoke run: a tiny random model and synthetic data, well under a minute on a CPU. (DeCESFTConfig turns
    # bf16 on only where a GPU supports it, so no --bf16 false is needed on a CPU-only machine.)
    python examples/sft_lora.py --tiny --output_dir /tmp/sft_lora --max_steps 20 --learning_rate 3e-3
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datasets import Dataset, load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from dece_trainer.integrations.trl import DeCESFTConfig, DeCESFTTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-Coder-0.5B", metadata={"help": "Hub id or local path."})
    train_file: str | None = field(default=None, metadata={"help": "A .csv, .json or .jsonl file of pairs."})
    prompt_column: str = "src"
    completion_column: str = "tgt"
    separator: str = field(default="\n", metadata={"help": "Appended to each prompt, before the completion."})
    lora_r: int = 16
    tiny: bool = field(default=False, metadata={"help": "Offline run: tiny random model, synthetic data."})


def load_pairs(script: ScriptArguments, output_dir: str) -> tuple[str, Dataset]:
    """The model path and a prompt-completion dataset, from the arguments or (``--tiny``) built locally."""
    if script.tiny:
        import _tiny

        rows = _tiny.code_pairs(96, poison_rate=0.05)
        path = _tiny.tiny_checkpoint("causal", [r["description"] + " " + r["code"] for r in rows],
                                     os.path.join(output_dir, "tiny_base_model"))
        return path, Dataset.from_list([{"prompt": r["description"] + script.separator, "completion": r["code"]}
                                        for r in rows])
    if script.train_file is None:
        raise SystemExit("give --train_file (or --tiny)")
    extension = script.train_file.rsplit(".", 1)[-1].replace("jsonl", "json")
    data = load_dataset(extension, data_files=script.train_file)["train"]
    data = data.map(lambda row: {"prompt": row[script.prompt_column] + script.separator,
                                 "completion": row[script.completion_column]}, remove_columns=data.column_names)
    return script.model_name_or_path, data


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DeCESFTConfig)).parse_args_into_dataclasses()
    model_path, train = load_pairs(script, args.output_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
    peft_config = LoraConfig(r=script.lora_r, lora_alpha=2 * script.lora_r, lora_dropout=0.05,
                             target_modules="all-linear", task_type="CAUSAL_LM")

    trainer = DeCESFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             peft_config=peft_config)
    result = trainer.train()
    trainer.save_model()  # the LoRA adapter
    trainer.log_metrics("train", result.metrics)
    trainer.save_state()
    last = [e for e in trainer.state.log_history if "dece_alpha" in e][-1:]
    if last:
        print(f"last log: loss {last[0]['loss']:.4f}, plain CE {last[0]['ce_loss']:.4f}, "
              f"alpha {last[0]['dece_alpha']:.4f}, suppressed {last[0]['dece_suppressed_frac']:.2%}")


if __name__ == "__main__":
    main()
