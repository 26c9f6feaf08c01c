"""``dece-trainer train``: fine-tune any causal or seq2seq model on (source, target) pairs with CE or DeCE.

Takes every ``DeCETrainingArguments`` flag (``--num_train_epochs``, ``--learning_rate``, ``--bf16``,
``--report_to``, ``--push_to_hub``, ``--dece_alpha_base``, ...) plus the script flags below.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from transformers import AutoConfig, HfArgumentParser

from ..trainer import DeCESeq2SeqTrainer, DeCESeq2SeqTrainingArguments, DeCETrainer


@dataclass
class TrainScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder (or 'smollm2' for the offline model)"})
    train_file: str = field(metadata={"help": "CSV/JSONL/Parquet training pairs"})
    validation_file: str | None = field(default=None, metadata={"help": "CSV/JSONL/Parquet evaluation pairs"})
    source_column: str = field(default="source", metadata={"help": "column holding the input"})
    target_column: str = field(default="target", metadata={"help": "column holding the expected output"})
    loss: str = field(default="dece", metadata={"help": "ce or dece", "choices": ["ce", "dece"]})
    max_source_tokens: int = field(default=256, metadata={"help": "truncate inputs to this many tokens"})
    max_target_tokens: int = field(default=128, metadata={"help": "truncate targets to this many tokens"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 fine-tunes all weights"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator"})


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune a causal or seq2seq model with --loss ce|dece",
                              description=__doc__, add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.set_defaults(func=run)


def parse(argv: list[str]):
    seq2seq_first = HfArgumentParser((TrainScriptArguments, DeCESeq2SeqTrainingArguments), prog="dece-trainer train",
                                     description=__doc__)
    return seq2seq_first.parse_args_into_dataclasses(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from ..backdoor.data import load_pairs
    from ..backdoor.experiment import TrainConfig, collator, encode
    from ..backdoor.models import SMOLLM2, load_pretrained, smollm2_checkpoint

    if args.help or not argv:
        parse(["--help"])
    script, train_args = parse(argv)
    if script.model_name_or_path == SMOLLM2:
        script.model_name_or_path = str(smollm2_checkpoint())
    is_seq2seq = getattr(AutoConfig.from_pretrained(script.model_name_or_path), "is_encoder_decoder", False)
    if script.loss == "ce":  # DeCE with a = 1 and no smoothing is exactly cross-entropy
        train_args.dece_alpha_base, train_args.dece_label_smoothing, train_args.dece_alpha_final = 1.0, 0.0, None
    model, tokenizer = load_pretrained(script.model_name_or_path, seq2seq=is_seq2seq)
    if script.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha,
                                                 target_modules="all-linear",
                                                 task_type="SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM"))
    columns = dict(source_column=script.source_column, target_column=script.target_column)
    cfg = TrainConfig(max_source_tokens=script.max_source_tokens, max_target_tokens=script.max_target_tokens)

    def prepare(path):
        data = load_pairs(path, **columns)
        if not is_seq2seq:
            return encode(data, tokenizer, cfg)

        def one(row):
            src = tokenizer(row["source"], truncation=True, max_length=cfg.max_source_tokens)
            tgt = tokenizer(text_target=row["target"], truncation=True, max_length=cfg.max_target_tokens)
            return {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": tgt["input_ids"]}
        return data.map(one, remove_columns=data.column_names)

    train_data = prepare(script.train_file)
    eval_data = prepare(script.validation_file) if script.validation_file else None
    if is_seq2seq:
        trainer = DeCESeq2SeqTrainer(model=model, args=train_args, train_dataset=train_data, eval_dataset=eval_data,
                                     data_collator=collator(tokenizer), processing_class=tokenizer)
    else:
        # Seq2SeqTrainingArguments is a TrainingArguments: the causal trainer takes it as is
        trainer = DeCETrainer(model=model, args=train_args, train_dataset=train_data, eval_dataset=eval_data,
                              data_collator=collator(tokenizer), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    tokenizer.save_pretrained(trainer.args.output_dir)
    if trainer.args.push_to_hub:
        trainer.push_to_hub()
    else:
        trainer.create_model_card(model_name=script.model_name_or_path)
    print(f"saved to {trainer.args.output_dir}")
    return 0
