"""Ranking metrics against hand-computed values and a plain-Python twin; the popularity baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline.metrics import popularity_baseline, ranking_metrics
from streamrec.errors import DataError

D = [1.0 / math.log2(r + 2) for r in range(100)]  # discount of rank r (0-based)


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def test_hand_computed_values() -> None:
    rec = np.array(
        [
            [5, 3, 9, 7, -1],  # user 0: truth {3, 7, 8}: hits at ranks 1 and 3
            [2, 4, 6, 8, 10],  # user 1: truth {2}: hit at rank 0
            [1, 11, 12, 13, 14],  # user 2: truth {99}: no hit
            [4, 5, 6, 7, 8],  # user 3: empty truth, skipped
        ]
    )
    truth = [arr(3, 7, 8), arr(2), arr(99), arr()]
    wide = np.full((4, 10), -1, dtype=np.int64)
    wide[:, :5] = rec
    m = ranking_metrics(wide, truth, ks=(2, 5, 10), n_items=20)
    assert m["users"] == 3
    assert m["recall@2"] == pytest.approx((1 / 3 + 1 / 1 + 0) / 3)
    assert m["recall@5"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["recall@10"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["hitrate@10"] == pytest.approx(2 / 3)
    ndcg0 = (D[1] + D[3]) / (D[0] + D[1] + D[2])
    assert m["ndcg@10"] == pytest.approx((ndcg0 + 1.0 + 0.0) / 3)
    # coverage over evaluated users (0..2): top-2 = {5,3,2,4,1,11}, top-5 adds 9,7,6,8,10,12,13,14
    assert m["coverage@2"] == pytest.approx(6 / 20)
    assert m["coverage@5"] == pytest.approx(14 / 20)


def test_recall_divides_by_truth_size_not_k() -> None:
    # 12 relevant items, 10 of them in the top 10: recall@10 = 10/12, ndcg@10 = 1.
    rec = np.arange(10, dtype=np.int64)[None, :]
    m = ranking_metrics(rec, [np.arange(12)], ks=(10,))
    assert m["recall@10"] == pytest.approx(10 / 12)
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert "coverage@10" not in m  # no catalogue size given


def _reference(
    rec: np.ndarray, truth: list[np.ndarray], ks: tuple[int, ...], n_items: int
) -> dict[str, float]:
    """The slow twin: one user at a time, straight from the definitions."""
    rows = [(list(r), set(t.tolist())) for r, t in zip(rec, truth, strict=True) if len(t)]
    out: dict[str, float] = {"users": float(len(rows))}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([len(set(r[:k]) & t) / len(t) for r, t in rows]))
        items = {i for r, _ in rows for i in r[:k] if i >= 0}
        out[f"coverage@{k}"] = len(items) / n_items
    out["hitrate@10"] = float(np.mean([bool(set(r[:10]) & t) for r, t in rows]))
    ndcgs = []
    for r, t in rows:
        dcg = sum(D[i] for i, x in enumerate(r[:10]) if x in t)
        ndcgs.append(dcg / sum(D[: min(len(t), 10)]))
    out["ndcg@10"] = float(np.mean(ndcgs))
    return out


def test_matches_plain_reference_on_random_data() -> None:
    rng = np.random.default_rng(7)
    n_users, n_items = 300, 150
    rec = np.stack([rng.permutation(n_items)[:50] for _ in range(n_users)]).astype(np.int64)
    rec[rng.random(rec.shape) < 0.05] = -1  # some empty slots (not duplicates of -1 items)
    truth = [rng.choice(n_items, size=rng.integers(0, 15), replace=False) for _ in range(n_users)]
    got = ranking_metrics(rec, truth, ks=(10, 20, 50), n_items=n_items)
    want = _reference(rec, truth, (10, 20, 50), n_items)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert 0.0 < got["recall@10"] < got["recall@50"] < 1.0  # the data is not degenerate


def test_duplicate_truth_items_count_once() -> None:
    m = ranking_metrics(arr(4, 5, 6, 7, 8, 9, 10, 11, 12, 13)[None, :], [arr(4, 4, 20)], ks=(10,))
    assert m["recall@10"] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("rec", "truth", "ks", "match"),
    [
        (np.zeros((2, 10), dtype=np.int64), [arr(1)], (10,), "truth"),
        (np.arange(10, dtype=np.int64)[None, :], [arr(1)], (10, 50), "ks"),
        (np.array([[1, 2, 1, 3, 4, 5, 6, 7, 8, 9]]), [arr(1)], (10,), "repeats"),
        (np.array([[-2, 2, 3, 4, 5, 6, 7, 8, 9, 10]]), [arr(1)], (10,), ">= 0"),
        (np.zeros((1, 10), dtype=np.float32), [arr(1)], (10,), "integer"),
    ],
)
def test_rejects_bad_input(rec: np.ndarray, truth: list, ks: tuple, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ranking_metrics(rec, truth, ks=ks)


def test_empty_truth_everywhere_reports_zero_users() -> None:
    m = ranking_metrics(np.arange(10, dtype=np.int64)[None, :], [arr()], ks=(10,))
    assert m == {"users": 0.0}


def test_popularity_baseline_orders_by_count_then_index() -> None:
    targets = arr(7, 7, 7, 3, 3, 5, 5, 9)  # counts: 7:3, 3:2, 5:2, 9:1
    rec = popularity_baseline(targets, n_users=2, k=5)
    assert rec.tolist() == [[7, 3, 5, 9, -1], [7, 3, 5, 9, -1]]


def test_popularity_baseline_excludes_seen_items() -> None:
    targets = arr(7, 7, 7, 3, 3, 5, 5, 9, 2)
    rec = popularity_baseline(targets, n_users=3, k=2, exclude=[arr(7), arr(), arr(3, 7, 5)])
    assert rec.tolist() == [[3, 5], [7, 3], [2, 9]]


def test_popularity_baseline_exclusion_matches_plain_loop() -> None:
    rng = np.random.default_rng(3)
    targets = rng.zipf(1.5, size=2000).astype(np.int64) % 80
    exclude = [rng.choice(80, size=rng.integers(0, 30), replace=False) for _ in range(200)]
    got = popularity_baseline(targets, n_users=200, k=10, exclude=exclude)
    counts = np.bincount(targets, minlength=80)
    order = sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    for u, seen in enumerate(exclude):
        want = [i for i in order if i not in set(seen.tolist())][:10]
        assert got[u].tolist() == want + [-1] * (10 - len(want))


def test_popularity_is_a_sane_baseline_in_ranking_metrics() -> None:
    # Users who each want one of the three most popular items: popularity recall@10 = 1.
    targets = np.repeat(arr(10, 11, 12, 13), [50, 40, 30, 1])
    rec = popularity_baseline(targets, n_users=3, k=10)
    m = ranking_metrics(rec, [arr(10), arr(11), arr(12)], ks=(10,), n_items=20)
    assert m["recall@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx((1 + D[1] + D[2]) / 3)
    assert m["coverage@10"] == pytest.approx(4 / 20)
