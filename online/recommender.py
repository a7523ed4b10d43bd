"""The request path: features → user tower → index candidates → filter → bandit → top-k.

Every answer is logged as impression events (one per shown item, with request id,
position, propensity, policy, model version and the bandit features the policy saw), so
the stream workers can join clicks to them as rewards. Nothing here raises on a missing
dependency: no model, or an online store that is down, gives a popularity answer marked
`degraded` (and counted) instead of an error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import numpy as np

from features.online_reader import OnlineReader
from models.bandit import (
    FEATURE_NAMES,
    SERVING_PRIOR_MEAN,
    SERVING_RIDGE,
    Candidates,
    Policy,
    make_policy,
)
from models.data import FIRST_ITEM, UNKNOWN
from online import metrics
from online.experiments import ExperimentsConfig, active_experiments, route
from online.impressions import impression_messages
from online.live import BoardByCode, LiveState, LiveView
from online.outbox import Outbox
from online.snapshot import ModelSnapshot, SnapshotHolder
from streamrec.errors import StoreError
from streamrec.events import format_ts
from streamrec.settings import Settings

log = logging.getLogger(__name__)

_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
_V = TypeVar("_V")
_NEW_ITEM_SHARE = 0.1  # of the candidate list, reserved for items the model does not know


@dataclass(frozen=True)
class RecRequest:
    user_id: str
    k: int
    context: dict[str, str | int | float | bool] = field(default_factory=dict)
    exclude_seen: bool = True
    policy: str | None = None  # None = the configured default
    exploration: float | None = None  # None = the configured default


@dataclass(frozen=True)
class RecItem:
    item_id: str
    score: float
    propensity: float


@dataclass(frozen=True)
class RecAnswer:
    request_id: str
    user_id: str
    items: list[RecItem]
    model_version: str | None
    policy: str
    degraded: bool
    reason: str | None = None


class PerModel(Generic[_V]):
    """A value derived from a source object (the board, its new items) and a model
    snapshot, one per model version served (experiments pin several side by side).

    Rebuilt when either object changes (held, not their id(), which a later object may
    reuse). Entries of snapshots no longer served are dropped, so a swapped-out model
    does not stay in memory through a cache. The dict is replaced, never mutated: a
    request on another thread may be reading the old one.
    """

    def __init__(self, served: Callable[[str], ModelSnapshot | None]) -> None:
        self._served = served
        self._entries: dict[str, tuple[object, ModelSnapshot, _V]] = {}

    def get(self, source: object, snap: ModelSnapshot, build: Callable[[], _V]) -> _V:
        entry = self._entries.get(snap.version)
        if entry is None or entry[0] is not source or entry[1] is not snap:
            entry = (source, snap, build())
            kept = {
                version: e
                for version, e in self._entries.items()
                if version != snap.version and self._served(version) is e[1]
            }
            self._entries = {**kept, snap.version: entry}
        return entry[2]


class _RequestRng(threading.local):
    """A Generator per thread, re-seeded from each request id (its 128 bits are PCG64's
    state), so a request's draws follow from its id. Building a Generator per request
    costs ~20 us of SeedSequence hashing; setting the state, ~2 us."""

    def __init__(self) -> None:
        self._bits = np.random.PCG64(0)
        self._gen = np.random.Generator(self._bits)
        self._state = self._bits.state

    def seeded(self, request_id: str) -> np.random.Generator:
        self._state["state"]["state"] = int(request_id, 16)
        self._bits.state = self._state
        return self._gen


_RNG = _RequestRng()


def _training_stats(snap: ModelSnapshot, settings: Settings) -> np.ndarray:
    """`Recommender._item_stats` before the board: the model's statistics by code."""
    stats = np.column_stack(
        [
            snap.item_ctr,
            snap.item_popularity,
            np.zeros(len(snap.item_ctr)),  # first-seen: only the board knows it
            snap.item_clicks,
            snap.item_impressions,
        ]
    )
    stats[:FIRST_ITEM] = (settings.ctr_prior, 0.0, 0.0, 0.0, 0.0)
    return stats


def _timed(stage: str, started: float) -> float:
    now = time.perf_counter()
    metrics.STAGE_SECONDS.labels(stage).observe(now - started)
    return now


class Recommender:
    def __init__(
        self,
        settings: Settings,
        models: SnapshotHolder,
        features: OnlineReader,
        live: LiveState,
        impressions: Outbox | None,
        experiments: ExperimentsConfig | None = None,
    ) -> None:
        self._s = settings
        self._experiments = experiments or ExperimentsConfig()
        self._models = models
        self._features = features
        self._live = live
        self._impressions = impressions
        # Caches keyed by the objects they derive from, held (not their id(), which a
        # later object may reuse): policies per live view (its bandit parameters, every
        # refresh); item statistics by code and the model's unknown new items per board and model.
        self._cached_view: LiveView | None = None
        self._policies: dict[tuple[str, float], Policy] = {}
        self._training_stats: PerModel[np.ndarray] = PerModel(models.get)
        self._item_stats_cache: PerModel[np.ndarray] = PerModel(models.get)
        self._unknown_new: PerModel[list[str]] = PerModel(models.get)
        self.blocked: frozenset[str] = frozenset()

    # --- policies ----------------------------------------------------------------------

    def _for_view(self, view: LiveView) -> None:
        if view is not self._cached_view:
            self._cached_view = view
            self._policies = {}

    def _policy(self, view: LiveView, name: str, exploration: float) -> Policy:
        """Policies are rebuilt only when the live view (its parameters) changes."""
        self._for_view(view)
        key = (name, exploration)
        policy = self._policies.get(key)
        if policy is None:
            policy = make_policy(
                name,  # type: ignore[arg-type]  # validated at the API edge
                view.bandit.stats,
                view.bandit.learner,
                exploration,
                self._s.propensity_samples,
                ctr_prior_mean=self._s.ctr_prior,
                ctr_prior_strength=self._s.ctr_prior_strength,
                ridge=SERVING_RIDGE,
                prior_mean=SERVING_PRIOR_MEAN,
            )
            self._policies[key] = policy
        return policy

    # --- the request -------------------------------------------------------------------

    def recommend(self, req: RecRequest) -> RecAnswer:
        t0 = time.perf_counter()
        request_id = uuid.uuid4().hex
        now_ms = int(time.time() * 1000)
        running = active_experiments(self._experiments, now_ms)
        if running:  # sticky variant: its overrides, and its name on every impression
            routing = route(running, req.user_id)
            req = replace(
                req,
                context={**req.context, **routing.context},
                policy=req.policy or routing.policy,
                exploration=req.exploration if req.exploration is not None else routing.exploration,
            )
            snap = self._models.get(routing.model)
        else:
            snap = self._models.current
        view = self._live.view
        try:
            user = self._features.users([req.user_id])[0]
        except StoreError:
            return self._fallback(req, request_id, view, snap, now_ms, "store_down", t0)
        t = _timed("features", t0)
        if snap is None:
            return self._fallback(req, request_id, view, snap, now_ms, "no_model", t0)
        recent: list[str] = list(user["recent_items"]) if user else []
        if user and user.get("last_seen_ms"):
            metrics.FEATURE_AGE.observe(max(now_ms - int(user["last_seen_ms"]), 0) / 1000)
        seen = set(recent) if req.exclude_seen else set()
        recent_codes = snap.codes(recent[: snap.recent_items])
        anchor = snap.anchor(recent_codes)
        skip = seen | self.blocked
        n = self._s.candidates
        try:
            if user is None:  # cold start: trending and new items, explored by the bandit
                ids = [e.item_id for e in view.hot if e.item_id not in skip][:n]
                if len(ids) < req.k:  # a young board: top up from the model's popular items
                    pool = dict.fromkeys([*ids, *snap.popular])
                    ids = [i for i in pool if i not in skip][:n]
                codes = snap.codes(ids)
                scores = np.zeros(len(ids))
            else:
                vec = snap.user_vector(req.user_id, recent_codes, user, now_ms)
                query = snap.query(vec, anchor)
                t = _timed("user_tower", t)
                # Over-fetch and filter here: cheaper than the index's per-query exclusion.
                got, rows = snap.index.search_rows(query[None, :], n + len(skip))
                rows, got = rows[0], got[0]
                valid = rows >= 0  # -1 pads a short answer
                if not valid.all():
                    got, rows = got[valid], rows[valid]
                ids = snap.row_ids[rows].tolist()
                if skip:
                    keep = [j for j, i in enumerate(ids) if i not in skip][:n]
                    ids = [ids[j] for j in keep]
                    rows, got = rows[keep], got[keep]
                ids, rows = ids[:n], rows[:n]
                codes = snap.row_codes[rows]
                scores = got[:n].astype(np.float64)
                t = _timed("retrieve", t)
        except Exception:  # a broken model must not fail the request
            log.exception("model path failed for %s; answering from popularity", snap.version)
            return self._fallback(req, request_id, view, snap, now_ms, "model_error", t0)
        have = set(ids)
        extra = [
            item
            for item in self._new_items(view, snap)[: max(1, int(n * _NEW_ITEM_SHARE))]
            if item not in have and item not in skip
        ]
        if extra:  # items the model does not know: no code, no retrieval score
            ids = ids + extra
            codes = np.concatenate([codes, np.full(len(extra), UNKNOWN, dtype=np.int64)])
            scores = np.concatenate([scores, np.zeros(len(extra))])
        cands = self._candidates(ids, codes, scores, anchor, snap, view, now_ms)
        name = req.policy or self._s.bandit_policy
        exploration = self._s.exploration if req.exploration is None else req.exploration
        rng = _RNG.seeded(request_id)
        slate = self._policy(view, name, exploration).rank(cands, req.k, rng)
        t = _timed("rerank", t)
        items = [
            RecItem(ids[i], float(s), float(p))
            for i, s, p in zip(slate.order, slate.scores, slate.propensity, strict=True)
        ]
        self._log(req, request_id, items, cands.x[slate.order], name, snap.version, now_ms)
        _timed("publish", t)
        _timed("total", t0)
        return RecAnswer(request_id, req.user_id, items, snap.version, name, degraded=False)

    def _item_stats(self, view: LiveView, snap: ModelSnapshot) -> np.ndarray:
        """float64 [len(vocab), 5] by vocabulary code: each item's ctr, popularity,
        first-seen ms, clicks and impressions, live from the board for hot items, the
        model's training-time statistics for the long tail, and the prior (no counts) for
        codes below FIRST_ITEM. A request gathers its candidates' rows with one fancy
        index. Rebuilt when the board changes (every refresh): a copy of the model's own
        table (built once per model) with the board's rows written in."""

        def build() -> np.ndarray:
            training = self._training_stats.get(snap, snap, lambda: _training_stats(snap, self._s))
            board = BoardByCode.build(view.by_id, snap.codes)
            stats = training.copy()
            stats[board.codes] = board.stats
            return stats

        return self._item_stats_cache.get(view.by_id, snap, build)

    def _new_items(self, view: LiveView, snap: ModelSnapshot) -> list[str]:
        """Items the stream saw recently that the serving model does not know (rebuilt when
        the board or the model changes; bandit-only refreshes keep the same `view.new`)."""

        def find() -> list[str]:
            ids = [e.item_id for e in view.new]
            codes = snap.codes(ids) if ids else np.zeros(0, dtype=np.int64)
            return [i for i, c in zip(ids, codes, strict=True) if c < FIRST_ITEM]

        return self._unknown_new.get(view.new, snap, find)

    def _candidates(
        self,
        ids: list[str],
        codes: np.ndarray,
        scores: np.ndarray,
        anchor: np.ndarray | None,
        snap: ModelSnapshot,
        view: LiveView,
        now_ms: int,
    ) -> Candidates:
        """Bandit features of each candidate: live board values for hot and new items,
        the model's training-time statistics for the long tail."""
        n = len(ids)
        known = codes >= FIRST_ITEM
        stats = self._item_stats(view, snap)[codes]  # a copy: new items are filled in below
        for j in np.flatnonzero(~known).tolist():  # new items: by id
            e = view.by_id.get(ids[j])
            if e is not None:
                stats[j] = e.stats()
        ctr, pop, first, clicks, imps = stats.T
        x = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
        x[:, _COL["bias"]] = 1.0
        x[:, _COL["retrieval_score"]] = scores
        x[:, _COL["ctr"]] = ctr
        x[:, _COL["log1p_popularity"]] = np.log1p(pop)
        age_h = np.where(first > 0, np.maximum(now_ms - first, 0) / 3_600_000, np.inf)
        x[:, _COL["freshness"]] = np.exp(-age_h / 24.0)
        x[:, _COL["in_model"]] = known
        x[:, _COL["affinity"]] = snap.affinity(codes, anchor)
        # The retrieval model's opinion is the base score; the bandit learns corrections.
        base = self._s.retrieval_weight * (x[:, _COL["retrieval_score"]] + x[:, _COL["affinity"]])
        return Candidates(item_ids=ids, x=x, clicks=clicks, impressions=imps, base=base)

    # --- fallback and logging ------------------------------------------------------------

    def _fallback(
        self,
        req: RecRequest,
        request_id: str,
        view: LiveView,
        snap: ModelSnapshot | None,
        now_ms: int,
        cause: str,
        t0: float,
    ) -> RecAnswer:
        metrics.DEGRADED.labels(cause).inc()
        pool: list[str] = [e.item_id for e in view.hot]
        if not pool and snap is not None:
            pool = list(snap.popular)
        picked = [i for i in pool if i not in self.blocked][: req.k]
        total = max(len(picked), 1)
        items = [RecItem(i, float(total - r) / total, 1.0) for r, i in enumerate(picked)]
        version = snap.version if snap else None
        self._log(req, request_id, items, None, "popularity", version, now_ms)
        _timed("total", t0)
        return RecAnswer(
            request_id, req.user_id, items, version, "popularity", degraded=True, reason=cause
        )

    def _log(
        self,
        req: RecRequest,
        request_id: str,
        items: list[RecItem],
        x: np.ndarray | None,
        policy: str,
        version: str | None,
        now_ms: int,
    ) -> None:
        if self._impressions is None or not items:
            return
        ctx: dict[str, str | int | float | bool] = dict(req.context)
        ctx["policy"] = policy
        if version:
            ctx["model"] = version
        shown = [(item.item_id, item.propensity) for item in items]
        ts = format_ts(now_ms)
        messages = impression_messages(request_id, req.user_id, ts, shown, ctx, x)
        self._impressions.offer_encoded(messages)
