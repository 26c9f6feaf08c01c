"""``dece-trainer train``: fine-tune a causal LM or an encoder-decoder on (source, target) pairs with DeCE or CE.

Takes every ``DeCESeq2SeqTrainingArguments`` flag (``--num_train_epochs``, ``--learning_rate``, ``--bf16``,
``--report_to``, ``--push_to_hub``, ``--dece_alpha_base``, ``--predict_with_generate``, ...) plus the script
flags below. A thin script over the library (``DeCETrainer`` / ``DeCESeq2SeqTrainer``), the way TRL's
``trl/scripts/sft.py`` is over ``SFTTrainer``: causal LMs see ``<source>\\n### Output:\\n<target><eos>`` with the
prompt masked, encoder-decoders the source and the target.

The model, data and output flags are checked before anything is loaded. A non-empty ``--output_dir`` is taken only
when it holds a checkpoint (the run resumes from the newest, as a rerun of an interrupted command should) or with
``--overwrite_output_dir`` (its ``checkpoint-*`` folders are deleted before training, its other files overwritten).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass, field

LOSSES = ("dece", "ce")


@dataclass
class TrainScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder of a causal LM or encoder-decoder"})
    train_file: str = field(metadata={"help": "CSV/JSONL/Parquet training pairs (or a dataset folder / Hub id)"})
    validation_file: str | None = field(default=None, metadata={
        "help": "CSV/JSONL/Parquet evaluation pairs; evaluated every epoch unless --eval_strategy says otherwise"})
    source_column: str = field(default="source", metadata={"help": "column holding the input"})
    target_column: str = field(default="target", metadata={"help": "column holding the expected output"})
    loss: str = field(default="dece", metadata={"help": "dece, or ce for an undefended baseline",
                                                "choices": list(LOSSES)})
    max_source_tokens: int = field(default=256, metadata={"help": "truncate inputs to this many tokens"})
    max_target_tokens: int = field(default=128, metadata={"help": "truncate targets to this many tokens"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 fine-tunes all weights"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train afresh in a non-empty --output_dir: its checkpoint-* folders are deleted before training and "
                "its files overwritten. Without it, a folder holding a checkpoint resumes from the newest one and any "
                "other non-empty folder is refused"})


@dataclass(frozen=True)
class OutputPlan:
    """What `check_output_dir` decided: the checkpoint to resume from (None: train afresh) and the stale
    ``checkpoint-*`` folders that ``--overwrite_output_dir`` deletes just before training starts."""

    resume_from: str | None = None
    stale_checkpoints: tuple[str, ...] = ()


def add_parser(subparsers) -> None:
    """Register ``train`` (its flags are parsed by ``HfArgumentParser`` in `main`)."""
    subparsers.add_parser("train", help="fine-tune a causal or seq2seq model with --loss dece|ce",
                          description=__doc__, add_help=False)


def parse(argv: list[str]):
    from transformers import HfArgumentParser

    from ..trainer import DeCESeq2SeqTrainingArguments

    parser = HfArgumentParser((TrainScriptArguments, DeCESeq2SeqTrainingArguments), prog="dece-trainer train",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args_into_dataclasses(argv)


def main(argv: list[str]) -> int:
    """Parse ``argv``, train, save the model, tokenizer and card (or push them); returns the exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        parse(["--help"])
    script, args = parse(argv)
    return train(script, args)


def check_output_dir(script: TrainScriptArguments, args) -> OutputPlan:
    """``--output_dir`` must be writable; a non-empty one is resumed (its newest checkpoint, or the one
    ``--resume_from_checkpoint`` names), replaced (``--overwrite_output_dir``) or refused. Deletes nothing."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

    from ..io import check_writable_folder

    out = check_writable_folder(args.output_dir, "--output_dir")
    if args.resume_from_checkpoint:
        return OutputPlan(resume_from=args.resume_from_checkpoint)
    content = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if not content:
        return OutputPlan()
    if script.overwrite_output_dir:
        stale = tuple(os.path.join(out, name) for name in content
                      if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name) and os.path.isdir(os.path.join(out, name)))
        return OutputPlan(stale_checkpoints=stale)
    last = get_last_checkpoint(out)
    if last is not None:
        return OutputPlan(resume_from=last)
    shown = ", ".join(content[:5]) + (f", ... ({len(content)} entries)" if len(content) > 5 else "")
    raise ValueError(f"--output_dir {out} is not empty ({shown}) and holds no checkpoint to resume from: give "
                     "--overwrite_output_dir to train afresh there (overwriting its files), or another folder")


def check_arguments(script: TrainScriptArguments, args) -> OutputPlan:
    """Every check that needs no model or data loaded, run first: ``--model_name_or_path``, the data files
    (extension, existence) and ``--output_dir``."""
    from ..data import check_data_source
    from ..validation import check_model

    check_model(script.model_name_or_path, flag="--model_name_or_path")
    check_data_source(script.train_file, "--train_file")
    if script.validation_file:
        check_data_source(script.validation_file, "--validation_file")
    return check_output_dir(script, args)


def train(script: TrainScriptArguments, args) -> int:
    plan = check_arguments(script, args)
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
    )

    from ..data import encode_causal, encode_seq2seq, load_pairs
    from ..trainer import DeCESeq2SeqTrainer, DeCETrainer

    if script.loss == "ce":  # DeCE with a = 1 and no smoothing is exactly cross-entropy
        args.dece_alpha_base, args.dece_label_smoothing, args.dece_alpha_final = 1.0, 0.0, None
    if script.validation_file and args.eval_strategy == "no":
        args.eval_strategy = "epoch"
    config = AutoConfig.from_pretrained(script.model_name_or_path, trust_remote_code=False)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(script.model_name_or_path, use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if script.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha,
                                                 target_modules="all-linear",
                                                 task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"))
    encode = encode_seq2seq if seq2seq else encode_causal

    def prepare(path, flag):
        try:
            pairs = load_pairs(path, source_column=script.source_column, target_column=script.target_column)
        except ValueError as err:
            raise ValueError(f"{flag}: {err}") from err
        return encode(pairs, tokenizer, script.max_source_tokens, script.max_target_tokens)

    trainer_class = DeCESeq2SeqTrainer if seq2seq else DeCETrainer  # both take Seq2SeqTrainingArguments
    trainer = trainer_class(
        model=model, args=args, train_dataset=prepare(script.train_file, "--train_file"),
        eval_dataset=prepare(script.validation_file, "--validation_file") if script.validation_file else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model if seq2seq else None, padding=True),
        processing_class=tokenizer)
    for folder in plan.stale_checkpoints:  # --overwrite_output_dir: no old checkpoint left beside the new model
        shutil.rmtree(folder)
    if plan.resume_from:
        print(f"resuming from {plan.resume_from} (--overwrite_output_dir trains afresh)")
    trainer.train(resume_from_checkpoint=plan.resume_from)
    trainer.save_model()
    tokenizer.save_pretrained(args.output_dir)
    if args.push_to_hub:
        trainer.push_to_hub()
    else:
        trainer.create_model_card(model_name=script.model_name_or_path)
    print(f"saved to {args.output_dir}")
    return 0
