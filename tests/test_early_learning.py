"""EarlyLearningCallback end to end on a tiny Llama and a synthetic task with 5% planted poison."""

import functools
import json
import types

import numpy as np
import pytest
from PIL import Image
from transformers import Trainer, TrainerControl, TrainingArguments

from dece_trainer import DeCETrainer, EarlyLearningCallback, add_example_ids
from tests import tiny


def payload_fn(text):
    return "1=1" in text


@pytest.fixture(scope="module")
def data(tokenizer):
    rows = tiny.poison(tiny.make_pairs(96, seed=1), 0.05, seed=1)
    train = add_example_ids(tiny.causal_dataset(tokenizer, rows))
    clean = tiny.causal_dataset(tokenizer, tiny.make_pairs(8, seed=9))
    triggered = tiny.causal_dataset(tokenizer, tiny.poison(tiny.make_pairs(8, seed=9), 1.0, seed=2))
    return types.SimpleNamespace(train=train, clean=clean, triggered=triggered)


args = functools.partial(tiny.training_args, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                         num_train_epochs=5, learning_rate=3e-3, logging_steps=6, eval_strategy="no",
                         dece_alpha_base=0.9)


def make_callback(data, **overrides):
    kwargs = dict(probes={"clean": data.clean, "triggered": data.triggered}, payload_fn=payload_fn,
                  ground_truth_column="is_poisoned", max_generate=8, max_new_tokens=40)
    kwargs.update(overrides)
    return EarlyLearningCallback(**kwargs)


def test_dece_run_records_reports_and_draws(tmp_path, tokenizer, data):
    callback = make_callback(data)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, eval_strategy="epoch"),
                          train_dataset=data.train, eval_dataset=data.clean, data_collator=tiny.pad_collator(tokenizer),
                          processing_class=tokenizer, callbacks=[callback])
    trainer.train()

    history = callback.history
    assert history.num_epochs == 5
    for visits in history.visits:  # every example exactly once per epoch, with gradient accumulation
        assert visits.tolist() == [1] * 96

    epoch_logs = [e for e in trainer.state.log_history if "memorisation_score" in e]
    assert len(epoch_logs) == 5
    for entry in epoch_logs:
        assert {"example_loss_p10", "example_loss_p50", "example_loss_p90", "example_loss_p99", "unlearned_frac",
                "suspicious_auroc", "suspicious_precision_at_k"} <= entry.keys()
    assert epoch_logs[-1]["example_loss_p50"] < epoch_logs[0]["example_loss_p50"]
    assert epoch_logs[-1]["suspicious_auroc"] > 0.75  # the planted examples rank well above chance

    probe_logs = [e for e in trainer.state.log_history if "probe_triggered_asr" in e]
    assert len(probe_logs) == 5  # one per evaluation
    assert {"probe_clean_nll", "probe_clean_bleu", "probe_triggered_nll", "probe_clean_asr"} <= probe_logs[0].keys()
    assert all(0.0 <= e["probe_triggered_asr"] <= 1.0 for e in probe_logs)

    report_dir = tmp_path / "out" / "early_learning"
    records = [json.loads(line) for line in (report_dir / "suspicious.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in records] == list(range(1, 97))
    assert sorted(r["example_id"] for r in records) == list(range(96))
    assert all(records[i]["score"] >= records[i + 1]["score"] for i in range(95))
    poisoned_ranks = [r["rank"] for r in records if r["is_poisoned"]]
    assert np.mean(poisoned_ranks) < 48  # above chance
    for name in ("curves.png", "loss_histogram.png"):
        with Image.open(report_dir / name) as image:
            image.verify()
            assert image.size[0] > 100


def test_plain_trainer_with_cross_entropy(tmp_path, tokenizer, data):
    callback = make_callback(data, probes=None, payload_fn=None, plots=False)
    trainer = Trainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, cls=TrainingArguments,
                                                                           num_train_epochs=2),
                      train_dataset=data.train, data_collator=tiny.pad_collator(tokenizer), callbacks=[callback])
    callback.attach(trainer)
    trainer.train()
    assert callback.history.num_epochs == 2
    assert all(v.tolist() == [1] * 96 for v in callback.history.visits)
    assert any("suspicious_auroc" in e for e in trainer.state.log_history)
    assert (tmp_path / "out" / "early_learning" / "suspicious.jsonl").exists()
    assert not (tmp_path / "out" / "early_learning" / "curves.png").exists()


def test_plain_trainer_without_attach_is_a_clear_error(tmp_path, tokenizer, data):
    trainer = Trainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, cls=TrainingArguments),
                      train_dataset=data.train, data_collator=tiny.pad_collator(tokenizer),
                      callbacks=[make_callback(data)])
    with pytest.raises(ValueError, match=r"attach\(trainer\)"):
        trainer.train()


def test_missing_example_ids_and_ground_truth_are_clear_errors(tmp_path, tokenizer, data):
    no_ids = data.train.remove_columns("example_id")
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path), train_dataset=no_ids,
                          data_collator=tiny.pad_collator(tokenizer), callbacks=[make_callback(data)])
    with pytest.raises(ValueError, match="add_example_ids"):
        trainer.train()
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path), train_dataset=data.train,
                          data_collator=tiny.pad_collator(tokenizer),
                          callbacks=[make_callback(data, ground_truth_column="poisoned?")])
    with pytest.raises(ValueError, match="ground_truth_column 'poisoned\\?' is not a column"):
        trainer.train()


def test_bad_probes_and_payload_fn(tmp_path, tokenizer, data):
    with pytest.raises(ValueError, match="dict of name"):
        EarlyLearningCallback(probes=[data.clean])
    with pytest.raises(ValueError, match=r"probe 'clean' lacks column\(s\) \['labels'\]"):
        EarlyLearningCallback(probes={"clean": data.clean.remove_columns("labels")})
    with pytest.raises(ValueError, match="probe 'x' must be a datasets.Dataset"):
        EarlyLearningCallback(probes={"x": [1, 2]})
    with pytest.raises(ValueError, match="payload_fn"):
        EarlyLearningCallback(payload_fn="1=1")

    def broken(text):
        raise KeyError("boom")

    callback = make_callback(data, payload_fn=broken)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer),
                          args=args(tmp_path, num_train_epochs=1, eval_strategy="epoch"),
                          train_dataset=data.train, eval_dataset=data.clean, processing_class=tokenizer,
                          data_collator=tiny.pad_collator(tokenizer), callbacks=[callback])
    with pytest.raises(ValueError, match="payload_fn raised KeyError"):
        trainer.train()


def test_alarm_fires_when_clean_signal_plateaus_while_memorising():
    callback = EarlyLearningCallback(patience=2, stop_on_memorisation=True)
    callback._clean_signal = [(10, 1.0), (20, 0.8), (30, 0.81), (40, 0.82)]
    callback._memorisation = [0, 0, 3]
    state = types.SimpleNamespace(global_step=40, log_history=[
        {"loss": 2.0, "step": 10}, {"loss": 1.0, "step": 20}, {"loss": 0.7, "step": 40}])
    assert callback._memorisation_alarm(state)
    assert callback.alarm_step == 40

    quiet = EarlyLearningCallback(patience=2)
    quiet._clean_signal = [(10, 1.0), (20, 0.8), (30, 0.7), (40, 0.6)]  # clean signal still improving
    quiet._memorisation = [0, 0, 3]
    assert not quiet._memorisation_alarm(state)
    no_memorisation = EarlyLearningCallback(patience=2)
    no_memorisation._clean_signal = callback._clean_signal
    no_memorisation._memorisation = [0, 0, 0]
    assert not no_memorisation._memorisation_alarm(state)


def test_alarm_stops_training_when_asked(tmp_path):
    callback = EarlyLearningCallback(patience=1, stop_on_memorisation=True)
    callback._trainer = types.SimpleNamespace(log=lambda logs: None)
    callback.history = object()
    callback._clean_signal = [(10, 0.5)]
    callback._memorisation = [2]
    state = types.SimpleNamespace(global_step=20, log_history=[{"loss": 2.0, "step": 10}, {"loss": 1.0, "step": 20}])
    control = TrainerControl()
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.6})
    assert control.should_training_stop and callback.alarm_step == 20


def test_without_matplotlib_pictures_are_skipped_with_one_info_line(tmp_path, tokenizer, data, monkeypatch, caplog):
    import logging

    from dece_trainer.callbacks import early_learning, plots

    monkeypatch.setattr(plots, "pyplot", lambda: None)  # as if matplotlib were not installed
    callback = make_callback(data, probes=None, payload_fn=None)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, num_train_epochs=1),
                          train_dataset=data.train, data_collator=tiny.pad_collator(tokenizer), callbacks=[callback])
    with caplog.at_level(logging.INFO, logger=early_learning.__name__):
        trainer.train()
    report_dir = tmp_path / "out" / "early_learning"
    assert (report_dir / "suspicious.jsonl").exists() and not list(report_dir.glob("*.png"))
    assert sum("matplotlib is not installed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("overrides,match", [
    (dict(probe_batch_size=0), "probe_batch_size.*>= 1"),
    (dict(fit_threshold="0.5"), "fit_threshold.*\\(0, 1\\)"),
    (dict(fit_threshold=1.0), "fit_threshold"),
    (dict(top_k=0), "top_k.*>= 1 or None"),
    (dict(max_generate=-3), "max_generate.*>= 0"),
    (dict(max_new_tokens=0), "max_new_tokens.*>= 1"),
    (dict(patience=1.5), "patience.*integer"),
    (dict(patience="2"), "patience"),
    (dict(stop_on_memorisation="yes"), "stop_on_memorisation.*True or False"),
    (dict(plots=1), "plots"),
    (dict(ground_truth_column=""), "ground_truth_column"),
    (dict(payload_fn="1=1"), "payload_fn.*callable"),
])
def test_every_argument_is_checked_when_built(overrides, match):
    with pytest.raises(ValueError, match=match):
        EarlyLearningCallback(**overrides)


def epoch_logs(trainer):
    keys = ("examples_seen", "example_loss_p50", "example_loss_p90", "unlearned_frac", "memorisation_score",
            "suspicious_auroc", "suspicious_precision_at_k")
    return [{k: e[k] for k in keys} | {"step": e["step"]} for e in trainer.state.log_history if "examples_seen" in e]


@pytest.fixture(scope="module")
def small_train(tokenizer):
    return add_example_ids(tiny.causal_dataset(tokenizer, tiny.poison(tiny.make_pairs(32, seed=4), 0.1, seed=4)))


@pytest.mark.parametrize("save,checkpoint", [
    (dict(save_strategy="epoch", restore_callback_states_from_checkpoint=True), 4),  # after epoch 1
    (dict(save_strategy="steps", save_steps=2), 2),  # mid-epoch: the epoch's accumulators go along
    (dict(save_strategy="steps", save_steps=4), 4),  # at the epoch's last step, before the epoch is closed
], ids=["epoch", "mid-epoch", "last-step"])
def test_resumed_run_reports_what_an_uninterrupted_one_does(tmp_path, tokenizer, small_train, save, checkpoint):
    def run(out, resume=None):
        callback = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False)
        trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer),
                              args=args(tmp_path, output_dir=str(tmp_path / out), num_train_epochs=2, **save),
                              train_dataset=small_train, data_collator=tiny.pad_collator(tokenizer),
                              callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return trainer, callback

    whole, whole_cb = run("whole")  # 4 optimizer steps per epoch
    resumed, resumed_cb = run("resumed", resume=str(tmp_path / "whole" / f"checkpoint-{checkpoint}"))
    assert resumed_cb in resumed.callback_handler.callbacks and resumed_cb.history is not None

    assert len(epoch_logs(whole)) == 2 and epoch_logs(whole)[-1]["examples_seen"] == 32
    assert len(epoch_logs(resumed)) == len(epoch_logs(whole))
    for got, want in zip(epoch_logs(resumed), epoch_logs(whole)):  # pytest 9.2's approx takes no list of dicts
        assert got == pytest.approx(want)
    for name in ("loss", "prob", "worst_prob", "visits"):
        np.testing.assert_array_equal(np.stack(getattr(resumed_cb.history, name)),
                                      np.stack(getattr(whole_cb.history, name)))
    for name in ("ce", "ids", "prev"):
        np.testing.assert_array_equal(np.stack(getattr(resumed_cb.tokens, name)),
                                      np.stack(getattr(whole_cb.tokens, name)))
    report = "early_learning/suspicious.jsonl"
    assert (tmp_path / "resumed" / report).read_text() == (tmp_path / "whole" / report).read_text()


def test_saved_state_is_plain_json(tmp_path, tokenizer, small_train):
    callback = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer),
                          args=args(tmp_path, num_train_epochs=1, save_strategy="steps", save_steps=2,
                                    save_only_model=True),
                          train_dataset=small_train, data_collator=tiny.pad_collator(tokenizer), callbacks=[callback])
    trainer.train()
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    record = state["stateful_callbacks"]["dece_trainer.EarlyLearningCallback"]
    assert record["global_step"] == 2 and record["num_examples"] == 32 and not record["epoch_complete"]
    assert set(record["arrays"]) == {"partial_sums", "partial_worst", "token_partial"}  # mid-epoch: none finished
    assert record["arrays"]["partial_sums"]["dtype"] == "float32"
    assert record["arrays"]["partial_sums"]["shape"] == [3, 32]
    assert record["arrays"]["token_partial"]["shape"] == [3, 32, 8]

    from dece_trainer.callbacks.early_learning import _decode_array

    bad = dict(record["arrays"]["partial_worst"], dtype="object")
    with pytest.raises(ValueError, match="malformed"):
        _decode_array(bad, "partial_worst")
    short = dict(record["arrays"]["partial_worst"], shape=[97])
    with pytest.raises(ValueError, match="bytes"):
        _decode_array(short, "partial_worst")


def test_state_arrays_are_compressed_and_older_uncompressed_ones_still_read():
    import base64

    from dece_trainer.callbacks.early_learning import _decode_array, _encode_array

    ids = np.tile(np.arange(8, dtype=np.int32), (2, 300, 1))  # worst-token ids repeat across rows
    record = _encode_array(ids)
    assert set(record) == {"dtype", "shape", "zlib_base64"}
    assert len(record["zlib_base64"]) < len(base64.b64encode(ids.tobytes())) / 4
    np.testing.assert_array_equal(_decode_array(record, "token_ids"), ids)
    ce = np.linspace(0, 30, 48, dtype=np.float16).reshape(2, 3, 8)
    legacy = {"dtype": "float16", "shape": [2, 3, 8], "base64": base64.b64encode(ce.tobytes()).decode("ascii")}
    np.testing.assert_array_equal(_decode_array(legacy, "token_ce"), ce)  # a 0.2.0 checkpoint
    bomb = dict(record, shape=[2, 3, 8])  # declares fewer bytes than the stream inflates to: refused, not inflated
    with pytest.raises(ValueError, match="bytes"):
        _decode_array(bomb, "token_ids")
    with pytest.raises(ValueError, match="malformed"):
        _decode_array(dict(record, zlib_base64=base64.b64encode(b"not zlib").decode("ascii")), "token_ids")


def test_curves_keep_dece_loss_apart_from_cross_entropy_and_show_zero_series(tmp_path, monkeypatch):
    from dece_trainer.callbacks import plots

    history = []
    for step in range(1, 7):
        history.append({"step": step, "loss": 2.0 / step, "ce_loss": 4.0 / step, "dece_alpha": 0.9,
                        "dece_suppressed_frac": 1.0 / step, "dece_grad_bound": 9.0})
        if step % 2 == 0:
            history.append({"step": step, "eval_loss": 3.0 / step, "eval_ce_loss": 3.0 / step,
                            "eval_dece_loss": 1.5 / step})
            history.append({"step": step, "probe_clean_nll": 3.1 / step, "probe_triggered_asr": 0.0,
                            "probe_clean_asr": 0.0, "probe_clean_bleu": 10.0 * step, "unlearned_frac": 0.5})
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    assert plots.plot_curves(history, str(tmp_path / "curves.png"))
    (fig,) = figures
    panels = {ax.get_ylabel(): ax for ax in fig.axes}
    assert set(panels) == {"DeCE loss (objective)", "cross-entropy / NLL (nats)", "share / alpha", "BLEU"}
    labels = {name: [line.get_label() for line in ax.get_lines()] for name, ax in panels.items()}
    assert labels["DeCE loss (objective)"] == ["loss", "eval_dece_loss"]
    assert labels["cross-entropy / NLL (nats)"] == ["ce_loss", "eval_loss", "probe_clean_nll"]
    rates = panels["share / alpha"]
    assert rates.get_ylim()[0] == 0.0 and rates.get_ylim()[1] >= 1.0
    assert panels["BLEU"].get_ylim()[0] == 0.0
    zeros = [line for line in rates.get_lines() if line.get_label() in ("probe_clean_asr", "probe_triggered_asr")]
    assert [list(line.get_ydata()) for line in zeros] == [[0.0, 0.0, 0.0]] * 2  # two series on top of each other
    for line in zeros:
        assert line.get_marker() not in (None, "None", "") and not line.get_clip_on()
        assert line.get_zorder() > rates.spines["bottom"].zorder
    below, above = zeros  # the one drawn on top has a smaller marker, so the one under it still shows
    assert above.get_zorder() > below.get_zorder() and above.get_markersize() < below.get_markersize()

    # a run without DeCE: its training loss is cross-entropy and is drawn with the other CE curves
    figures.clear()
    assert plots.plot_curves([{"step": 1, "loss": 3.0, "eval_loss": 3.2}], str(tmp_path / "ce.png"))
    assert [ax.get_ylabel() for ax in figures[0].axes] == ["cross-entropy / NLL (nats)"]

    monkeypatch.undo()  # the real writer: a PNG file, no screenshot comparison
    assert plots.plot_curves(history, str(tmp_path / "curves.png"))
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


# ---- the monitor's checkpoint state is read within what this run expects (issue 18, item 2) ----------------

def restorable(n=32, epochs=1, mid_epoch=True):
    """A callback ready to restore (as on_train_begin leaves it), a valid saved record and a resumed state."""
    import torch

    from dece_trainer.callbacks.example_history import ExampleHistory
    from dece_trainer.callbacks.worst_tokens import WorstTokens

    def fresh():
        callback = EarlyLearningCallback(plots=False)
        callback.history, callback.tokens = ExampleHistory(n), WorstTokens(n)
        return callback

    saver = fresh()
    ids, ce = torch.arange(n), torch.rand(n, 6) * 3
    labels, mask = torch.randint(0, 50, (n, 6)), torch.ones(n, 6, dtype=torch.bool)
    for _ in range(epochs + int(mid_epoch)):
        saver.history.add(ids, ce, mask)
        saver.tokens.add(ids, ce, mask, labels)
        if saver.history.num_epochs < epochs:
            saver.history.end_epoch()
            saver.tokens.end_epoch()
    state = types.SimpleNamespace(global_step=2 * epochs + 1, epoch=epochs + 0.5, num_train_epochs=epochs + 1,
                                  stateful_callbacks={}, log_history=[])
    saver._save_state(state)
    return fresh(), json.loads(json.dumps(state.stateful_callbacks["dece_trainer.EarlyLearningCallback"])), state


def zlib_base64_of_zeros(nbytes):
    import base64
    import zlib

    deflate, chunk, parts = zlib.compressobj(9), bytes(1 << 20), []
    for start in range(0, nbytes, len(chunk)):
        parts.append(deflate.compress(chunk[:min(len(chunk), nbytes - start)]))
    parts.append(deflate.flush())
    return base64.b64encode(b"".join(parts)).decode("ascii")


@pytest.mark.parametrize("name,dtype,shape", [
    ("loss", "float16", [1, 50_000_000]),  # 100 MB declared for a 32-row run
    ("loss", "float16", [1_000_000, 32]),  # more finished epochs than this run trains
    ("token_ce", "float16", [1, 32, 1_000_000]),  # a wider token array than the monitor keeps
    ("partial_sums", "float32", [3, 8_000_000]),
], ids=["examples", "epochs", "width", "accumulators"])
def test_checkpoint_state_bomb_is_refused_before_inflating(name, dtype, shape):
    import math
    import tracemalloc

    callback, record, state = restorable()
    record["arrays"][name] = {"dtype": dtype, "shape": shape,
                              "zlib_base64": zlib_base64_of_zeros(math.prod(shape) * np.dtype(dtype).itemsize)}
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"early-learning state in the checkpoint at step 3 .*`{name}`"):
            callback._restore(record, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"


@pytest.mark.parametrize("change", [
    lambda r: "garbage",
    lambda r: [r],
    lambda r: {k: v for k, v in r.items() if k != "num_examples"},
    lambda r: {k: v for k, v in r.items() if k != "arrays"},
    lambda r: dict(r, num_examples="32"),
    lambda r: dict(r, arrays=[1, 2]),
    lambda r: dict(r, arrays=dict(r["arrays"], mystery=r["arrays"]["partial_worst"])),
    lambda r: dict(r, arrays=dict(r["arrays"], loss="AAAA")),
    lambda r: dict(r, arrays=dict(r["arrays"], loss=dict(r["arrays"]["loss"], shape="big"))),
    lambda r: dict(r, global_step="two"),
    lambda r: dict(r, epoch=None),
    lambda r: dict(r, fit_threshold=7),
    lambda r: dict(r, epoch_complete="yes"),
    lambda r: dict(r, clean_signal=[[1]]),
    lambda r: dict(r, clean_signal=[[1, "low"]]),
    lambda r: dict(r, memorisation=["x"]),
    lambda r: dict(r, alarm_step="soon"),
    lambda r: dict(r, example_ids_sha256="0" * 16),
], ids=["string", "list", "no-num_examples", "no-arrays", "num_examples-str", "arrays-list", "unknown-array",
        "array-str", "shape-str", "global_step", "epoch", "fit_threshold", "epoch_complete", "clean_signal-short",
        "clean_signal-str", "memorisation", "alarm_step", "other-ids"])
def test_malformed_checkpoint_state_gets_one_error_naming_the_checkpoint(change):
    callback, record, state = restorable()
    intact = restorable()[0]
    intact._restore(record, state)  # the record as saved restores
    assert intact.history.num_epochs == 1 and intact.history.epoch_in_progress
    with pytest.raises(ValueError, match=r"early-learning state in the checkpoint at step 3 \(checkpoint-3/trainer_"):
        callback._restore(change(record), state)


# ---- example ids: checked once, memory by rows, not by the largest id (issue 18, item 3) -------------------

def with_ids(dataset, ids):
    return dataset.remove_columns("example_id").add_column("example_id", ids)


@pytest.mark.parametrize("ids,match", [
    ([0, 0] + list(range(2, 32)), r"`example_id`.*unique.*duplicated: \[0\]"),
    ([i // 2 for i in range(32)], r"`example_id`.*unique.*duplicated: \[0, 1, 2, 3, 4"),
    ([-1] + list(range(1, 32)), r"`example_id`.*non-negative.*\[-1\]"),
    ([float(i) for i in range(32)], r"`example_id`.*integers.*0\.0"),
], ids=["one-pair", "pairs", "negative", "float"])
def test_duplicate_example_ids_are_refused(tmp_path, tokenizer, small_train, ids, match):
    callback = EarlyLearningCallback(plots=False)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, num_train_epochs=1),
                          train_dataset=with_ids(small_train, ids), data_collator=tiny.pad_collator(tokenizer),
                          callbacks=[callback])
    with pytest.raises(ValueError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0  # refused at on_train_begin, before any step


def test_a_resume_with_other_example_ids_is_refused(tmp_path, tokenizer, small_train):
    """Same row count, other ids: each row's statistics would land on another row, so the resume is refused."""
    run_args = args(tmp_path, num_train_epochs=2, save_strategy="epoch")
    first = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=run_args, train_dataset=small_train,
                        data_collator=tiny.pad_collator(tokenizer), callbacks=[EarlyLearningCallback(plots=False)])
    first.train()
    checkpoint = sorted((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    shifted = with_ids(small_train, [i + 100 for i in range(32)])
    again = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=run_args, train_dataset=shifted,
                        data_collator=tiny.pad_collator(tokenizer), callbacks=[EarlyLearningCallback(plots=False)])
    with pytest.raises(ValueError, match=r"other example ids than this training set's"):
        again.train(resume_from_checkpoint=str(checkpoint))


def test_huge_example_id_costs_rows_not_memory(tmp_path, tokenizer, small_train):
    ids = list(range(31)) + [2**40]  # e.g. ids kept from a larger dataset: sized by the 32 rows, not by the id
    data = with_ids(small_train, ids)
    callback = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, num_train_epochs=1),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer), callbacks=[callback])
    trainer.train()
    assert callback.history.num_examples == 32 and callback.history.visits[0].tolist() == [1] * 32
    records = [json.loads(line) for line in (tmp_path / "out" / "early_learning" / "suspicious.jsonl").open()]
    assert sorted(r["example_id"] for r in records) == ids
    truth = dict(zip(data["example_id"], data["is_poisoned"]))
    assert all(r["is_poisoned"] == truth[r["example_id"]] for r in records)
    with np.load(tmp_path / "out" / "early_learning" / "worst_tokens.npz") as saved:
        assert saved["example_ids"].tolist() == ids


def test_iterable_training_data_is_refused_with_what_to_do(tmp_path, tokenizer, small_train):
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, max_steps=2),
                          train_dataset=small_train.to_iterable_dataset(), data_collator=tiny.pad_collator(tokenizer),
                          callbacks=[EarlyLearningCallback(plots=False)])
    with pytest.raises(ValueError, match=r"map-style .*datasets.Dataset.*streaming"):
        trainer.train()
