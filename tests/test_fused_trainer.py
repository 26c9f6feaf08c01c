"""The fused LM-head path of DeCETrainer: the same update as the unfused path, never a (tokens x V) tensor, and
a clean fall-back with one warning where a model's head is not what it looks like."""

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dece_trainer import DeCETrainer, DeCETrainingArguments
from dece_trainer.trainer import fused_head
from tests import tiny
from tests.test_parity import assert_same_weights, sgd_args, varied_rows


def run(tmp_path, tokenizer, name, kind="llama", lora=False, **overrides):
    model = tiny.make_model(kind, tokenizer)
    if lora:
        from tests.test_trainer import lora_wrap

        model = lora_wrap(model, kind)
    trainer = DeCETrainer(model=model, args=sgd_args(tmp_path, name, **overrides),
                          train_dataset=tiny.causal_dataset(tokenizer, varied_rows(24)),
                          data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    return trainer


def logged(trainer, key):
    return [e[key] for e in trainer.state.log_history if key in e]


@pytest.mark.parametrize("kind,lora,ga", [("llama", False, 1), ("gpt2", False, 1), ("llama", True, 1),
                                          ("llama", False, 4)], ids=["llama", "gpt2-tied", "llama-lora", "llama-ga4"])
def test_fused_path_gives_the_unfused_update(tmp_path, tokenizer, kind, lora, ga):
    layout = dict(per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga)
    fused = run(tmp_path, tokenizer, "fused", kind, lora, **layout)
    plain = run(tmp_path, tokenizer, "plain", kind, lora, dece_fused_linear=False, **layout)
    assert fused._dece_fused and not plain._dece_fused
    assert logged(fused, "loss") == pytest.approx(logged(plain, "loss"), rel=1e-5)
    assert logged(fused, "ce_loss") == pytest.approx(logged(plain, "ce_loss"), rel=1e-5)
    assert_same_weights(fused.model, plain.model, atol=1e-5)


class LargestVocabTensor(TorchDispatchMode):
    """Records the most rows of any (..., V) tensor an aten op produces: logits, probabilities, their gradient."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_the_fused_step_never_builds_the_logits(tmp_path, tokenizer, fused, monkeypatch):
    """A training step's largest tensor: the (B, T, V) logits on the unfused path, a chunk on the fused one (the
    chunk budget is cut to 16 rows' worth here, as a large vocabulary cuts it in real runs)."""
    from dece_trainer.ops import dece_loss

    monkeypatch.setattr(dece_loss, "CPU_CHUNK_BYTES", 16 * 4 * len(tokenizer))
    monkeypatch.setattr(dece_loss, "CPU_CHUNK_ROWS", 16)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer),
                          args=sgd_args(tmp_path, "x", max_steps=1, dece_fused_linear=fused),
                          train_dataset=tiny.causal_dataset(tokenizer, varied_rows(8)),
                          data_collator=tiny.pad_collator(tokenizer))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    count = int((batch["labels"][:, 1:] != -100).sum())
    trainer.compute_loss(trainer.model, batch, num_items_in_batch=count)  # the first fused batch is checked
    tokens = batch["input_ids"].numel()
    with LargestVocabTensor(len(tokenizer)) as mode:
        trainer.compute_loss(trainer.model, batch, num_items_in_batch=count).backward()
    if fused:
        assert mode.rows <= 2 * 16 < tokens / 5, (mode.rows, tokens)  # a chunk's work buffers, not N
    else:
        assert mode.rows >= tokens


def test_a_head_that_does_not_match_falls_back_with_one_warning(tmp_path, tokenizer, monkeypatch, caplog):
    monkeypatch.setattr(fused_head, "logit_transform", lambda config: (0.5, None))  # a transform the model lacks
    with caplog.at_level(logging.WARNING):
        trainer = run(tmp_path, tokenizer, "wrong")
    plain = run(tmp_path, tokenizer, "plain", dece_fused_linear=False)
    assert not trainer._dece_fused
    assert sum("falls back to the full logits" in r.getMessage() for r in caplog.records) == 1
    assert logged(trainer, "loss") == pytest.approx(logged(plain, "loss"), rel=1e-5)


def test_an_unrecognised_head_is_named(tmp_path, tokenizer, caplog):
    model = tiny.make_model("llama", tokenizer)
    model.lm_head = torch.nn.Sequential(model.lm_head)  # not a plain Linear
    with caplog.at_level(logging.WARNING):
        trainer = DeCETrainer(model=model, args=sgd_args(tmp_path, "seq"), data_collator=tiny.pad_collator(tokenizer),
                              train_dataset=tiny.causal_dataset(tokenizer, varied_rows(8)))
    assert not trainer._dece_fused
    assert any("output embedding is a Sequential" in r.getMessage() for r in caplog.records)


def test_generation_is_unchanged_by_the_wrapped_forward(tokenizer):
    model = tiny.make_model("llama", tokenizer).eval()
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    before = model.generate(ids, max_new_tokens=5, do_sample=False)
    fused_head.install(model)
    fused_head.install(model)  # idempotent
    torch.testing.assert_close(model.generate(ids, max_new_tokens=5, do_sample=False), before)


def test_the_switch_is_a_training_argument():
    assert DeCETrainingArguments(output_dir="x", dece_fused_linear=False).dece_fused_linear is False
    with pytest.raises(ValueError, match="dece_fused_linear"):
        from dece_trainer import DeCESettings

        DeCESettings(fused_linear="yes")
