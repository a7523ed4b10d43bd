"""Serving's per-request pieces against plain formulations: the candidates' features
(`Recommender._candidates`) against the board looked up per request and `np.where` per
column, and the request's random generator."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from features.online_state import BoardEntry
from models.bandit import FEATURE_NAMES
from models.data import FIRST_ITEM, UNKNOWN, ItemVocab
from online.live import LiveView, empty_view
from online.recommender import Recommender, _RequestRng
from streamrec.settings import load_settings

_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def reference(ids, codes, scores, anchor, snap, view, now_ms, ctr_prior, weight):  # type: ignore[no-untyped-def]
    n = len(ids)
    known = codes >= FIRST_ITEM
    ctr = np.where(known, snap.item_ctr[codes], ctr_prior)
    pop = np.where(known, snap.item_popularity[codes], 0.0)
    clicks = np.where(known, snap.item_clicks[codes], 0.0)
    imps = np.where(known, snap.item_impressions[codes], 0.0)
    first = np.zeros(n)
    for j in np.flatnonzero(known).tolist():
        e = view.by_id.get(ids[j])
        if e is not None:
            ctr[j], pop[j], first[j] = e.ctr, e.popularity, e.first_ms
            clicks[j], imps[j] = e.clicks, e.impressions
    for j in np.flatnonzero(~known).tolist():
        e = view.by_id.get(ids[j])
        if e is not None:
            ctr[j], pop[j], first[j] = e.ctr, e.popularity, e.first_ms
            clicks[j], imps[j] = e.clicks, e.impressions
    x = np.zeros((n, len(FEATURE_NAMES)))
    x[:, _COL["bias"]] = 1.0
    x[:, _COL["retrieval_score"]] = scores
    x[:, _COL["ctr"]] = ctr
    x[:, _COL["log1p_popularity"]] = np.log1p(pop)
    age_h = np.where(first > 0, np.maximum(now_ms - first, 0) / 3_600_000, np.inf)
    x[:, _COL["freshness"]] = np.exp(-age_h / 24.0)
    x[:, _COL["in_model"]] = known
    if anchor is not None:
        x[known, _COL["affinity"]] = snap.item_vectors[codes[known]] @ anchor
    base = weight * (x[:, _COL["retrieval_score"]] + x[:, _COL["affinity"]])
    return x, clicks, imps, base


def _snapshot(vocab: ItemVocab, rng: np.random.Generator) -> Any:
    """What `_candidates` reads of a ModelSnapshot, with the real affinity and codes."""
    from online.snapshot import ModelSnapshot

    v = len(vocab)
    vectors = rng.normal(size=(v, 8)).astype(np.float32)
    snap = SimpleNamespace(
        version="v1",
        vocab=vocab,
        item_vectors=vectors,
        item_ctr=rng.uniform(0, 0.2, v),
        item_popularity=rng.integers(0, 500, v).astype(float),
        item_clicks=rng.integers(0, 50, v).astype(float),
        item_impressions=rng.integers(0, 900, v).astype(float),
    )
    snap.codes = lambda ids: ModelSnapshot.codes(snap, ids)  # type: ignore[arg-type]
    snap.affinity = lambda codes, anchor: ModelSnapshot.affinity(snap, codes, anchor)  # type: ignore[arg-type]
    return snap


def test_candidate_features_equal_the_per_request_formulation(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    vocab = ItemVocab.from_ids([f"i{j}" for j in range(300)])
    snap = _snapshot(vocab, rng)
    now = 1_800_000_000_000
    board = [
        BoardEntry(f"i{j}", float(j), j / 1000, float(j % 7), float(j), now - j * 60_000, now)
        for j in rng.choice(300, 80, replace=False)
    ] + [BoardEntry(f"new{j}", 3.0 + j, 0.1, 1.0, 4.0 + j, now - j * 1000, now) for j in range(5)]
    view = LiveView(empty_view().bandit, by_id={e.item_id: e for e in board})
    settings = load_settings(data_dir=tmp_path)
    holder: Any = SimpleNamespace(get=lambda version: snap if version == "v1" else None)
    rec = Recommender(settings, holder, None, None, None)  # type: ignore[arg-type]
    for trial in range(30):
        if trial == 15:  # a board refresh: other items, other values; the table follows
            moved = [replace(e, popularity=e.popularity + 50, ctr=e.ctr / 2) for e in board[::2]]
            view = LiveView(view.bandit, by_id={e.item_id: e for e in moved})
        ids = [f"i{j}" for j in rng.choice(300, 40, replace=False)]
        ids += [f"new{j}" for j in range(trial % 6)] + ["never-seen"]
        codes = snap.codes(ids)
        assert (codes == UNKNOWN).sum() == trial % 6 + 1
        scores = rng.normal(size=len(ids))
        anchor = None if trial % 4 == 0 else rng.normal(size=8).astype(np.float32)
        cands = rec._candidates(ids, codes, scores, anchor, snap, view, now)
        want = reference(
            ids,
            codes,
            scores,
            anchor,
            snap,
            view,
            now,
            settings.ctr_prior,
            settings.retrieval_weight,
        )
        for got, expected in zip(
            (cands.x, cands.clicks, cands.impressions, cands.base), want, strict=True
        ):
            np.testing.assert_array_equal(got, expected)


def test_the_request_generator_follows_the_request_id_on_each_thread() -> None:
    import threading
    import uuid

    ids = [uuid.uuid4().hex for _ in range(3)]
    rng = _RequestRng()
    first = [rng.seeded(r).standard_normal(4).tolist() for r in ids]
    again = [rng.seeded(r).standard_normal(4).tolist() for r in reversed(ids)][::-1]
    assert first == again  # the same id, the same draws, whatever came before
    assert len({tuple(d) for d in first}) == 3
    mine = rng.seeded(ids[0])
    seen: list[tuple[bool, list[float]]] = []

    def other_thread() -> None:
        theirs = rng.seeded(ids[0])
        seen.append((theirs is mine, theirs.random(4).tolist()))

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    shared, draws = seen[0]
    assert not shared  # each thread has its own generator: no races on one state
    assert draws == mine.random(4).tolist()  # ... seeded the same way from the id
