"""The worker's loop clock charges every second to exactly one phase."""

from __future__ import annotations

import logging

import pytest

from streams import loop_clock
from streams.loop_clock import LoopClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    t = FakeTime()
    monkeypatch.setattr(loop_clock.time, "perf_counter", t)
    return t


def test_laps_split_the_loop_and_a_window_logs_its_shares(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    clock = LoopClock(log_every_s=10)
    for _ in range(4):  # 4 loops of 2.5 s: wait 0.5, parse 0.5, features take 1.5
        fake_time.now += 0.5
        clock.lap("wait")
        fake_time.now += 0.5
        clock.lap("parse")
        fake_time.now += 1.5
        clock.lap("features take")
        clock.batch(1000)
        with caplog.at_level(logging.INFO, logger=loop_clock.__name__):
            clock.maybe_log()
    assert len(caplog.records) == 1  # once the window reached 10 s, not before
    line = caplog.records[0].getMessage()
    assert "4000 events in 4 batches (mean 1000)" in line
    assert line.endswith("features take 60%, wait 20%, parse 20%")
    fake_time.now += 1.0
    clock.lap("commit")
    clock.close_window()
    assert dict(clock.totals) == pytest.approx(
        {"wait": 2.0, "parse": 2.0, "features take": 6.0, "commit": 1.0}
    )
    assert sum(clock.totals.values()) == pytest.approx(11.0)  # all of it, once
