"""Everything one API process holds, built from settings and started/stopped with the app."""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass, field

import faiss
import torch

from features.online_reader import OnlineReader, open_reader
from features.online_state import open_state_reader
from models import thompson_kernel
from models.registry import Registry
from online import metrics
from online.experiments import ExperimentsConfig, load_experiments
from online.live import LiveState
from online.outbox import Outbox
from online.recommender import Recommender
from online.snapshot import SnapshotHolder
from streamrec.errors import ConfigError
from streamrec.settings import Settings

log = logging.getLogger(__name__)


def auth_required(settings: Settings) -> bool:
    """API keys are required except on the embedded default (no Kafka or Redis configured)."""
    if settings.api_auth == "auto":
        return bool(settings.kafka_bootstrap or settings.redis_url)
    return settings.api_auth == "on"


@dataclass
class Services:
    settings: Settings
    models: SnapshotHolder
    features: OnlineReader
    live: LiveState
    recommender: Recommender
    impressions: Outbox | None
    ingest: Outbox | None
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    keys: tuple[str, ...] = ()
    auth: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    def check_key(self, key: str | None) -> bool:
        if not self.auth:
            return True
        return key is not None and any(hmac.compare_digest(key, k) for k in self.keys)

    def start(self) -> None:
        thompson_kernel.warm()  # compiled (or loaded from numba's cache) before /readyz
        self.live.start()
        self.reload()
        pinned = sorted(
            {v.model for e in self.experiments.experiments for v in e.variants if v.model}
        )
        if pinned:
            self.models.pin(pinned)
            log.info("experiment variants serve pinned model versions %s", pinned)
        self._watcher = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._watcher.start()

    def reload(self, force: bool = False) -> tuple[str | None, bool]:
        """Swap in the registry's current version if it changed. Returns (version, changed)."""
        before = self.models.version
        snap = self.models.reload(force=force)
        after = snap.version if snap else None
        if after != before and after is not None:
            if before is not None:
                metrics.MODEL_INFO.labels(before).set(0)
            metrics.MODEL_INFO.labels(after).set(1)
            metrics.MODEL_LOADED_AT.set(snap.loaded_at if snap else 0)
            log.info("serving model %s (was %s)", after, before)
        return after, after != before

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.reload_poll_s):
            try:
                self.reload()
            except Exception:  # the watcher must outlive any one bad version
                log.exception("model reload failed")

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.live.stop()
        for box in (self.impressions, self.ingest):
            if box is not None:
                box.close()
        self.features.close()


def build_services(settings: Settings, *, kafka: bool = True) -> Services:
    """Wire the API's parts from settings (nothing is started yet)."""
    keys = tuple(k.strip() for k in settings.api_keys.split(",") if k.strip())
    auth = auth_required(settings)
    if auth and not keys:
        raise ConfigError(
            "API keys are required outside the embedded default: set STREAMREC_API_KEYS"
            " (comma-separated) or, for a closed network only, STREAMREC_API_AUTH=off."
        )
    # One request at a time per process: intra-op threads only add jitter (and FAISS's
    # OpenMP threads would fight the other server processes for the same cores).
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    features = open_reader(settings)  # connects lazily: a store that is down raises per read
    models = SnapshotHolder(Registry(settings.registry_dir))
    live = LiveState(open_state_reader(settings), settings.trending_items, settings.refresh_s)
    impressions = ingest = None
    if kafka:
        bootstrap, topic = settings.bootstrap, settings.events_topic
        buffer = settings.impression_buffer
        impressions = Outbox("impression", bootstrap, topic, buffer)
        ingest = Outbox("ingest", bootstrap, topic, buffer)
    experiments = load_experiments(settings.experiments_file)
    recommender = Recommender(settings, models, features, live, impressions, experiments)
    return Services(
        settings, models, features, live, recommender, impressions, ingest, experiments, keys, auth
    )
