"""What serving re-reads every second: bandit parameters and the item board.

The stream workers keep both current (`features.online_state`); a background thread
here copies them into memory every `refresh_s`, so a request never waits on them and a
store outage only freezes them at their last good value (counted in `state_age`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from features.online_state import BoardEntry, OnlineStateReader, merge_entries
from models.bandit_learning import BanditStats, CtrLearner
from models.bandit_state import BanditState
from models.data import FIRST_ITEM
from online import metrics
from streamrec.errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveView:
    """One consistent copy of the live state; replaced whole on every refresh."""

    bandit: BanditState
    hot: tuple[BoardEntry, ...] = ()  # most popular first
    new: tuple[BoardEntry, ...] = ()  # newest first
    by_id: dict[str, BoardEntry] = field(default_factory=dict)
    refreshed_at: float = 0.0


@dataclass(frozen=True)
class BoardByCode:
    """The board's items one model knows, by vocabulary code: `stats` rows in the column
    order of `BoardEntry.stats`, for serving's item-statistics table."""

    codes: np.ndarray  # int64 [m], sorted
    stats: np.ndarray  # float64 [m, 5]: ctr, popularity, first_ms, clicks, impressions

    @classmethod
    def build(
        cls, by_id: dict[str, BoardEntry], codes_of: Callable[[list[str]], np.ndarray]
    ) -> BoardByCode:
        entries = list(by_id.values())
        codes = codes_of([e.item_id for e in entries]) if entries else np.zeros(0, np.int64)
        order = np.flatnonzero(codes >= FIRST_ITEM)  # unknown items: looked up by id
        order = order[np.argsort(codes[order], kind="stable")]
        rows = [entries[j].stats() for j in order.tolist()]
        return cls(codes[order], np.array(rows, dtype=np.float64).reshape(len(rows), 5))


def empty_view() -> LiveView:
    return LiveView(BanditState(BanditStats.zeros(), CtrLearner.from_weights({})))


class LiveState:
    def __init__(
        self, reader: OnlineStateReader, board_size: int, refresh_s: float, board_every: int = 5
    ) -> None:
        self._reader = reader
        self._board_size = board_size
        self._refresh_s = refresh_s
        # The board (thousands of rows) changes slowly and costs the request thread GIL
        # time to read: refresh it every `board_every` refreshes, the bandit every time.
        self._board_every = board_every
        self._round = 0
        self._view = empty_view()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def view(self) -> LiveView:
        return self._view

    def refresh(self) -> bool:
        """Read the store once; keep the last good view on failure. Returns success."""
        old = self._view
        board = self._round % self._board_every == 0 or not old.refreshed_at
        self._round += 1
        try:
            bandit = BanditState.from_counters(self._reader.counters())
            if board:
                hot = self._reader.hottest(self._board_size)
                new = self._reader.newest(max(self._board_size // 5, 1))
        except StoreError as exc:
            if self.last_error is None:
                log.warning("online state unavailable, keeping the last view: %s", exc.message)
            self.last_error = exc.message
            return False
        if board:
            by_id = {e.item_id: e for e in merge_entries(hot, new)}
            self._view = LiveView(bandit, tuple(hot), tuple(new), by_id, time.time())
        else:
            self._view = LiveView(bandit, old.hot, old.new, old.by_id, time.time())
        self.last_error = None
        for policy, reward in bandit.rewards.items():
            metrics.POLICY_CTR.labels(policy).set(reward.ctr)
            metrics.POLICY_IMPRESSIONS.labels(policy).set(reward.impressions)
        return True

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="live-state", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()
            metrics.STATE_AGE.set(time.time() - self._view.refreshed_at)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._reader.close()
