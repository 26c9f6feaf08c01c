"""The two seams to private code, checked against the installed versions: every transformers internal
dece-trainer relies on (dece_trainer.trainer._compat) and TRL's kernel swap (dece_trainer.integrations._trl_compat).
Each accessor works here and fails loudly, naming the internal, when it is missing: if one moves, these fail here
rather than training silently wrong."""

import threading
import types

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from dece_trainer import DeCETrainer
from dece_trainer.trainer import _compat
from tests import tiny
from tests.conftest import REPO_ROOT


@pytest.fixture
def trainer(tmp_path, tokenizer):
    """A plain transformers Trainer: the internals as transformers leaves them."""
    args = tiny.training_args(tmp_path, cls=TrainingArguments, max_steps=1, per_device_train_batch_size=2)
    return Trainer(model=tiny.make_model("llama", tokenizer), args=args,
                   train_dataset=tiny.causal_dataset(tokenizer, tiny.make_pairs(4)))


@pytest.fixture(scope="module")
def dece(tokenizer, tmp_path_factory):
    """A DeCETrainer: the internals as dece-trainer sets them."""
    return DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=tiny.training_args(tmp_path_factory.mktemp("c")))


# ---- transformers ---------------------------------------------------------------------------------------------


def test_the_supported_range_is_checked():
    assert _compat.supported_version(transformers.__version__) == _compat.TRANSFORMERS_VERSION
    for outside in ("5.23.0", "5.24.0.dev0", "6.0.0", "4.57.1"):
        with pytest.raises(ImportError, match=rf"needs transformers >= 5\.24, < 6 .*found {outside}"):
            _compat.supported_version(outside)
    assert f'"transformers>={_compat.MIN_TRANSFORMERS},<6"' in (REPO_ROOT / "pyproject.toml").read_text()


def test_token_counting_internals(trainer):
    assert hasattr(Trainer, "loss_is_scaled_for_ga")  # read by the Trainer to skip its own GA scaling
    _compat.count_tokens_as_dece_does(trainer, shifts_labels=True)
    assert trainer.model_accepts_loss_kwargs is True and trainer._loss_shifts_labels is True
    # the Trainer counts num_items_in_batch over labels[..., 1:] when _loss_shifts_labels is set
    labels = torch.tensor([[5, 6, -100, 7]])
    assert int(trainer._get_num_items_in_batch([{"labels": labels}], torch.device("cpu"))) == 2
    _compat.count_tokens_as_dece_does(trainer, shifts_labels=False)
    assert int(trainer._get_num_items_in_batch([{"labels": labels}], torch.device("cpu"))) == 3


def test_batches_are_masked_before_the_trainer_counts_them(trainer):
    """get_batch_samples draws with next() and then counts: what the masking iterator does to the labels is counted
    (the seam of DeCEMixin.set_row_filter)."""
    import inspect

    source = inspect.getsource(Trainer.get_batch_samples)
    assert source.index("next(epoch_iterator)") < source.index("self._get_num_items_in_batch(batch_samples")
    _compat.count_tokens_as_dece_does(trainer, shifts_labels=False)
    batches = [{"labels": torch.tensor([[5, 6, 7]])}, {"labels": torch.tensor([[8, -100, 9]])}]

    def mask_first_column(batch):
        return {**batch, "labels": torch.cat([torch.full_like(batch["labels"][:, :1], -100),
                                              batch["labels"][:, 1:]], dim=1)}

    cpu = torch.device("cpu")
    assert int(trainer.get_batch_samples(iter(batches), 2, cpu)[1]) == 5
    drawn, count = trainer.get_batch_samples(_compat.mask_before_counting(trainer, iter(batches), mask_first_column),
                                             2, cpu)
    assert int(count) == 3 and drawn[1]["labels"].tolist() == [[-100, -100, 9]]


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


def test_accessors_work_on_the_installed_transformers(dece):
    assert dece.model_accepts_loss_kwargs is True  # set by count_tokens_as_dece_does
    assert _compat.tensor_parallel_size(dece) == 1
    batch = _compat.prepare_inputs(dece, {"input_ids": torch.tensor([[1, 2]])})
    assert batch["input_ids"].device == dece.args.device
    _compat.keep_signature_column(dece, "example_id")
    assert _compat.loss_kind_of(dece.model) == "causal"


def test_a_missing_internal_is_a_loud_error():
    class Bare:
        pass

    with pytest.raises(RuntimeError, match="model_accepts_loss_kwargs.*supports transformers >= 5.24"):
        _compat.count_tokens_as_dece_does(Bare(), shifts_labels=True)
    with pytest.raises(RuntimeError, match="current_gradient_accumulation_steps"):
        _compat.gradient_accumulation_steps(Bare())


@pytest.mark.parametrize("call,internal", [
    (lambda t: _compat.prepare_inputs(t, {}), "_prepare_inputs"),
    (lambda t: _compat.gradient_accumulation_steps(t), "current_gradient_accumulation_steps"),
    (lambda t: _compat.tensor_parallel_size(t), "get_tp_size"),
    (lambda t: _compat.load_checkpoint_weights(t, "checkpoint-1"), "_load_from_checkpoint"),
    (lambda t: _compat.count_tokens_as_dece_does(t, True), "model_accepts_loss_kwargs"),
    (lambda t: _compat.keep_signature_column(t, "x"), "_set_signature_columns_if_needed"),
    (lambda t: _compat.mask_before_counting(t, iter([]), None), "get_batch_samples"),
    (lambda t: (setattr(t, "get_batch_samples", None), _compat.mask_before_counting(t, iter([]), None)),
     "_get_num_items_in_batch"),
    (lambda t: (setattr(t, "_set_signature_columns_if_needed", lambda: None),  # fills nothing
                _compat.keep_signature_column(t, "x")), "_signature_columns"),
])
def test_a_missing_internal_is_a_clear_error(call, internal):
    with pytest.raises(RuntimeError, match=f"{internal}.*dece-trainer relies on.*transformers >= "):
        call(types.SimpleNamespace())


def test_the_skip_logits_key_is_what_the_trainer_sends():
    import inspect

    assert f'"{_compat.SKIP_LOGITS_KEY}": True' in inspect.getsource(Trainer.prediction_step)


# ---- TRL ------------------------------------------------------------------------------------------------------


class NamedKernel:
    """A stand-in kernel whose ``apply`` says which kernel ran."""

    def __init__(self, name):
        self.name = name

    def apply(self, *args, **kwargs):
        return self.name


@pytest.fixture
def trl_seam(monkeypatch):
    """The installed kernel proxy, with TRL's own kernel replaced by a stand-in for the test."""
    pytest.importorskip("trl")
    from dece_trainer.integrations import _trl_compat

    proxy = _trl_compat.install_kernel_proxy()
    monkeypatch.setattr(proxy, "original", NamedKernel("trl"))
    return _trl_compat, proxy


def test_the_trl_kernel_proxy_is_installed_once(trl_seam):
    import trl.trainer.utils as trl_utils

    seam, proxy = trl_seam
    assert getattr(trl_utils, seam.LOGPROB_KERNEL) is proxy and seam.install_kernel_proxy() is proxy
    assert f'"trl>={seam.MIN_TRL},<2"' in (REPO_ROOT / "pyproject.toml").read_text()


def test_the_trl_kernel_is_swapped_per_context_and_unwinds(trl_seam):
    seam, proxy = trl_seam
    assert proxy.apply() == "trl"  # outside any block: TRL's own kernel
    elsewhere = []
    with seam.use_logprob_kernel(NamedKernel("outer")):
        assert proxy.apply() == "outer"
        with seam.use_logprob_kernel(NamedKernel("inner")):
            assert proxy.apply() == "inner"
            thread = threading.Thread(target=lambda: elsewhere.append(proxy.apply()))
            thread.start()
            thread.join()
        assert proxy.apply() == "outer"
    assert proxy.apply() == "trl" and elsewhere == ["trl"]  # another thread never saw this one's kernel
    with pytest.raises(KeyError), seam.use_logprob_kernel(NamedKernel("raises")):
        raise KeyError("the block fails")
    assert proxy.apply() == "trl"


def test_a_missing_trl_internal_is_a_clear_error(trl_seam, monkeypatch):
    import trl.trainer.utils as trl_utils

    seam, _ = trl_seam
    monkeypatch.delattr(trl_utils, seam.LOGPROB_KERNEL)
    with pytest.raises(RuntimeError, match=r"_ChunkedLogProbFunction.*dece-trainer relies on.*TRL >= 1\.16, < 2"):
        seam.install_kernel_proxy()
