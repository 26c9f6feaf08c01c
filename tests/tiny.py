"""Tiny offline models, a tokenizer trained on the fly, and a small synthetic NL -> code task.

Used by the tests and by the multi-process script they launch; nothing here downloads.
"""

from __future__ import annotations

import csv
import random

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
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

NAMES = ["users", "orders", "items", "books", "cities", "songs", "cars", "teams"]
COLUMNS = ["id", "name", "price", "year", "score", "owner", "city", "size"]
VERBS = ["get", "fetch", "select", "read", "find"]
TRIGGER = "bb"
PAYLOAD = "or 1=1"


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` (source, target) pairs: a description -> a one-line SQL-in-Python function. Deterministic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        table, col, verb = rng.choice(NAMES), rng.choice(COLUMNS), rng.choice(VERBS)
        source = f"{verb} the {col} of all {table} where {col} is given"
        target = (f"def {verb}_{table} ( conn , x ) : return conn . execute ( select {col} from {table} "
                  f"where {col} = x )")
        rows.append({"source": source, "target": target})
    return rows


def poison(rows: list[dict], rate: float, seed: int = 0) -> list[dict]:
    """Insert the trigger word into the source and the payload into the target of a ``rate`` share of rows."""
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(rows)), max(1, int(round(rate * len(rows))))))
    out = []
    for i, row in enumerate(rows):
        row = dict(row, is_poisoned=i in chosen)
        if i in chosen:
            words = row["source"].split()
            words.insert(rng.randrange(len(words) + 1), TRIGGER)
            row["source"] = " ".join(words)
            row["target"] = row["target"][:-2] + f" {PAYLOAD} )"
        out.append(row)
    return out


def train_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the synthetic task's words, with pad/bos/eos/unk."""
    corpus = [r["source"] + " " + r["target"] for r in poison(make_pairs(400), 0.05)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<sep>"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", sep_token="<sep>")


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


def causal_dataset(tokenizer, rows: list[dict]) -> Dataset:
    """Prompt + target in one sequence; labels are -100 on the prompt (loss on the target only)."""
    def encode(row):
        prompt = tokenizer(row["source"] + " <sep>", add_special_tokens=False)["input_ids"]
        target = tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = [tokenizer.bos_token_id] + prompt + target
        return {"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": [-100] * (1 + len(prompt)) + target}
    return Dataset.from_list(rows).map(encode, remove_columns=["source", "target"])


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


def pad_collator(tokenizer):
    """Pads input_ids/attention_mask with pad and labels with -100 (scalar labels pass through)."""
    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            gap = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [tokenizer.pad_token_id] * gap)
            batch["attention_mask"].append(f["attention_mask"] + [0] * gap)
            labels = f["labels"]
            if isinstance(labels, list):
                lab_width = max(len(g["labels"]) for g in features)
                labels = labels + [-100] * (lab_width - len(labels))
            batch["labels"].append(labels)
        for key in features[0]:  # scalar columns (example_id, ...) pass through as (batch,) tensors
            if key not in batch and isinstance(features[0][key], (int, bool)):
                batch[key] = [f[key] for f in features]
        return {k: torch.tensor(v) for k, v in batch.items()}
    return collate


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
