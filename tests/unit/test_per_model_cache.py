"""`PerModel`: serving's caches of values derived from the live board and a model."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from online.recommender import PerModel


def test_rebuilds_on_change_keeps_served_models_and_drops_swapped_out_ones() -> None:
    a1: Any = SimpleNamespace(version="a")  # stands in for a ModelSnapshot: only .version
    b: Any = SimpleNamespace(version="b")
    served: dict[str, Any] = {"a": a1, "b": b}
    cache: PerModel[int] = PerModel(served.get)
    builds: list[str] = []

    def build(tag: str) -> Callable[[], int]:
        def run() -> int:
            builds.append(tag)
            return len(builds)

        return run

    board, newer_board = object(), object()
    assert cache.get(board, a1, build("a1")) == 1
    assert cache.get(board, b, build("b")) == 2  # a pinned second model: its own entry
    assert cache.get(board, a1, build("again")) == 1  # both kept, nothing rebuilt
    assert cache.get(newer_board, a1, build("a1'")) == 3  # the board changed
    a2: Any = SimpleNamespace(version="a")  # a reload of the same version name: new object
    served["a"] = a2
    assert cache.get(newer_board, a2, build("a2")) == 4
    served.pop("b")  # no longer served: its entry (and snapshot) go at the next rebuild
    assert cache.get(board, a2, build("a2'")) == 5
    assert set(cache._entries) == {"a"}
    assert builds == ["a1", "b", "a1'", "a2", "a2'"]
