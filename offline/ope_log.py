"""From a logged dataset to the arrays `offline.ope` evaluates: our impression log or OBD.

**Our impression log** (the archive): one `impression` event per shown item, with
`request_id`, `position` (0-based slot), `propensity` = P(logging policy put this item at
this slot | the request's candidates) and `context` = {"policy", "model", "x": the item's
bandit features in `models.bandit.FEATURE_NAMES` order, ...}. The reward of an impression
is 1 when a click with the same request_id and item_id comes 0..`attribution_window_s`
after it. A request's *slate* is the items it showed, in slot order.

**What is evaluated — the choice and its limits.** The log carries the shown items only,
not the ~hundreds of candidates the logger chose them from, so the evaluation policy
*reranks each request's logged slate*: `action_dist[r, a, k]` = P(candidate policy puts
the item logged at slot a into slot k | those items). Rounds are (request, slot); the
action of a round is its item's slot in the logged slate. The importance weight
π_e(a → k | shown items) / propensity mixes two conditionings, so:

- it is exact when the request's candidates *were* the shown items (serving with
  `candidates == k`, or a rerank-only experiment);
- otherwise IPS and DR estimate "the logged slates, reordered by the candidate
  policy" only approximately, and the mean importance weight drifts from 1 (by about
  n_candidates / slate size for a uniform logger). `WeightDiagnostics.mean` shows it;
  SNIPS normalises it away and DM does not use the weights at all. The fix is in the
  log, not here: log the candidate set (ids + x) for a sample of requests.
- A request whose slots are not exactly 0..m-1 (an impression lost or outside the time
  window) cannot be reranked and is dropped, counted in `dropped`.

**Open Bandit Dataset** (`obp`'s CSV layout): the 80 items are every round's candidates,
features from `item_context.csv` beside it, and the policy fills 3 slots; this is the
setting obp's estimators assume, and the one the parity test checks.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.bandit import (
    FEATURE_NAMES,
)
from models.bandit_state import decode_x
from offline import ope
from offline.ope_reward import reward_table
from streamrec.errors import DataError

if TYPE_CHECKING:
    from offline.ope_policies import SlatePolicy


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedFeedback:
    """A log as obp-style rounds plus the candidates each round's slate was drawn from."""

    action: np.ndarray  # [n] index of the shown item among its slate's candidates
    position: np.ndarray  # [n] slot
    reward: np.ndarray  # [n]
    pscore: np.ndarray  # [n] logged propensity
    slate: np.ndarray  # [n] -> row of `candidates`
    candidates: np.ndarray  # [S, m, D] features of each slate's candidates (0 = padding)
    valid: np.ndarray  # [S, m] a real candidate, not padding
    len_list: int  # slots
    feature_names: tuple[str, ...]
    groups: np.ndarray | None  # [n] resampling unit (request); None = every round alone
    source: str
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> impressions left out
    slate_ids: np.ndarray | None = None  # [S] request id of each slate (our log)

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])


# --- our impression log ---------------------------------------------------------------------


def read_impression_log(
    archive_dir: Path,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    attribution_window_s: int = 1800,
    where: dict[str, str] | None = None,
) -> LoggedFeedback:
    """Impressions shown in [since, until) joined with their clicks, as complete slates.

    Clicks are read up to `until + window` so late rewards still count; impressions whose
    window has not closed by the newest archived event are dropped (their reward is not
    known yet) and counted. `where` keeps requests whose context matches, e.g.
    {"variant": "B"}.
    """
    from offline.archive import read_events

    window_ms = attribution_window_s * 1000
    read_until = None if until_ms is None else until_ms + window_ms
    frame = read_events(
        archive_dir,
        since_ms,
        read_until,
        columns=("request_id", "position", "propensity", "context"),
    )
    if frame.empty:
        raise DataError(f"no events in {archive_dir} for that window; check --log and the times")
    dropped: Counter[str] = Counter()
    imps = frame[frame["event_type"] == "impression"]
    if until_ms is not None:
        imps = imps[imps["ts_ms"] < until_ms]
    # The newest archived data stands for "now": a younger impression may still get its
    # click, and counting it as 0 would bias every estimate down.
    now = max(int(frame["ts_ms"].max()), _newest_partition_ms(archive_dir))
    young = imps["ts_ms"] > now - window_ms
    dropped["reward_window_still_open"] += int(young.sum())
    imps = imps[~young]
    no_request = imps["request_id"].isna()
    dropped["impression_without_request_id"] += int(no_request.sum())
    imps = imps[~no_request]
    before = len(imps)
    imps = imps.drop_duplicates(["request_id", "item_id"], keep="first")
    dropped["repeated_impression"] += before - len(imps)
    imps = imps.assign(reward=_rewards(imps, frame, window_ms))
    imps, x, d = _parse_context(imps, where, dropped)
    return _slates(imps, x, d, dropped)


def _newest_partition_ms(archive_dir: Path) -> int:
    """Start of the newest `date=…/hour=…` partition: the archive has data at least that new,
    even past the window read (a cheap directory listing, no file opened)."""
    newest = -1
    for hour_dir in archive_dir.glob("date=*/hour=*"):
        try:
            stamp = pd.Timestamp(f"{hour_dir.parent.name[5:]} {hour_dir.name[5:]}:00", tz="UTC")
        except ValueError:
            continue
        newest = max(newest, int(stamp.value // 1_000_000))
    return newest


def _rewards(imps: pd.DataFrame, frame: pd.DataFrame, window_ms: int) -> np.ndarray:
    """1 where a click with the same (request, item) came 0..window ms after the impression."""
    clicks = frame.loc[
        (frame["event_type"] == "click") & frame["request_id"].notna(),
        ["request_id", "item_id", "ts_ms"],
    ]
    left = imps[["request_id", "item_id", "ts_ms"]].reset_index(drop=True)
    left["_row"] = np.arange(len(left))
    joined = left.merge(clicks, on=["request_id", "item_id"], suffixes=("", "_click"))
    dt = joined["ts_ms_click"] - joined["ts_ms"]
    hit = joined.loc[(dt >= 0) & (dt <= window_ms), "_row"].to_numpy()
    reward = np.zeros(len(left))
    reward[hit] = 1.0
    return reward


def _parse_context(
    imps: pd.DataFrame, where: dict[str, str] | None, dropped: Counter[str]
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Keep impressions with a propensity and a well-formed x; apply `where`."""
    d = len(FEATURE_NAMES)
    rows: list[np.ndarray] = []
    keep = np.zeros(len(imps), dtype=bool)
    match = np.ones(len(imps), dtype=bool)
    for i, (raw, p) in enumerate(zip(imps["context"], imps["propensity"], strict=True)):
        ctx = _json_object(raw)
        if where and not all(str(ctx.get(k)) == v for k, v in where.items()):
            match[i] = False
            continue
        x = decode_x(ctx.get("x"))
        if x is None:
            dropped["impression_without_valid_x"] += 1
        elif p is None or not (isinstance(p, float) and 0 < p <= 1):
            dropped["impression_without_propensity"] += 1
        else:
            keep[i] = True
            rows.append(x)
    dropped["filtered_by_where"] += int((~match).sum())
    # An impression that cannot be used spoils its whole slate: mark the request.
    spoiled = set(imps["request_id"].to_numpy()[match & ~keep])
    imps = imps[keep]
    x = np.asarray(rows, dtype=np.float64).reshape(-1, d)
    ok = ~imps["request_id"].isin(spoiled).to_numpy()
    dropped["impression_in_spoiled_slate"] += int((~ok).sum())
    return imps[ok], x[ok], d


def _json_object(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _slates(imps: pd.DataFrame, x: np.ndarray, d: int, dropped: Counter[str]) -> LoggedFeedback:
    """Group impressions into requests whose slots are exactly 0..m-1."""
    pos = imps["position"]
    req = imps["request_id"].to_numpy()
    g = pd.DataFrame({"r": req, "p": pos.fillna(-1).astype(np.int64).to_numpy()})
    stats = g.groupby("r")["p"].agg(["size", "min", "max", "nunique"])
    complete = (stats["min"] == 0) & (stats["max"] == stats["size"] - 1)
    complete &= stats["nunique"] == stats["size"]
    good = set(stats.index[complete])  # a missing position (-1) is never complete
    keep = pd.Series(req).isin(good).to_numpy()
    dropped["impression_in_incomplete_slate"] += int((~keep).sum())
    if not keep.any():
        raise DataError(
            "no complete logged slate to evaluate (impressions need request_id, a 0-based "
            f"position, a propensity and context.x); dropped: {_nonzero(dropped)}"
        )
    codes, ids = pd.factorize(req[keep])
    position = g["p"].to_numpy()[keep]
    n_slates, len_list = int(codes.max()) + 1, int(position.max()) + 1
    candidates = np.zeros((n_slates, len_list, d))
    valid = np.zeros((n_slates, len_list), dtype=bool)
    candidates[codes, position] = x[keep]
    valid[codes, position] = True
    kept = imps[keep]
    return LoggedFeedback(
        action=position.copy(),
        position=position,
        reward=kept["reward"].to_numpy(dtype=np.float64),
        pscore=kept["propensity"].to_numpy(dtype=np.float64),
        slate=codes.astype(np.int64),
        candidates=candidates,
        valid=valid,
        len_list=len_list,
        feature_names=FEATURE_NAMES,
        groups=codes.astype(np.int64),
        source="impression log",
        dropped=_nonzero(dropped),
        slate_ids=np.asarray(ids, dtype=object),
    )


def _nonzero(c: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in sorted(c.items()) if v}


# --- Open Bandit Dataset ----------------------------------------------------------------------

OBD_COLUMNS = ("item_id", "position", "click", "propensity_score")


def read_obd(csv_path: Path) -> LoggedFeedback:
    """An Open Bandit Dataset CSV (e.g. obp's `obd/random/all/all.csv`) as rounds.

    As obp's loader does: action = item_id, position = dense rank of `position` - 1,
    reward = click, pscore = propensity_score. Item features come from
    `item_context.csv` beside it (numeric columns as is, others one-hot), plus a bias.
    """
    try:
        df = pd.read_csv(csv_path, index_col=0)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {csv_path} as an OBD CSV: {exc}") from exc
    missing = [c for c in OBD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path} lacks OBD column(s) {missing}; is it an OBD log?")
    action = df["item_id"].to_numpy(dtype=np.int64)
    position = df["position"].rank(method="dense").to_numpy(dtype=np.int64) - 1
    n_items = int(action.max()) + 1
    features, names = _obd_item_features(csv_path.parent / "item_context.csv", n_items)
    return LoggedFeedback(
        action=action,
        position=position,
        reward=df["click"].to_numpy(dtype=np.float64),
        pscore=df["propensity_score"].to_numpy(dtype=np.float64),
        slate=np.zeros(len(df), dtype=np.int64),
        candidates=features[None],
        valid=np.ones((1, n_items), dtype=bool),
        len_list=int(position.max()) + 1,
        feature_names=names,
        groups=None,
        source="open bandit dataset",
    )


def _obd_item_features(path: Path, n_items: int) -> tuple[np.ndarray, tuple[str, ...]]:
    if not path.exists():
        log.info("ope: no %s; items get a bias feature only", path)
        return np.ones((n_items, 1)), ("bias",)
    ctx = pd.read_csv(path, index_col=0).set_index("item_id").sort_index()
    if len(ctx) != n_items or not (ctx.index == np.arange(n_items)).all():
        raise DataError(f"{path} must describe items 0..{n_items - 1}, one row each")
    cols: list[np.ndarray] = [np.ones(n_items)]
    names = ["bias"]
    for c in ctx.columns:
        if pd.api.types.is_numeric_dtype(ctx[c]):
            cols.append(ctx[c].to_numpy(dtype=np.float64))
            names.append(str(c))
        else:
            for level in sorted(ctx[c].astype(str).unique()):
                cols.append((ctx[c].astype(str) == level).to_numpy(dtype=np.float64))
                names.append(f"{c}={level[:8]}")
    return np.stack(cols, axis=1), tuple(names)


# --- evaluation policies ----------------------------------------------------------------------


# --- reward model -------------------------------------------------------------------------


# --- one call for the CLI ---------------------------------------------------------------------


def evaluate_policy(
    fb: LoggedFeedback,
    policy: SlatePolicy,
    *,
    estimators: Sequence[str] = ope.ESTIMATORS,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_folds: int = 2,
) -> ope.OpeResult:
    """Every estimator of `policy` on `fb`, with bootstrap intervals over requests."""
    dist = ope.PerSlate(policy.action_dist(fb), fb.slate)
    needs_model = any(e in ope.NEEDS_REWARD_MODEL for e in estimators)
    q_hat = reward_table(fb, n_folds=n_folds, seed=seed) if needs_model else None
    return ope.evaluate(
        fb.action,
        fb.position,
        fb.reward,
        fb.pscore,
        dist,
        q_hat,
        estimators=estimators,
        groups=fb.groups,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def read_log(path: Path, **kwargs: Any) -> LoggedFeedback:
    """An OBD CSV file or an archive directory, by what `path` is."""
    if path.is_file() and path.suffix == ".csv":
        return read_obd(path)
    if path.is_dir():
        return read_impression_log(path, **kwargs)
    raise DataError(f"--log {path}: expected an archive directory or an OBD .csv file")
