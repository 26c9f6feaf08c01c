"""One forward + backward of the loss dispatches few aten ops (the chunks are hundreds of rows, not one) and
reads nothing back to the host. Counted on the meta device: shapes only, no memory, no time."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dece_trainer.ops import deceptive_cross_entropy, default_chunk_rows, fused_linear_dece

TOKENS, VOCAB, HIDDEN = 2048, 151_936, 64
MAX_OPS = 500
HOST_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.item", "aten.equal")


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def count(run) -> list[str]:
    with CountOps() as counter:
        run()
    return counter.ops


def unfused(dtype, reduction, chunk_size):
    logits = torch.empty(TOKENS, VOCAB, device="meta", dtype=dtype, requires_grad=True)
    labels = torch.zeros(TOKENS, dtype=torch.long, device="meta")
    loss = deceptive_cross_entropy(logits, labels, alpha=0.9, reduction=reduction, chunk_size=chunk_size)
    return lambda: loss.sum().backward()


def fused(dtype, reduction, chunk_size):
    hidden = torch.empty(TOKENS, HIDDEN, device="meta", dtype=dtype, requires_grad=True)
    weight = torch.empty(VOCAB, HIDDEN, device="meta", dtype=dtype, requires_grad=True)
    labels = torch.zeros(TOKENS, dtype=torch.long, device="meta")

    def run():
        out = fused_linear_dece(hidden, weight, labels, alpha=0.9, reduction=reduction, chunk_size=chunk_size)
        out.loss.sum().backward()
    return run


@pytest.mark.parametrize("loss", [unfused, fused])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_forward_backward_dispatches_few_ops_and_no_host_read(loss, dtype, reduction, device):
    """``device`` picks the default chunk size: the meta device gets the accelerator budget."""
    chunk_size = None if device == "meta" else default_chunk_rows(VOCAB, device)
    if loss is unfused:
        ops = count(lambda: unfused(dtype, reduction, chunk_size)())
    else:
        ops = count(fused(dtype, reduction, chunk_size))
    assert len(ops) <= MAX_OPS
    assert not [op for op in ops if op.startswith(HOST_READS)]


def test_default_chunk_is_hundreds_of_rows_and_larger_on_accelerators():
    cpu, cuda = default_chunk_rows(VOCAB, "cpu"), default_chunk_rows(VOCAB, torch.device("cuda"))
    assert 100 <= cpu <= cuda
    assert default_chunk_rows(32_000, "cpu") >= default_chunk_rows(VOCAB, "cpu")
    assert default_chunk_rows(7, "cpu") > TOKENS
