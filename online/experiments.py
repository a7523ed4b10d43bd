"""A/B experiments: their config (`online/experiments.toml`) and sticky user assignment.

An experiment splits users, never requests: `assign` hashes `salt + user id` with blake2b
into [0, 1) and walks the variants' cumulative traffic shares, so a user sees the same
variant on every request, in every process and after every restart, and experiments with
different salts split users independently of each other.

What serving does per request (all pure functions; load the config once at start-up):

    cfg = load_experiments()                           # ConfigError names a bad key
    running = active_experiments(cfg, now_ms)          # enabled and inside [start, end)
    routing = route(running, user_id)                  # variant per experiment, merged overrides
    model = routing.model or serving_model             # the overrides a variant sets
    policy = routing.policy or default_policy
    context.update(routing.context)                    # {"experiment": ..., "variant": ...}

`routing.context` goes into every impression the request logs; the report
(`streamrec experiment report NAME`) reads it back from the archive. With one running
experiment it is exactly `{"experiment": NAME, "variant": VARIANT}`; with several, both
values are comma-joined in the same order (names cannot contain commas), which is why two
experiments that run at the same time may not override the same knob: their effects would
be confounded. `load_experiments` refuses such a file.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamrec.config_files import first_error, read_toml
from streamrec.errors import ConfigError
from streamrec.events import MAX_CONTEXT_VALUE_CHARS

DEFAULT_EXPERIMENTS_CONFIG = Path(__file__).with_name("experiments.toml")

Policy = Literal["thompson", "greedy", "random"]
Metric = Literal["ctr", "conversion"]
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
_SCALE = 1 << 64  # the hash is 8 bytes: a point in [0, 2**64)
_SHARE_TOLERANCE = 1e-6
OVERRIDES = ("model", "policy", "exploration")


class Variant(BaseModel):
    """One arm of an experiment: its traffic share and what it changes for its users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Logged in the impression context.")
    share: float = Field(gt=0.0, le=1.0, description="Fraction of the experiment's users.")
    model: str | None = Field(None, description="Model version to serve; unset = the current.")
    policy: Policy | None = Field(None, description="Bandit rerank policy; unset = the default.")
    exploration: float | None = Field(
        None, ge=0.0, le=1.0, description="Exploration rate of the policy; unset = the default."
    )

    def overrides(self) -> dict[str, str | float]:
        """The knobs this variant sets (empty for a pure control)."""
        return {k: v for k in OVERRIDES if (v := getattr(self, k)) is not None}


class Experiment(BaseModel):
    """An experiment: a salt, variants whose shares sum to 1, and how its report decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Logged in the impression context.")
    salt: str = Field(
        min_length=1, max_length=64, description="Key of the user hash; change it to reshuffle."
    )
    enabled: bool = Field(True, description="False keeps the definition but assigns nobody.")
    start: datetime | None = Field(None, description="Runs from this time (UTC if no offset).")
    end: datetime | None = Field(None, description="Runs until this time, exclusive.")
    control: str | None = Field(None, description="The baseline variant; unset = the first.")
    variants: tuple[Variant, ...] = Field(min_length=2, description="At least two arms.")
    metric: Metric = Field("ctr", description="The metric the verdict is decided on.")
    alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="Two-sided false-positive rate of the verdict."
    )
    srm_alpha: float = Field(
        0.001, gt=0.0, lt=0.5, description="p-value below which user counts mean SRM."
    )
    min_users: int = Field(100, ge=1, description="Fewer users in any variant: no verdict yet.")

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > _SHARE_TOLERANCE:
            raise ValueError(f"variant shares must sum to 1, got {total:g}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the variants {names}")
        if len(self.salt.encode("utf-8")) > 64:
            raise ValueError("salt must be at most 64 bytes in UTF-8 (the blake2b key size)")
        if self.start and self.end and _utc(self.end) <= _utc(self.start):
            raise ValueError("end must be after start")
        return self

    @cached_property
    def plan(self) -> tuple[str, tuple[Variant, ...], bytes, tuple[int, ...]]:
        """(salt, variants, hash key, upper bound of each variant's slice of [0, 2**64)).

        Computed once per experiment: `assign` is on the request path. The last bound is
        pinned to the top so rounding never leaves a user without a variant.
        """
        acc, bounds = 0.0, []
        for v in self.variants[:-1]:
            acc += v.share
            bounds.append(min(int(acc * _SCALE), _SCALE))
        bounds.append(_SCALE)
        return self.salt, self.variants, self.salt.encode("utf-8"), tuple(bounds)

    @property
    def control_variant(self) -> Variant:
        return self.variant(self.control) if self.control else self.variants[0]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(
            f"Experiment {self.name!r} has no variant {name!r} "
            f"(it has {', '.join(v.name for v in self.variants)})."
        )

    def is_active(self, now_ms: int) -> bool:
        """Enabled and `start <= now < end` (open ends where unset)."""
        if not self.enabled:
            return False
        if self.start is not None and now_ms < _ms(self.start):
            return False
        return self.end is None or now_ms < _ms(self.end)

    @property
    def window_ms(self) -> tuple[int | None, int | None]:
        """(start, end) in epoch ms, None where open."""
        return (
            _ms(self.start) if self.start else None,
            _ms(self.end) if self.end else None,
        )


class ExperimentsConfig(BaseModel):
    """Every declared experiment (TOML: `[[experiments]]` with `[[experiments.variants]]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiments: tuple[Experiment, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> ExperimentsConfig:
        names = [e.name for e in self.experiments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment names must be unique; repeated: {dupes}")
        return self

    def get(self, name: str) -> Experiment:
        for e in self.experiments:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.experiments) or "none"
        raise ConfigError(f"No experiment {name!r} in the experiments config (declared: {known}).")


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _ms(t: datetime) -> int:
    return int(_utc(t).timestamp() * 1000)


def load_experiments(path: Path | None = None) -> ExperimentsConfig:
    """Read an experiments TOML (default `online/experiments.toml`); ConfigError names the key.

    Also refuses two experiments that could run at the same time and override the same
    knob (see the module docstring).
    """
    path = path or DEFAULT_EXPERIMENTS_CONFIG
    raw = read_toml(path, "experiments config")
    try:
        cfg = ExperimentsConfig(**raw)
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"{path}: {key}: {msg}") from exc
    check_compatible(cfg.experiments, where=str(path))
    return cfg


def _overlap(a: Experiment, b: Experiment) -> bool:
    a0, a1 = a.window_ms
    b0, b1 = b.window_ms
    lo = max(a0 if a0 is not None else -(2**62), b0 if b0 is not None else -(2**62))
    hi = min(a1 if a1 is not None else 2**62, b1 if b1 is not None else 2**62)
    return lo < hi


def check_compatible(experiments: Sequence[Experiment], where: str = "experiments") -> None:
    """ConfigError if experiments that may run together override the same knob."""
    live = [e for e in experiments if e.enabled]
    for i, a in enumerate(live):
        knobs_a = {k for v in a.variants for k in v.overrides()}
        for b in live[i + 1 :]:
            shared = knobs_a & {k for v in b.variants for k in v.overrides()}
            if shared and _overlap(a, b):
                raise ConfigError(
                    f"{where}: experiments {a.name!r} and {b.name!r} may run at the same time "
                    f"and both override {sorted(shared)}; their effects would be confounded. "
                    "Give them disjoint start/end windows or disable one."
                )
    names = len(",".join(e.name for e in live))
    arms = sum(max(len(v.name) for v in e.variants) for e in live) + max(len(live) - 1, 0)
    if max(names, arms) > MAX_CONTEXT_VALUE_CHARS:
        raise ConfigError(
            f"{where}: the enabled experiments' (or their variants') names joined take up to "
            f"{max(names, arms)} characters, more than an event context value holds "
            f"({MAX_CONTEXT_VALUE_CHARS}); use shorter names."
        )


def active_experiments(config: ExperimentsConfig, now_ms: int) -> tuple[Experiment, ...]:
    """The experiments running at `now_ms`, in config order (call once per request or cache)."""
    return tuple(e for e in config.experiments if e.is_active(now_ms))


def assign(experiment: Experiment, user_id: str) -> Variant:
    """The variant `user_id` gets in `experiment`: deterministic, sticky, share-weighted."""
    salt, variants, key, bounds = experiment.plan
    if salt is not experiment.salt or variants is not experiment.variants:
        # `model_copy(update=...)` copies the cached plan; never hash with a stale one.
        del experiment.__dict__["plan"]
        salt, variants, key, bounds = experiment.plan
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8, key=key).digest()
    return variants[bisect_right(bounds, int.from_bytes(digest, "big"))]


@dataclass(frozen=True)
class Routing:
    """What the running experiments decide for one user: overrides and the context to log."""

    assignments: tuple[tuple[str, str], ...] = ()  # (experiment, variant) pairs
    model: str | None = None
    policy: Policy | None = None
    exploration: float | None = None
    context: dict[str, str] = field(default_factory=dict)


def route(experiments: Iterable[Experiment], user_id: str) -> Routing:
    """Assign `user_id` in each running experiment and merge the variants' overrides.

    `context` is empty when nothing runs, so impressions outside experiments carry no
    experiment keys.
    """
    pairs: list[tuple[str, str]] = []
    model: str | None = None
    policy: Policy | None = None
    exploration: float | None = None
    for exp in experiments:
        v = assign(exp, user_id)
        pairs.append((exp.name, v.name))
        # load_experiments guarantees no two running experiments set the same knob.
        model = v.model if v.model is not None else model
        policy = v.policy if v.policy is not None else policy
        exploration = v.exploration if v.exploration is not None else exploration
    if not pairs:
        return Routing()
    context = {
        "experiment": ",".join(e for e, _ in pairs),
        "variant": ",".join(v for _, v in pairs),
    }
    return Routing(
        assignments=tuple(pairs),
        model=model,
        policy=policy,
        exploration=exploration,
        context=context,
    )


def variant_from_context(context: Mapping[str, object], experiment: str) -> str | None:
    """The variant of `experiment` recorded in an impression context, None if absent."""
    names, variants = context.get("experiment"), context.get("variant")
    if not isinstance(names, str) or not isinstance(variants, str):
        return None
    if names == experiment:
        return variants
    for e, v in zip(names.split(","), variants.split(","), strict=False):
        if e == experiment:
            return v
    return None
