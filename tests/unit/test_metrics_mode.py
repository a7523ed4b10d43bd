"""prometheus_client stays in its in-process mode despite the directory Feast exports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.metrics_mode import own_metrics

_MODE = (
    "from streamrec.metrics_mode import own_metrics; own_metrics(); "
    "from streams import metrics; metrics.FRESHNESS.labels('user_realtime').observe(0.1); "
    "from prometheus_client import values; print(values.ValueClass.__name__)"
)


def _value_class(env_dir: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(env_dir)}
    out = subprocess.run(
        [sys.executable, "-c", _MODE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_feasts_directory_is_dropped_and_an_operators_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "feast_metrics_abc"))
    own_metrics()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mine"))
    own_metrics()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "mine")


def test_the_stream_metrics_are_plain_values_after_it(tmp_path: Path) -> None:
    feast_dir = tmp_path / "feast_metrics_x"
    feast_dir.mkdir()
    assert _value_class(feast_dir) == "MutexValue"
    mine = tmp_path / "mine"
    mine.mkdir()
    assert _value_class(mine) != "MutexValue"  # the operator's choice stands: file-backed
