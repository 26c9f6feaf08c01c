"""DeCETrainer end to end on tiny offline models: training, LoRA, evaluation, logging, model card, errors."""

import copy
import functools

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import HfArgumentParser, Trainer, TrainingArguments

from dece_trainer import (
    DeCESeq2SeqTrainer,
    DeCESeq2SeqTrainingArguments,
    DeCETrainer,
    DeCETrainingArguments,
    dece_alpha,
    deceptive_cross_entropy,
)
from tests import tiny

KINDS = ["llama", "gpt2", "t5", "bert-cls"]
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "t5": ["q", "v"],
                "bert-cls": ["query", "value"]}


training_args = functools.partial(tiny.training_args, per_device_train_batch_size=8, num_train_epochs=4,
                                  learning_rate=5e-3, logging_steps=4, dece_alpha_base=0.9)


def lora_wrap(model, kind):
    task = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "bert-cls": "SEQ_CLS"}[kind]
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[kind], task_type=task))


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("kind", KINDS)
def test_trains_every_model_kind(tmp_path, tokenizer, kind, use_lora):
    model = tiny.make_model(kind, tokenizer)
    if use_lora:
        model = lora_wrap(model, kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = tiny.dataset_for(kind, tokenizer, tiny.make_pairs(64))
    trainer_cls = DeCESeq2SeqTrainer if kind == "t5" else DeCETrainer
    trainer = trainer_cls(model=model, args=training_args(tmp_path, seq2seq=kind == "t5"), train_dataset=data,
                          data_collator=tiny.pad_collator(tokenizer))
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 8  # 32 steps, logging every 4
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert logs[-1]["ce_loss"] < logs[0]["ce_loss"]
    for entry in logs:
        assert {"dece_alpha", "dece_grad_bound", "ce_loss", "dece_suppressed_frac"} <= entry.keys()
        assert 0.0 <= entry["dece_suppressed_frac"] <= 1.0
    # the alpha logged is the one the logged steps trained with: epoch 1 -> 0.9, epoch 4 -> 0.9 ** 4
    assert logs[0]["dece_alpha"] == pytest.approx(0.9)
    assert logs[-1]["dece_alpha"] == pytest.approx(0.9 ** 4)
    assert logs[-1]["dece_grad_bound"] == pytest.approx(0.9 ** 4 / (1 - 0.9 ** 4))

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    if use_lora:
        assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), changed
    else:
        assert len(changed) > 0.5 * len(before)


def test_lora_adapter_saves_and_reloads(tmp_path, tokenizer):
    model = lora_wrap(tiny.make_model("llama", tokenizer), "llama")
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(32))
    trainer = DeCETrainer(model=model, args=training_args(tmp_path, num_train_epochs=2), train_dataset=data,
                          data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    reloaded = PeftModel.from_pretrained(tiny.make_model("llama", tokenizer), str(tmp_path / "adapter"))
    batch = tiny.pad_collator(tokenizer)([data[i] for i in range(4)])
    batch.pop("labels")
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits)


def test_loss_is_dece_of_the_shifted_logits(tmp_path, tokenizer):
    """compute_loss on a causal LM equals DeCE of logits[:, :-1] against labels[:, 1:], mean over target tokens."""
    model = tiny.make_model("llama", tokenizer)
    trainer = DeCETrainer(model=model, args=training_args(tmp_path), data_collator=tiny.pad_collator(tokenizer))
    batch = tiny.pad_collator(tokenizer)([tiny.causal_dataset(tokenizer, tiny.make_pairs(3))[i] for i in range(3)])
    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = deceptive_cross_entropy(logits[:, :-1], batch["labels"][:, 1:], alpha=0.9, label_smoothing=0.05)
    torch.testing.assert_close(loss, expected)

    # a padding-free collator's shift_labels are used as given
    shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    loss_shift = trainer.compute_loss(model, {**batch, "labels": torch.zeros_like(batch["labels"]),
                                              "shift_labels": shifted})
    torch.testing.assert_close(loss_shift, expected)


def test_seq2seq_builds_decoder_inputs_from_labels(tmp_path, tokenizer):
    model = tiny.make_model("t5", tokenizer)
    trainer = DeCESeq2SeqTrainer(model=model, args=training_args(tmp_path, seq2seq=True),
                                 data_collator=tiny.pad_collator(tokenizer))
    batch = tiny.pad_collator(tokenizer)([tiny.seq2seq_dataset(tokenizer, tiny.make_pairs(2))[i] for i in range(2)])
    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        reference_ce = model(**batch).loss  # T5's own CE, with its own decoder inputs
        logits = model(**batch).logits
    expected = deceptive_cross_entropy(logits, batch["labels"], alpha=0.9, label_smoothing=0.05)
    torch.testing.assert_close(loss, expected)
    ce_from_dece_alignment = deceptive_cross_entropy(logits, batch["labels"], alpha=1.0, label_smoothing=0.0)
    torch.testing.assert_close(ce_from_dece_alignment, reference_ce)


def test_evaluate_and_predict_keep_logits(tmp_path, tokenizer):
    model = tiny.make_model("gpt2", tokenizer)
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(12))
    trainer = DeCETrainer(model=model, args=training_args(tmp_path, per_device_eval_batch_size=4),
                          eval_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0
    prediction = trainer.predict(data)
    assert prediction.predictions.shape[0] == 12 and prediction.predictions.shape[-1] == len(tokenizer)


def test_alpha_final_sets_the_base_from_the_run_length(tmp_path, tokenizer):
    model = tiny.make_model("llama", tokenizer)
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(32))
    args = training_args(tmp_path, num_train_epochs=2, dece_alpha_base=None, dece_alpha_final=0.25)
    trainer = DeCETrainer(model=model, args=args, train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "dece_alpha" in entry]
    assert logs[0]["dece_alpha"] == pytest.approx(0.5)  # base 0.5 = 0.25 ** (1/2)
    assert logs[-1]["dece_alpha"] == pytest.approx(0.25)


def test_plain_training_arguments_use_the_package_defaults(tmp_path, tokenizer):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])  # 3 epochs
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=args)
    assert trainer.dece.alpha_final == 0.5 and trainer.dece.label_smoothing == 0.05
    assert trainer.dece_alpha_base == pytest.approx(0.5 ** (1 / 3))  # alpha 0.5 on the last of 3 epochs
    assert trainer.dece_alpha == pytest.approx(dece_alpha(0.5 ** (1 / 3), 0.0))


def test_hf_argument_parser_gets_dece_flags(tmp_path):
    parser = HfArgumentParser(DeCETrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--dece_alpha_base", "0.98", "--dece_label_smoothing", "0.1",
         "--dece_alpha_schedule", "continuous", "--use_cpu", "true"])
    assert (args.dece_alpha_base, args.dece_label_smoothing, args.dece_alpha_schedule, args.dece_alpha_final) == (
        0.98, 0.1, "continuous", None)
    (final,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--dece_alpha_final", "0.5",
                                                    "--use_cpu", "true"])
    assert (final.dece_alpha_base, final.dece_alpha_final) == (None, 0.5)
    assert "dece_alpha_base" in args.to_dict()
    (s2s,) = HfArgumentParser(DeCESeq2SeqTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--dece_alpha_base", "0.8", "--predict_with_generate", "true"])
    assert s2s.dece_alpha_base == 0.8 and s2s.predict_with_generate
    with pytest.raises(SystemExit):  # argparse rejects a schedule outside the choices
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--dece_alpha_schedule", "linear"])


@pytest.mark.parametrize("overrides,match", [
    (dict(dece_alpha_base=0.0), "dece_alpha_base.*\\(0, 1\\]"),
    (dict(dece_alpha_base=1.01), "dece_alpha_base"),
    (dict(dece_label_smoothing=1.0), "dece_label_smoothing.*\\[0, 1\\)"),
    (dict(dece_alpha_schedule="linear"), "dece_alpha_schedule.*epoch.*continuous"),
    (dict(dece_alpha_final=0.0), "dece_alpha_final"),
    (dict(label_smoothing_factor=0.1), "label_smoothing_factor.*cannot be combined"),
])
def test_bad_training_arguments(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        training_args(tmp_path, **overrides)


def test_label_smoothing_factor_refused_with_plain_arguments(tmp_path, tokenizer):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=args)


def test_batch_without_labels_is_a_clear_error(tmp_path, tokenizer):
    model = tiny.make_model("gpt2", tokenizer)
    trainer = DeCETrainer(model=model, args=training_args(tmp_path))
    with pytest.raises(ValueError, match="needs `labels`"):
        trainer.compute_loss(model, {"input_ids": torch.tensor([[1, 2, 3]])})


def test_model_without_logits_is_a_clear_error(tmp_path, tokenizer):
    class NoLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny.make_model("gpt2", tokenizer)
            self.config = self.inner.config

        def forward(self, input_ids, attention_mask=None, **kwargs):
            return {"loss": torch.zeros(()), "hidden": self.inner(input_ids).logits}

    model = NoLogits()
    trainer = DeCETrainer(model=model, args=training_args(tmp_path))
    with pytest.raises(ValueError, match="needs the model's logits.*liger"):
        trainer.compute_loss(model, {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[1, 2, 3]])})


def test_labels_out_of_vocabulary_are_a_clear_error(tmp_path, tokenizer):
    model = tiny.make_model("gpt2", tokenizer)
    trainer = DeCETrainer(model=model, args=training_args(tmp_path))
    bad = torch.tensor([[1, 2, 10_000]])
    with pytest.raises(ValueError, match=r"labels.*must be in \[0, "):
        trainer.compute_loss(model, {"input_ids": torch.tensor([[1, 2, 3]]), "labels": bad})


def test_model_card_records_the_defense(tmp_path, tokenizer):
    model = tiny.make_model("gpt2", tokenizer)
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=model, args=training_args(tmp_path, num_train_epochs=1), train_dataset=data,
                          data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    trainer.create_model_card(model_name="tiny-dece")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- dece" in card and "- backdoor-defense" in card
    assert "Backdoor defense: DeCE" in card and "| alpha_base | `0.9` |" in card
    assert card.count("Backdoor defense: DeCE") == 1


def test_trainer_subclass_order_keeps_trainer_behaviour(tmp_path, tokenizer):
    """DeCEMixin composes with other Trainer subclasses (the way DeCETrainer and DeCESeq2SeqTrainer are built)."""
    from dece_trainer import DeCEMixin

    class CountingTrainer(Trainer):
        calls = 0

        def training_step(self, *args, **kwargs):
            CountingTrainer.calls += 1
            return super().training_step(*args, **kwargs)

    class Mine(DeCEMixin, CountingTrainer):
        pass

    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = Mine(model=tiny.make_model("gpt2", tokenizer),
                   args=training_args(tmp_path, num_train_epochs=1, logging_steps=1),
                   train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    assert CountingTrainer.calls == 2
    assert any("dece_alpha" in entry for entry in copy.deepcopy(trainer.state.log_history))
