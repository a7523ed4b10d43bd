"""Where a stream worker's time goes: wall seconds per loop phase, logged every interval.

The worker calls `lap(phase)` at each phase's end, so every second of the loop lands in
exactly one phase: waiting on the consumer, parsing (with dead letters), each sink's
`take` and `tick`, and the Kafka commit. Every `log_every_s` one INFO line gives the
shares; `totals` keep the whole run for `--stats-out` (the ingest bench turns them into
microseconds per event).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

log = logging.getLogger(__name__)


class LoopClock:
    def __init__(self, log_every_s: float = 10.0) -> None:
        self._every = log_every_s
        self.totals: dict[str, float] = defaultdict(float)
        self._window: dict[str, float] = defaultdict(float)
        self._events = self._batches = 0
        self._last = self._window_start = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to `phase`."""
        now = time.perf_counter()
        self._window[phase] += now - self._last
        self._last = now

    def batch(self, events: int) -> None:
        self._events += events
        self._batches += 1

    def maybe_log(self) -> None:
        if self._last - self._window_start >= self._every:
            self.close_window(log_it=True)

    def close_window(self, log_it: bool = False) -> None:
        """Fold the current window into `totals` (logging its shares if asked)."""
        span = self._last - self._window_start
        if log_it and span > 0:
            shares = ", ".join(
                f"{phase} {100 * s / span:.0f}%"
                for phase, s in sorted(self._window.items(), key=lambda kv: -kv[1])
            )
            log.info(
                "last %.0f s: %d events in %d batches (mean %d); %s",
                span,
                self._events,
                self._batches,
                self._events // max(self._batches, 1),
                shares,
            )
        for phase, s in self._window.items():
            self.totals[phase] += s
        self._window.clear()
        self._events = self._batches = 0
        self._window_start = self._last
