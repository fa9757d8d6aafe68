"""Hungarian matcher: optimal, batched == one image at a time, empty targets, invariant to target order."""
from __future__ import annotations

import itertools

import pytest
import torch

from vitkit.tasks.matcher import HungarianMatcher


def random_boxes(n: int) -> torch.Tensor:
    """(n, 4) valid normalised cxcywh boxes."""
    centre, size = torch.rand(n, 2) * 0.6 + 0.2, torch.rand(n, 2) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def random_batch(sizes: list[int], queries: int = 7, classes: int = 5):
    logits = torch.randn(len(sizes), queries, classes + 1)
    boxes = torch.stack([random_boxes(queries) for _ in sizes])
    targets = [{"labels": torch.randint(classes, (n,)), "boxes": random_boxes(n)} for n in sizes]
    return logits, boxes, targets


def total_cost(matcher, logits, boxes, target, match) -> float:
    cost = matcher.cost_matrix(logits, boxes, [target])
    return float(cost[match[0], match[1]].sum())


def test_assignment_is_the_cheapest_of_all_permutations():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch([3], queries=5)
    (q, t), = matcher(logits, boxes, targets)
    cost = matcher.cost_matrix(logits[0], boxes[0], targets)  # (5, 3)
    best = min(sum(float(cost[rows[j], j]) for j in range(3)) for rows in itertools.permutations(range(5), 3))
    assert float(cost[q, t].sum()) == pytest.approx(best, abs=1e-5)
    assert len(set(q.tolist())) == 3 and sorted(t.tolist()) == [0, 1, 2]


def test_batched_equals_one_image_at_a_time():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch([3, 0, 5, 1])
    batched = matcher(logits, boxes, targets)
    for i, target in enumerate(targets):
        (q, t), = matcher(logits[i : i + 1], boxes[i : i + 1], [target])
        assert torch.equal(batched[i][0], q) and torch.equal(batched[i][1], t)


def test_empty_targets_give_empty_matches():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch([0, 0])
    for q, t in matcher(logits, boxes, targets):
        assert q.dtype == t.dtype == torch.int64 and q.numel() == t.numel() == 0
    logits, boxes, targets = random_batch([0, 2])
    (q0, t0), (q1, t1) = matcher(logits, boxes, targets)
    assert q0.numel() == 0 and len(q1) == len(t1) == 2


def test_more_targets_than_queries_matches_every_query():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch([6], queries=4)
    (q, t), = matcher(logits, boxes, targets)
    assert sorted(q.tolist()) == [0, 1, 2, 3] and len(set(t.tolist())) == 4


def test_permuting_targets_permutes_the_assignment():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch([5], queries=9)
    (q, t), = matcher(logits, boxes, targets)
    perm = torch.randperm(5)
    permuted = {"labels": targets[0]["labels"][perm], "boxes": targets[0]["boxes"][perm]}
    (qp, tp), = matcher(logits, boxes, [permuted])
    query_of = dict(zip(t.tolist(), q.tolist()))  # original target -> query
    query_of_permuted = {int(perm[j]): qi for j, qi in zip(tp.tolist(), qp.tolist())}
    assert query_of == query_of_permuted


def test_permuting_queries_permutes_the_assignment():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_batch([4], queries=8)
    (q, t), = matcher(logits, boxes, targets)
    perm = torch.randperm(8)
    (qp, tp), = matcher(logits[:, perm], boxes[:, perm], targets)
    assert dict(zip(t.tolist(), q.tolist())) == {j: int(perm[qi]) for qi, j in zip(qp.tolist(), tp.tolist())}


def test_perfect_predictions_match_themselves():
    """A query that predicts a target's box and class exactly is matched to it."""
    matcher = HungarianMatcher()
    target = {"labels": torch.tensor([2, 0, 1]), "boxes": random_boxes(3)}
    boxes = random_boxes(6)
    logits = torch.full((6, 4), -5.0)
    for query, j in ((4, 0), (1, 1), (5, 2)):
        boxes[query] = target["boxes"][j]
        logits[query, target["labels"][j]] = 5.0
    (q, t), = matcher(logits[None], boxes[None], [target])
    assert dict(zip(t.tolist(), q.tolist())) == {0: 4, 1: 1, 2: 5}


def test_all_zero_costs_are_refused():
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(0, 0, 0)
