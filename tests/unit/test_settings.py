"""Settings from STREAMREC_* variables: defaults, overrides, and loud failures on typos."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamrec.errors import ConfigError
from streamrec.settings import Settings, load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.data_dir == Path(".streamrec")
    assert s.topic_partitions == 4
    assert s.events_topic == "events"
    assert s.dlq_topic == "events.dlq"
    assert s.unknown_fields == "reject"
    assert s.max_event_bytes == 4096
    assert s.recent_items == 50
    assert s.ctr_prior == 0.05 and s.ctr_prior_strength == 20.0
    assert s.kafka_bootstrap is None and s.redis_url is None
    assert s.bootstrap == "127.0.0.1:19092"
    assert s.archive_dir == Path(".streamrec") / "archive"
    assert s.feature_repo_dir == Path(".streamrec") / "feature_repo"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMREC_TOPIC_PARTITIONS", "8")
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "broker:9093")
    monkeypatch.setenv("STREAMREC_UNKNOWN_FIELDS", "ignore")
    s = load_settings()
    assert s.topic_partitions == 8
    assert s.data_dir == tmp_path
    assert s.bootstrap == "broker:9093"
    assert s.unknown_fields == "ignore"
    assert s.archive_dir == tmp_path / "archive"


def test_embedded_port_sets_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_EMBEDDED_BROKER_PORT", "29092")
    assert load_settings().bootstrap == "127.0.0.1:29092"


def test_explicit_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TOPIC_PARTITIONS", "8")
    s = load_settings(topic_partitions=16, events_topic="ev2")
    assert (s.topic_partitions, s.events_topic) == (16, "ev2")


def test_non_integer_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TOPIC_PARTITIONS", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "STREAMREC_TOPIC_PARTITIONS" in info.value.message


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("STREAMREC_TOPIC_PARTITIONS", "0"),
        ("STREAMREC_TOPIC_PARTITIONS", "1025"),
        ("STREAMREC_UNKNOWN_FIELDS", "drop"),
        ("STREAMREC_LOG_LEVEL", "LOUD"),
        ("STREAMREC_CTR_PRIOR", "1.5"),
        ("STREAMREC_MAX_EVENT_BYTES", "10"),
    ],
)
def test_out_of_range_values(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in info.value.message


def test_bad_explicit_override_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(ctr_prior_strength=0)
    assert "STREAMREC_CTR_PRIOR_STRENGTH" in info.value.message


def test_unknown_variable_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TOPICS_PARTITIONS", "8")
    with pytest.raises(ConfigError) as info:
        load_settings()
    msg = info.value.message
    assert "STREAMREC_TOPICS_PARTITIONS" in msg
    assert "Did you mean STREAMREC_TOPIC_PARTITIONS?" in msg


def test_unknown_variable_without_close_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_ZZZZZZZZZZZZ", "1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "STREAMREC_ZZZZZZZZZZZZ" in info.value.message
    assert "Did you mean" not in info.value.message


def test_unrelated_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMRECX_TOPIC_PARTITIONS", "abc")
    monkeypatch.setenv("TOPIC_PARTITIONS", "abc")
    assert load_settings().topic_partitions == 4


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.topic_partitions = 9
    assert isinstance(s, Settings) and s.topic_partitions == 4


def test_lower_case_typo_is_rejected_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("streamrec_topic_partitions", "7")
    assert load_settings().topic_partitions == 7  # lower case names are honoured ...
    monkeypatch.delenv("streamrec_topic_partitions")
    monkeypatch.setenv("streamrec_topics_partitions", "8")
    with pytest.raises(ConfigError):  # ... so a lower case typo must not pass silently
        load_settings()
