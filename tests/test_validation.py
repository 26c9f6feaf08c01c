"""One validator for every entry point: the same bad value gets the same answer from the functional loss, the
module, the schedule, the trainer settings and the loss function."""

import math

import numpy as np
import pytest
import torch

from dece_trainer import (
    DeCELoss,
    DeCESettings,
    DeCETrainingArguments,
    dece_alpha,
    deceptive_cross_entropy,
    grad_bound,
    make_dece_loss_func,
)
from dece_trainer import validation as v

LOGITS, LABELS = torch.randn(3, 5), torch.tensor([0, 1, 2])

ALPHA_ENTRY_POINTS = {
    "functional": lambda a: deceptive_cross_entropy(LOGITS, LABELS, alpha=a),
    "module": lambda a: DeCELoss(alpha_base=a),
    "schedule": lambda a: dece_alpha(a, 0.0),
    "grad_bound": lambda a: grad_bound(a),
    "settings": lambda a: DeCESettings(alpha_base=a),
    "loss_func": lambda a: make_dece_loss_func(alpha_base=a),
}
SMOOTHING_ENTRY_POINTS = {
    "functional": lambda e: deceptive_cross_entropy(LOGITS, LABELS, alpha=0.9, label_smoothing=e),
    "module": lambda e: DeCELoss(label_smoothing=e),
    "settings": lambda e: DeCESettings(label_smoothing=e),
    "loss_func": lambda e: make_dece_loss_func(label_smoothing=e),
}


@pytest.mark.parametrize("entry", sorted(ALPHA_ENTRY_POINTS))
@pytest.mark.parametrize("bad", [True, False, 0.0, -0.5, 1.5, math.nan, math.inf, "0.9", None, np.float64(1.2)])
def test_bad_alpha_is_refused_everywhere(entry, bad):
    if bad is None and entry in ("settings", "loss_func"):
        pytest.skip("None means 'not given' there: the default final alpha (next test)")
    with pytest.raises(ValueError, match=r"alpha.*\(0, 1\]"):
        ALPHA_ENTRY_POINTS[entry](bad)


def test_no_alpha_means_the_default_final_alpha_whatever_the_run_length():
    from dece_trainer.trainer.dece_config import DEFAULT_ALPHA_FINAL

    settings = DeCESettings()
    assert settings.alpha_base is None and settings.alpha_final == DEFAULT_ALPHA_FINAL == 0.5
    for epochs in (1, 2, 5, 10):  # the epoch schedule ends at alpha_base ** epochs = 0.5
        assert settings.resolved_alpha_base(epochs) ** epochs == pytest.approx(0.5)
    assert DeCESettings(alpha_base=0.9).alpha_final is None  # a given alpha_base is used as given
    assert DeCESettings(alpha_base=0.9).resolved_alpha_base(3) == 0.9
    assert make_dece_loss_func().settings.alpha_final == 0.5
    import sys

    with pytest.raises(ValueError, match="run length.*unknown.*dece_alpha_base"):
        settings.resolved_alpha_base(float(sys.maxsize))  # transformers' length of a stream with max_steps
    assert DeCESettings(alpha_base=0.9).resolved_alpha_base(float(sys.maxsize)) == 0.9


@pytest.mark.parametrize("entry", sorted(ALPHA_ENTRY_POINTS))
@pytest.mark.parametrize("good", [0.9, 1, np.float32(0.9), np.float64(0.5)])
def test_numpy_and_python_numbers_are_accepted_everywhere(entry, good):
    alpha = float(good)
    used = {  # each entry point took the number as that float
        "functional": lambda loss: bool(torch.isfinite(loss)) and loss.dtype == torch.float32,
        "module": lambda module: type(module.alpha_base) is float and module.alpha_base == alpha,
        "schedule": lambda value: value == pytest.approx(alpha),
        "grad_bound": lambda bound: bound == (math.inf if alpha == 1 else pytest.approx(alpha / (1 - alpha))),
        "settings": lambda settings: type(settings.alpha_base) is float and settings.alpha_base == alpha,
        "loss_func": lambda loss_fn: loss_fn.settings.alpha_base == alpha,
    }[entry]
    assert used(ALPHA_ENTRY_POINTS[entry](good))


@pytest.mark.parametrize("entry", sorted(SMOOTHING_ENTRY_POINTS))
@pytest.mark.parametrize("bad", [True, 1.0, -0.1, math.nan, "0.1"])
def test_bad_label_smoothing_is_refused_everywhere(entry, bad):
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 1\)"):
        SMOOTHING_ENTRY_POINTS[entry](bad)


def test_checks_return_plain_python_values():
    assert type(v.check_alpha(np.float32(0.5))) is float and v.check_alpha(1) == 1.0
    assert type(v.check_int(np.int64(3), "n", minimum=1)) is int
    assert v.check_int(None, "n", allow_none=True) is None


@pytest.mark.parametrize("call,match", [
    (lambda: v.check_int(True, "top_k", minimum=1), r"`top_k` must be an integer >= 1, got True"),
    (lambda: v.check_int(0, "top_k", minimum=1), r"`top_k` must be an integer >= 1, got 0"),
    (lambda: v.check_int(2.0, "n"), r"`n` must be an integer"),
    (lambda: v.check_probability(1.0, "fit_threshold"), r"`fit_threshold` must be a finite number in \(0, 1\)"),
    (lambda: v.check_probability("0.5", "fit_threshold"), r"fit_threshold"),
    (lambda: v.check_choice("mean ", ("mean", "sum"), "reduction"), r"one of \('mean', 'sum'\)"),
    (lambda: v.check_schedule("linear"), r"`schedule` must be one of \('epoch', 'continuous'\)"),
    (lambda: v.check_epoch(-1.0), r"epoch"),
    (lambda: v.check_epoch(0.5, one_based=True), r"\[1, inf\]"),
    (lambda: v.check_num_items(0), r"num_items_in_batch"),
    (lambda: v.check_num_items("8"), r"num_items_in_batch"),
    (lambda: v.check_num_items(torch.tensor([1, 2])), r"one-element"),
    (lambda: v.check_num_items(torch.tensor(True)), r"num_items_in_batch"),
    (lambda: v.check_ignore_index(None), r"`ignore_index` must be an integer, got None"),
])
def test_messages_name_the_argument_and_the_allowed_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_good_denominators_pass_through():
    count = torch.tensor(7)
    assert v.check_num_items(count) is count and v.check_num_items(None) is None and v.check_num_items(3) == 3


@pytest.mark.parametrize("entry", [
    lambda: DeCESettings(alpha_base=0.9, alpha_final=0.5),
    lambda: make_dece_loss_func(alpha_base=0.9, alpha_final=0.5),
    lambda: DeCETrainingArguments(output_dir="unused", use_cpu=True, dece_alpha_base=0.9, dece_alpha_final=0.5),
])
def test_alpha_base_with_alpha_final_is_an_error(entry):
    with pytest.raises(ValueError, match=r"`dece_alpha_base=0.9` and `dece_alpha_final=0.5` cannot both be set "
                                         r"\(--dece_alpha_base and --dece_alpha_final\)"):
        entry()
    assert DeCESettings(alpha_final=0.5).alpha_base is None  # either one alone is fine
    assert DeCESettings(alpha_base=0.9).alpha_final is None


def test_each_setting_has_one_home():
    """KNOBS gives every DeCE setting its flag, default and help; the settings, their training arguments and
    make_dece_loss_func read them from there."""
    import dataclasses
    import inspect

    from dece_trainer.trainer.dece_config import KNOBS, DeCEArgumentsMixin

    assert [(f.name, f.default) for f in dataclasses.fields(DeCESettings)] == [
        (name, knob.default) for name, knob in KNOBS.items()]
    assert [(f.name, f.default, f.metadata["help"], f.metadata.get("choices")) for f in
            dataclasses.fields(DeCEArgumentsMixin)] == [
        (k.flag, k.default, k.help, list(k.choices) if k.choices else None) for k in KNOBS.values()]
    given = {name: knob.default for name, knob in KNOBS.items()} | {"alpha_base": 0.8, "label_smoothing": 0.1}
    args = DeCETrainingArguments(output_dir="unused", use_cpu=True, dece_alpha_base=0.8, dece_label_smoothing=0.1)
    assert DeCESettings.from_args(args) == DeCESettings(**given)
    defaults = {name: p.default for name, p in inspect.signature(make_dece_loss_func).parameters.items()}
    assert defaults == {name: KNOBS[name].default for name in defaults} and len(defaults) == len(KNOBS) - 1
