"""The blend-weight schedule a = alpha_base ** E."""

import math

import pytest

from dece_trainer import alpha_base_for_final, dece_alpha, grad_bound, schedule_exponent, suppression_threshold


def test_epoch_schedule_is_one_based_and_constant_within_an_epoch():
    assert dece_alpha(0.985, 0.0) == 0.985  # the paper's code: cur_epoch + 1
    assert dece_alpha(0.985, 0.99) == 0.985
    assert dece_alpha(0.985, 1.0) == pytest.approx(0.985 ** 2)
    assert dece_alpha(0.985, 2.5) == pytest.approx(0.985 ** 3)
    assert schedule_exponent(2.9999999999) == 4.0  # a hair under 3.0 (rounding after many steps) is epoch 4


def test_continuous_schedule_is_one_plus_fractional_epoch():
    assert dece_alpha(0.5, 0.0, "continuous") == 0.5
    assert dece_alpha(0.5, 0.5, "continuous") == pytest.approx(0.5 ** 1.5)
    assert dece_alpha(0.5, 2.0, "continuous") == pytest.approx(0.125)


@pytest.mark.parametrize("schedule,epochs,last_epoch_float", [
    ("epoch", 2, 1.5), ("epoch", 3, 2.99), ("epoch", 2.5, 2.2), ("continuous", 2, 2.0), ("continuous", 1, 1.0),
])
def test_alpha_final_is_reached_at_the_end(schedule, epochs, last_epoch_float):
    base = alpha_base_for_final(0.5, epochs, schedule)
    assert dece_alpha(base, last_epoch_float, schedule) == pytest.approx(0.5)
    assert dece_alpha(base, 0.0, schedule) > 0.5


def test_bounds_and_thresholds():
    assert grad_bound(0.5) == 1.0
    assert grad_bound(0.9) == pytest.approx(9.0)
    assert math.isinf(grad_bound(1.0))
    # p_y below (1 - a)(1 - e) / a: DeCE's gold gradient is under half of CE's
    assert suppression_threshold(0.5, 0.0) == 1.0
    assert suppression_threshold(0.9, 0.1) == pytest.approx(0.1 * 0.9 / 0.9)


@pytest.mark.parametrize("call,match", [
    (lambda: dece_alpha(0.0, 1.0), "alpha_base"),
    (lambda: dece_alpha(1.2, 1.0), "alpha_base"),
    (lambda: dece_alpha(0.9, -1.0), "epoch"),
    (lambda: dece_alpha(0.9, float("nan")), "epoch"),
    (lambda: dece_alpha(0.9, 1.0, "linear"), "schedule.*epoch.*continuous"),
    (lambda: alpha_base_for_final(0.0, 2), "alpha_final"),
    (lambda: alpha_base_for_final(0.5, 0), "num_train_epochs"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
