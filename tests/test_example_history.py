"""Per-example history, memorisation score, suspicion scores and ranking metrics, on hand-made numbers."""

import itertools

import numpy as np
import pytest
import torch

from dece_trainer.callbacks import ExampleHistory, auroc, precision_at_k


def feed(history, ids, ce_rows):
    """ce_rows: per example a list of token CEs (padded with 0 and masked)."""
    width = max(len(r) for r in ce_rows)
    token_ce = torch.tensor([r + [0.0] * (width - len(r)) for r in ce_rows])
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in ce_rows])
    history.add(torch.tensor(ids), token_ce, mask)


def test_records_mean_ce_mean_prob_and_worst_token():
    history = ExampleHistory(3)
    feed(history, [0, 2], [[0.1, 0.3], [2.0]])
    summary = history.end_epoch()
    assert summary.epoch == 1 and summary.seen == 2
    np.testing.assert_allclose(history.loss[0][[0, 2]].astype(float), [0.2, 2.0], rtol=1e-3)
    np.testing.assert_allclose(history.prob[0][0], (np.exp(-0.1) + np.exp(-0.3)) / 2, rtol=1e-3)
    np.testing.assert_allclose(history.worst_prob[0][0], np.exp(-0.3), rtol=1e-3)
    assert np.isnan(history.loss[0][1]) and history.visits[0].tolist() == [1, 0, 1]
    assert history.loss[0].dtype == np.float16 and history.visits[0].dtype == np.uint8
    assert summary.unlearned_frac == 0.5  # example 2: exp(-2) < 0.5


def test_quantiles_match_numpy():
    history = ExampleHistory(100)
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, 5, size=100)
    feed(history, list(range(100)), [[float(v)] for v in losses])
    summary = history.end_epoch()
    for q in (10, 50, 90, 99):
        assert summary.loss_quantiles[q] == pytest.approx(np.percentile(losses.astype(np.float32), q), rel=1e-4)


def test_memorisation_score_counts_laggards_that_catch_up_after_the_bulk_is_learnt():
    history = ExampleHistory(10)
    easy, hard = 0.05, 6.0  # token CE
    # epoch 1: nothing learnt; the bulk is not fitted, so the score is 0 whatever happens next
    feed(history, list(range(10)), [[3.0]] * 10)
    assert history.end_epoch().memorisation_score == 0
    # epoch 2: bulk learnt, examples 8 and 9 lag far behind
    feed(history, list(range(10)), [[easy]] * 8 + [[hard]] * 2)
    assert history.end_epoch().memorisation_score == 0
    # epoch 3: example 9 is suddenly fitted: one memorised example
    feed(history, list(range(10)), [[easy]] * 8 + [[hard], [easy]])
    summary = history.end_epoch()
    assert summary.memorisation_score == 1 and summary.unlearned_frac == pytest.approx(0.1)


def test_suspicion_scores_rank_late_and_never_fitted_examples_first():
    history = ExampleHistory(4)
    schedule = [  # per epoch, token CE of examples 0..3
        [0.1, 3.0, 3.0, 0.1],   # 0 and 3 learnt at once
        [0.1, 0.1, 3.0, 0.1],   # 1 learnt at epoch 2
        [0.1, 0.1, 3.0, 0.1],   # 2 never learnt (a poisoned example under DeCE)
    ]
    for ces in schedule:
        feed(history, [0, 1, 2, 3], [[c] for c in ces])
        history.end_epoch()
    scores = history.suspicion_scores()
    assert scores["fit_epoch"].tolist() == [1, 2, 0, 1]
    order = np.argsort(-scores["score"], kind="mergesort").tolist()
    assert order[0] == 2 and order[1] == 1
    assert scores["max_drop"][1] == pytest.approx(2.9, rel=1e-3)  # worst-token CE fell from 3.0 to 0.1 nats
    assert scores["late_drop"][1] == pytest.approx(2.9 * 0.5, rel=1e-3)  # the fall into epoch 2 of 3


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    positives = rng.random(40) < 0.3
    pairs = [(s_p > s_n) + 0.5 * (s_p == s_n)
             for s_p, s_n in itertools.product(scores[positives], scores[~positives])]
    assert auroc(scores, positives) == pytest.approx(np.mean(pairs))
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([True, False, False])) == 1.0
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([True, True])))


def test_precision_at_k():
    scores = np.array([0.9, np.nan, 0.5, 0.8, 0.1])
    positives = np.array([True, True, False, False, False])
    assert precision_at_k(scores, positives, 2) == 0.5
    assert precision_at_k(scores, positives, 1) == 1.0
    with pytest.raises(ValueError, match="k"):
        precision_at_k(scores, positives, 0)


def test_bad_ids_and_arguments():
    history = ExampleHistory(3)
    with pytest.raises(ValueError, match=r"example ids must lie in \[0, 3\)"):
        feed(history, [3], [[0.1]])
    with pytest.raises(ValueError, match="num_examples"):
        ExampleHistory(0)
    with pytest.raises(ValueError, match="fit_threshold"):
        ExampleHistory(3, fit_threshold=1.5)
    with pytest.raises(ValueError, match="no finished epoch"):
        ExampleHistory(3).suspicion_scores()
