"""Stream state in Redis: MULTI/EXEC per batch, a Lua claim for the dirty sets."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import msgspec
import redis

from features import online_state, redis_wire
from features.aggregates import UserState
from features.online_state import BoardEntry
from streamrec.errors import StoreError
from streams.state import (
    BatchUpdate,
    Claimed,
    ItemCounters,
    decode_user_state,
    encode_user_state,
)

# Move dirty -> claimed unless a claim survives from before a crash, then list the claim.
# Users are a set; items a sorted set scored by their oldest unwritten event time.
# Each claimed item's delta hash (ARGV[1] .. item: what commits added since its last
# claim) is added to its claimed-delta hash (ARGV[2] .. item: everything since its
# counters were last stored), which the claim returns. The owner adds the new part to
# the counters it caches (only the owner writes counters), and `release_dirty` stores
# them (one JSON string an item) and drops the claimed deltas in one transaction, at
# most every `store_every_s` an item: a crash before that finds the deltas again.
_CLAIM = """
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
  end
end
local items = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
local deltas = {}
for j = 1, #items, 2 do
  local new, claimed = ARGV[1] .. items[j], ARGV[2] .. items[j]
  if redis.call('EXISTS', new) == 1 then
    if redis.call('EXISTS', claimed) == 0 then
      redis.call('RENAME', new, claimed)
    else  -- a claim that was never released: fold the newer deltas into it
      local d = redis.call('HGETALL', new)
      for k = 1, #d, 2 do
        redis.call('HINCRBY', claimed, d[k], d[k + 1])
      end
      redis.call('DEL', new)
    end
  end
  deltas[#deltas + 1] = redis.call('HGETALL', claimed)
end
return {redis.call('SMEMBERS', KEYS[2]), items, deltas}
"""


# All item counter increments of a batch, into the items' delta hashes (claimed by their
# owner) in one call: ARGV = prefix, then one JSON object
# {item: {field: n}}. One argument instead of three per field: packing those was most of
# the commit's packing time (cjson is Redis's own). Counts are small integers, exact as
# Lua numbers. Run with EVAL (see commit).
# (Keys are built inside the script: fine on one Redis; on Redis Cluster the namespace
# would need a {hash tag} so every key shares a slot.)
_INCR = """
local prefix = ARGV[1]
for item, fields in pairs(cjson.decode(ARGV[2])) do
  local key = prefix .. item
  for field, n in pairs(fields) do
    redis.call('HINCRBY', key, field, n)
  end
end
return 0
"""
_JSON = msgspec.json.Encoder()
_COUNTERS = msgspec.json.Decoder(dict[str, int])
_GET = redis_wire.header(2) + redis_wire.bulk(b"GET")
_MAX_CACHED = 1 << 18  # entries per read cache, then it starts over


MIN_VERSION = (6, 2)  # ZADD LT (an item's oldest unwritten event)


def require_version(version: str) -> None:
    """Raise StoreError unless `version` (INFO's redis_version) is at least MIN_VERSION."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return  # not a plain x.y.z (a fork or a proxy): let the commands speak
    if found < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise StoreError(f"The stream state needs Redis >= {need}; this server is {version}.")


class RedisStreamState:
    """Keys live under `{namespace}:` so several groups or tests can share one Redis."""

    def __init__(self, url: str, namespace: str, store_every_s: float = 1.0) -> None:
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=10)
            version = str(self._r.info("server").get("redis_version", "0"))
        except redis.RedisError as exc:
            raise StoreError(f"Cannot reach Redis at {url}: {exc}. Is it running?") from exc
        require_version(version)
        self._ns = namespace
        self._claim = self._r.register_script(_CLAIM)
        self._get: dict[str, bytes] = {}  # item -> the GET frame of its counters
        self._field_names: dict[bytes, str] = {}  # counter fields repeat across items
        # Counters of the items this owner claimed, as of its latest claim: exact, since
        # only the owner writes them. Cleared when ownership changes or a write fails.
        self._counters: dict[str, ItemCounters] = {}
        # item -> its claimed deltas as Redis holds them (all since its counters were
        # stored), and when they were last stored (monotonic seconds)
        self._unstored: dict[str, ItemCounters] = {}
        self._stored_at: dict[str, float] = {}
        self._store_every_s = store_every_s
        self._claimed: list[str] = []  # the latest claim's items

    def _k(self, *parts: object) -> str:
        return ":".join((self._ns, *map(str, parts)))

    def applied_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        parts = list(partitions)
        if not parts:
            return {}
        values = self._r.hmget(self._k("offsets", topic), [str(p) for p in parts])
        return {p: int(v) if v is not None else -1 for p, v in zip(parts, values, strict=True)}

    def load_users(self, user_ids: Iterable[str]) -> dict[str, UserState]:
        ids = list(user_ids)
        if not ids:
            return {}
        blobs = self._r.mget([self._k("u", u) for u in ids])
        return {u: decode_user_state(b) for u, b in zip(ids, blobs, strict=True) if b is not None}

    def commit(self, update: BatchUpdate) -> None:
        # One MULTI/EXEC packed by hiredis: redis-py's pipeline encoded every argument in
        # Python (a fifth of the fold's time, measured). EVAL, not EVALSHA: a script
        # missing from the cache would fail inside EXEC, after the rest had applied.
        ns = self._ns
        commands: list[Sequence[redis_wire.Arg]] = []
        if update.users:
            mset: list[redis_wire.Arg] = ["MSET"]
            encode = encode_user_state
            for u, s in update.users.items():
                mset += (f"{ns}:u:{u}", encode(s))
            commands.append(mset)
        if update.item_counts:
            commands.append(("EVAL", _INCR, 0, f"{ns}:d:", _JSON.encode(update.item_counts)))
        if update.item_last:
            zadd: list[redis_wire.Arg] = ["ZADD", f"{ns}:ilast", "GT"]
            for item, ts in update.item_last.items():
                zadd += (ts, item)
            commands.append(zadd)
        for p, users in update.dirty_users.items():
            commands.append(("SADD", f"{ns}:dirty:u:{p}", *users))
        for p, oldest in update.dirty_items.items():  # LT: an item keeps its oldest wait
            marks: list[redis_wire.Arg] = ["ZADD", f"{ns}:dirty:i:{p}", "LT"]
            for item, ts in oldest.items():
                marks += (ts, item)
            commands.append(marks)
        if update.counters:
            commands += online_state.redis_counter_commands(ns, update.counters)
        if update.offsets:
            hset: list[redis_wire.Arg] = ["HSET", f"{ns}:offsets:{update.topic}"]
            for p, o in update.offsets.items():
                hset += (p, o)
            commands.append(hset)
        try:
            redis_wire.transaction(self._r, commands)
        except redis.RedisError as exc:
            raise StoreError(f"Stream state commit failed: {exc}") from exc

    def claim_dirty(self, partition: int) -> Claimed:
        keys = [self._k(state, kind, partition) for kind in "ui" for state in ("dirty", "claimed")]
        args = [self._k("d", ""), self._k("dc", "")]
        try:
            users, items, deltas = self._claim(keys=keys, args=args)
        except BaseException:
            self.drop_caches()  # whether the claim ran is unknown
            raise
        names = self._names()
        cached = self._counters
        unstored = self._unstored
        item_deltas: dict[str, ItemCounters] = {}
        self._claimed = []
        for raw, flat in zip(items[::2], deltas, strict=True):
            item = raw.decode()
            self._claimed.append(item)
            before = unstored.get(item, {})
            total = unstored[item] = {}
            delta = item_deltas[item] = {}
            counters = cached.get(item)
            for k, v in _pairs(flat):
                name = names.get(k)
                if name is None:
                    name = names[k] = k.decode()
                n = total[name] = int(v)
                new = n - before.get(name, 0)
                if new:
                    delta[name] = new
                    if counters is not None:
                        counters[name] = counters.get(name, 0) + new
        return Claimed(
            users=[u.decode() for u in users],
            items={
                i.decode(): int(float(ts)) for i, ts in zip(items[::2], items[1::2], strict=True)
            },
            item_deltas=item_deltas,
        )

    def _names(self) -> dict[bytes, str]:
        """Decoded counter field names (they repeat across items), bounded."""
        if len(self._field_names) > _MAX_CACHED:
            self._field_names.clear()
        return self._field_names

    def load_items(self, item_ids: Iterable[str]) -> dict[str, tuple[ItemCounters, int]]:
        ids = list(item_ids)
        if not ids:
            return {}
        cached = self._counters
        if len(cached) > _MAX_CACHED:
            cached.clear()
        missing = [item for item in ids if item not in cached]
        frames = [self._get_frame(item) for item in missing]
        frames.append(redis_wire.pack(("ZMSCORE", self._k("ilast"), *ids)))
        *blobs, lasts = redis_wire.round_trip(self._r, frames, len(frames))
        for item, blob in zip(missing, blobs, strict=True):
            counters = cached[item] = _COUNTERS.decode(blob) if blob else {}
            for name, n in self._unstored.get(item, {}).items():  # claimed, not yet stored
                counters[name] = counters.get(name, 0) + n
        out: dict[str, tuple[ItemCounters, int]] = {}
        for item, last in zip(ids, lasts, strict=True):
            if last is not None:
                out[item] = (cached[item], int(last))
        return out

    def _get_frame(self, item: str) -> bytes:
        """`GET {ns}:ic:{item}` as RESP, cached: the owner reads the same items all day."""
        frame = self._get.get(item)
        if frame is None:
            if len(self._get) > _MAX_CACHED:
                self._get.clear()
            frame = self._get[item] = _GET + redis_wire.bulk(self._k("ic", item).encode())
        return frame

    def drop_caches(self) -> None:
        self._counters.clear()
        self._unstored.clear()
        self._claimed = []

    def release_dirty(self, partition: int, stale_item_fields: dict[str, list[str]]) -> None:
        """Drop the claim; store the counters (less their stale fields) of claimed items
        not stored for `store_every_s`, dropping their claimed deltas in the same
        transaction. An item claimed but never loaded keeps its claimed deltas."""
        cached, unstored, stored_at = self._counters, self._unstored, self._stored_at
        due = time.monotonic() - self._store_every_s
        commands: list[Sequence[redis_wire.Arg]] = []
        stored = []
        for item in self._claimed:
            counters = cached.get(item)
            if counters is None:
                continue
            for f in stale_item_fields.get(item, ()):
                counters.pop(f, None)
            if stored_at.get(item, 0.0) <= due:
                commands.append(("SET", self._k("ic", item), _JSON.encode(counters)))
                stored.append(item)
        if stored:
            commands.append(("DEL", *(self._k("dc", item) for item in stored)))
        commands.append(("DEL", *(self._k("claimed", kind, partition) for kind in "ui")))
        try:
            redis_wire.transaction(self._r, commands)
        except BaseException:
            self.drop_caches()
            raise
        now = time.monotonic()
        for item in stored:
            unstored.pop(item, None)
            stored_at[item] = now
        if len(stored_at) > _MAX_CACHED:
            stored_at.clear()
        self._claimed = []

    def load_counters(self) -> dict[str, float]:
        raw = self._r.hgetall(self._k("counters"))
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}

    def write_board(self, entries: list[BoardEntry]) -> None:
        redis_wire.run(self._r, online_state.redis_board_commands(self._ns, entries))

    def close(self) -> None:
        self._r.close()


def _pairs(reply: dict[bytes, bytes] | list[bytes]) -> Iterable[tuple[bytes, bytes]]:
    """An HGETALL reply off the wire: a map (hiredis, RESP3) or a flat field/value list."""
    if isinstance(reply, dict):
        return reply.items()
    return zip(reply[::2], reply[1::2], strict=True)
