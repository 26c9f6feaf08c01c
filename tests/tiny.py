"""Tiny offline models, a tokenizer trained on the fly, and a small synthetic NL -> code task.

Used by the tests and by the multi-process script they launch; nothing here downloads.
"""

from __future__ import annotations

import csv

import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

# The synthetic task, its tokenizer, the causal encoding and the padding collator: one home, shared with the
# benchmark scripts (benchmarks/tiny_task.py, which they import as a sibling module).
from benchmarks.tiny_task import (  # noqa: F401  (re-exported for the tests)
    COLUMNS,
    NAMES,
    PAYLOAD,
    TRIGGER,
    VERBS,
    causal_dataset,
    make_pairs,
    pad_collator,
    poison,
    train_tokenizer,
)


def make_model(kind: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny model: ``llama``, ``gpt2``, ``t5`` or ``bert-cls`` (2 classes)."""
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    common = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **common)
        return LlamaForCausalLM(config)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
        return GPT2LMHeadModel(config)
    if kind == "t5":
        config = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                          decoder_start_token_id=tokenizer.pad_token_id, **common)
        return T5ForConditionalGeneration(config)
    if kind == "bert-cls":
        config = BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=128, num_labels=2,
                            pad_token_id=tokenizer.pad_token_id)
        return BertForSequenceClassification(config)
    raise ValueError(f"unknown tiny model kind {kind!r}")


def seq2seq_dataset(tokenizer, rows: list[dict]) -> Dataset:
    def encode(row):
        src = tokenizer(row["source"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        tgt = tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": src, "attention_mask": [1] * len(src), "labels": tgt}
    return Dataset.from_list(rows).map(encode, remove_columns=["source", "target"])


def classification_dataset(tokenizer, rows: list[dict]) -> Dataset:
    """Label 1 when the source names a table in the first half of ``NAMES``."""
    def encode(row):
        enc = tokenizer(row["source"], add_special_tokens=False)
        label = int(any(name in row["source"].split() for name in NAMES[:4]))
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": label}
    return Dataset.from_list(rows).map(encode, remove_columns=["source", "target"])


def dataset_for(kind: str, tokenizer, rows: list[dict]) -> Dataset:
    if kind in ("llama", "gpt2"):
        return causal_dataset(tokenizer, rows)
    if kind == "t5":
        return seq2seq_dataset(tokenizer, rows)
    return classification_dataset(tokenizer, rows)


def write_rows(path, rows: list[tuple[str, str]]) -> str:
    """A (src, tgt) CSV file of ``rows``, as the released benchmarks lay them out; returns its path."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["src", "tgt"])
        writer.writerows(rows)
    return str(path)


def training_args(tmp_path, name: str = "out", *, cls=None, seq2seq: bool = False, **overrides):
    """Training arguments for a quick CPU run writing to ``tmp_path / name``: no reports, no checkpoints, no progress
    bar, seed 0, then ``overrides``. The class is ``cls``, else ``DeCETrainingArguments`` (with ``seq2seq``,
    ``DeCESeq2SeqTrainingArguments``); ``dece_*`` overrides are left out for a class without them (a plain
    ``TrainingArguments`` or ``SFTConfig`` baseline beside a DeCE run), so one preset serves both."""
    import dataclasses

    from dece_trainer import DeCESeq2SeqTrainingArguments, DeCETrainingArguments

    cls = cls or (DeCESeq2SeqTrainingArguments if seq2seq else DeCETrainingArguments)
    fields = {f.name for f in dataclasses.fields(cls)}
    base = dict(output_dir=str(tmp_path / name), report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                seed=0)
    base.update({k: v for k, v in overrides.items() if k in fields or not k.startswith("dece_")})
    return cls(**base)
