import numpy as np

from benchmarks.common import (paired_bootstrap, sorted_pairs, weighted_average_precision,
                               weighted_recall_at_precision)
from overlap_audit.decide.thresholds import recall_at_precision


def _recall_at(sims, target):
    """The unweighted rule of overlap_audit.decide.thresholds: positives on the diagonal, every other cell a negative."""
    n = len(sims)
    return recall_at_precision(np.diag(sims), sims[~np.eye(n, dtype=bool)], target)


def _average_precision(sims):
    """Average precision as the benchmarks compute it: all pairs ranked by score (ties: negatives first),
    the precision at each positive, averaged over the positives."""
    n = len(sims)
    scores = np.concatenate([np.diag(sims), sims[~np.eye(n, dtype=bool)]])
    labels = np.concatenate([np.ones(n), np.zeros(n * n - n)])
    hits = labels[np.lexsort((labels, -scores))]
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / n)


def test_weighted_recall_with_unit_weights_is_the_unweighted_rule():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = 12 if trial < 14 else 100  # 100: more pairs than the first prefix the function looks at
        # coarse scores: many ties, some positives below negatives, a few never-matching pairs (-inf)
        sims = np.round(rng.normal(size=(n, n)), 1) + np.eye(n) * rng.uniform(0, 3, size=n)
        sims[rng.random((n, n)) < 0.05] = -np.inf
        for target in (0.012, 0.05, 0.5, 0.9, 0.99):  # 0.012: the answer lies past the first 4096 pairs
            got = weighted_recall_at_precision(*sorted_pairs(sims), np.ones(n), target)
            assert got == _recall_at(sims, target), (trial, target)
        assert np.isclose(weighted_average_precision(*sorted_pairs(sims), np.ones(n)), _average_precision(sims))


def test_weighted_recall_counts_a_resampled_image_as_copies():
    # copies 0, 1, 2 at 0.9, 0.8, 0.7; one negative (copy 2 against image 1) at 0.75 between them
    sims = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.75, 0.7]])
    pairs = sorted_pairs(sims)
    assert weighted_recall_at_precision(*pairs, np.ones(3), 0.6) == 1.0  # precision 2/3 at 0.75, 3/4 at 0.7
    assert weighted_recall_at_precision(*pairs, np.ones(3), 0.99) == 2 / 3  # 0.8: the lowest with precision 1
    # without image 2 the negative (2, 1) is gone too: both remaining copies clean
    assert weighted_recall_at_precision(*pairs, np.array([1.0, 1.0, 0.0]), 0.99) == 1.0
    # image 2 drawn twice, image 0 never: the negative weighs 2 against copy 1's 1 and copy 2's 2 -> precision
    # 3/5 at 0.7 (3/4 with unit weights), 1 at 0.8
    assert weighted_recall_at_precision(*pairs, np.array([0.0, 1.0, 2.0]), 0.6) == 1.0
    assert weighted_recall_at_precision(*pairs, np.array([0.0, 1.0, 2.0]), 0.65) == 1 / 3
    assert weighted_recall_at_precision(*pairs, np.ones(3), 0.65) == 1.0
    # a negative on top does not stop the rule (precision 3/5 at 0.7); no threshold reaching the target gives 0
    top_negative = sims.copy()
    top_negative[0, 1] = 0.95
    assert weighted_recall_at_precision(*sorted_pairs(top_negative), np.ones(3), 0.5) == 1.0
    assert weighted_recall_at_precision(*sorted_pairs(top_negative), np.ones(3), 0.99) == 0.0


def test_paired_bootstrap_tells_a_real_difference_from_none():
    rng = np.random.default_rng(0)
    n = 60
    noise = rng.normal(scale=0.1, size=(n, n))
    good = noise + np.eye(n)  # every copy far above every negative
    bad = noise + np.eye(n) * np.where(np.arange(n) % 2 == 0, 1.0, 0.0)  # half the copies drown
    same = paired_bootstrap(good, good, replicates=200)
    assert same.difference == same.low == same.high == 0.0 and same.p_a_better == 0.0
    diff = paired_bootstrap(good, bad, replicates=200)
    assert diff.difference > 0.3 and diff.low > 0 and diff.p_a_better == 1.0
    assert diff.low <= diff.difference <= diff.high
    ap = paired_bootstrap(good, bad, metric="ap", replicates=200)
    assert ap.metric == "ap" and ap.low > 0.2 and ap.p_a_better == 1.0
    # resampling whole groups: with every copy of group 0 lost and the rest perfect, the interval of the
    # difference is made of whole groups' worth of recall (multiples of 1/6 give or take the resampled sizes)
    groups = np.repeat(np.arange(6), 10)
    one_group_lost = noise + np.eye(n) * (groups != 0)
    g = paired_bootstrap(good, one_group_lost, groups=groups, replicates=300)
    assert np.isclose(g.difference, 1 / 6) and g.low == 0.0 and g.p_a_better < 1.0
    try:
        paired_bootstrap(good, good, groups=groups[:5])
    except ValueError as exc:
        assert "group label" in str(exc)
    else:
        raise AssertionError("a wrong number of group labels was accepted")
    try:
        paired_bootstrap(good, good[:10, :10])
    except ValueError as exc:
        assert "square" in str(exc)
    else:
        raise AssertionError("matrices of two shapes were accepted")
