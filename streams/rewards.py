"""Clicks joined to the impressions that showed them: the bandit's rewards.

Serving publishes one `impression` event per shown item, carrying `request_id`,
`position`, `propensity` and `context` {"policy", "model", "x"}. Events are keyed by user,
so an impression and the click on it reach the same partition and the same worker; the
join table lives in that user's state document (`state["imp"]`), which the batch commits
atomically with its offsets. So a crash never loses a pending impression, and a replay
never credits a click twice.

- an impression a policy logged (`context.policy`) adds x xᵀ to the statistics and a
  0-label to the River learner; impressions from other producers have no decision to
  reward, so they stay plain feature events (and cost the join table nothing);
- the first click on (request_id, item) within the attribution window adds x to b and
  a 1-label. Later clicks on the same slot, and clicks without a known impression,
  earn nothing (they still count as ordinary click features).
"""

from __future__ import annotations

from features.aggregates import UserState
from models.bandit_state import BanditDelta, decode_x
from streamrec.events import Event

_JOIN = "imp"  # key of the join table inside the user state
_SEP = "\x1f"


def _slot(ev: Event) -> str:
    return f"{ev.request_id}{_SEP}{ev.item_id}"


class RewardJoiner:
    def __init__(self, window_ms: int) -> None:
        self._window_ms = window_ms

    def observe(self, state: UserState, ev: Event, delta: BanditDelta) -> None:
        """Fold one applied (non-duplicate) event into the join table and the delta."""
        if ev.request_id is None:
            return
        if ev.event_type == "impression":
            policy = ev.context.get("policy")
            if not isinstance(policy, str) or not policy:
                return  # no policy logged this slate: a plain feature event, nothing to reward
            policy = policy[:32]
            joins = state.setdefault(_JOIN, {})
            x_text = ev.context.get("x")
            joins[_slot(ev)] = [ev.ts_ms, x_text if isinstance(x_text, str) else "", policy, 0]
            delta.impression(decode_x(x_text), policy)
        elif ev.event_type == "click":
            entry = state.get(_JOIN, {}).get(_slot(ev))
            if entry is None or entry[3]:
                return
            if not 0 <= ev.ts_ms - entry[0] <= self._window_ms:
                return
            entry[3] = 1
            delta.click(decode_x(entry[1]), entry[2])

    def prune(self, state: UserState) -> None:
        """Forget impressions older than the window (relative to the user's last event)."""
        joins = state.get(_JOIN)
        if not joins:
            return
        horizon = state["last"] - self._window_ms
        for key in [k for k, v in joins.items() if v[0] < horizon]:
            del joins[key]
        if not joins:
            del state[_JOIN]
