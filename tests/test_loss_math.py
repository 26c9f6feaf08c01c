"""The DeCE loss against an independent dense float64 implementation of the formula: values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

import dece_trainer
from dece_trainer import DeCELoss, dece_loss_and_token_ce, deceptive_cross_entropy
from dece_trainer.ops import LossOutput

IGNORE = -100


def reference_token_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """Dense float64 DeCE, straight from the paper: t, p, q = a p + (1 - a) t, -sum t log q. 0 at ignored."""
    z = logits.double()
    vocab = z.shape[-1]
    mask = labels != IGNORE
    gold = labels.clamp(min=0)
    t = torch.full_like(z, eps / (vocab - 1)).scatter(-1, gold[..., None], 1.0 - eps)
    q = alpha * z.softmax(-1) + (1.0 - alpha) * t
    terms = t * q.log()
    terms = torch.where(t > 0, terms, torch.zeros_like(terms))  # 0 * log(q) is 0, also where q underflows
    return torch.where(mask, -terms.sum(-1), torch.zeros((), dtype=torch.float64))


def reduce(token_loss, labels, reduction, num_items=None):
    if reduction == "none":
        return token_loss
    total = token_loss.sum()
    if reduction == "sum":
        return total
    count = (labels != IGNORE).sum() if num_items is None else num_items
    return total / max(float(count), 1.0)


CASES = [
    # shape (..., V), alpha, label smoothing, reduction, chunk rows
    ((13, 7), 0.985, 0.05, "mean", None),
    ((3, 5, 11), 0.5, 0.0, "mean", 4),
    ((2, 9, 50), 1.0, 0.1, "sum", 3),
    ((4, 6, 2), 0.9, 0.3, "none", 5),
    ((17, 300), 0.01, 0.05, "mean", 1),
    ((2, 3, 4, 29), 0.7, 0.0, "none", 2),
    ((8, 1000), 0.985 ** 20, 0.2, "sum", 3),
    ((5, 64), 1.0, 0.0, "mean", 2),
]


@pytest.mark.parametrize("shape,alpha,eps,reduction,chunk", CASES)
def test_matches_float64_reference(shape, alpha, eps, reduction, chunk):
    gen = torch.Generator().manual_seed(hash((shape, alpha, eps)) % 2**31)
    logits64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    labels[torch.rand(shape[:-1], generator=gen) < 0.3] = IGNORE
    ours_in = logits64.float().requires_grad_()
    ref_in = logits64.clone().requires_grad_()

    ours = deceptive_cross_entropy(ours_in, labels, alpha=alpha, label_smoothing=eps, reduction=reduction,
                                   chunk_size=chunk)
    ref = reduce(reference_token_loss(ref_in, labels, alpha, eps), labels, reduction)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-5)

    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (ours * upstream.float()).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_random_configurations(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    vocab = int(torch.randint(2, 400, (1,), generator=gen))
    rows = int(torch.randint(1, 40, (1,), generator=gen))
    alpha = float(torch.rand((), generator=gen).clamp(min=1e-3))
    eps = float(torch.rand((), generator=gen) * 0.5)
    logits64 = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    num_items = rows + 5
    ours_in, ref_in = logits64.float().requires_grad_(), logits64.clone().requires_grad_()
    ours = deceptive_cross_entropy(ours_in, labels, alpha=alpha, label_smoothing=eps, num_items_in_batch=num_items)
    ref = reference_token_loss(ref_in, labels, alpha, eps).sum() / num_items
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-5)


def test_num_items_in_batch_tensor_divides_the_sum():
    logits = torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    total = deceptive_cross_entropy(logits, labels, alpha=0.8, reduction="sum")
    mean = deceptive_cross_entropy(logits, labels, alpha=0.8, num_items_in_batch=torch.tensor(24))
    torch.testing.assert_close(mean, total / 24)


def test_alpha_one_is_label_smoothed_cross_entropy_with_v_minus_one():
    logits, labels = torch.randn(20, 9, dtype=torch.float64), torch.randint(0, 9, (20,))
    eps = 0.1
    ours = deceptive_cross_entropy(logits.float(), labels, alpha=1.0, label_smoothing=eps)
    # F.cross_entropy spreads eps over all V classes (gold gets 1 - eps + eps / V); rescale to the paper's e/(V-1).
    eps_v = eps * 9 / 8
    torch.testing.assert_close(ours.double(), F.cross_entropy(logits, labels, label_smoothing=eps_v),
                               rtol=1e-6, atol=1e-6)


def test_zero_smoothing_is_log_of_blended_gold_probability():
    logits, labels = torch.randn(12, 30), torch.randint(0, 30, (12,))
    alpha = 0.6
    ours = deceptive_cross_entropy(logits, labels, alpha=alpha, label_smoothing=0.0, reduction="none")
    p_gold = logits.double().softmax(-1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(ours.double(), -torch.log(alpha * p_gold + 1 - alpha), rtol=1e-6, atol=1e-7)


def test_token_ce_and_mask_come_from_the_same_pass():
    logits, labels = torch.randn(3, 8, 40), torch.randint(0, 40, (3, 8))
    labels[1, 2:] = IGNORE
    out = dece_loss_and_token_ce(logits, labels, alpha=0.9)
    expected = F.cross_entropy(logits.reshape(-1, 40), labels.reshape(-1), reduction="none", ignore_index=IGNORE)
    torch.testing.assert_close(out.token_ce, expected.view(3, 8))
    assert torch.equal(out.mask, labels != IGNORE)
    assert not out.token_ce.requires_grad


def test_statistics_come_from_the_same_pass():
    logits, labels = torch.randn(4, 6, 30) * 3, torch.randint(0, 30, (4, 6))
    labels[0, :2] = IGNORE
    logits[1, 1, labels[1, 1]] = 50.0  # a certain top-1 hit
    out = dece_loss_and_token_ce(logits, labels, alpha=0.9, reduction="none", chunk_size=5, return_stats=True)
    assert isinstance(out, LossOutput)
    with pytest.warns(DeprecationWarning, match="now dece_trainer.LossOutput"):  # the old name still resolves
        assert dece_trainer.DeCELossOutput is LossOutput
    mask = labels != IGNORE
    logp = logits.double().log_softmax(-1)
    entropy = torch.where(mask, -(logp.exp() * logp).sum(-1), 0.0)
    torch.testing.assert_close(out.entropy.double(), entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.correct, (logits.argmax(-1) == labels) & mask) and out.correct[1, 1]
    assert not out.entropy.requires_grad
    assert dece_loss_and_token_ce(logits, labels, alpha=0.9).entropy is None


def test_default_chunks_give_the_same_loss_as_one_row_chunks():
    logits, labels = torch.randn(300, 2000, requires_grad=True), torch.randint(0, 2000, (300,))
    default = deceptive_cross_entropy(logits, labels, alpha=0.9)
    (grad_default,) = torch.autograd.grad(default, logits)
    single = deceptive_cross_entropy(logits, labels, alpha=0.9, chunk_size=1)
    (grad_single,) = torch.autograd.grad(single, logits)
    torch.testing.assert_close(default, single, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_default, grad_single, rtol=1e-6, atol=1e-9)


def test_tiny_smoothing_with_a_huge_off_target_ratio_stays_exact():
    """a / ((1 - a) s) > 2**126 (float32 overflow territory) is capped; the loss does not notice."""
    logits64 = torch.randn(9, 12, dtype=torch.float64) * 4
    labels = torch.randint(0, 12, (9,))
    for eps in (1e-40, 1e-300):
        ours_in = logits64.float().requires_grad_()
        ours = deceptive_cross_entropy(ours_in, labels, alpha=0.5, label_smoothing=eps, reduction="sum")
        ref_in = logits64.clone().requires_grad_()
        ref = reference_token_loss(ref_in, labels, 0.5, eps).sum()
        torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-6, atol=1e-6)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-6)


def test_low_precision_gradient_is_rounded_once():
    """The bfloat16 gradient, mean's 1/3 included, is the exact one rounded once (float32's error is far below
    half a bfloat16 ulp; rounding before scaling by 1/3 would miss about 180 of these 640 elements)."""
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(16, 40, generator=gen) * 4).bfloat16().requires_grad_()
    labels = torch.randint(0, 40, (16,), generator=gen)
    deceptive_cross_entropy(logits, labels, alpha=0.7, num_items_in_batch=3).backward()
    ref_in = logits.detach().double().requires_grad_()
    (reference_token_loss(ref_in, labels, 0.7, 0.05).sum() / 3).backward()
    assert torch.equal(logits.grad, ref_in.grad.bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha,eps", [(0.985, 0.05), (1.0, 0.05), (0.5, 0.0), (1.0, 0.0)])
def test_extreme_logits_stay_finite(dtype, alpha, eps):
    vocab = 16
    logits = torch.zeros(6, vocab)
    logits[0, 3], logits[1, 3], logits[2] = 1e4, -1e4, -1e4
    logits[3, ::2], logits[4, 0], logits[5, 1] = 1e4, -1e4, 1e4
    logits = logits.to(dtype).requires_grad_()
    labels = torch.tensor([3, 3, 0, 1, 0, 0])  # gold certain, gold impossible, all equal, gold impossible...
    loss = deceptive_cross_entropy(logits, labels, alpha=alpha, label_smoothing=eps)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad.float()).all()
    assert logits.grad.dtype == dtype


def test_extreme_logits_value_in_float32():
    logits64 = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0])
    ours = deceptive_cross_entropy(logits64.float(), labels, alpha=0.9, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(ours.double(), reference_token_loss(logits64, labels, 0.9, 0.1), rtol=1e-6, atol=1e-6)


def test_low_precision_logits_are_computed_in_float32():
    logits = torch.randn(10, 50).bfloat16()
    labels = torch.randint(0, 50, (10,))
    ours = deceptive_cross_entropy(logits, labels, alpha=0.9)
    ref = reference_token_loss(logits.double(), labels, 0.9, 0.05).mean()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_not_nan(reduction):
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), IGNORE)
    loss = deceptive_cross_entropy(logits, labels, alpha=0.9, reduction=reduction)
    assert torch.count_nonzero(loss) == 0 and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.count_nonzero(logits.grad) == 0
    zero_items = deceptive_cross_entropy(logits, labels, alpha=0.9, num_items_in_batch=0)
    assert zero_items.item() == 0.0


def test_ignored_positions_get_no_gradient_and_zero_loss():
    logits = torch.randn(4, 6, 9, requires_grad=True)
    labels = torch.randint(0, 9, (4, 6))
    labels[:, ::2] = IGNORE
    loss = deceptive_cross_entropy(logits, labels, alpha=0.8, reduction="none")
    loss.sum().backward()
    assert torch.count_nonzero(loss[:, ::2]) == 0
    assert torch.count_nonzero(logits.grad[:, ::2]) == 0
    assert torch.count_nonzero(logits.grad[:, 1::2]) > 0


# ---- the defense: the gradient w.r.t. probabilities is bounded by a / (1 - a) ---------------------


@pytest.mark.parametrize("alpha", [0.985, 0.9, 0.5, 0.1])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_gradient_wrt_probabilities_is_bounded(alpha, eps):
    """|d loss / d p_k| = t_k a / q_k <= a / (1 - a) for every p, including p_y -> 0 (a poisoned target)."""
    gen = torch.Generator().manual_seed(7)
    vocab = 12
    logits = torch.randn(200, vocab, generator=gen, dtype=torch.float64) * 8
    logits[:50, 0] = -60.0  # gold class made almost impossible: where CE's 1/p_y explodes
    labels = torch.randint(0, vocab, (200,), generator=gen)
    labels[:50] = 0
    p = logits.softmax(-1).requires_grad_()
    t = torch.full_like(p, eps / (vocab - 1)).scatter(-1, labels[:, None], 1 - eps)
    loss = -(t * torch.log(alpha * p + (1 - alpha) * t)).sum()
    (grad_p,) = torch.autograd.grad(loss, p)
    bound = alpha / (1 - alpha)
    assert grad_p.abs().max() <= bound * (1 + 1e-9)
    assert grad_p[:50, 0].abs().min() >= 0.99 * bound * (1 - eps)  # attained as p_y -> 0
    ce_grad_gold = 1.0 / p.detach()[:50, 0]  # CE's |d loss / d p_y|: unbounded
    assert ce_grad_gold.min() > 1e10


@pytest.mark.parametrize("alpha", [0.985, 0.5])
def test_logit_gradient_is_bounded_form(alpha):
    """Our logit gradient equals p * (w - <p, w>) with the bounded w = -t a / q (the chain rule of the bound)."""
    eps, vocab = 0.05, 20
    logits = (torch.randn(30, vocab, dtype=torch.float64) * 5).float().requires_grad_()
    labels = torch.randint(0, vocab, (30,))
    deceptive_cross_entropy(logits, labels, alpha=alpha, label_smoothing=eps, reduction="sum").backward()
    p = logits.detach().double().softmax(-1)
    t = torch.full_like(p, eps / (vocab - 1)).scatter(-1, labels[:, None], 1 - eps)
    w = -t * alpha / (alpha * p + (1 - alpha) * t)
    assert w.abs().max() <= alpha / (1 - alpha)
    expected = p * (w - (p * w).sum(-1, keepdim=True))
    torch.testing.assert_close(logits.grad.double(), expected, rtol=1e-5, atol=1e-6)


def test_unlikely_gold_tokens_are_suppressed_relative_to_cross_entropy():
    """A gold token the model finds improbable (a poisoned payload) moves the logits far less under DeCE."""
    vocab, alpha = 50, 0.9
    logits = torch.zeros(1, vocab)
    logits[0, 0] = -12.0
    labels = torch.tensor([0])
    z_dece, z_ce = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    deceptive_cross_entropy(z_dece, labels, alpha=alpha, label_smoothing=0.0).backward()
    F.cross_entropy(z_ce, labels).backward()
    assert z_ce.grad[0, 0].abs() > 0.99
    assert z_dece.grad[0, 0].abs() < 1e-3


# ---- memory: nothing of size (tokens x V) besides the logits is kept for backward -------------------


def test_saves_only_logits_and_row_vectors_for_backward():
    rows, vocab = 64, 1000
    logits = torch.randn(rows, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        deceptive_cross_entropy(logits, labels, alpha=0.9)
    big = [t for t in saved if t.numel() >= rows * vocab]
    assert len(big) == 1 and big[0].data_ptr() == logits.data_ptr()
    assert all(t.numel() <= rows for t in saved if t.data_ptr() != logits.data_ptr())


# ---- module API ---------------------------------------------------------------------------------


def test_module_uses_alpha_base_to_the_one_based_epoch():
    logits, labels = torch.randn(5, 7), torch.randint(0, 7, (5,))
    module = DeCELoss(alpha_base=0.9, label_smoothing=0.1)
    for epoch in (1, 2, 5):
        expected = deceptive_cross_entropy(logits, labels, alpha=0.9 ** epoch, label_smoothing=0.1)
        torch.testing.assert_close(module(logits, labels, epoch), expected)
    assert module.alpha(1) == 0.9
    assert "alpha_base=0.9" in repr(module)
    with pytest.raises(ValueError, match="1-based"):
        module(logits, labels, 0)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=math.nan), "alpha"),
    (dict(alpha=0.9, label_smoothing=1.0), "label_smoothing"),
    (dict(alpha=0.9, label_smoothing=-0.1), "label_smoothing"),
    (dict(alpha=0.9, reduction="avg"), "reduction"),
    (dict(alpha=0.9, chunk_size=0), "chunk_size"),
    (dict(alpha=True), "alpha"),
    (dict(alpha=0.9, label_smoothing=math.nan), "label_smoothing"),
    (dict(alpha=0.9, ignore_index=None), "ignore_index"),
    (dict(alpha=0.9, num_items_in_batch=-1), "num_items_in_batch"),
    (dict(alpha=0.9, num_items_in_batch="3"), "num_items_in_batch"),
    (dict(alpha=0.9, chunk_size=2.0), "chunk_size"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deceptive_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2]), **kwargs)


def test_bad_labels_and_shapes():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"labels.*\[0, 5\).*found 7"):
        deceptive_cross_entropy(logits, torch.tensor([[0, 1, 7], [0, 0, 0]]), alpha=0.9)
    with pytest.raises(ValueError, match="found -3"):
        deceptive_cross_entropy(logits, torch.tensor([[0, 1, -3], [0, 0, 0]]), alpha=0.9)
    with pytest.raises(ValueError, match="same leading shape"):
        deceptive_cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long), alpha=0.9)
    with pytest.raises(ValueError, match="integer"):
        deceptive_cross_entropy(logits, torch.zeros(2, 3), alpha=0.9)
    with pytest.raises(ValueError, match="at least 2 classes"):
        deceptive_cross_entropy(torch.randn(2, 1), torch.zeros(2, dtype=torch.long), alpha=0.9)
    with pytest.raises(ValueError, match="alpha_base"):
        DeCELoss(alpha_base=0)


def test_generalized_cross_entropy_matches_its_definition():
    from dece_trainer.backdoor.baselines import generalized_cross_entropy

    logits = torch.randn(4, 5, 9, dtype=torch.float64)
    labels = torch.randint(0, 9, (4, 5))
    labels[0, :2] = IGNORE
    z = logits.float().requires_grad_()
    out = generalized_cross_entropy(z, labels, q=0.7)
    p_gold = logits.softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    expected = torch.where(labels != IGNORE, (1 - p_gold ** 0.7) / 0.7, 0.0).sum() / (labels != IGNORE).sum()
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert torch.count_nonzero(z.grad[0, :2]) == 0
    with pytest.raises(ValueError, match="q"):
        generalized_cross_entropy(z, labels, q=0.0)
