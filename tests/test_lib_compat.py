"""dece_trainer.trainer._compat: each accessor of a transformers internal works on the installed version and
fails loudly, naming the internal, when it is missing."""

import types

import pytest
import torch

from dece_trainer import DeCETrainer, DeCETrainingArguments
from dece_trainer.trainer import _compat
from tests import tiny


@pytest.fixture(scope="module")
def trainer(tokenizer, tmp_path_factory):
    args = DeCETrainingArguments(output_dir=str(tmp_path_factory.mktemp("compat")), use_cpu=True, report_to=[])
    return DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=args)


def test_accessors_work_on_the_installed_transformers(trainer):
    assert trainer.model_accepts_loss_kwargs is True  # set by count_tokens_as_dece_does
    assert _compat.tensor_parallel_size(trainer) == 1
    batch = _compat.prepare_inputs(trainer, {"input_ids": torch.tensor([[1, 2]])})
    assert batch["input_ids"].device == trainer.args.device
    _compat.keep_signature_column(trainer, "example_id")
    assert _compat.loss_kind_of(trainer.model) == "causal"


@pytest.mark.parametrize("call,internal", [
    (lambda t: _compat.prepare_inputs(t, {}), "_prepare_inputs"),
    (lambda t: _compat.gradient_accumulation_steps(t), "current_gradient_accumulation_steps"),
    (lambda t: _compat.tensor_parallel_size(t), "get_tp_size"),
    (lambda t: _compat.count_tokens_as_dece_does(t, True), "model_accepts_loss_kwargs"),
    (lambda t: _compat.keep_signature_column(t, "x"), "_set_signature_columns_if_needed"),
    (lambda t: (setattr(t, "_set_signature_columns_if_needed", lambda: None),  # fills nothing
                _compat.keep_signature_column(t, "x")), "_signature_columns"),
])
def test_a_missing_internal_is_a_clear_error(call, internal):
    with pytest.raises(RuntimeError, match=f"{internal}.*dece-trainer relies on.*transformers >= "):
        call(types.SimpleNamespace())
