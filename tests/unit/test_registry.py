"""The registry publishes atomically, refuses tampered versions and rolls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.registry import Registry
from streamrec.errors import ArtifactError


def make_version(reg: Registry, payload: str) -> str:
    staged = reg.stage()
    (staged / "model").mkdir()
    (staged / "model" / "weights.bin").write_text(payload)
    (staged / "index").mkdir()
    (staged / "index" / "index.faiss").write_text(payload * 2)
    return reg.commit(staged, {"window": {"since_ms": 1}, "seed": 0})


def test_commit_then_promote_serves_it_and_lists_it(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.current() is None
    v1 = make_version(reg, "one")
    assert reg.current() is None  # committed is not serving
    reg.promote(v1, reason="test")
    assert reg.current() == v1
    listed = reg.list()
    assert [v.name for v in listed] == [v1] and listed[0].current
    assert listed[0].meta["seed"] == 0 and "code_version" in listed[0].meta
    assert not list((tmp_path / "staging").iterdir())


def test_rollback_restores_the_previous_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1, v2 = make_version(reg, "one"), make_version(reg, "two")
    reg.promote(v1)
    reg.promote(v2)
    assert reg.rollback() == v1
    assert reg.current() == v1
    assert (reg.path(v1) / "index" / "index.faiss").read_text() == "oneone"
    with pytest.raises(ArtifactError, match="Nothing to roll back"):
        reg.rollback()
    decisions = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [d["action"] for d in decisions] == ["promote", "promote", "rollback"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "add"])
def test_tampered_version_is_refused_and_serving_unchanged(tmp_path: Path, damage: str) -> None:
    reg = Registry(tmp_path)
    v1, v2 = make_version(reg, "one"), make_version(reg, "two")
    reg.promote(v1)
    target = reg.path(v2) / "model" / "weights.bin"
    if damage == "flip":
        target.write_text("twO")
    elif damage == "truncate":
        target.write_text("tw")
    elif damage == "delete":
        target.unlink()
    else:
        (reg.path(v2) / "model" / "extra.py").write_text("import os")
    with pytest.raises(ArtifactError, match=v2):
        reg.promote(v2)
    assert reg.current() == v1
    reg.verify(v1)


def test_rollback_refuses_a_tampered_target(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1, v2 = make_version(reg, "one"), make_version(reg, "two")
    reg.promote(v1)
    reg.promote(v2)
    (reg.path(v1) / "index" / "index.faiss").write_text("evil")
    with pytest.raises(ArtifactError, match="checksum"):
        reg.rollback()
    assert reg.current() == v2


def test_unknown_version_names_the_known_ones(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v1 = make_version(reg, "one")
    with pytest.raises(ArtifactError, match=v1):
        reg.promote("v9999")
