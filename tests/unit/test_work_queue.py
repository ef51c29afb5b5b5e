"""The worker's in-memory queue serves higher lanes first, FIFO within a lane."""

from __future__ import annotations

from dramatiq.message import Message
from dramatiq.worker import _WorkQueueItem

from fairlane.work_queue import LaneWorkQueue


def _item(lane: str, label: str) -> _WorkQueueItem:
    message = Message(queue_name="q", actor_name="a", args=(label,), kwargs={}, options={"priority": lane})
    return _WorkQueueItem(0, message)  # type: ignore[arg-type]


def test_urgent_overtakes_prefetched_lower_lanes() -> None:
    # Given low and normal messages already waiting in a worker's memory
    queue = LaneWorkQueue({"urgent": 0, "high": 1, "normal": 2, "low": 3})
    for name, label in [
        ("low", "low-1"),
        ("normal", "normal-1"),
        ("low", "low-2"),
        ("normal", "normal-2"),
    ]:
        queue.put(_item(name, label))

    # When an urgent message arrives last
    queue.put(_item("urgent", "urgent"))

    # Then it is served first, then normal before low, each lane in arrival order
    order = [queue.get().message.args[0] for _ in range(5)]
    assert order == ["urgent", "normal-1", "normal-2", "low-1", "low-2"]
