"""The ResultActor: the small writes of job state, chunk results, final results and stats.

Reads are not its business: the edge reads jobs and stats straight from Redis with its own
async client, so no status poll waits behind a write in this actor's inbox.

A write that meets any Redis error (a restart, OOM at maxmemory, READONLY, a timeout) is
retried with backoff (the actor re-sends itself the message after a delay), so a chunk that was
transcribed is not lost when Redis restarts or refuses writes for a while; stats are best effort.

A job that ends with a callback URL gets its entry in the callback outbox whichever way it ends
(merged after its last chunk, or failed): the JobStore writes it with the job's end, and the
CallbackDispatcher of some node sends it (sayit_actors/outbox.py). A job whose last writer died
before merging, or whose node died between failing it and queueing its callback, is mended when
the edge reads it: it tells this actor ``SettleJob``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka
import redis

from config import QueueSettings
from sayit_actors.metrics import Metrics
from sayit_actors.store import keys
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.records import Delivery
from sayit_actors.store.redis_server import Outage, client_options
from sayit_actors.store.stream import ChunkStream
from sayit_actors.supervisor import SupervisedActor, Supervisor, Told, tell_later

log = logging.getLogger(__name__)
MAX_WRITE_RETRY_DELAY_S = 10.0


@dataclass(frozen=True)
class RecordRequest(Told):
    success: bool
    processing_s: float
    audio_s: float = 0.0


@dataclass(frozen=True)
class SettleJob(Told):
    """Merge a job whose chunks are all recorded but which is still processing (its last writer
    died before merging), and queue the callback an ended job is missing. Both are idempotent."""

    job_id: str


@dataclass(frozen=True)
class RecordChunk(Told):
    delivery: Delivery
    result: dict[str, Any]
    tries: int = 0


@dataclass(frozen=True)
class ChunkFailure(Told):
    delivery: Delivery
    reason: str
    dead: bool = False  # True: no retry (the task stalled past its limit)
    tries: int = 0


@dataclass(frozen=True)
class DailyStats:
    day: str
    requests: int
    successes: int
    failures: int
    processing_s: float
    audio_s: float

    @property
    def success_rate(self) -> float | None:
        return round(self.successes / self.requests, 4) if self.requests else None

    @property
    def average_processing_s(self) -> float | None:
        return round(self.processing_s / self.requests, 3) if self.requests else None

    @classmethod
    def from_hash(cls, day: dt.date, raw: Mapping[bytes, bytes]) -> DailyStats:
        """The day's stats from their hash in Redis (``keys.stats``)."""
        value = {k.decode(): int(v) for k, v in raw.items()}
        return cls(
            day=day.isoformat(),
            requests=value.get("requests", 0),
            successes=value.get("successes", 0),
            failures=value.get("failures", 0),
            processing_s=value.get("processing_ms", 0) / 1000,
            audio_s=value.get("audio_ms", 0) / 1000,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "successRate": self.success_rate,
            "averageProcessingTime": self.average_processing_s,
            "audioSeconds": round(self.audio_s, 3),
        }


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class ResultActor(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        redis_url: str,
        queue: QueueSettings,
        metrics: Metrics,
    ) -> None:
        super().__init__(supervisor, name)
        self._metrics = metrics
        self._redis_url = redis_url
        self._queue = queue
        self._redis: redis.Redis | None = None
        self._store: JobStore | None = None
        self._outage = Outage(f"result actor {name}")

    def on_start(self) -> None:
        self._redis = redis.Redis.from_url(self._redis_url, **client_options())
        self._store = JobStore(self._redis, self._queue)
        try:
            ChunkStream(self._redis).ensure_group()  # so tasks queued before any worker starts are read too
        except redis.RedisError as exc:
            log.warning("could not create the chunk stream's consumer group yet: %s", exc)

    def on_stop(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def handle(self, message: Any) -> Any:
        match message:
            case RecordRequest():
                return self._record_request(message)
            case SettleJob(job_id):
                return self._settle(job_id)
            case RecordChunk() | ChunkFailure():
                return self._with_retry(message)
        raise TypeError(f"unexpected message {message!r}")

    @property
    def store(self) -> JobStore:
        assert self._store is not None, "ResultActor used before on_start"
        return self._store

    def _with_retry(self, msg: RecordChunk | ChunkFailure) -> None:
        try:
            if isinstance(msg, RecordChunk):
                self._record_chunk(msg)
            elif msg.dead:
                if self.store.fail(msg.delivery, msg.reason):
                    self._job_ended("failed")
            elif self.store.retry_or_fail(msg.delivery, msg.reason) == "failed":
                self._job_ended("failed")
        except redis.RedisError as exc:
            self._outage.failed(exc)
            delay = min(MAX_WRITE_RETRY_DELAY_S, 0.5 * 2**msg.tries)
            log.debug("Redis write for job %s failed (%s): retrying in %.1f s", msg.delivery.task.job_id, exc, delay)
            retry = type(msg)(**{**msg.__dict__, "tries": msg.tries + 1})
            tell_later(self.actor_ref, retry, delay)  # a restarted ResultActor gets it redelivered instead
            return
        self._outage.ok()

    def _record_chunk(self, msg: RecordChunk) -> None:
        added, done, total = self.store.record_chunk(msg.delivery, msg.result)
        job_id = msg.delivery.task.job_id
        if added and "engine_s" in msg.result:
            self._record_speed(msg.result["duration_s"], msg.result["engine_s"])
        # A retry may follow a try that recorded the chunk but failed before the merge.
        if done == total > 0 and (added or (msg.tries > 0 and self._unmerged(job_id))):
            with self.doing(f"merging job {job_id}"):
                result = self.store.finish(job_id)
            if result is not None:
                self._job_ended("completed")

    def _unmerged(self, job_id: str) -> bool:
        return (self.store.get(job_id) or {}).get("status") == "processing"

    def _record_speed(self, audio_s: float, engine_s: float) -> None:
        """Best effort, as all stats: a chunk's result must not wait on them."""
        try:
            self.store.record_speed(today(), audio_s, engine_s)
        except redis.RedisError as exc:
            self._outage.failed(exc)

    def _job_ended(self, outcome: str) -> None:
        """Count the job once (its callback is already in the outbox: the store wrote it with the end)."""
        self._metrics.jobs.labels(outcome).inc()

    def _settle(self, job_id: str) -> None:
        """Told by the edge on reading a job that looks unsettled; a Redis error drops it (the next
        read tells again)."""
        try:
            job = self.store.get(job_id)
            if job is None:
                return
            if job.get("status") == "processing" and job.get("done") == job.get("total"):
                with self.doing(f"merging job {job_id}"):
                    if self.store.finish(job_id) is not None:  # the last writer died before merging
                        self._job_ended("completed")
            elif job.get("status") in ("completed", "failed") and job.get("callback_url"):
                self.store.queue_callback(job_id)  # a node died between failing the job and queueing its callback
        except redis.RedisError as exc:
            self._outage.failed(exc)
            return
        self._outage.ok()

    def _record_request(self, msg: RecordRequest) -> None:
        assert self._redis is not None
        key = keys.stats(today())
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "requests", 1)
                pipe.hincrby(key, "successes" if msg.success else "failures", 1)
                pipe.hincrby(key, "processing_ms", round(msg.processing_s * 1000))
                pipe.hincrby(key, "audio_ms", round(msg.audio_s * 1000))
                pipe.expire(key, keys.STATS_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            # Stats are best effort: a request must not fail because Redis blinked.
            self._outage.failed(exc)
            return
        self._outage.ok()
