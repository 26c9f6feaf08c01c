"""Every transformers internal dece-trainer relies on, checked against the installed version: if one moves,
these fail loudly here rather than training silently wrong."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from dece_trainer.trainer import _compat
from tests import tiny


@pytest.fixture
def trainer(tmp_path, tokenizer):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1,
                             per_device_train_batch_size=2, disable_tqdm=True)
    return Trainer(model=tiny.make_model("llama", tokenizer), args=args,
                   train_dataset=tiny.causal_dataset(tokenizer, tiny.make_pairs(4)))


def test_the_supported_range_is_checked():
    assert _compat.TRANSFORMERS_VERSION >= _compat.Version(_compat.MIN_TRANSFORMERS)


def test_token_counting_internals(trainer):
    assert hasattr(Trainer, "loss_is_scaled_for_ga")  # read by the Trainer to skip its own GA scaling
    _compat.count_tokens_as_dece_does(trainer, shifts_labels=True)
    assert trainer.model_accepts_loss_kwargs is True and trainer._loss_shifts_labels is True
    # the Trainer counts num_items_in_batch over labels[..., 1:] when _loss_shifts_labels is set
    labels = torch.tensor([[5, 6, -100, 7]])
    assert int(trainer._get_num_items_in_batch([{"labels": labels}], torch.device("cpu"))) == 2
    _compat.count_tokens_as_dece_does(trainer, shifts_labels=False)
    assert int(trainer._get_num_items_in_batch([{"labels": labels}], torch.device("cpu"))) == 3


def test_accumulation_steps_and_tensor_parallel_size(trainer):
    trainer.current_gradient_accumulation_steps = 3  # the Trainer sets it for each optimizer step
    assert _compat.gradient_accumulation_steps(trainer) == 3
    assert _compat.tensor_parallel_size(trainer) == 1


def test_signature_columns_keep_an_extra_column(trainer):
    _compat.keep_signature_column(trainer, "example_id")
    assert "example_id" in trainer._signature_columns and "input_ids" in trainer._signature_columns
    _compat.keep_signature_column(trainer, "example_id")
    assert trainer._signature_columns.count("example_id") == 1


def test_loss_kind_follows_transformers(tokenizer):
    kinds = {kind: _compat.loss_kind_of(tiny.make_model(kind, tokenizer)) for kind in ("llama", "gpt2", "bert-cls")}
    assert kinds == {"llama": "causal", "gpt2": "causal", "bert-cls": "other"}
    assert _compat.loss_kind_of(torch.nn.Linear(2, 2)) is None


def test_a_missing_internal_is_a_loud_error():
    class Bare:
        pass

    with pytest.raises(RuntimeError, match="model_accepts_loss_kwargs.*supports transformers >= 5.24"):
        _compat.count_tokens_as_dece_does(Bare(), shifts_labels=True)
    with pytest.raises(RuntimeError, match="current_gradient_accumulation_steps"):
        _compat.gradient_accumulation_steps(Bare())


def test_the_skip_logits_key_is_what_the_trainer_sends():
    import inspect

    assert f'"{_compat.SKIP_LOGITS_KEY}": True' in inspect.getsource(Trainer.prediction_step)
