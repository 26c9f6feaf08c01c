"""What the trainer reports: eval_loss on every path, the last alpha, CE runs, unusable model outputs, and the
warnings for batches with no target and for a model DeCE suppresses entirely."""

import functools
import logging

import pytest
import torch
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutput

from dece_trainer import (
    DeCESeq2SeqTrainer,
    DeCETrainer,
    dece_loss_and_token_ce,
    make_dece_loss_func,
)
from dece_trainer.trainer import dece_trainer as dece_trainer_module
from dece_trainer.trainer.alignment import logits_of
from tests import tiny

make_args = functools.partial(tiny.training_args, per_device_train_batch_size=8, per_device_eval_batch_size=4,
                              num_train_epochs=1, learning_rate=5e-3, logging_steps=1, dece_alpha_base=0.9)


def varied_rows(n):
    rows = tiny.make_pairs(n, seed=5)
    for i, row in enumerate(rows):  # different target lengths: a per-batch mean differs from a per-token one
        row["target"] = " ".join(row["target"].split()[: 6 + (i * 5) % 17])
    return rows


@torch.no_grad()
def token_sums(model, batches, kind, alpha):
    """Sum of plain CE, DeCE and label-token count over batches, computed independently of the trainer."""
    ce = dece = count = 0.0
    model.eval()
    for batch in batches:
        labels = batch["labels"]
        if kind == "t5":
            logits = model(**batch).logits
            targets = labels
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        out = dece_loss_and_token_ce(logits, targets, alpha=alpha, label_smoothing=0.05, reduction="sum")
        n = int(out.mask.sum())
        ce, dece, count = ce + float(out.token_ce.sum()), dece + float(out.loss), count + n
    return ce / count, dece / count


def test_causal_eval_loss_is_plain_ce_over_all_label_tokens(tmp_path, tokenizer):
    model = tiny.make_model("gpt2", tokenizer)
    data = tiny.causal_dataset(tokenizer, varied_rows(10))
    collate = tiny.pad_collator(tokenizer)
    trainer = DeCETrainer(model=model, args=make_args(tmp_path), eval_dataset=data, data_collator=collate)
    metrics = trainer.evaluate()
    ce, dece = token_sums(model, [collate([data[i] for i in range(s, min(s + 4, 10))]) for s in (0, 4, 8)], "gpt2",
                          0.9)
    assert metrics["eval_loss"] == pytest.approx(ce, rel=1e-5)
    assert metrics["eval_ce_loss"] == metrics["eval_loss"]
    assert metrics["eval_dece_loss"] == pytest.approx(dece, rel=1e-5)
    assert metrics["eval_dece_loss"] < metrics["eval_loss"]  # they really are different quantities
    assert trainer.predict(data).metrics["test_loss"] == pytest.approx(ce, rel=1e-5)


def test_seq2seq_eval_loss_is_the_same_with_and_without_generation(tmp_path, tokenizer):
    model = tiny.make_model("t5", tokenizer)
    data = tiny.seq2seq_dataset(tokenizer, varied_rows(8))
    collate = tiny.pad_collator(tokenizer)
    results = {}
    for generate in (False, True):
        args = make_args(tmp_path, seq2seq=True, predict_with_generate=generate, generation_max_length=6)
        trainer = DeCESeq2SeqTrainer(model=model, args=args, eval_dataset=data, data_collator=collate,
                                     compute_metrics=lambda prediction: {"rows": float(len(prediction.label_ids))})
        results[generate] = trainer.evaluate()
    ce, dece = token_sums(model, [collate([data[i] for i in range(s, s + 4)]) for s in (0, 4)], "t5", 0.9)
    for metrics in results.values():
        assert metrics["eval_rows"] == 8.0  # the generation path really ran compute_metrics
        assert metrics["eval_loss"] == pytest.approx(ce, rel=1e-5)
        assert metrics["eval_ce_loss"] == metrics["eval_loss"]
        assert metrics["eval_dece_loss"] == pytest.approx(dece, rel=1e-5)


def test_card_and_loss_func_report_the_last_alpha_training_used(tmp_path, tokenizer):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer),
                          args=make_args(tmp_path, num_train_epochs=2, dece_alpha_base=None, dece_alpha_final=0.8),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    logged = [e["dece_alpha"] for e in trainer.state.log_history if "dece_alpha" in e]
    assert logged[0] == pytest.approx(0.8 ** 0.5) and logged[-1] == pytest.approx(0.8)
    assert trainer.dece_last_alpha == pytest.approx(0.8)
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| alpha at end of training | `0.8` " in card

    loss_fn = make_dece_loss_func(alpha_final=0.8)
    plain = Trainer(model=tiny.make_model("gpt2", tokenizer), args=make_args(tmp_path, num_train_epochs=2),
                    train_dataset=data, data_collator=tiny.pad_collator(tokenizer), compute_loss_func=loss_fn,
                    callbacks=[loss_fn])
    assert loss_fn.alpha == pytest.approx(0.8 ** 0.5)  # before training: the first step's
    plain.train()
    assert loss_fn.alpha == pytest.approx(0.8)


def test_cross_entropy_run_says_so(tmp_path, tokenizer):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer),
                          args=make_args(tmp_path, dece_alpha_base=1.0, dece_label_smoothing=0.0),
                          train_dataset=data, eval_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs and all("ce_loss" in e for e in logs)
    assert all(e["loss"] == pytest.approx(e["ce_loss"], rel=1e-5) for e in logs)  # it is CE
    assert not [k for e in trainer.state.log_history for k in e if k.startswith("dece_")]
    metrics = trainer.evaluate()
    assert "eval_ce_loss" in metrics and "eval_dece_loss" not in metrics
    assert trainer.dece_loss_kind == "cross-entropy"


def test_logits_are_taken_by_name_or_from_an_unambiguous_tuple(tokenizer):
    model = tiny.make_model("gpt2", tokenizer)
    vocab = len(tokenizer)
    hidden, logits = torch.randn(2, 5, 32), torch.randn(2, 5, vocab)
    assert logits_of(CausalLMOutput(logits=logits)) is logits
    assert logits_of({"logits": logits, "hidden": hidden}) is logits
    assert logits_of((hidden, logits), model) is logits  # not the first element
    assert logits_of((torch.zeros(()), logits, hidden), model) is logits
    with pytest.raises(ValueError, match=r"\[\(2, 5, 32\), \(2, 5, 32\)\].*cannot tell which.*ModelOutput or a dict"):
        logits_of((hidden, hidden.clone()), model)
    with pytest.raises(ValueError, match="2 have a last dimension"):
        logits_of((logits, logits.clone()), model)
    with pytest.raises(ValueError, match="cannot tell which"):
        logits_of((hidden, logits))  # no model: no way to know the number of classes
    with pytest.raises(ValueError, match="got keys \\['hidden'\\]"):
        logits_of({"hidden": hidden}, model)


def test_model_returning_hidden_states_first_trains_on_its_logits(tmp_path, tokenizer):
    class HiddenFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny.make_model("gpt2", tokenizer)
            self.config = self.inner.config

        def forward(self, input_ids, attention_mask=None, **kwargs):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return out.hidden_states[-1], out.logits

    model = HiddenFirst()
    trainer = DeCETrainer(model=model, args=make_args(tmp_path, dece_model_kind="causal"))
    batch = tiny.pad_collator(tokenizer)([tiny.causal_dataset(tokenizer, tiny.make_pairs(2))[i] for i in range(2)])
    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    expected = trainer.compute_loss(model.inner, dict(batch))
    torch.testing.assert_close(loss, expected)


def test_fully_masked_batches_warn_once(tmp_path, tokenizer, caplog):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    data = data.map(lambda row: {"labels": [-100] * len(row["labels"])})  # e.g. truncation cut every target
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=make_args(tmp_path, num_train_epochs=2),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    with caplog.at_level(logging.WARNING, logger=dece_trainer_module.__name__):
        trainer.train()
    messages = [r.getMessage() for r in caplog.records if "single label token" in r.getMessage()]
    assert len(messages) == 1 and "completion-only" in messages[0] and "truncation" in messages[0]


def test_everything_suppressed_warns_once_with_the_warm_up_advice(tmp_path, tokenizer, caplog):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(32))
    # a = 0.3 on a randomly initialised model: every gold probability is below (1 - a)(1 - e)/a > 1
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer),
                          args=make_args(tmp_path, dece_alpha_base=0.3, per_device_train_batch_size=4),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    with caplog.at_level(logging.WARNING, logger=dece_trainer_module.__name__):
        trainer.train()
    assert all(e["dece_suppressed_frac"] == 1.0 for e in trainer.state.log_history if "dece_suppressed_frac" in e)
    messages = [r.getMessage() for r in caplog.records if "dece_suppressed_frac" in r.getMessage()]
    assert len(messages) == 1
    assert "Warm up with plain cross-entropy" in messages[0] and "docs/choosing_alpha.md" in messages[0]


def test_healthy_run_does_not_warn(tmp_path, tokenizer, caplog):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer),
                          args=make_args(tmp_path, dece_alpha_base=1.0, dece_label_smoothing=0.0),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    with caplog.at_level(logging.WARNING, logger=dece_trainer_module.__name__):
        trainer.train()
    assert not [r for r in caplog.records if r.name == dece_trainer_module.__name__]


def test_suppression_warning_links_an_existing_page_and_advises_plain_ce(tmp_path, tokenizer, caplog):
    import re

    from tests.conftest import REPO_ROOT

    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=make_args(tmp_path))
    with caplog.at_level(logging.WARNING, logger=dece_trainer_module.__name__):
        trainer._dece_check_suppression(1.0)
        trainer._dece_check_suppression(1.0)
    (message,) = [r.getMessage() for r in caplog.records if "dece_suppressed_frac" in r.getMessage()]
    # alpha 1 alone is label-smoothed CE: the warm-up advice turns the smoothing off too
    assert "`dece_alpha_base=1` and `dece_label_smoothing=0`" in message, message
    (link,) = re.findall(r"/blob/main/(docs/[\w.]+)#([\w-]+)\)", message)
    page = (REPO_ROOT / link[0]).read_text()
    headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", page, flags=re.M)}
    assert link[1] in headings, (link, headings)


def test_logged_alpha_has_no_float_noise(tmp_path, tokenizer):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=make_args(tmp_path, num_train_epochs=2),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "dece_alpha" in e]
    assert [e["dece_alpha"] for e in logs] == [0.9, 0.9, 0.81, 0.81]  # not 0.9 ** 2 = 0.8100000000000001
    assert all(e["dece_grad_bound"] == float(f"{e['dece_grad_bound']:.12g}") for e in logs)
    assert logs[-1]["dece_grad_bound"] == pytest.approx(0.81 / 0.19, rel=1e-12)
