"""Line up a model's logits with its labels: which models shift, how encoder-decoders get decoder inputs."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_choice
from ._compat import loss_kind_of

logger = logging.getLogger(__name__)

CAUSAL, SEQ2SEQ, OTHER = "causal", "seq2seq", "other"
MODEL_KINDS = (CAUSAL, SEQ2SEQ, OTHER)
AUTO = "auto"


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP/FSDP/accelerate and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_kind(model: nn.Module, override: str = AUTO) -> str:
    """How ``model``'s logits line up with its labels, decided as transformers decides it.

    ``"seq2seq"``: an encoder-decoder (``config.is_encoder_decoder``), no shift; ``"causal"``: the model's
    ``loss_type`` maps to ``ForCausalLMLoss`` (logits at i predict labels[i + 1]); ``"other"``: another known
    loss (sequence / token classification: logits line up with labels). A model that declares no known
    ``loss_type`` (a custom class) is guessed from whether it can generate, with a warning; ``override``
    (``dece_model_kind``) skips the decision.
    """
    override = check_choice(override, (AUTO, *MODEL_KINDS), "dece_model_kind")
    if override != AUTO:
        return override
    model = base_model(model)
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return SEQ2SEQ
    kind = loss_kind_of(model)
    if kind is not None:
        return kind
    can_generate = getattr(model, "can_generate", None)
    guess = CAUSAL if callable(can_generate) and can_generate() else OTHER
    logger.warning("%s declares no loss_type that transformers knows, so DeCE guesses it is %r (%s). If that is "
                   "wrong, set `dece_model_kind` to one of %s.", type(model).__name__, guess,
                   "labels are shifted by one" if guess == CAUSAL else "logits line up with labels", MODEL_KINDS)
    return guess


def decoder_input_ids_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Right-shifted decoder inputs for an encoder-decoder whose labels were taken from its inputs.

    Uses the model's ``prepare_decoder_input_ids_from_labels`` when it has one, else shifts right with
    ``config.decoder_start_token_id`` and replaces -100 by ``config.pad_token_id``.
    """
    model = base_model(model)
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    if start is None or pad is None:
        raise ValueError(
            f"{type(model).__name__} has no `prepare_decoder_input_ids_from_labels` and its config lacks "
            "`decoder_start_token_id`/`pad_token_id`: pass `decoder_input_ids` in the batch (e.g. "
            "DataCollatorForSeq2Seq(tokenizer, model=model))."
        )
    shifted = labels.new_full(labels.shape, start)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, pad)


def expected_classes(model: nn.Module | None) -> set[int]:
    """Sizes the last dimension of ``model``'s logits may have. Language models (encoder-decoders, causal LMs as
    transformers knows them, models with output embeddings): the vocabulary (``config.vocab_size``, the rows of
    the output embeddings). Classifiers (another known loss): ``config.num_labels``. Other models: either. Empty
    when unknown (no config)."""
    if model is None:
        return set()
    model = base_model(model)
    config = getattr(model, "config", None)

    def positive(value: Any) -> set[int]:
        return {value} if isinstance(value, int) and not isinstance(value, bool) and value > 1 else set()

    get_output = getattr(model, "get_output_embeddings", None)
    try:
        head = get_output() if callable(get_output) else None
    except (AttributeError, NotImplementedError):
        head = None
    vocab = positive(getattr(config, "vocab_size", None))
    if head is not None:
        vocab |= positive(getattr(head, "out_features", None))
    labels = positive(getattr(config, "num_labels", None))
    kind = loss_kind_of(model)
    if getattr(config, "is_encoder_decoder", False) or kind == CAUSAL or head is not None:
        return vocab
    if kind is not None:
        return labels
    return vocab | labels


def logits_of(outputs: Any, model: nn.Module | None = None) -> torch.Tensor:
    """The logits of a model output, taken by name, or a clear error; never a guess.

    A ``ModelOutput`` or dict must hold a ``logits`` tensor. A plain tuple or list (``return_dict=False``, custom
    models) is accepted only when exactly one of its tensors has a last dimension equal to ``model``'s vocabulary
    size or ``num_labels`` (see `expected_classes`); otherwise the model must return a ``ModelOutput`` or a
    dict with ``logits``.
    """
    if isinstance(outputs, dict):
        logits = outputs.get("logits")
        if isinstance(logits, torch.Tensor):
            return logits
        raise ValueError(
            f"DeCE needs the model's logits, but its output has none (got keys {list(outputs.keys())}). Fused-loss "
            "kernels that skip logits (e.g. `use_liger_kernel=True`) cannot be combined with DeCE; a custom model "
            "must return a ModelOutput or dict with a `logits` entry."
        )
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if not isinstance(outputs, (tuple, list)):
        raise ValueError(f"DeCE needs the model's logits, but the model returned a {type(outputs).__name__}: "
                         "return a ModelOutput or dict with a `logits` entry.")
    sizes = expected_classes(model)
    tensors = [t for t in outputs if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.is_floating_point()]
    matches = [t for t in tensors if t.shape[-1] in sizes]
    if len(matches) == 1:
        return matches[0]
    shapes = [tuple(t.shape) for t in tensors]
    expected = f"one of {sorted(sizes)}" if sizes else "unknown (the model declares no config.vocab_size/num_labels)"
    raise ValueError(
        f"The model returned a plain {type(outputs).__name__} of tensors shaped {shapes}, and DeCE cannot tell which "
        f"one holds the logits ({len(matches)} have a last dimension equal to the number of classes, {expected}). "
        "Return a ModelOutput or a dict with a `logits` entry (for transformers models: leave `return_dict` on)."
    )


def align_targets(logits: torch.Tensor, labels: torch.Tensor | None, kind: str,
                  shift_labels: torch.Tensor | None = None, ignore_index: int = -100) -> torch.Tensor:
    """Targets shaped like ``logits.shape[:-1]``.

    Causal LMs: ``shift_labels`` when a (padding-free) collator provides them, else labels shifted left
    by one with ``ignore_index`` appended, so the logits stay contiguous and are never copied.
    """
    if shift_labels is not None:
        return shift_labels
    if labels is None:
        raise ValueError("DeCE needs `labels` (or `shift_labels`) in every training batch; this batch has none. "
                         "Check your data collator and `remove_unused_columns`.")
    if kind == CAUSAL:
        return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return labels
