"""The arrays the two-tower model trains on: item vocabulary, user hashing, examples, items.

The offline job turns the event archive into these plain numpy arrays; everything in
`models/` starts from them, so training needs numpy and torch only (no pandas, no Feast).
Item indices: 0 = padding (empty slots of a recent-items sequence), 1 = unknown item (an
id the vocabulary has never seen), known items from 2 on. User ids are hashed into a fixed
number of buckets instead, so a user first seen after training still gets a row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.errors import ArtifactError, DataError

PAD = 0
UNKNOWN = 1
FIRST_ITEM = 2
_VOCAB_FORMAT = "streamrec.item_vocab"
_VOCAB_VERSION = 1


class ItemVocab:
    """Item id strings <-> contiguous indices (0 padding, 1 unknown, known items from 2)."""

    def __init__(self, known_ids: Sequence[str]) -> None:
        """Build from the known ids in index order (index 2 first); use `from_ids` to sort."""
        self._ids: list[str] = ["<pad>", "<unk>", *known_ids]
        self._index: dict[str, int] = {item: i for i, item in enumerate(known_ids, FIRST_ITEM)}
        if len(self._index) != len(known_ids):
            raise DataError("ItemVocab: item ids must be unique.")

    @classmethod
    def from_ids(cls, ids: Iterable[str]) -> ItemVocab:
        """The distinct ids, sorted, so the same ids always give the same indices."""
        return cls(sorted(set(ids)))

    @property
    def ids(self) -> list[str]:
        """Index -> id; entries 0 and 1 are the placeholders "<pad>" and "<unk>"."""
        return list(self._ids)

    def __len__(self) -> int:
        """Number of rows an item table needs (known items plus the two reserved rows)."""
        return len(self._ids)

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """int64 indices of `ids`; ids the vocabulary does not know map to 1 (unknown)."""
        get = self._index.get
        return np.fromiter((get(i, UNKNOWN) for i in ids), dtype=np.int64, count=len(ids))

    def to_json(self) -> str:
        """The vocabulary as a JSON document (format tag, version, known ids in index order)."""
        doc = {"format": _VOCAB_FORMAT, "version": _VOCAB_VERSION, "ids": self._ids[FIRST_ITEM:]}
        return json.dumps(doc, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ItemVocab:
        """Parse `to_json` output; raise ArtifactError if it is not a vocabulary document."""
        try:
            doc: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"Item vocabulary is not valid JSON ({exc}).") from exc
        if not isinstance(doc, dict) or doc.get("format") != _VOCAB_FORMAT:
            raise ArtifactError("Item vocabulary JSON lacks format 'streamrec.item_vocab'.")
        if doc.get("version") != _VOCAB_VERSION:
            raise ArtifactError(
                f"Item vocabulary version {doc.get('version')!r} is not supported "
                f"(expected {_VOCAB_VERSION}); rebuild it with this streamrec."
            )
        ids = doc.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ArtifactError("Item vocabulary 'ids' must be a list of strings.")
        try:
            return cls(ids)
        except DataError as exc:
            raise ArtifactError(f"Item vocabulary is corrupt: {exc.message}") from exc

    def save(self, path: Path) -> None:
        """Write the JSON document to `path` (UTF-8)."""
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        """Read a vocabulary written by `save`; raise ArtifactError if missing or unreadable."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"Unable to read item vocabulary at '{path}' ({exc}).") from exc
        return cls.from_json(text)


def _blake64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def hash_id(user_id: str, buckets: int) -> int:
    """`hash_ids` for one id (serving's path: no array round trip)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    return _blake64(user_id) % buckets


def hash_ids(ids: Sequence[str], buckets: int) -> np.ndarray:
    """Stable int64 buckets in [0, buckets) for `ids` (blake2b, same in every process).

    Python's `hash` is salted per process, so it cannot map a user to the same row at
    training and at serving time. Collisions are accepted: two users sharing a row is
    the price of giving never-seen users a row at all.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    raw = np.fromiter((_blake64(s) for s in ids), dtype=np.uint64, count=len(ids))
    return (raw % np.uint64(buckets)).astype(np.int64)


def _check(name: str, arr: object, dtype: type, ndim: int, n: int | None) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{name}: expected a numpy array, got {type(arr).__name__}.")
    if arr.dtype != dtype:
        raise DataError(f"{name}: expected dtype {np.dtype(dtype)}, got {arr.dtype}.")
    if arr.ndim != ndim:
        raise DataError(f"{name}: expected {ndim} dimension(s), got shape {arr.shape}.")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name}: expected {n} rows (as user_bucket), got {arr.shape[0]}.")
    return arr


@dataclass(frozen=True)
class Examples:
    """Training (or validation) examples: one positive (user state, item) pair per row.

    `seq` holds the item indices the user interacted with before the event, most recent
    first, 0-padded on the right; `user_dense` the real-time user features as of the
    event, already scaled; `target` the index (>= 2) of the item the user interacted with.
    """

    user_bucket: np.ndarray  # int64 [n]
    seq: np.ndarray  # int64 [n, L]
    user_dense: np.ndarray  # float32 [n, Fu]
    target: np.ndarray  # int64 [n]
    ts_ms: np.ndarray  # int64 [n]

    def __post_init__(self) -> None:
        n = _check("user_bucket", self.user_bucket, np.int64, 1, None).shape[0]
        _check("seq", self.seq, np.int64, 2, n)
        _check("user_dense", self.user_dense, np.float32, 2, n)
        _check("target", self.target, np.int64, 1, n)
        _check("ts_ms", self.ts_ms, np.int64, 1, n)
        if self.seq.shape[1] < 1:
            raise DataError("seq: needs at least one column (pad with 0 for no history).")
        if n == 0:
            return
        if self.user_bucket.min() < 0:
            raise DataError("user_bucket: buckets must be >= 0 (use hash_ids).")
        if self.seq.min() < 0:
            raise DataError("seq: item indices must be >= 0 (0 = padding, 1 = unknown).")
        if self.target.min() < FIRST_ITEM:
            raise DataError("target: item indices must be >= 2 (0 and 1 are padding/unknown).")
        if not np.isfinite(self.user_dense).all():
            raise DataError("user_dense: contains NaN or infinite values.")

    def __len__(self) -> int:
        return int(self.user_bucket.shape[0])

    @property
    def seq_len(self) -> int:
        """L, the length of the recent-items sequence."""
        return int(self.seq.shape[1])

    @property
    def user_dense_dim(self) -> int:
        """Fu, the number of real-time user features."""
        return int(self.user_dense.shape[1])

    def subset(self, mask_or_idx: np.ndarray) -> Examples:
        """The rows selected by a boolean mask or an index array (copies, original order kept)."""
        sel = np.asarray(mask_or_idx)
        if sel.dtype == np.bool_ and sel.shape != (len(self),):
            raise DataError(f"subset: mask has shape {sel.shape}, expected ({len(self)},).")
        return Examples(
            user_bucket=self.user_bucket[sel],
            seq=self.seq[sel],
            user_dense=self.user_dense[sel],
            target=self.target[sel],
            ts_ms=self.ts_ms[sel],
        )

    def split_by_time(self, fraction: float) -> tuple[Examples, Examples]:
        """(earlier, later): `later` holds about the last `fraction` of rows by `ts_ms`.

        The cut is a timestamp, so rows sharing a time never straddle it (the later part
        may be slightly larger than asked). Validating on the latest slice mimics serving:
        the model is always used on events after the ones it learned from.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        n = len(self)
        k = round(n * fraction)
        if n < 2 or k < 1 or k >= n:
            raise DataError(f"split_by_time: {n} examples are too few for fraction {fraction}.")
        cutoff = np.partition(self.ts_ms, n - k)[n - k]
        later = self.ts_ms >= cutoff
        if later.all():
            raise DataError("split_by_time: all examples share one timestamp; cannot split.")
        return self.subset(~later), self.subset(later)


@dataclass(frozen=True)
class ItemTable:
    """Per-item dense features, one row per vocabulary index (rows 0 and 1 may be zeros).

    The sampling probability for the logQ correction is not stored here: it is the item's
    frequency as a target in the training examples, which `models.train` computes.
    """

    dense: np.ndarray  # float32 [n_items, Fi]

    def __post_init__(self) -> None:
        _check("dense", self.dense, np.float32, 2, None)
        if self.dense.shape[0] < FIRST_ITEM:
            raise DataError("dense: needs at least the two reserved rows (padding, unknown).")
        if not np.isfinite(self.dense).all():
            raise DataError("dense: contains NaN or infinite values.")

    @property
    def n_items(self) -> int:
        """Number of rows, equal to len(vocab)."""
        return int(self.dense.shape[0])

    @property
    def dense_dim(self) -> int:
        """Fi, the number of item features (may be 0)."""
        return int(self.dense.shape[1])

    @classmethod
    def empty(cls, n_items: int) -> ItemTable:
        """A table without item features (Fi = 0), for catalogues that have none."""
        return cls(np.zeros((n_items, 0), dtype=np.float32))
