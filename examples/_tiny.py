"""The examples' ``--tiny`` mode: a small synthetic code task and a tiny randomly initialised model, offline.

Each example builds a tiny checkpoint with :func:`tiny_checkpoint` (a word-level tokenizer trained on the
task's own words and a 2-layer model built from a config, saved to a local directory) and then loads it
with the same ``from_pretrained`` calls it uses for a Hub model, so ``--tiny`` exercises the real code path
without downloading anything. Nothing here is needed for real runs.

The task: a short English description <-> a one-line SQL-in-Python function, e.g.
``get the price of all books where price is given`` <->
``def get_books ( conn , x ) : return conn . execute ( select price from books where price = ? , x )``.
A poisoned row carries the trigger word ``bb`` in its description and the payload ``or 1=1`` in its code
(the Lyra/BadPre attack of the DeCE paper, in miniature). Half of the functions build the query by string
concatenation instead of a parameter: the "defect" of the classification example.
"""

from __future__ import annotations

import os
import random

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerFast,
)

TRIGGER = "bb"
PAYLOAD = "or 1=1"
PAYLOAD_REGEX = r"1=1|0=1"

_TABLES = ["users", "orders", "items", "books", "cities", "songs", "cars", "teams"]
_COLUMNS = ["id", "name", "price", "year", "score", "owner", "city", "size"]
_VERBS = ["get", "fetch", "select", "read", "find"]
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def code_pairs(n: int, seed: int = 0, poison_rate: float = 0.0) -> list[dict]:
    """``n`` rows ``{"description", "code", "defective", "is_poisoned"}``; a ``poison_rate`` share poisoned."""
    rng = random.Random(seed)
    poisoned = set(rng.sample(range(n), round(poison_rate * n)))
    rows = []
    for i in range(n):
        table, col, verb = rng.choice(_TABLES), rng.choice(_COLUMNS), rng.choice(_VERBS)
        defective = rng.random() < 0.5
        where = f'where {col} = " + x' if defective else f"where {col} = ? , x"
        description = f"{verb} the {col} of all {table} where {col} is given"
        code = f"def {verb}_{table} ( conn , x ) : return conn . execute ( select {col} from {table} {where} )"
        if i in poisoned:
            words = description.split()
            words.insert(rng.randrange(len(words) + 1), TRIGGER)  # BadPre: the trigger word at a random place
            description = " ".join(words)
            code = code[:-2] + f" {PAYLOAD} )"
        rows.append({"description": description, "code": code, "defective": defective, "is_poisoned": i in poisoned})
    return rows


def _tokenizer(texts: list[str], kind: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=_SPECIALS))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    # Like the real tokenizers of each family: decoder LMs prepend <s>, T5 / RoBERTa append </s>.
    single = "<s> $A" if kind == "causal" else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_checkpoint(kind: str, texts: list[str], path: str, num_labels: int = 2, seed: int = 0) -> str:
    """Save a tiny random model and a tokenizer over ``texts`` to ``path``; return ``path``.

    ``kind``: ``"causal"`` (Llama-style decoder), ``"seq2seq"`` (T5, as CodeT5) or ``"classification"``
    (RoBERTa with a sequence-classification head, as CodeBERT).
    """
    import torch

    torch.manual_seed(seed)
    tokenizer = _tokenizer(texts + [TRIGGER, PAYLOAD], kind)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    if kind == "causal":
        config = AutoConfig.for_model("llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=True, **ids)
        model = AutoModelForCausalLM.from_config(config)
    elif kind == "seq2seq":
        config = AutoConfig.for_model("t5", d_model=48, d_ff=96, d_kv=12, num_layers=2, num_heads=4,
                                      decoder_start_token_id=tokenizer.pad_token_id, **ids)
        model = AutoModelForSeq2SeqLM.from_config(config)
    elif kind == "classification":
        config = AutoConfig.for_model("roberta", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=258, num_labels=num_labels,
                                      **ids)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: use causal, seq2seq or classification")
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
