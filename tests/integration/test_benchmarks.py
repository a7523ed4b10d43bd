"""The benchmark commands run end to end at toy sizes (their figures are not asserted)."""

from __future__ import annotations

import pytest

from benchmarks.ingest import run_ingest_bench
from benchmarks.serve import run_serve_bench


@pytest.mark.parametrize(("archive_workers", "warm_hours"), [(0, 0), (1, 2)])
def test_ingest_bench_with_two_workers_sees_every_marker(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, archive_workers: int, warm_hours: int
) -> None:
    """Two feature workers in one group (archiving too, or beside an archive worker),
    paced producer: the run ends only once every partition's last event is readable
    through Feast, both workers report freshness, and the archive covers every marker.
    Warmed, the items start with the counters of hours of stream."""
    monkeypatch.setenv("STREAMREC_REDIS_URL", redis_url)
    result = run_ingest_bench(
        events=3000,
        users=200,
        items=100,
        store="redis",
        workers=2,
        rate=3000,
        archive_workers=archive_workers,
        warm_hours=warm_hours,
    )
    assert result["events"] == 3000 and result["workers"] == 2
    assert result["archive_workers"] == archive_workers
    # 2 hours of 3000/s over 100 items: about 60 minute and 8 hour fields an item
    assert (result["warm_item_fields"] > 100 * 40) == (warm_hours > 0)
    assert result["archive_done_s"] >= result["produce_s"]
    assert (result["cores_used"]["archive workers"] is None) == (archive_workers == 0)
    assert result["events_per_s"] > 0
    assert (
        0 <= result["freshness_p50_ms"] <= result["freshness_p99_ms"] <= result["freshness_max_ms"]
    )
    assert result["user_rows_written"] >= 200 * 0.5  # most simulated users were written
    assert result["item_rows_written"] >= 100 * 0.5  # and items, with their own lags
    for kind in ("user", "item"):
        assert 0 <= result[f"{kind}_freshness_p99_ms"] <= result["freshness_p99_ms"]
    assert result["elapsed_s"] >= 1.0  # 3000 events at 3000/s cannot finish sooner


def test_serve_bench_answers_everything_from_both_server_processes() -> None:
    """`streamrec serve --workers 2` under the bench: every request answered, and both
    processes did a real share of the work."""
    result = run_serve_bench(
        items=3000, users=200, rate=150, seconds=3, concurrency=32, k=10, workers=2
    )
    assert result["error_rate"] == 0 and result["degraded_rate"] == 0
    assert result["requests"] == 450 and result["rps"] > 100
    share = result["api_cores_per_process"]
    assert len(share) == 2 and min(share) > 0.2 * max(share), share
    assert result["api_cpu_ms_per_request"] > 0
