"""ContinueWithCE (``dece+continue``): DeCE, then plain CE without the flagged rows, in one run.

The run below (SGD, constant LR, 32 rows of varied target lengths, 3 epochs, switch after epoch 1) flags 2 rows by
``example_score`` at the default fence, each at least 0.1 from the threshold: far beyond the float noise between
batch layouts, so every layout flags the same rows.
"""

import functools
import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Trainer

from dece_trainer import ContinueWithCE, DeCETrainer, EarlyLearningCallback, add_example_ids
from dece_trainer.callbacks import continue_ce
from dece_trainer.callbacks.continue_ce import DECISION_FILE, DROPPED, OUTPUT_DIR, STATE_KEY, SWITCH_STEP
from tests import tiny
from tests.conftest import run_one_and_two_processes

SCORE_KEY = "example_score"
FENCE = 2.5
NOTHING = 1e6  # a fence no score passes

sgd_args = functools.partial(tiny.training_args, num_train_epochs=3, learning_rate=1.0, optim="sgd",
                             lr_scheduler_type="constant", logging_steps=1, dece_alpha_base=0.99,
                             per_device_train_batch_size=8)


def make_data(tokenizer):
    rows = tiny.poison(tiny.make_pairs(32, seed=4), 0.1, seed=4)
    for i, row in enumerate(rows):  # different target lengths: micro-batches hold different token counts
        row["target"] = " ".join(row["target"].split()[: 8 + (i * 7) % 19])
    return add_example_ids(tiny.causal_dataset(tokenizer, rows))


@pytest.fixture(scope="module")
def data(tokenizer):
    return make_data(tokenizer)


def run(tokenizer, data, args, fence=FENCE, resume=None, trainer_cls=DeCETrainer, monitor_first=True, **kwargs):
    monitor = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False)
    callback = ContinueWithCE(monitor, fence=fence, score_key=SCORE_KEY, **kwargs)
    trainer = trainer_cls(model=tiny.make_model("llama", tokenizer), args=args, train_dataset=data,
                          data_collator=tiny.pad_collator(tokenizer),
                          callbacks=[monitor, callback] if monitor_first else [callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback


def logs_with(trainer, key):
    return [e for e in trainer.state.log_history if key in e]


def assert_same_weights(a, b, atol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


class ReferenceTrainer(DeCETrainer):
    """Checks every training micro-batch after the switch against a hand-built reference: labels from the dataset,
    the flagged rows masked here, the normaliser counted here, the loss as torch's plain CE sum over the kept tokens
    divided by it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = {r["example_id"]: r["labels"] for r in self.train_dataset}
        self.checked = 0
        self._kept_tokens = None

    def _dropped(self):
        callback = next(c for c in self.callback_handler.callbacks if isinstance(c, ContinueWithCE))
        return set(callback.dropped_ids)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        dropped = self._dropped()
        ids = [int(i) for b in batches for i in b["example_id"]]
        kept = sum(sum(t != -100 for t in self.rows[i][1:]) for i in ids if i not in dropped)
        if dropped:
            assert int(num_items) == kept  # the normaliser counts the kept rows' tokens only
        self._kept_tokens = kept
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        dropped = self._dropped()
        if model.training and dropped:
            ids = inputs["example_id"].tolist()
            width = inputs["labels"].shape[1]
            labels = torch.tensor([(self.rows[i] if i not in dropped else [-100] * len(self.rows[i]))
                                   + [-100] * (width - len(self.rows[i])) for i in ids])
            assert torch.equal(inputs["labels"].cpu(), labels)
            with torch.no_grad():
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), labels[:, 1:].flatten(), ignore_index=-100,
                                 reduction="sum")
            torch.testing.assert_close(loss.double(), ce / self._kept_tokens, rtol=1e-5, atol=1e-7)
            self.checked += 1
        return loss


def test_after_the_switch_the_loss_is_cross_entropy_over_the_kept_rows(tmp_path, tokenizer, data):
    trainer, callback = run(tokenizer, data, sgd_args(tmp_path, "ref", per_device_train_batch_size=4,
                                                      gradient_accumulation_steps=2),
                            trainer_cls=ReferenceTrainer)
    assert 0 < len(callback.dropped_ids) < len(data)
    assert trainer.checked == 16  # epochs 2 and 3: 8 micro-batches each
    assert callback.switch_step == 4 and trainer.dece_row_filter == callback.dropped_ids
    alphas = [e["dece_alpha"] for e in logs_with(trainer, "loss")]
    assert alphas == [0.99] * 4 + [1.0] * 8  # epoch 1 DeCE, then alpha 1 (and no label smoothing: plain CE)
    switch = logs_with(trainer, DROPPED)
    assert switch == [{DROPPED: len(callback.dropped_ids), SWITCH_STEP: 4, "epoch": 1.0, "step": 4}]
    # the decision in a JSON file beside the report it read, and in the model card
    saved = json.loads((tmp_path / "ref" / OUTPUT_DIR / DECISION_FILE).read_text())
    assert saved["dropped"] == callback.dropped_ids and saved["switch_step"] == 4
    assert saved["summary"]["flagged"] == len(callback.dropped_ids) and "kept_poisoned" in saved["summary"]
    assert (tmp_path / "ref" / OUTPUT_DIR / "suspicious.jsonl").is_file()
    trainer.create_model_card(model_name="tiny-continue")
    card = (tmp_path / "ref" / "README.md").read_text()
    assert "### Training notes" in card and "then with plain cross-entropy" in card
    assert "for its first 4 optimizer steps, then with plain cross-entropy" in card and "ce_since_step: 4" in card
    assert f"without the {len(callback.dropped_ids)} training rows" in card


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer, data):
    one, one_cb = run(tokenizer, data, sgd_args(tmp_path, "ga1"))
    four, four_cb = run(tokenizer, data, sgd_args(tmp_path, "ga4", per_device_train_batch_size=2,
                                                  gradient_accumulation_steps=4))
    assert one_cb.dropped_ids and one_cb.dropped_ids == four_cb.dropped_ids
    assert_same_weights(one.model, four.model, atol=1e-5)
    losses = lambda t: [e["loss"] for e in logs_with(t, "loss")]  # noqa: E731
    assert losses(one) == pytest.approx(losses(four), rel=1e-5)


def test_nothing_flagged_stays_on_dece(tmp_path, tokenizer, data):
    trainer, callback = run(tokenizer, data, sgd_args(tmp_path, "none"), fence=NOTHING)
    assert callback.decision["switched"] is False and callback.dropped_ids == [] and callback.switch_step is None
    assert trainer.dece_row_filter == [] and logs_with(trainer, DROPPED) == [{DROPPED: 0, "epoch": 1.0, "step": 4}]
    assert not logs_with(trainer, SWITCH_STEP)
    alphas = [e["dece_alpha"] for e in logs_with(trainer, "loss")]
    assert alphas == pytest.approx([0.99] * 4 + [0.99 ** 2] * 4 + [0.99 ** 3] * 4)  # the schedule, not re-based
    # the very run plain DeCE with the monitor trains
    monitor = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False)
    plain = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=sgd_args(tmp_path, "plain"),
                        train_dataset=data, data_collator=tiny.pad_collator(tokenizer), callbacks=[monitor])
    plain.train()
    assert_same_weights(trainer.model, plain.model, atol=0)
    trainer.create_model_card(model_name="tiny-continue")
    assert "flagged no training row" in (tmp_path / "none" / "README.md").read_text()


@pytest.mark.parametrize("save,checkpoint,decides", [
    (dict(save_strategy="epoch"), 8, False),  # after the switch (end of epoch 2)
    (dict(save_strategy="epoch"), 4, False),  # at the switch: saved after the epoch end, decision inside
    (dict(save_strategy="steps", save_steps=4), 4, True),  # the switch epoch's last step, before its epoch end
], ids=["after", "at-epoch-end", "last-step"])
def test_a_resumed_run_reuses_the_decision(tmp_path, tokenizer, data, monkeypatch, save, checkpoint, decides):
    whole, whole_cb = run(tokenizer, data, sgd_args(tmp_path, "whole", **save))
    saved = json.loads((tmp_path / "whole" / f"checkpoint-{checkpoint}" / "trainer_state.json").read_text())
    assert (STATE_KEY in saved["stateful_callbacks"]) is not decides
    calls = []
    real_decide = continue_ce.decide
    monkeypatch.setattr(continue_ce, "decide", lambda *a, **k: calls.append(1) or real_decide(*a, **k))
    resumed, resumed_cb = run(tokenizer, data, sgd_args(tmp_path, "resumed", **save),
                              resume=str(tmp_path / "whole" / f"checkpoint-{checkpoint}"))
    assert len(calls) == int(decides)  # a saved decision is reused, never taken again
    assert whole_cb.dropped_ids and resumed_cb.dropped_ids == whole_cb.dropped_ids
    assert resumed_cb.switch_step == whole_cb.switch_step == 4
    assert resumed.dece_row_filter == whole.dece_row_filter
    assert_same_weights(resumed.model, whole.model, atol=0)
    assert logs_with(resumed, DROPPED) == logs_with(whole, DROPPED)
    saved = json.loads((tmp_path / "resumed" / OUTPUT_DIR / DECISION_FILE).read_text())
    assert saved["dropped"] == whole_cb.dropped_ids
    assert resumed._ce_since_step() == whole._ce_since_step() == 4  # the card's switch step, not the resume's


def test_a_malformed_saved_decision_is_refused_naming_the_checkpoint(tmp_path, tokenizer, data):
    run(tokenizer, data, sgd_args(tmp_path, "whole", save_strategy="epoch"))
    path = tmp_path / "whole" / "checkpoint-8" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["stateful_callbacks"][STATE_KEY]["dropped"] = [3, 3]
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"ContinueWithCE's decision in the checkpoint at step 8.*duplicated"):
        run(tokenizer, data, sgd_args(tmp_path, "resumed", save_strategy="epoch"), resume=str(path.parent))
    state["stateful_callbacks"][STATE_KEY]["dropped"] = [3]
    state["stateful_callbacks"][STATE_KEY]["switch_step"] = None
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"checkpoint at step 8.*switch_step \(a decision that drops rows switched\)"):
        run(tokenizer, data, sgd_args(tmp_path, "resumed2", save_strategy="epoch"), resume=str(path.parent))


def test_max_steps_and_streaming_data_are_refused(tmp_path, tokenizer, data):
    with pytest.raises(ValueError, match=r"measured in steps \(max_steps=6\): set num_train_epochs"):
        run(tokenizer, data, sgd_args(tmp_path, "steps", max_steps=6))
    with pytest.raises(ValueError, match=r"map-style training dataset .*not a streaming IterableDataset"):
        run(tokenizer, data.to_iterable_dataset(), sgd_args(tmp_path, "stream", max_steps=6))
    # and when training begins, for arguments changed after the trainer was built
    monitor = EarlyLearningCallback(plots=False)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=sgd_args(tmp_path, "later"),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer),
                          callbacks=[monitor, ContinueWithCE(monitor)])
    trainer.args.max_steps = 6
    with pytest.raises(ValueError, match=r"max_steps=6"):
        trainer.train()


def test_wiring_and_arguments(tmp_path, tokenizer, data):
    monitor = EarlyLearningCallback(plots=False)
    callback = ContinueWithCE(monitor)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=sgd_args(tmp_path, "w"),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer), callbacks=[callback])
    mine = [c for c in trainer.callback_handler.callbacks if c in (monitor, callback)]
    assert mine == [monitor, callback] and monitor._trainer is trainer  # the monitor is put first
    plain = Trainer(model=tiny.make_model("llama", tokenizer), args=tiny.training_args(tmp_path, "plain"))
    with pytest.raises(TypeError, match="needs a DeCE trainer"):
        ContinueWithCE(EarlyLearningCallback()).attach(plain)
    with pytest.raises(TypeError, match="EarlyLearningCallback"):
        ContinueWithCE(object())
    with pytest.raises(ValueError, match="switch_epoch"):
        ContinueWithCE(monitor, switch_epoch=-1)
    with pytest.raises(ValueError, match="fence"):
        ContinueWithCE(monitor, fence=0)
    with pytest.raises(ValueError, match=r"switch_epoch=3 leaves no epoch to train with CE"):
        DeCETrainer(model=tiny.make_model("llama", tokenizer), args=sgd_args(tmp_path, "late"), train_dataset=data,
                    data_collator=tiny.pad_collator(tokenizer), callbacks=[ContinueWithCE(monitor, switch_epoch=3)])
    # and when training begins, for arguments changed after the trainer was built
    trainer.args.num_train_epochs = 1
    with pytest.raises(ValueError, match=r"switch_epoch=1 leaves no epoch to train with CE.*num_train_epochs=1"):
        trainer.train()


def test_row_filter_and_loss_override_hooks(tmp_path, tokenizer, data):
    """The trainer's generic hooks alone: masked labels and a smaller count, checked arguments, and back."""
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=sgd_args(tmp_path, "hooks"),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    collate = tiny.pad_collator(tokenizer)
    batches = [collate([data[i] for i in range(0, 4)]), collate([data[i] for i in range(4, 8)])]
    tokens = [sum(t != -100 for t in data[i]["labels"][1:]) for i in range(8)]
    _, count = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
    assert int(count) == sum(tokens)
    trainer.set_row_filter([5, 1, 30])
    assert trainer.dece_row_filter == [1, 5, 30]
    drawn, count = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
    assert int(count) == sum(tokens) - tokens[1] - tokens[5]
    assert (drawn[0]["labels"][1] == -100).all() and (drawn[1]["labels"][1] == -100).all()
    assert torch.equal(drawn[0]["labels"][0], batches[0]["labels"][0])
    assert not (batches[0]["labels"][1] == -100).all()  # the batch handed in is not edited
    with pytest.raises(ValueError, match="carries none"):
        trainer.get_batch_samples(iter([{k: v for k, v in batches[0].items() if k != "example_id"}]), 1, "cpu")
    with pytest.raises(ValueError, match="unique non-negative"):
        trainer.set_row_filter([-1])
    trainer.set_row_filter(None)
    assert trainer.dece_row_filter == []
    trainer.set_loss_override(1.0, 0.0)
    assert trainer.dece_alpha == 1.0 and trainer.dece_label_smoothing == 0.0
    assert trainer._ce_since_step() == 0  # the current step
    with pytest.raises(ValueError, match="alpha"):
        trainer.set_loss_override(0.0)
    with pytest.raises(ValueError, match=r"`since_step` must not be after the current step 0, got 3"):
        trainer.set_loss_override(0.5, 0.0, since_step=3)
    assert trainer.dece_alpha == 1.0 and trainer._ce_since_step() == 0  # a refused call changes nothing
    trainer.set_loss_override(None)
    assert trainer.dece_alpha == 0.99 and trainer.dece_label_smoothing == trainer.dece.label_smoothing
    assert trainer._ce_since_step() is None


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with batch 4 each == one process with batch 8: the same rows dropped
    (decided on rank 0, broadcast) and the same final weights."""
    single, double = run_one_and_two_processes(tmp_path, "dist_continue.py", port="29537")
    one, two = (json.loads((d / "run.json").read_text()) for d in (single, double))
    assert one["dropped"] and two["dropped"] == one["dropped"] == one["row_filter"]
    assert two["switch_step"] == one["switch_step"]
    assert two["dece_alpha"] == one["dece_alpha"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-7)
    w1, w2 = load_file(single / "weights.safetensors"), load_file(double / "weights.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=0, atol=1e-5)


BENCH = ["bench", "--max_per_split", "48", "--losses", "dece+continue", "--alpha_bases", "0.5", "--seeds", "0",
         "--model", "tiny", "--warmup_epochs", "1", "--epochs", "2", "--max_test", "8", "--probe_size", "4",
         "--max_new_tokens", "4", "--max_source_tokens", "64", "--max_target_tokens", "8", "--batch_size", "8",
         "--codebleu_lang", "none"]


@pytest.mark.usefixtures("isolated_cache")
def test_bench_cell_records_the_switch(tmp_path, capsys):
    from dece_trainer.cli.main import main

    out = tmp_path / "bench"
    assert main([*BENCH, "--output_dir", str(out)]) == 0
    (record,) = json.loads((out / "results.json").read_text())["cells"]
    assert record["loss"] == "dece+continue" and record["key"].endswith("dece+continue-a0.5-s0")
    cont = record["continue"]  # the default with the audit: a guarded switch before training
    assert cont["switch_epoch"] == 0 and cont["fence"] == 2.5 and cont["guard"]["audit_confidence"] == 5.0
    assert cont["decision_epoch"] == (1 if cont["guard"]["deferred"] else 0)
    assert record["config"]["training"]["switch_epoch"] == 0
    assert cont["flagged"] + cont["kept"] == 48  # every training row (--max_per_split 48)
    assert cont["kept_poisoned"] <= cont["poisoned"] and cont["dropped_clean"] <= cont["flagged"]
    assert cont["switched"] == (cont["flagged"] > 0) and (cont["switch_step"] is not None) == cont["switched"]
    assert 0 <= record["report_auroc"] <= 1  # the report the decision read: the audit's and the training signal's
    assert 0 <= record["audit_report_auroc"] <= 1
    if cont["guard"]["deferred"]:  # decided at epoch 1 on both signals
        assert 0 <= record["token_report_auroc"] <= 1
    else:  # decided before training, on the audit alone
        assert "token_report_auroc" not in record and record["report_auroc"] == record["audit_report_auroc"]
    assert record["config"]["training"]["audit"] is True
    cell = out / "cells" / record["key"]
    assert json.loads((cell / OUTPUT_DIR / DECISION_FILE).read_text())["summary"]["flagged"] == cont["flagged"]
    assert "dece+continue (alpha_base 0.5), fence 2.5" in (out / "table.md").read_text()
    short = [*BENCH, "--output_dir", str(tmp_path / "short")]
    short[short.index("--epochs") + 1] = "1"
    with pytest.raises(SystemExit) as exit_info:
        main(short)
    assert exit_info.value.code == 2
    assert re.search(r"dece\+continue with --switch_epoch 0 is guarded.*--epochs above 1", capsys.readouterr().err)


def audited_run(tokenizer, args, rows, **kwargs):
    """A run whose monitor holds the data audit of ``rows`` (the training rows' texts, ids 0..n-1)."""
    from dece_trainer.audit import audit_pairs

    audit = audit_pairs([r["source"] for r in rows], [r["target"] for r in rows]).records()
    monitor = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False, audit=audit)
    callback = ContinueWithCE(monitor, **kwargs)
    trainer = ReferenceTrainer(model=tiny.make_model("llama", tokenizer), args=args,
                               train_dataset=add_example_ids(tiny.causal_dataset(tokenizer, rows)),
                               data_collator=tiny.pad_collator(tokenizer), callbacks=[monitor, callback])
    return trainer, callback, audit


def test_switch_epoch_0_trains_cross_entropy_from_the_first_step_without_the_rows_the_audit_flags(tmp_path,
                                                                                                    tokenizer):
    from dece_trainer.callbacks.poison_filter import decide

    rows = tiny.poison(tiny.make_pairs(40, seed=5), 0.1, seed=5)
    trainer, callback, audit = audited_run(tokenizer, sgd_args(tmp_path, "zero", num_train_epochs=2), rows,
                                           switch_epoch=0)
    trainer.train()
    expected = sorted(decide(audit, "score", FENCE).flagged)  # the audit's own decision, apart from the callback
    poisoned = sorted(i for i, r in enumerate(rows) if r["is_poisoned"])
    assert expected and set(poisoned) <= set(expected)  # the audit finds every planted row here
    assert callback.dropped_ids == expected and callback.switch_step == 0
    assert trainer.checked == 10  # every micro-batch of both epochs is plain CE over the kept rows
    assert {e["dece_alpha"] for e in logs_with(trainer, "loss")} == {1.0}
    saved = json.loads((tmp_path / "zero" / OUTPUT_DIR / DECISION_FILE).read_text())
    assert saved["switch_epoch"] == 0 and saved["decision_step"] == 0 and saved["summary"]["kept_poisoned"] == 0
    report = [json.loads(line) for line in (tmp_path / "zero" / OUTPUT_DIR / "suspicious.jsonl").open()]
    assert [r["example_id"] for r in report[:len(expected)]] == [r["example_id"] for r in audit[:len(expected)]]
    trainer.create_model_card(model_name="tiny-continue-0")
    card = (tmp_path / "zero" / "README.md").read_text()
    assert "from the first step, without the" in card and "ce_since_step: 0" in card
    assert "This model was fine-tuned with plain cross-entropy from its first step" in card


def test_switch_epoch_0_needs_the_audit_and_a_resumed_run_reuses_its_decision(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="switch_epoch=0 decides before training on the data audit alone"):
        ContinueWithCE(EarlyLearningCallback(), switch_epoch=0)
    rows = tiny.poison(tiny.make_pairs(40, seed=5), 0.1, seed=5)
    args = sgd_args(tmp_path, "zr", num_train_epochs=2, save_strategy="epoch")
    first, first_cb, _ = audited_run(tokenizer, args, rows, switch_epoch=0)
    first.train()
    again, again_cb, _ = audited_run(tokenizer, args, rows, switch_epoch=0)
    again._decide_calls = 0
    original = again_cb._decide
    again_cb._decide = lambda a: (setattr(again, "_decide_calls", again._decide_calls + 1), original(a))[1]
    again.train(resume_from_checkpoint=str(tmp_path / "zr" / "checkpoint-5"))
    assert again._decide_calls == 0 and again_cb.dropped_ids == first_cb.dropped_ids
    assert_same_weights(first.model, again.model, atol=1e-6)


def test_the_guard_reads_the_audits_top_robust_z(tmp_path, tokenizer):
    from dece_trainer.outliers import robust_z

    rows = tiny.poison(tiny.make_pairs(40, seed=5), 0.1, seed=5)
    trainer, callback, audit = audited_run(tokenizer, sgd_args(tmp_path, "g", num_train_epochs=2), rows,
                                           switch_epoch=0)
    trainer.train()
    top = float(robust_z([r["score"] for r in audit]).max())  # 8.48 on these rows: above the default 5
    assert callback.guard == {"audit_top_z": round(top, 4), "audit_confidence": continue_ce.AUDIT_CONFIDENCE,
                              "deferred": False}
    assert callback.switch_step == 0 and callback.decision_epoch == 0
    assert [e[continue_ce.AUDIT_TOP_Z] for e in logs_with(trainer, continue_ce.AUDIT_TOP_Z)] == [round(top, 4)]
    with pytest.raises(ValueError, match="audit_confidence"):
        ContinueWithCE(callback.monitor, switch_epoch=0, audit_confidence=-1)
    # the default switch point: before training (guarded) where the monitor holds the audit, else after epoch 1
    assert ContinueWithCE(callback.monitor).switch_epoch == 0
    assert ContinueWithCE(EarlyLearningCallback()).switch_epoch == 1


@pytest.mark.parametrize("confidence", [10.0, None])
def test_an_unconfident_audit_waits_for_epoch_1_as_switch_epoch_1_does(tmp_path, tokenizer, confidence):
    """Below ``audit_confidence`` a switch before training is the run that switches after epoch 1 (same rows
    dropped, same weights); with ``audit_confidence=None`` the audit decides before training whatever its margin."""
    rows = tiny.poison(tiny.make_pairs(40, seed=5), 0.1, seed=5)
    guarded, guarded_cb, _ = audited_run(tokenizer, sgd_args(tmp_path, "guarded", num_train_epochs=3), rows,
                                         switch_epoch=0, audit_confidence=confidence)
    guarded.train()
    if confidence is None:
        assert guarded_cb.guard is None and guarded_cb.switch_step == 0
        assert not logs_with(guarded, continue_ce.AUDIT_TOP_Z)
        return
    reference, reference_cb, _ = audited_run(tokenizer, sgd_args(tmp_path, "one", num_train_epochs=3), rows,
                                             switch_epoch=1)
    reference.train()
    assert guarded_cb.guard["deferred"] and guarded_cb.decision_epoch == 1
    assert guarded_cb.switch_step == reference_cb.switch_step == 5  # 40 rows, batches of 8: epoch 1 ends at step 5
    assert guarded_cb.dropped_ids == reference_cb.dropped_ids and guarded_cb.dropped_ids
    assert [e["dece_alpha"] < 1 for e in logs_with(guarded, "loss")] == [True] * 5 + [False] * 10  # DeCE, then CE
    assert_same_weights(guarded.model, reference.model, atol=1e-6)
    saved = json.loads((tmp_path / "guarded" / OUTPUT_DIR / DECISION_FILE).read_text())
    assert saved["decision_epoch"] == 1 and saved["switch_epoch"] == 0 and saved["guard"]["deferred"] is True
    guarded.create_model_card(model_name="tiny-guarded")
    card = (tmp_path / "guarded" / "README.md").read_text()
    assert "below the 10 a switch before training needs, so the run trained with DeCE to the end of epoch 1" in card


def test_a_deferred_switch_resumes_waiting_and_refuses_what_it_cannot_keep(tmp_path, tokenizer):
    rows = tiny.poison(tiny.make_pairs(40, seed=5), 0.1, seed=5)
    args = sgd_args(tmp_path, "d", num_train_epochs=3, save_strategy="steps", save_steps=2)
    first, first_cb, _ = audited_run(tokenizer, args, rows, switch_epoch=0, audit_confidence=10.0)
    first.train()
    saved = json.loads((tmp_path / "d" / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"][STATE_KEY]["pending"] is True  # the deferral, before the decision
    again, again_cb, _ = audited_run(tokenizer, args, rows, switch_epoch=0, audit_confidence=10.0)
    again.train(resume_from_checkpoint=str(tmp_path / "d" / "checkpoint-2"))
    assert again_cb.guard == first_cb.guard and again_cb.dropped_ids == first_cb.dropped_ids
    assert again_cb.switch_step == first_cb.switch_step == 5
    assert_same_weights(first.model, again.model, atol=1e-6)
    # resumed with another guard: refused, naming both values
    other, _, _ = audited_run(tokenizer, args, rows, switch_epoch=0, audit_confidence=9.0)
    with pytest.raises(ValueError, match=r"taken with audit_confidence=10, and this run has audit_confidence=9.0"):
        other.train(resume_from_checkpoint=str(tmp_path / "d" / "checkpoint-2"))
    # a pending deferral in a checkpoint past epoch 1 (step 6 of 5 a epoch) cannot come from a run that trained
    # through the decision: refused, not decided late
    late_file = tmp_path / "d" / "checkpoint-6" / "trainer_state.json"
    late = json.loads(late_file.read_text())
    assert late["stateful_callbacks"][STATE_KEY].get("pending") is None  # decided at step 5
    late["stateful_callbacks"][STATE_KEY] = saved["stateful_callbacks"][STATE_KEY]
    late_file.write_text(json.dumps(late))
    stale, _, _ = audited_run(tokenizer, args, rows, switch_epoch=0, audit_confidence=10.0)
    with pytest.raises(ValueError, match=r"epoch 1.2 \(step 6\) .* due at the end of epoch 1, is still pending"):
        stale.train(resume_from_checkpoint=str(tmp_path / "d" / "checkpoint-6"))
    # a malformed guard: one error naming the checkpoint
    state_file = tmp_path / "d" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"][STATE_KEY]["guard"]["audit_confidence"]
    state_file.write_text(json.dumps(state))
    broken, _, _ = audited_run(tokenizer, args, rows, switch_epoch=0, audit_confidence=10.0)
    with pytest.raises(ValueError, match=r"checkpoint at step 2 .*`guard` must be a JSON object"):
        broken.train(resume_from_checkpoint=str(tmp_path / "d" / "checkpoint-2"))
    # a guarded run needs an epoch after the one it may wait for: refused when the trainer is built
    with pytest.raises(ValueError, match=r"switch_epoch=0 is guarded \(audit_confidence=10\).*num_train_epochs=1"):
        audited_run(tokenizer, sgd_args(tmp_path, "short", num_train_epochs=1), rows, switch_epoch=0,
                    audit_confidence=10.0)
