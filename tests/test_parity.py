"""Same update whatever the batch layout: gradient accumulation, two processes, and compute_loss_func."""

import functools
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer

from dece_trainer import DeCETrainer, make_dece_loss_func
from tests import tiny
from tests.conftest import run_one_and_two_processes


def varied_rows(n):
    rows = tiny.make_pairs(n, seed=3)
    for i, row in enumerate(rows):  # different target lengths: micro-batches hold different token counts
        row["target"] = " ".join(row["target"].split()[: 8 + (i * 7) % 19])
    return rows


sgd_args = functools.partial(tiny.training_args, max_steps=3, learning_rate=0.05, optim="sgd",
                             lr_scheduler_type="constant", logging_steps=1, dece_alpha_base=0.8,
                             per_device_train_batch_size=8)


def train(tokenizer, args, data, trainer_cls=DeCETrainer, **kwargs):
    trainer = trainer_cls(model=tiny.make_model("llama", tokenizer), args=args, train_dataset=data,
                          data_collator=tiny.pad_collator(tokenizer), **kwargs)
    trainer.train()
    return trainer


def assert_same_weights(a, b, atol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer):
    data = tiny.causal_dataset(tokenizer, varied_rows(24))
    counts = [sum(1 for t in data[i]["labels"][1:] if t != -100) for i in range(8)]
    assert len(set(counts)) > 1  # otherwise a per-micro-batch mean would pass this test too
    one = train(tokenizer, sgd_args(tmp_path, "ga1", per_device_train_batch_size=8), data)
    four = train(tokenizer, sgd_args(tmp_path, "ga4", per_device_train_batch_size=2, gradient_accumulation_steps=4),
                 data)
    assert_same_weights(one.model, four.model, atol=1e-5)
    losses = lambda t: [e["loss"] for e in t.state.log_history if "loss" in e]  # noqa: E731
    assert losses(one) == pytest.approx(losses(four), rel=1e-5)
    ce = lambda t: [e["ce_loss"] for e in t.state.log_history if "ce_loss" in e]  # noqa: E731
    assert ce(one) == pytest.approx(ce(four), rel=1e-5)


def test_loss_func_matches_dece_trainer_across_epochs(tmp_path, tokenizer):
    """make_dece_loss_func in a plain Trainer follows the same schedule and gives the same update."""
    data = tiny.causal_dataset(tokenizer, varied_rows(16))
    overrides = dict(max_steps=-1, num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    reference = train(tokenizer, sgd_args(tmp_path, "mixin", **overrides), data)
    loss_fn = make_dece_loss_func(alpha_base=0.8, label_smoothing=0.05)
    plain = train(tokenizer, sgd_args(tmp_path, "func", **overrides), data, trainer_cls=Trainer,
                  compute_loss_func=loss_fn, callbacks=[loss_fn])
    assert_same_weights(reference.model, plain.model, atol=1e-4)
    assert loss_fn.alpha == pytest.approx(0.8 ** 3)  # the last step trained in epoch 3 (the state is at 3.0)
    loss_ref = [e["loss"] for e in reference.state.log_history if "loss" in e]
    loss_plain = [e["loss"] for e in plain.state.log_history if "loss" in e]
    assert loss_ref == pytest.approx(loss_plain, rel=1e-4)


def test_loss_func_without_callback_is_a_clear_error(tmp_path, tokenizer):
    loss_fn = make_dece_loss_func()
    data = tiny.causal_dataset(tokenizer, varied_rows(8))
    with pytest.raises(ValueError, match="callbacks=\\[loss_fn\\]"):
        train(tokenizer, sgd_args(tmp_path, "nocb"), data, trainer_cls=Trainer, compute_loss_func=loss_fn)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with batch 4 each == one process with batch 8."""
    single, double = run_one_and_two_processes(tmp_path, "dist_train.py")
    curve1 = json.loads((single / "curve.json").read_text())
    curve2 = json.loads((double / "curve.json").read_text())
    assert len(curve1["loss"]) == 6
    for key in ("loss", "ce_loss", "dece_alpha", "dece_suppressed_frac"):
        assert curve2[key] == pytest.approx(curve1[key], rel=1e-5, abs=1e-7), key
    # evaluation: token totals gathered over processes, without the rows the sampler repeats
    assert curve2["eval"] == pytest.approx(curve1["eval"], rel=1e-5)
    assert curve1["eval"]["eval_loss"] == curve1["eval"]["eval_ce_loss"] > curve1["eval"]["eval_dece_loss"]
    w1, w2 = load_file(single / "weights.safetensors"), load_file(double / "weights.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_processes_record_every_example_once_per_epoch(tmp_path):
    """The early-learning monitor gathers per-example history across processes: each example once per epoch."""
    single, double = run_one_and_two_processes(tmp_path, "dist_train.py", "1", "monitor", port="29534")
    one = json.loads((single / "monitor.json").read_text())
    two = json.loads((double / "monitor.json").read_text())
    assert len(two["visits"]) == 2 and all(v == [1] * 48 for v in two["visits"])
    assert two["visits"] == one["visits"]
    for epoch_one, epoch_two in zip(one["loss"], two["loss"]):
        assert epoch_two == pytest.approx(epoch_one, rel=1e-3)  # float16 storage
    assert two["auroc"] == pytest.approx(one["auroc"])
