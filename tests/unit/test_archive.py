"""ArchiveSink: hive-partitioned Parquet, checkpoints, and crash recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.dataset as ds

from streamrec.events import Event
from streams.archive import SCHEMA, ArchiveSink

H0 = 1_790_000_000_000 // 3_600_000 * 3_600_000  # an hour boundary
TOPIC = "events"


def ev(p: int, off: int, ts: int) -> Event:
    return Event(
        f"e-{p}-{off}",
        "click",
        f"u{p}",
        f"i{off}",
        ts,
        request_id="r",
        position=off % 3,
        propensity=0.5,
        context={"d": "ios"} if off % 2 else {},
    )


def sink(root: Path) -> ArchiveSink:
    return ArchiveSink(root, TOPIC, flush_rows=1_000_000, flush_s=3600.0)


def read(root: Path) -> list[dict]:
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["kafka_partition"], r["kafka_offset"]))


def files(root: Path) -> list[str]:
    return sorted(f.name for f in root.glob("date=*/hour=*/*.parquet"))


def test_flush_writes_hive_partitioned_parquet(tmp_path: Path) -> None:
    s = sink(tmp_path)
    for p in (0, 1):
        for off in range(10):
            s.add(p, off, ev(p, off, H0 + (off // 5) * 3_600_000 + off))  # two hours
    assert s.flush() == 20
    rows = read(tmp_path)
    assert len(rows) == 20
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.column_names == [*SCHEMA.names, "date", "hour"]
    assert len(list(tmp_path.glob("date=*/hour=*"))) == 2
    assert len(files(tmp_path)) == 4  # 2 partitions x 2 hours
    first = rows[1]
    assert (first["event_id"], first["kafka_partition"], first["kafka_offset"]) == ("e-0-1", 0, 1)
    assert int(first["event_timestamp"].timestamp() * 1000) == H0 + 1
    assert (first["position"], first["propensity"], first["request_id"]) == (1, 0.5, "r")
    assert json.loads(first["context"]) == {"d": "ios"} and rows[0]["context"] is None
    assert [r["kafka_offset"] for r in rows if r["kafka_partition"] == 1] == list(range(10))
    assert {r["hour"] for r in rows} == {int(_hour(H0)), int(_hour(H0 + 3_600_000))}
    assert s.checkpoint(0) == 9 and s.checkpoint(1) == 9 and s.checkpoint(7) == -1


def _hour(ts_ms: int) -> str:
    return f"{time.gmtime(ts_ms // 1000).tm_hour:02d}"


def test_invalid_messages_advance_the_checkpoint_only(tmp_path: Path) -> None:
    s = sink(tmp_path)
    s.add(0, 0, ev(0, 0, H0))
    s.add(0, 1, None)
    s.add(0, 2, None)
    assert s.flush() == 1
    assert s.checkpoint(0) == 2
    assert (tmp_path / "_checkpoints" / TOPIC / "p0").read_text() == "2"
    s.add(0, 3, None)
    assert s.flush() == 0 and s.checkpoint(0) == 3
    assert len(read(tmp_path)) == 1
    assert s.flush() == 0 and s.checkpoint(0) == 3  # nothing pending: a no-op


def test_add_skips_already_handled_offsets(tmp_path: Path) -> None:
    s = sink(tmp_path)
    for off in (0, 1, 2, 1, 0, 2):
        s.add(0, off, ev(0, off, H0))
    assert s.flush() == 3
    assert [r["kafka_offset"] for r in read(tmp_path)] == [0, 1, 2]


def test_recover_drops_files_written_after_the_checkpoint(tmp_path: Path) -> None:
    s = sink(tmp_path)
    for off in range(5):
        s.add(1, off, ev(1, off, H0 + off))
        s.add(10, off, ev(10, off, H0 + off))  # 'p10' must not match 'p1'
    s.flush()
    ckpt = tmp_path / "_checkpoints" / TOPIC / "p1"
    assert ckpt.read_text() == "4"
    for off in range(5, 12):
        s.add(1, off, ev(1, off, H0 + (off - 5) * 1_800_000))  # spans hours again
        s.add(10, off, ev(10, off, H0 + off))
    s.flush()
    assert len(read(tmp_path)) == 24
    ckpt.write_text("4")  # crash between the file writes and the checkpoint
    s2 = sink(tmp_path)
    assert s2.recover(1) == 4
    rows = read(tmp_path)
    assert sorted(r["kafka_offset"] for r in rows if r["kafka_partition"] == 1) == list(range(5))
    assert sorted(r["kafka_offset"] for r in rows if r["kafka_partition"] == 10) == list(range(12))
    assert not any("-p1-5-" in f for f in files(tmp_path))
    assert s2.checkpoint(1) == 4
    # The redelivered messages: offsets <= 4 are ignored, the rest archived once.
    for off in range(0, 12):
        s2.add(1, off, ev(1, off, H0 + off))
    assert s2.flush() == 7
    rows = read(tmp_path)
    assert sorted(r["kafka_offset"] for r in rows if r["kafka_partition"] == 1) == list(range(12))
    assert s2.recover(10) == 11  # p10's own checkpoint is intact: nothing removed
    assert len(read(tmp_path)) == 24


def test_recover_without_checkpoint_removes_everything_of_the_partition(tmp_path: Path) -> None:
    s = sink(tmp_path)
    s.add(3, 0, ev(3, 0, H0))
    s.add(4, 0, ev(4, 0, H0))
    s.flush()
    (tmp_path / "_checkpoints" / TOPIC / "p3").unlink()
    s2 = sink(tmp_path)
    assert s2.recover(3) == -1
    assert [r["kafka_partition"] for r in read(tmp_path)] == [4]
    s2.add(3, 0, ev(3, 0, H0))
    assert s2.flush() == 1


def test_forget_drops_the_buffer(tmp_path: Path) -> None:
    s = sink(tmp_path)
    s.add(0, 0, ev(0, 0, H0))
    s.add(1, 0, ev(1, 0, H0))
    s.forget(0)
    assert s.flush() == 1
    assert [r["kafka_partition"] for r in read(tmp_path)] == [1]
    assert s.checkpoint(0) == -1


def test_due_by_rows(tmp_path: Path) -> None:
    s = ArchiveSink(tmp_path, TOPIC, flush_rows=3, flush_s=3600.0)
    assert not s.due()
    s.add(0, 0, ev(0, 0, H0))
    s.add(0, 1, ev(0, 1, H0))
    assert not s.due()
    s.add(0, 2, ev(0, 2, H0))
    assert s.due()
    s.flush()
    assert not s.due()


def test_rows_encoded_per_batch_flush_like_rows_added_at_once(tmp_path: Path) -> None:
    """encode() between micro-batches changes nothing a reader or recovery can see."""
    whole, batched = tmp_path / "whole", tmp_path / "batched"
    a, b = sink(whole), sink(batched)
    for off in range(30):
        for p in (0, 1):
            e = ev(p, off, H0 + (off // 7) * 1_800_000 + off)  # crosses two hour boundaries
            a.add(p, off, e)
            b.add(p, off, e)
        if off % 4 == 3:
            b.encode()
    b.add(1, 30, None)  # an invalid message after the last encode
    a.add(1, 30, None)
    assert a.flush() == b.flush() == 60
    assert files(whole) == files(batched)
    assert read(whole) == read(batched)
    assert b.checkpoint(1) == 30


def test_forget_and_due_count_encoded_rows(tmp_path: Path) -> None:
    s = ArchiveSink(tmp_path, TOPIC, flush_rows=4, flush_s=3600.0)
    for off in range(3):
        s.add(0, off, ev(0, off, H0))
    s.encode()
    s.add(1, 0, ev(1, 0, H0))
    assert s.due()  # three encoded rows and one staged
    s.forget(0)
    assert not s.due()
    assert s.flush() == 1
    assert [r["kafka_partition"] for r in read(tmp_path)] == [1]
