"""The model registry: versioned artifact directories and an atomic pointer to the serving one.

Layout under `{data_dir}/registry/`:

    versions/v0003-20261122T020000Z/   one trained model and everything built from it
        model/ vocab.json index/ metrics.json card.md meta.json manifest.json
    registry.json                      {"current": "v0003-…", "history": ["v0001-…", …]}
    decisions.jsonl                    every publish / refuse / promote / rollback, why

A version directory is assembled under `staging/` and renamed into `versions/` in one
step; `registry.json` is replaced with `os.replace`. Readers therefore see either the old
or the new state, never half of one. `manifest.json` holds a SHA-256 of every file, and
`verify` refuses a version whose files were changed or truncated, so a corrupted artifact
is never promoted or loaded, and serving keeps what it has.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.errors import ArtifactError
from streamrec.files import sha256_file, write_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
META = "meta.json"


def code_version() -> str:
    """The git commit of this checkout (with `+dirty` if modified), else the package version."""
    from streamrec import __version__

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True)))


@dataclass(frozen=True)
class VersionInfo:
    name: str
    path: Path
    meta: dict[str, Any]
    current: bool


class Registry:
    """Versions of the retrieval model (with their index), and which one serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions = root / "versions"
        self._staging = root / "staging"
        self._state = root / "registry.json"

    # --- state -------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        if not self._state.exists():
            return {"current": None, "history": []}
        try:
            state: dict[str, Any] = json.loads(self._state.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(
                f"Registry state at '{self._state}' is unreadable ({exc}). Restore it from "
                "decisions.jsonl or re-promote a version with `streamrec models promote`."
            ) from exc
        return state

    def current(self) -> str | None:
        """The serving version's name, or None before the first publish."""
        name = self._read_state().get("current")
        return str(name) if name else None

    def path(self, name: str) -> Path:
        p = self._versions / name
        if not p.is_dir():
            known = ", ".join(v.name for v in self.list()) or "none"
            raise ArtifactError(f"No model version '{name}' in {self._versions} (known: {known}).")
        return p

    def list(self) -> list[VersionInfo]:
        """All versions, oldest first."""
        if not self._versions.exists():
            return []
        cur = self.current()
        out = []
        for p in sorted(self._versions.iterdir()):
            if not p.is_dir():
                continue
            try:
                meta = json.loads((p / META).read_text())
            except (OSError, ValueError):
                meta = {"error": "meta.json unreadable"}
            out.append(VersionInfo(p.name, p, meta, p.name == cur))
        return out

    def _log(self, action: str, **fields: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action}
        with (self.root / "decisions.jsonl").open("a") as f:
            f.write(json.dumps(entry | fields) + "\n")

    # --- building a version ----------------------------------------------------------

    def stage(self) -> Path:
        """A fresh directory to assemble a version in (see `commit`)."""
        d = self._staging / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def next_version(self) -> str:
        """The name the next committed version gets (`v0007-20261122T020000Z`)."""
        n = len([p for p in self._versions.glob("v*") if p.is_dir()]) + 1
        return f"v{n:04d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"

    def commit(self, staged: Path, meta: dict[str, Any], name: str | None = None) -> str:
        """Seal a staged directory (meta + manifest) and move it into `versions/`."""
        self._versions.mkdir(parents=True, exist_ok=True)
        name = name or self.next_version()
        if (self._versions / name).exists():
            raise ArtifactError(f"Version {name} already exists; another retrain running?")
        meta = {"version": name, "code_version": code_version(), **meta}
        (staged / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        files = sorted(p for p in staged.rglob("*") if p.is_file() and p.name != MANIFEST)
        manifest = {str(p.relative_to(staged)): sha256_file(p) for p in files}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.rename(staged, self._versions / name)
        log.info("registry: committed %s", name)
        return name

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    # --- integrity -------------------------------------------------------------------

    def verify(self, name: str) -> Path:
        """The version's path if every file matches its manifest; ArtifactError otherwise."""
        p = self.path(name)
        try:
            manifest: dict[str, str] = json.loads((p / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"Version {name}: manifest missing or unreadable ({exc}).") from exc
        present = {
            str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and f.name != MANIFEST
        }
        if missing := sorted(set(manifest) - present):
            raise ArtifactError(f"Version {name} is incomplete: missing {missing}.")
        if extra := sorted(present - set(manifest)):
            raise ArtifactError(f"Version {name} has files not in its manifest: {extra}.")
        for rel, digest in manifest.items():
            if sha256_file(p / rel) != digest:
                raise ArtifactError(
                    f"Version {name}: {rel} does not match its checksum (corrupted or "
                    "tampered). It will not be loaded or promoted."
                )
        return p

    # --- serving pointer ---------------------------------------------------------------

    def promote(self, name: str, reason: str = "manual") -> None:
        """Make `name` the serving version (after verifying it), atomically."""
        self.verify(name)
        state = self._read_state()
        history = [v for v in state.get("history", []) if v != name] + [name]
        previous = state.get("current")
        _write_json_atomic(self._state, {"current": name, "history": history})
        self._log("promote", version=name, previous=previous, reason=reason)
        log.info("registry: %s now serving (was %s): %s", name, previous, reason)

    def rollback(self) -> str:
        """Serve the version that served before the current one; returns its name."""
        state = self._read_state()
        history: list[str] = list(state.get("history", []))
        if len(history) < 2:
            raise ArtifactError("Nothing to roll back to: fewer than two versions have served.")
        bad = history.pop()
        target = history[-1]
        self.verify(target)
        _write_json_atomic(self._state, {"current": target, "history": history})
        self._log("rollback", version=target, from_version=bad)
        log.warning("registry: rolled back from %s to %s", bad, target)
        return target

    def record(self, action: str, **fields: Any) -> None:
        """Log a decision (e.g. a refused publish) next to the promotions."""
        self._log(action, **fields)
