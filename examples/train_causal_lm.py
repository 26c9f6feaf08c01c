"""Fine-tune a causal code LM on (source, target) pairs with DeCE; the usual HfArgumentParser script.

    python examples/train_causal_lm.py \
        --model_name_or_path HuggingFaceTB/SmolLM2-135M --train_file ../shared/data/lyra/train_poisoned_5_badpre.csv \
        --source_column src --target_column tgt --output_dir out/smollm2-dece \
        --num_train_epochs 3 --per_device_train_batch_size 8 --learning_rate 1e-4 \
        --dece_alpha_base 0.9 --lora_r 16

The only line that differs from a cross-entropy script is ``DeCETrainer`` (and ``DeCETrainingArguments``
for the ``--dece_*`` flags). Loss is taken on the target tokens only.
"""

from dataclasses import dataclass, field

from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser

from dece_trainer import DeCETrainer, DeCETrainingArguments


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local directory of a causal LM."})
    train_file: str = field(metadata={"help": "CSV or JSON Lines file of training pairs."})
    validation_file: str | None = field(default=None, metadata={"help": "Optional CSV/JSONL for evaluation."})
    source_column: str = field(default="source", metadata={"help": "Column holding the prompt."})
    target_column: str = field(default="target", metadata={"help": "Column holding the expected output."})
    max_length: int = field(default=512, metadata={"help": "Truncate prompt + target to this many tokens."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 fine-tunes all weights."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})


def load_pairs(path: str):
    kind = "json" if path.endswith((".jsonl", ".json")) else "csv"
    return load_dataset(kind, data_files=path, split="train")


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DeCETrainingArguments)).parse_args_into_dataclasses()
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    if script.lora_r > 0:
        model = get_peft_model(model, LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))

    def encode(row):
        prompt = tokenizer(row[script.source_column] + "\n", add_special_tokens=True)["input_ids"]
        target = tokenizer(row[script.target_column], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + target)[: script.max_length]
        labels = ([-100] * len(prompt) + target)[: script.max_length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    train = load_pairs(script.train_file)
    train = train.map(encode, remove_columns=train.column_names)
    valid = None
    if script.validation_file:
        valid = load_pairs(script.validation_file)
        valid = valid.map(encode, remove_columns=valid.column_names)

    trainer = DeCETrainer(model=model, args=args, train_dataset=train, eval_dataset=valid,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    if args.push_to_hub:
        trainer.push_to_hub()
    else:
        trainer.create_model_card(model_name=args.output_dir)


if __name__ == "__main__":
    main()
