"""DeCESFTTrainer is SFTTrainer in every respect but the loss: at alpha 1 without smoothing it trains step for
step like stock SFTTrainer (loss and SFT's metrics), at alpha < 1 its loss is the DeCE formula, and the
early-learning monitor works through TRL's collator."""

import pytest
import torch
from datasets import Dataset

from dece_trainer import EarlyLearningCallback, add_example_ids, deceptive_cross_entropy
from tests import tiny

trl = pytest.importorskip("trl")

from dece_trainer.integrations.trl import DeCESFTConfig, DeCESFTTrainer  # noqa: E402

SFT_METRICS = ("loss", "entropy", "mean_token_accuracy", "num_tokens")


def prompt_completion(n=24):
    rows = tiny.make_pairs(n, seed=7)
    return Dataset.from_list([{"prompt": r["source"], "completion": " " + r["target"]} for r in rows])


def config(tmp_path, name, config_cls=DeCESFTConfig, **overrides):
    base = dict(output_dir=str(tmp_path / name), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                report_to=[], use_cpu=True, save_strategy="no", learning_rate=5e-2, optim="sgd",
                lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    base.update(overrides)
    return config_cls(**base)


def metrics(trainer):
    return {key: [e[key] for e in trainer.state.log_history if key in e and "train_runtime" not in e]
            for key in SFT_METRICS}


def test_at_alpha_one_without_smoothing_it_is_stock_sft(tmp_path, tokenizer):
    stock = trl.SFTTrainer(model=tiny.make_model("llama", tokenizer), args=config(tmp_path, "stock", trl.SFTConfig),
                           train_dataset=prompt_completion(), processing_class=tokenizer)
    stock.train()
    dece = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                          args=config(tmp_path, "dece", dece_alpha_base=1.0, dece_label_smoothing=0.0),
                          train_dataset=prompt_completion(), processing_class=tokenizer)
    dece.train()
    ours, theirs = metrics(dece), metrics(stock)
    for key in SFT_METRICS:  # four SGD steps apart: float32 rounding of two kernels compounds a little
        assert len(ours[key]) == 4 and ours[key] == pytest.approx(theirs[key], rel=1e-4), key
    for p, q in zip(dece.model.parameters(), stock.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
    logs = [e for e in dece.state.log_history if "ce_loss" in e]
    assert logs and logs[0]["ce_loss"] == pytest.approx(logs[0]["loss"], rel=1e-5)  # CE is the loss at alpha 1


def test_one_step_gives_stock_sft_loss_and_gradients(tmp_path, tokenizer):
    stock = trl.SFTTrainer(model=tiny.make_model("llama", tokenizer), args=config(tmp_path, "stock", trl.SFTConfig),
                           train_dataset=prompt_completion(), processing_class=tokenizer)
    dece = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                          args=config(tmp_path, "dece", dece_alpha_base=1.0, dece_label_smoothing=0.0),
                          train_dataset=prompt_completion(), processing_class=tokenizer)
    batch = stock._prepare_inputs(next(iter(stock.get_train_dataloader())))
    count = int((batch["labels"][:, 1:] != -100).sum())
    losses = []
    for trainer in (stock, dece):
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    for p, q in zip(dece.model.parameters(), stock.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    for key in ("entropy", "mean_token_accuracy"):
        assert dece._metrics["train"][key] == pytest.approx(stock._metrics["train"][key], rel=1e-5)


def test_below_alpha_one_the_loss_is_dece(tmp_path, tokenizer):
    trainer = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                             args=config(tmp_path, "dece", dece_alpha_base=0.7, dece_label_smoothing=0.1),
                             train_dataset=prompt_completion(), processing_class=tokenizer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = trainer.model(**inputs).logits
        expected = deceptive_cross_entropy(logits[:, :-1], batch["labels"][:, 1:], alpha=0.7, label_smoothing=0.1)
        got = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [(dict(loss_type="dft"), "loss_type='dft'"),])
def test_loss_types_other_than_nll_are_refused(tmp_path, tokenizer, overrides, match):
    with pytest.raises(ValueError, match=match):
        DeCESFTTrainer(model=tiny.make_model("llama", tokenizer), args=config(tmp_path, "x", **overrides),
                       train_dataset=prompt_completion(), processing_class=tokenizer)


def test_the_early_learning_monitor_sees_every_example(tmp_path, tokenizer):
    data = add_example_ids(prompt_completion(16))
    monitor = EarlyLearningCallback(plots=False)
    trainer = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                             args=config(tmp_path, "monitor", max_steps=-1, num_train_epochs=2, dece_alpha_base=0.9),
                             train_dataset=data, processing_class=tokenizer, callbacks=[monitor])
    trainer.train()
    seen = [e["examples_seen"] for e in trainer.state.log_history if "examples_seen" in e]
    assert seen == [16.0, 16.0]
    assert (tmp_path / "monitor" / "early_learning" / "suspicious.jsonl").exists()


@pytest.mark.parametrize("overrides,match", [
    (dict(packing=True), r"packing=True.*one example per row.*packing=False"),
    (dict(padding_free=True, max_length=None), r"padding_free=True.*one example per row.*padding_free=False"),
], ids=["packing", "padding_free"])
def test_monitor_refuses_packing_with_what_to_do(tmp_path, tokenizer, overrides, match):
    trainer = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                             args=config(tmp_path, "packed", max_steps=2, dece_alpha_base=0.9, **overrides),
                             train_dataset=add_example_ids(prompt_completion(16)), processing_class=tokenizer,
                             callbacks=[EarlyLearningCallback(plots=False)])
    with pytest.raises(ValueError, match=match) as caught:
        trainer.train()
    assert "\n" not in str(caught.value) and trainer.state.global_step == 0


def test_monitor_refuses_streaming_data_with_what_to_do(tmp_path, tokenizer):
    data = add_example_ids(prompt_completion(16)).to_iterable_dataset()
    trainer = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                             args=config(tmp_path, "stream", max_steps=2, dece_alpha_base=0.9),
                             train_dataset=data, processing_class=tokenizer,
                             callbacks=[EarlyLearningCallback(plots=False)])
    with pytest.raises(ValueError, match=r"map-style .*datasets.Dataset.*streaming") as caught:
        trainer.train()
    assert "\n" not in str(caught.value) and trainer.state.global_step == 0

