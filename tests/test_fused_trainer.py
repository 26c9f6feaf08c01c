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
    from dece_trainer.ops import chunks

    monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", 16 * 4 * len(tokenizer))
    monkeypatch.setattr(chunks, "CPU_CHUNK_ROWS", 16)
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


def test_a_fused_step_leaves_the_model_as_it_was(tmp_path, tokenizer):
    """The backbone hook lives for one call: no hook, attribute or forward is left on the model, and generation
    is unchanged."""
    model = tiny.make_model("llama", tokenizer)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    before = model.eval().generate(ids, max_new_tokens=5, do_sample=False)
    attributes = set(vars(model))
    trainer = DeCETrainer(model=model, args=sgd_args(tmp_path, "x", max_steps=1),
                          train_dataset=tiny.causal_dataset(tokenizer, varied_rows(8)),
                          data_collator=tiny.pad_collator(tokenizer))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()
    for _ in range(2):  # the checked first batch, then a plain fused step
        trainer.compute_loss(model, batch, num_items_in_batch=int((batch["labels"][:, 1:] != -100).sum())).backward()
    assert trainer._dece_fused and set(vars(model)) == attributes
    assert not any(m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model.eval().generate(ids, max_new_tokens=5, do_sample=False), before)


def test_the_switch_is_a_training_argument():
    assert DeCETrainingArguments(output_dir="x", dece_fused_linear=False).dece_fused_linear is False
    with pytest.raises(ValueError, match="dece_fused_linear"):
        from dece_trainer import DeCESettings

        DeCESettings(fused_linear="yes")


# ---- the user's model is left as it was (issue 18) ---------------------------------------------------------------

def trainer_for(tmp_path, tokenizer, model, name="t", **overrides):
    return DeCETrainer(model=model, args=sgd_args(tmp_path, name, **overrides),
                       train_dataset=tiny.causal_dataset(tokenizer, varied_rows(24)),
                       data_collator=tiny.pad_collator(tokenizer))


def sample_ids(tokenizer):
    return torch.tensor([[tokenizer.bos_token_id, 5, 6, 7, 8]])


def fresh_copy(tokenizer, model):
    """A new tiny Llama holding ``model``'s weights: what ``model`` should compute."""
    clone = tiny.make_model("llama", tokenizer, seed=1)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


@pytest.mark.parametrize("trained", [False, True], ids=["built", "trained"])
def test_deepcopy_of_model_computes_with_its_own_weights(tmp_path, tokenizer, trained):
    import copy

    model = tiny.make_model("llama", tokenizer)
    trainer = trainer_for(tmp_path, tokenizer, model)
    if trained:
        trainer.train()
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
        logits = twin(sample_ids(tokenizer)).logits
    assert torch.count_nonzero(logits) == 0  # the copy's own (zero) weights, not the original's
    assert trainer.model is model and "forward" not in vars(model)  # nothing installed on the user's model


def test_second_stage_on_copy_trains_the_copy(tmp_path, tokenizer):
    import copy

    first = tiny.make_model("llama", tokenizer)
    trainer_for(tmp_path, tokenizer, first, "stage1").train()
    second = copy.deepcopy(first)
    trainer_for(tmp_path, tokenizer, second, "stage2").train()
    second.eval()
    ids = sample_ids(tokenizer)
    with torch.no_grad():
        assert not torch.allclose(second(ids).logits, first.eval()(ids).logits)  # stage 2 moved the copy
        torch.testing.assert_close(second(ids).logits, fresh_copy(tokenizer, second)(ids).logits)
        torch.testing.assert_close(second.generate(ids, max_new_tokens=4, do_sample=False),
                                   fresh_copy(tokenizer, second).generate(ids, max_new_tokens=4, do_sample=False))


class LogitsDoubledInTraining(tiny.LlamaForCausalLM):
    """A subclass whose forward changes the logits in training only (the first-batch check runs in eval mode)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if self.training:
            out.logits = out.logits * 2
        return out


def test_forward_override_falls_back_with_one_warning(tmp_path, tokenizer, caplog):
    def subclassed():
        model = tiny.make_model("llama", tokenizer)
        model.__class__ = LogitsDoubledInTraining
        return model

    with caplog.at_level(logging.WARNING):
        fused = trainer_for(tmp_path, tokenizer, subclassed(), "fused")
        fused.train()
    plain = trainer_for(tmp_path, tokenizer, subclassed(), "plain", dece_fused_linear=False)
    plain.train()
    assert not fused._dece_fused
    warnings = [r.getMessage() for r in caplog.records if "dece_fused_linear" in r.getMessage()
                or "full logits" in r.getMessage()]
    assert len(warnings) == 1 and "overrides `forward`" in warnings[0], warnings
    assert logged(fused, "loss") == pytest.approx(logged(plain, "loss"), rel=1e-5)
    assert_same_weights(fused.model, plain.model, atol=1e-5)


def test_forward_replaced_on_the_instance_falls_back(tmp_path, tokenizer, caplog):
    model = tiny.make_model("llama", tokenizer)
    original = model.forward
    model.forward = lambda *args, **kwargs: original(*args, **kwargs)
    with caplog.at_level(logging.WARNING):
        trainer = trainer_for(tmp_path, tokenizer, model)
    assert not trainer._dece_fused
    assert sum("overrides `forward`" in r.getMessage() for r in caplog.records) == 1


def test_torch_compile_trains_or_falls_back_with_one_warning(tmp_path, tokenizer, caplog):
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING):
        compiled = trainer_for(tmp_path, tokenizer, tiny.make_model("llama", tokenizer), "compiled", max_steps=2,
                               torch_compile=True, torch_compile_backend="eager")
        compiled.train()
    plain = trainer_for(tmp_path, tokenizer, tiny.make_model("llama", tokenizer), "plain", max_steps=2,
                        dece_fused_linear=False)
    plain.train()
    torch._dynamo.reset()
    fallbacks = [r.getMessage() for r in caplog.records if "full logits" in r.getMessage()]
    assert len(fallbacks) == (0 if compiled._dece_fused else 1), fallbacks
    assert logged(compiled, "loss") == pytest.approx(logged(plain, "loss"), rel=1e-4)


@pytest.mark.parametrize("keep_fp32_wrapper", [False, True])
def test_second_trainer_after_unwrap_model(tmp_path, tokenizer, keep_fp32_wrapper):
    """accelerate's mixed-precision wrapper on the instance's forward (kept, or unwrapped) is not an override."""
    model = tiny.make_model("llama", tokenizer)
    first = trainer_for(tmp_path, tokenizer, model, "first", max_steps=1, bf16=True)
    first.train()
    unwrapped = first.accelerator.unwrap_model(first.model, keep_fp32_wrapper=keep_fp32_wrapper)
    second = trainer_for(tmp_path, tokenizer, unwrapped, "second", max_steps=2)
    second.train()
    assert second._dece_fused and len(logged(second, "loss")) == 2


def test_liger_kernel_config_not_edited_in_place(tmp_path, tokenizer):
    args = sgd_args(tmp_path, "liger", use_liger_kernel=True, liger_kernel_config={"rms_norm": True})
    config = args.liger_kernel_config
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args,
                          train_dataset=tiny.causal_dataset(tokenizer, varied_rows(8)),
                          data_collator=tiny.pad_collator(tokenizer))
    assert args.liger_kernel_config is config and config == {"rms_norm": True}
    assert trainer.args.liger_kernel_config == {"rms_norm": True, "fused_linear_cross_entropy": False}
