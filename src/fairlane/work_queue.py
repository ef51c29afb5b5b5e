"""A worker's in-memory work queue ordered by priority lane first.

Dramatiq orders prefetched messages by actor priority only, so an urgent message fetched
while low-lane messages wait in memory would queue behind them. This queue puts the lane
rank in front of the actor priority; within one lane, order stays first-in first-out.
"""

from __future__ import annotations

from collections.abc import Mapping
from queue import PriorityQueue
from typing import Any

#: Actor priorities are small integers; the lane rank dominates them.
_LANE_STRIDE = 1_000_000


class LaneWorkQueue(PriorityQueue[Any]):
    """Drop-in for ``dramatiq.Worker.work_queue`` that serves higher lanes first."""

    def __init__(self, lane_ranks: Mapping[str, int]) -> None:
        super().__init__()
        self.lane_ranks = dict(lane_ranks)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue a Dramatiq work item, re-keyed by its message's lane (its ``priority`` option)."""
        lane = str(item.message.options.get("priority", ""))
        rank = self.lane_ranks.get(lane, len(self.lane_ranks))
        # A new item of the same type (cheaper than dataclasses.replace); it keeps the message's order.
        rekeyed = type(item)(rank * _LANE_STRIDE + item.priority, item.message, item._queued_time)
        super().put(rekeyed, block, timeout)
