"""`streamrec import`: good rows land in the archive, bad rows are counted with reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from offline.archive import read_events
from offline.importer import import_interactions
from streamrec.errors import DataError


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_event_types_loads_good_rows_and_reports_bad(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp,event_type\n"
        "u1,i1,2026-01-02T03:04:05Z,click\n"
        "u1,i2,1767323045,purchase\n"  # epoch seconds
        "u2,i1,1767323045123,view\n"  # epoch ms
        ",i3,2026-01-02T03:04:05Z,click\n"
        "u3,i3,yesterday,click\n"
        "u3,i4,1990-01-01T00:00:00Z,click\n"
        "u3,i5,2026-01-02T03:04:05Z,like\n",
    )
    archive = tmp_path / "archive"
    report = import_interactions(src, archive)
    assert (report.rows, report.loaded, report.rejected) == (7, 3, 4)
    assert report.reasons == {
        "user_id: empty": 1,
        "timestamp: not ISO 8601 or epoch seconds/milliseconds": 1,
        "timestamp: before 2000-01-01": 1,
        "event_type: not one of impression, click, add_to_cart, purchase, view": 1,
    }
    assert report.rejected_file is not None
    rejected = pd.read_csv(report.rejected_file)
    assert len(rejected) == 4 and set(rejected["reason"]) == set(report.reasons)
    events = read_events(archive)
    assert sorted(events["ts_ms"]) == [1767323045000, 1767323045000, 1767323045123]
    rows = set(zip(events["user_id"], events["item_id"], events["event_type"], strict=True))
    assert rows == {("u1", "i1", "click"), ("u1", "i2", "purchase"), ("u2", "i1", "view")}


def test_ratings_split_into_clicks_and_impressions(tmp_path: Path) -> None:
    src = tmp_path / "ratings.parquet"
    pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "item_id": ["x", "y", "x"],
            "timestamp": [1767323045, 1767323046, 1767323047],
            "rating": [5.0, 2.0, 4.0],
        }
    ).to_parquet(src)
    report = import_interactions(src, tmp_path / "archive", positive_rating=4.0)
    assert report.loaded == 3 and report.rejected == 0
    events = read_events(tmp_path / "archive")
    assert events["event_type"].tolist() == ["click", "impression", "click"]


def test_importing_the_same_file_twice_adds_nothing(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp\nu1,i1,1767323045\nu1,i1,1767323045\nu2,i1,1767323046\n",
    )
    import_interactions(src, tmp_path / "archive")
    import_interactions(src, tmp_path / "archive")
    events = read_events(tmp_path / "archive")
    assert len(events) == 3  # the two identical rows are two interactions, kept once each


def test_missing_columns_and_unknown_format_are_clear_errors(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "bad.csv", "user,item_id,timestamp\nu1,i1,1767323045\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['user_id'\]"):
        import_interactions(src, tmp_path / "archive")
    with pytest.raises(DataError, match="unsupported file type"):
        import_interactions(write_csv(tmp_path / "x.json", "{}"), tmp_path / "archive")
    with pytest.raises(DataError, match="No such file"):
        import_interactions(tmp_path / "nope.csv", tmp_path / "archive")


def test_read_events_filters_by_window_and_drops_repeats(tmp_path: Path) -> None:
    from offline.archive import write_events

    frame = pd.DataFrame(
        {
            "event_id": ["a", "b", "c", "a"],
            "event_type": ["click"] * 4,
            "user_id": ["u"] * 4,
            "item_id": ["i1", "i2", "i3", "i1"],
            "ts_ms": [1_767_323_045_000, 1_767_326_645_000, 1_767_330_245_000, 1_767_323_045_000],
        }
    )
    write_events(tmp_path, frame, "t")
    assert read_events(tmp_path)["event_id"].tolist() == ["a", "b", "c"]
    window = read_events(tmp_path, since_ms=1_767_326_645_000, until_ms=1_767_330_245_000)
    assert window["event_id"].tolist() == ["b"]
    assert read_events(tmp_path / "empty").empty
