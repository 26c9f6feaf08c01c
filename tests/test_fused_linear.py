"""fused_linear_dece (LM head + DeCE in one chunked pass) against the unfused loss on materialised logits and
against the dense float64 reference of tests/test_loss_math.py: values, gradients, statistics, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from dece_trainer.ops import dece_loss_and_token_ce, fused_linear_dece
from tests.test_loss_math import IGNORE, reduce, reference_token_loss


def head_logits(hidden, weight, bias=None, scale=None, cap=None):
    """The logits fused_linear_dece is defined on: (hidden @ weight.T + bias) * scale, soft-capped."""
    z = hidden @ weight.T
    z = z if bias is None else z + bias
    z = z if scale is None else z * scale
    return z if cap is None else cap * torch.tanh(z / cap)


def make_case(lead, d, vocab, seed, ignore_share=0.3):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, d, generator=gen, dtype=torch.float64) / math.sqrt(d) * 3
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, lead, generator=gen)
    labels[torch.rand(lead, generator=gen) < ignore_share] = IGNORE
    return hidden, weight, bias, labels, gen


def leaves(*tensors, dtype=torch.float32):
    return [None if t is None else t.to(dtype).requires_grad_() for t in tensors]


CASES = [
    # leading shape, d, V, alpha, label smoothing, reduction, chunk rows, bias, logit scale, soft-cap
    ((13,), 8, 7, 0.985, 0.05, "mean", None, False, None, None),
    ((3, 5), 16, 50, 0.5, 0.0, "sum", 4, True, None, None),
    ((2, 9), 12, 33, 1.0, 0.1, "none", 5, True, 0.7, None),
    ((17,), 8, 300, 0.01, 0.05, "mean", 3, False, None, 5.0),
    ((4, 6), 16, 64, 0.9, 0.3, "none", 7, True, 2.0, 8.0),
    ((2, 3, 4), 8, 29, 1.0, 0.0, "sum", 2, False, 1.5, 3.0),
]


@pytest.mark.parametrize("lead,d,vocab,alpha,eps,reduction,chunk,use_bias,scale,cap", CASES)
def test_matches_unfused_and_float64_reference(lead, d, vocab, alpha, eps, reduction, chunk, use_bias, scale, cap):
    hidden, weight, bias, labels, gen = make_case(lead, d, vocab, seed=len(lead) * 1000 + vocab)
    bias = bias if use_bias else None
    kwargs = dict(alpha=alpha, label_smoothing=eps, reduction=reduction)
    fused_in = leaves(hidden, weight, bias)
    unfused_in = leaves(hidden, weight, bias)
    ref_in = leaves(hidden, weight, bias, dtype=torch.float64)

    fused = fused_linear_dece(*fused_in[:2], labels, bias=fused_in[2], logit_scale=scale, logit_softcap=cap,
                              chunk_size=chunk, **kwargs).loss
    unfused = dece_loss_and_token_ce(head_logits(*unfused_in, scale, cap), labels, **kwargs).loss
    ref = reduce(reference_token_loss(head_logits(*ref_in, scale, cap), labels, alpha, eps), labels, reduction)
    assert fused.dtype == torch.float32 and fused.shape == ref.shape
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.double(), ref.detach(), rtol=1e-5, atol=1e-5)

    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for out, upstream_ in ((fused, upstream.float()), (unfused, upstream.float()), (ref, upstream)):
        (out * upstream_).sum().backward()
    for ours, other, ref_leaf in zip(fused_in, unfused_in, ref_in):
        if ours is not None:
            torch.testing.assert_close(ours.grad, other.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.grad.double(), ref_leaf.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bfloat16_is_close_to_the_unfused_loss_on_bfloat16_logits(reduction):
    hidden, weight, bias, labels, gen = make_case((40,), 32, 96, seed=5)
    fused_in, unfused_in = leaves(hidden, weight, bias, dtype=torch.bfloat16), leaves(hidden, weight, bias,
                                                                                       dtype=torch.bfloat16)
    kwargs = dict(alpha=0.9, reduction=reduction)
    fused = fused_linear_dece(*fused_in[:2], labels, bias=fused_in[2], chunk_size=16, **kwargs).loss
    unfused = dece_loss_and_token_ce(head_logits(*unfused_in), labels, **kwargs).loss
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, unfused, rtol=1e-2, atol=1e-2)
    fused.sum().backward()
    unfused.sum().backward()
    for ours, other in zip(fused_in, unfused_in):
        assert ours.grad.dtype == torch.bfloat16
        scale = other.grad.float().abs().max()
        torch.testing.assert_close(ours.grad.float(), other.grad.float(), rtol=3e-2, atol=3e-2 * scale)


def test_autocast_computes_the_product_in_the_autocast_dtype():
    hidden, weight, _, labels, _ = make_case((24,), 16, 40, seed=6)
    fused_in, unfused_in = leaves(hidden, weight), leaves(hidden, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_linear_dece(*fused_in, labels, alpha=0.9).loss
        unfused = dece_loss_and_token_ce(F.linear(*unfused_in), labels, alpha=0.9).loss
    torch.testing.assert_close(fused, unfused, rtol=1e-3, atol=1e-3)
    fused.backward()
    unfused.backward()
    for ours, other in zip(fused_in, unfused_in):
        assert ours.grad.dtype == torch.float32
        torch.testing.assert_close(ours.grad, other.grad, rtol=3e-2, atol=3e-2 * other.grad.abs().max())


def test_frozen_weight_gets_no_gradient_and_the_same_hidden_gradient():
    hidden, weight, _, labels, _ = make_case((30,), 8, 20, seed=7)
    trained_h, trained_w = leaves(hidden, weight)
    frozen_h = hidden.float().requires_grad_()
    frozen_w = weight.float()
    fused_linear_dece(trained_h, trained_w, labels, alpha=0.8).loss.backward()
    fused_linear_dece(frozen_h, frozen_w, labels, alpha=0.8).loss.backward()
    assert frozen_w.grad is None
    torch.testing.assert_close(frozen_h.grad, trained_h.grad, rtol=0, atol=0)


def test_tied_embedding_weight_collects_both_gradients():
    vocab, d = 25, 8
    torch.manual_seed(8)
    ids = torch.randint(0, vocab, (3, 7))
    labels = torch.randint(0, vocab, (3, 7))
    grads = []
    for fused in (True, False):
        torch.manual_seed(9)
        embedding = torch.nn.Embedding(vocab, d)
        hidden = torch.tanh(embedding(ids))
        if fused:
            loss = fused_linear_dece(hidden, embedding.weight, labels, alpha=0.9).loss
        else:
            loss = dece_loss_and_token_ce(hidden @ embedding.weight.T, labels, alpha=0.9).loss
        loss.backward()
        grads.append(embedding.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_and_zero_gradients(reduction):
    hidden, weight, bias, labels, _ = make_case((2, 5), 8, 11, seed=10)
    labels[:] = IGNORE
    h, w, b = leaves(hidden, weight, bias)
    out = fused_linear_dece(h, w, labels, bias=b, alpha=0.9, reduction=reduction)
    assert torch.count_nonzero(out.loss) == 0 and torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert all(torch.count_nonzero(t.grad) == 0 for t in (h, w, b))
    zero_items = fused_linear_dece(h, w, labels, alpha=0.9, num_items_in_batch=0).loss
    assert zero_items.item() == 0.0


@pytest.mark.parametrize("num_items", [24, torch.tensor(24), torch.tensor([24.0])])
def test_num_items_in_batch_divides_the_sum(num_items):
    hidden, weight, _, labels, _ = make_case((10,), 8, 12, seed=11)
    h, w = leaves(hidden, weight)
    total = fused_linear_dece(h, w, labels, alpha=0.8, reduction="sum").loss
    mean = fused_linear_dece(h, w, labels, alpha=0.8, num_items_in_batch=num_items).loss
    unfused = dece_loss_and_token_ce(h @ w.T, labels, alpha=0.8, num_items_in_batch=num_items).loss
    assert mean.shape == unfused.shape == ()
    torch.testing.assert_close(mean, total / 24)
    torch.testing.assert_close(unfused, total / 24, rtol=1e-5, atol=1e-6)
    (grad_total,) = torch.autograd.grad(total / 24, h)
    (grad_mean,) = torch.autograd.grad(mean, h)
    torch.testing.assert_close(grad_mean, grad_total)


def test_statistics_match_a_direct_computation():
    hidden, weight, bias, labels, _ = make_case((4, 9), 16, 70, seed=12)
    labels[0, 0] = 3
    weight[3], bias[3] = 0.0, 50.0  # row (0, 0): the label is the certain argmax
    out = fused_linear_dece(hidden.float(), weight.float(), labels, bias=bias.float(), alpha=0.9, chunk_size=5,
                            return_stats=True)
    logits = head_logits(hidden, weight, bias)
    mask = labels != IGNORE
    logp = logits.log_softmax(-1)
    ce = F.cross_entropy(logits.reshape(-1, 70), labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    entropy = torch.where(mask, -(logp.exp() * logp).sum(-1), 0.0)
    correct = (logits.argmax(-1) == labels) & mask
    torch.testing.assert_close(out.token_ce.double(), ce.view(4, 9), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.entropy.double(), entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.correct, correct) and out.correct[0, 0]
    assert torch.equal(out.mask, mask)
    assert not out.token_ce.requires_grad and not out.entropy.requires_grad
    plain = fused_linear_dece(hidden.float(), weight.float(), labels, alpha=0.9)
    assert plain.entropy is None and plain.correct is None


def test_no_tensor_grows_with_tokens_times_vocab():
    """Every tensor created in forward + backward is at most a chunk of logits, the weight or the hidden states."""
    tokens, d, vocab, chunk = 256, 8, 1000, 32
    hidden, weight, bias, labels, _ = make_case((tokens,), d, vocab, seed=13)
    h, w, b = leaves(hidden, weight, bias)
    sizes = []

    class Sizes(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with Sizes():
        fused_linear_dece(h, w, labels, bias=b, alpha=0.9, chunk_size=chunk).loss.backward()
    assert max(sizes) == chunk * vocab < tokens * vocab


@pytest.mark.parametrize("change,match", [
    (dict(weight=torch.randn(9, 5)), "weight"),
    (dict(weight=torch.randn(9)), "weight"),
    (dict(weight=torch.randn(1, 4)), "at least 2 classes"),
    (dict(hidden=torch.ones(6, 4, dtype=torch.long)), "hidden"),
    (dict(labels=torch.zeros(5, dtype=torch.long)), "same leading shape"),
    (dict(labels=torch.zeros(6)), "integer"),
    (dict(labels=torch.tensor([0, 1, 2, 3, 4, 9])), r"\[0, 9\).*found 9"),
    (dict(bias=torch.randn(8)), "bias"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=True), "alpha"),
    (dict(label_smoothing=math.nan), "label_smoothing"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(ignore_index=None), "ignore_index"),
    (dict(reduction="avg"), "reduction"),
    (dict(num_items_in_batch=-1), "num_items_in_batch"),
    (dict(num_items_in_batch="6"), "num_items_in_batch"),
    (dict(num_items_in_batch=torch.tensor([1, 2])), "num_items_in_batch"),
    (dict(logit_softcap=0.0), "logit_softcap"),
    (dict(logit_scale=math.inf), "logit_scale"),
    (dict(chunk_size=0), "chunk_size"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(change, match):
    args = dict(hidden=torch.randn(6, 4), weight=torch.randn(9, 4), labels=torch.tensor([0, 1, 2, 3, 4, 5]),
                alpha=0.9)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fused_linear_dece(args.pop("hidden"), args.pop("weight"), args.pop("labels"), **args)
