"""Probe sets evaluated during training: target NLL, and from greedy generations ASR and BLEU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ops.token_ce import token_cross_entropy
from ..trainer.alignment import CAUSAL, SEQ2SEQ, align_targets, decoder_input_ids_from_labels, logits_of

PROBE_COLUMNS = ("input_ids", "labels")


def check_probes(probes: Any) -> dict[str, Any]:
    """Probes must be ``{name: datasets.Dataset}`` with ``input_ids`` and ``labels`` (tokenised like training)."""
    if probes is None:
        return {}
    if not isinstance(probes, dict):
        raise ValueError(f"`probes` must be a dict of name -> datasets.Dataset, got {type(probes).__name__}")
    for name, data in probes.items():
        columns = getattr(data, "column_names", None)
        if columns is None or not hasattr(data, "__len__"):
            raise ValueError(f"probe {name!r} must be a datasets.Dataset, got {type(data).__name__}")
        missing = [c for c in PROBE_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"probe {name!r} lacks column(s) {missing}: probes need {list(PROBE_COLUMNS)}, "
                             "tokenised like the training data (labels -100 on the prompt)")
        if len(data) == 0:
            raise ValueError(f"probe {name!r} is empty")
    return dict(probes)


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows])


@torch.no_grad()
def probe_nll(model: nn.Module, data: Any, kind: str, pad_id: int, batch_size: int = 16) -> float:
    """Mean target-token negative log-likelihood (nats) of the probe under ``model``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        rows = data[start:start + batch_size]
        ids = _pad(rows["input_ids"], pad_id).to(device)
        labels = _pad(rows["labels"], -100).to(device)
        inputs = {"input_ids": ids, "attention_mask": _pad([[1] * len(r) for r in rows["input_ids"]], 0).to(device)}
        if kind == SEQ2SEQ:
            inputs["decoder_input_ids"] = decoder_input_ids_from_labels(model, labels)
        logits = logits_of(model(**inputs), model)
        out = token_cross_entropy(logits, align_targets(logits, labels, kind))
        total += float(out.token_ce.sum())
        count += int(out.mask.sum())
    return total / max(count, 1)


@torch.no_grad()
def probe_generate(model: nn.Module, tokenizer: Any, data: Any, kind: str, limit: int, max_new_tokens: int,
                   batch_size: int = 16) -> tuple[list[str], list[str]]:
    """Greedy generations and references (decoded targets) for the first ``limit`` probe rows."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generations, references = [], []
    for start in range(0, min(limit, len(data)), batch_size):
        rows = data[start:min(start + batch_size, limit)]
        prompts, targets = [], []
        for ids, labels in zip(rows["input_ids"], rows["labels"]):
            target = [t for t in labels if t != -100]
            if kind == CAUSAL:
                first = next((i for i, t in enumerate(labels) if t != -100), len(labels))
                prompts.append(list(ids[:first]))
            else:
                prompts.append(list(ids))
            targets.append(target)
        left = kind == CAUSAL  # decoder-only models continue from the right end
        ids = _pad(prompts, pad_id, left=left).to(device)
        mask = _pad([[1] * len(p) for p in prompts], 0, left=left).to(device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad_id)
        new = out[:, ids.shape[1]:] if kind == CAUSAL else out
        generations += tokenizer.batch_decode(new, skip_special_tokens=True)
        references += tokenizer.batch_decode(targets, skip_special_tokens=True)
    return generations, references
