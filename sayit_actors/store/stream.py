"""The chunk stream: one entry per chunk task, read by the queue nodes through one consumer group.

The QueueConsumer decides when to read, renew, reclaim and trim; this module owns how. A task
leaves the pending list only with its outcome, so those steps that end a task with a result, a
retry or a dead letter are the JobStore's (one atomic change with the job); here are the ones
that only move tasks: reading, leases, reclaiming, handing back, due retries, trimming.
"""

from __future__ import annotations

from typing import Any

import redis

from sayit_actors.store import keys
from sayit_actors.store.records import Delivery, Task, now_ms

_MOVE_DUE = """
-- KEYS: retries, stream   ARGV: now
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local task = cjson.decode(member)
  local args = {}
  for k, v in pairs(task) do table.insert(args, k); table.insert(args, v) end
  redis.call('XADD', KEYS[2], '*', unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


class ChunkStream:
    def __init__(self, client: redis.Redis) -> None:
        # redis-py types each reply as a union of its sync and async forms: read them as Any.
        self.r: Any = client
        self._move_due = client.register_script(_MOVE_DUE)

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(keys.CHUNKS, keys.CHUNKS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_new(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        reply = self.r.xreadgroup(keys.CHUNKS_GROUP, consumer, {keys.CHUNKS: ">"}, count=count, block=block_ms)
        return [Delivery(eid.decode(), Task.from_fields(f)) for _, entries in reply or [] for eid, f in entries if f]

    def stalled(self, min_idle_ms: int, count: int) -> list[tuple[str, int]]:
        """(entry id, deliveries so far) of tasks nobody has renewed for ``min_idle_ms``."""
        rows = self.r.xpending_range(keys.CHUNKS, keys.CHUNKS_GROUP, "-", "+", count, idle=min_idle_ms)
        return [(row["message_id"].decode(), int(row["times_delivered"])) for row in rows]

    def claim(self, consumer: str, entry_ids: list[str], min_idle_ms: int) -> list[Delivery]:
        if not entry_ids:
            return []
        claimed = self.r.xclaim(keys.CHUNKS, keys.CHUNKS_GROUP, consumer, min_idle_ms, entry_ids)
        return [Delivery(eid.decode(), Task.from_fields(f)) for eid, f in claimed if f]

    def entry(self, entry_id: str) -> Delivery | None:
        rows = self.r.xrange(keys.CHUNKS, entry_id, entry_id)
        return Delivery(entry_id, Task.from_fields(rows[0][1])) if rows else None

    def renew(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of tasks this consumer is working on (JUSTID: no delivery counted)."""
        if entry_ids:
            self.r.xclaim(keys.CHUNKS, keys.CHUNKS_GROUP, consumer, 0, entry_ids, justid=True)

    def hand_back(self, delivery: Delivery) -> None:
        """Put an unfinished task back at the end of the stream without counting a stall."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.CHUNKS, delivery.task.fields())
            pipe.xack(keys.CHUNKS, keys.CHUNKS_GROUP, delivery.entry_id)
            pipe.execute()

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a task that has nothing to record (its job ended or expired)."""
        self.r.xack(keys.CHUNKS, keys.CHUNKS_GROUP, delivery.entry_id)

    def trim(self) -> int:
        """Delete acknowledged tasks from the stream; returns how many went.

        Everything older than the oldest task still pending or not yet delivered (in any group)
        goes. The groups' last-delivered ids are read before their pending lists: a task delivered
        in between is newer than the id read, and one acknowledged in between may go anyway.
        """
        try:
            groups = self.r.xinfo_groups(keys.CHUNKS)
        except redis.ResponseError as exc:
            if "no such key" in str(exc):  # nothing was ever queued
                return 0
            raise
        if not groups:
            return 0  # without a group nobody knows what was delivered
        with self.r.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.xpending(keys.CHUNKS, group["name"])
            pending = pipe.execute()
        keep = []
        for group, summary in zip(groups, pending, strict=True):
            ms, seq = _stream_id(group["last-delivered-id"])
            keep.append((ms, seq + 1))  # the first entry this group has not been given
            if summary["pending"]:
                keep.append(_stream_id(summary["min"]))
        ms, seq = min(keep)
        return int(self.r.xtrim(keys.CHUNKS, minid=f"{ms}-{seq}", approximate=False))

    def move_due_retries(self) -> int:
        """Put tasks whose retry backoff is over back in the stream (at most 100 a call)."""
        return int(self._move_due(keys=[keys.RETRIES, keys.CHUNKS], args=[now_ms()]))

    def has_result(self, task: Task) -> bool:
        """Whether the task's chunk is already transcribed (its audio is deleted then)."""
        return bool(self.r.hexists(keys.chunk_results(task.job_id), str(task.index)))

    def chunk_audio(self, task: Task) -> bytes | None:
        data: bytes | None = self.r.get(keys.chunk_audio(task.job_id, task.index))
        return data


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)
