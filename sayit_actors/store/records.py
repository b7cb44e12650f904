"""The records the stores pass between actors: a chunk task, a delivery of it, a job's owner.

Apart from the stores that use them so that an actor holding a task (a slot, the consumer)
depends on no store to name it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Task:
    job_id: str
    index: int
    start_ms: int
    duration_ms: int
    language: str
    attempt: int = 1

    def fields(self) -> dict[str, str]:
        """The task as a stream entry's fields (and a retry's JSON)."""
        return {
            "job": self.job_id, "index": str(self.index), "start_ms": str(self.start_ms),
            "duration_ms": str(self.duration_ms), "language": self.language, "attempt": str(self.attempt),
        }  # fmt: skip

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Task:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(f["job"], int(f["index"]), int(f["start_ms"]), int(f["duration_ms"]), f["language"],
                   int(f.get("attempt", "1")))  # fmt: skip


@dataclass(frozen=True)
class Delivery:
    """A task as one consumer read it: ``entry_id`` is its entry in the chunk stream."""

    entry_id: str
    task: Task


@dataclass(frozen=True)
class Owner:
    """The tenant a job belongs to, and the most of the queued-audio budget its jobs may hold."""

    name: str
    queue_share: float = 1.0
