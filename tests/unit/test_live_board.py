"""`BoardByCode`: the item board by vocabulary code, as serving's item statistics use it."""

from __future__ import annotations

import numpy as np

from features.online_state import BoardEntry
from models.data import ItemVocab
from online.live import BoardByCode


def _entry(item: str, pop: float) -> BoardEntry:
    return BoardEntry(item, pop, pop / 100, pop / 10, pop, 1_000, 500)


def test_rows_of_known_items_sorted_by_code_and_never_unknown_ones() -> None:
    vocab = ItemVocab.from_ids(["a", "b", "c", "d"])
    by_id = {e.item_id: e for e in (_entry("c", 3), _entry("new1", 7), _entry("a", 1))}
    board = BoardByCode.build(by_id, lambda ids: vocab.lookup(ids))
    # "new1" is unknown to the model: serving looks it up by id instead
    assert board.codes.tolist() == vocab.lookup(["a", "c"]).tolist()
    assert board.stats.tolist() == [list(_entry("a", 1).stats()), list(_entry("c", 3).stats())]
    assert board.stats[:, 1].tolist() == [1.0, 3.0]  # popularity, in stats() order


def test_an_empty_board_has_no_rows() -> None:
    board = BoardByCode.build({}, lambda ids: np.zeros(len(ids), np.int64))
    assert board.codes.shape == (0,) and board.stats.shape == (0, 5)
