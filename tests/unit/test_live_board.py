"""`BoardByCode`: the item board looked up by vocabulary code, as the request path does."""

from __future__ import annotations

import numpy as np

from features.online_state import BoardEntry
from models.data import UNKNOWN, ItemVocab
from online.live import BoardByCode


def _entry(item: str, pop: float) -> BoardEntry:
    return BoardEntry(item, pop, pop / 100, pop / 10, pop, 1_000, 500)


def test_find_matches_known_items_and_never_unknown_ones() -> None:
    vocab = ItemVocab.from_ids(["a", "b", "c", "d"])
    by_id = {e.item_id: e for e in (_entry("c", 3), _entry("new1", 7), _entry("a", 1))}
    board = BoardByCode.build(by_id, lambda ids: vocab.lookup(ids))
    assert len(board.codes) == 2  # "new1" is unknown to the model: looked up by id instead
    codes = vocab.lookup(["a", "b", "c", "zzz"])
    hit, at = board.find(np.append(codes, UNKNOWN))
    assert hit.tolist() == [True, False, True, False, False]
    assert board.popularity[at].tolist() == [1.0, 3.0]
    assert board.clicks[at].tolist() == [0.1, 0.3]


def test_an_empty_board_finds_nothing() -> None:
    board = BoardByCode.build({}, lambda ids: np.zeros(len(ids), np.int64))
    hit, at = board.find(np.array([2, 3]))
    assert not hit.any() and len(at) == 0
