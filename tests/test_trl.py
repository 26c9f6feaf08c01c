"""DeCE inside TRL's SFTTrainer. DeCESFTTrainer is SFTTrainer in every respect but the loss: it trains on
prompt-completion data with a completion-only loss; at alpha 1 without smoothing it trains step for step like stock
SFTTrainer (loss and SFT's metrics), at alpha < 1 its loss is the DeCE formula; the early-learning monitor works
through TRL's collator; and a DeCE trainer and a stock one compute their losses side by side in two threads, each
with its own kernel."""

import functools
import threading
import types

import pytest
import torch
from datasets import Dataset

from dece_trainer import EarlyLearningCallback, add_example_ids, deceptive_cross_entropy
from tests import tiny

trl = pytest.importorskip("trl")

from dece_trainer.integrations.trl import DeCEKernel, DeCESFTConfig, DeCESFTTrainer  # noqa: E402


def test_sft_trainer_trains_with_dece(tmp_path, tokenizer):
    rows = tiny.make_pairs(32)
    data = Dataset.from_list([{"prompt": r["source"], "completion": " " + r["target"]} for r in rows])
    args = tiny.training_args(tmp_path, "sft", cls=DeCESFTConfig, max_steps=16, per_device_train_batch_size=4,
                              logging_steps=4, learning_rate=5e-3, dece_alpha_base=0.9)
    trainer = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer), args=args, train_dataset=data,
                             processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any()  # the prompt is masked: completion-only loss
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[0]["dece_alpha"] == pytest.approx(0.9)
    trainer.create_model_card(model_name="tiny-sft")
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(tmp_path / "sft" / "README.md"))
    assert {"dece", "backdoor-defense", "sft", "trl"} <= set(card.data.tags)
    assert card.text.count("## Backdoor defense: DeCE") == 1 and "@article{yang2024dece" in card.text
    assert "| alpha at end of training | `0.81` " in card.text  # 16 steps = 2 epochs of 8
    metrics = trainer.evaluate(data.select(range(8)))
    assert metrics["eval_loss"] == metrics["eval_ce_loss"] and "eval_dece_loss" in metrics


SFT_METRICS = ("loss", "entropy", "mean_token_accuracy", "num_tokens")


def prompt_completion(n=24):
    rows = tiny.make_pairs(n, seed=7)
    return Dataset.from_list([{"prompt": r["source"], "completion": " " + r["target"]} for r in rows])


config = functools.partial(tiny.training_args, cls=DeCESFTConfig, max_steps=4, per_device_train_batch_size=4,
                           logging_steps=1, learning_rate=5e-2, optim="sgd", lr_scheduler_type="constant")


def metrics(trainer):
    return {key: [e[key] for e in trainer.state.log_history if key in e and "train_runtime" not in e]
            for key in SFT_METRICS}


def test_at_alpha_one_without_smoothing_it_is_stock_sft(tmp_path, tokenizer):
    stock = trl.SFTTrainer(model=tiny.make_model("llama", tokenizer), args=config(tmp_path, "stock", cls=trl.SFTConfig),
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
    stock = trl.SFTTrainer(model=tiny.make_model("llama", tokenizer), args=config(tmp_path, "stock", cls=trl.SFTConfig),
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


def test_a_dece_and_a_stock_trainer_in_two_threads_each_get_their_own_kernel(tmp_path, tokenizer, monkeypatch):
    """The kernel swap is per thread: a DeCE loop and a stock SFT loop run at the same time, each inside its kernel
    at the same moment (a barrier holds each call until the other thread is in its own), and each gets the loss it
    gets alone."""
    trainers = {"stock": trl.SFTTrainer(model=tiny.make_model("llama", tokenizer),
                                        args=config(tmp_path, "stock", cls=trl.SFTConfig),
                                        train_dataset=prompt_completion(), processing_class=tokenizer),
                "dece": DeCESFTTrainer(model=tiny.make_model("llama", tokenizer),
                                       args=config(tmp_path, "dece", dece_alpha_base=0.7, dece_label_smoothing=0.1),
                                       train_dataset=prompt_completion(), processing_class=tokenizer)}
    batch = trainers["stock"]._prepare_inputs(next(iter(trainers["stock"].get_train_dataloader())))

    def loss(name):
        with torch.no_grad():
            return trainers[name].compute_loss(trainers[name].model, dict(batch)).item()

    alone = {name: loss(name) for name in trainers}
    assert alone["dece"] != pytest.approx(alone["stock"], rel=1e-3)  # the two kernels give different losses

    from dece_trainer.integrations import _trl_compat

    proxy = _trl_compat.install_kernel_proxy()
    barrier, calls = threading.Barrier(2, timeout=60), []

    def meeting(kind, apply):
        def wrapped(*args, **kwargs):
            calls.append((threading.current_thread().name, kind))
            barrier.wait()  # both threads are now inside a kernel call
            return apply(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(proxy, "original", types.SimpleNamespace(apply=meeting("stock", proxy.original.apply)))
    monkeypatch.setattr(DeCEKernel, "apply", meeting("dece", DeCEKernel.apply))
    together, errors = {name: [] for name in trainers}, []

    def loop(name):
        try:
            together[name] += [loss(name) for _ in range(3)]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(name,), name=name) for name in trainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(calls) == sorted([("dece", "dece")] * 3 + [("stock", "stock")] * 3)  # each thread: its own kernel
    for name in trainers:
        assert together[name] == pytest.approx([alone[name]] * 3, rel=1e-6), name
