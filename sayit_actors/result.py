"""The ResultActor: every write of job state, chunk results, final results and stats.

A write that meets any Redis error (a restart, OOM at maxmemory, READONLY, a timeout) is
retried with backoff (the actor re-sends itself the message after a delay), so a chunk that was
transcribed is not lost when Redis restarts or refuses writes for a while; stats are best effort.
A read asked for while Redis fails is answered with ServiceUnavailable (a 503 on the edge).

A job that ends with a callback URL gets its entry in the callback outbox whichever way it ends
(merged after its last chunk or on a status read, or failed): the JobStore writes it with the
job's end, and the CallbackDispatcher of some node sends it (sayit_actors/outbox.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka
import redis

from config import QueueSettings
from sayit_actors import keys
from sayit_actors.errors import ServiceUnavailable
from sayit_actors.jobstore import Delivery, JobStore
from sayit_actors.metrics import Metrics
from sayit_actors.redis_server import Outage, client_options
from sayit_actors.supervisor import SupervisedActor, Supervisor, Told

log = logging.getLogger(__name__)
MAX_WRITE_RETRY_DELAY_S = 10.0
T = TypeVar("T")


@dataclass(frozen=True)
class RecordRequest(Told):
    success: bool
    processing_s: float
    audio_s: float = 0.0


@dataclass(frozen=True)
class GetStats:
    day: dt.date | None = None


@dataclass(frozen=True)
class GetJob:
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


@dataclass(frozen=True)
class JobView:
    job: dict[str, str]
    result: dict[str, Any] | None


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
            self._store.ensure_group()  # so tasks queued before any worker starts are read too
        except redis.RedisError as exc:
            log.warning("could not create the chunk stream's consumer group yet: %s", exc)

    def on_stop(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def handle(self, message: Any) -> Any:
        match message:
            case RecordRequest():
                return self._record_request(message)
            case GetStats(day):
                return self._answer(lambda: self._stats(day or today()))
            case GetJob(job_id):
                return self._answer(lambda: self._get_job(job_id))
            case RecordChunk() | ChunkFailure():
                return self._with_retry(message)
        raise TypeError(f"unexpected message {message!r}")

    @property
    def store(self) -> JobStore:
        assert self._store is not None, "ResultActor used before on_start"
        return self._store

    def _answer(self, read: Callable[[], T]) -> T:
        """An asked read: a Redis error goes back to the caller as ServiceUnavailable."""
        try:
            answer = read()
        except redis.RedisError as exc:
            self._outage.failed(exc)
            raise ServiceUnavailable("Redis is unavailable") from exc
        self._outage.ok()
        return answer

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
            timer = threading.Timer(delay, _tell_quietly, [self.actor_ref, retry])
            timer.daemon = True
            timer.start()
            return
        self._outage.ok()

    def _record_chunk(self, msg: RecordChunk) -> None:
        if not msg.result:  # nothing to record: only the task's acknowledgement
            self.store.ack(msg.delivery)
            return
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

    def _get_job(self, job_id: str) -> JobView | None:
        job = self.store.get(job_id)
        if job is None:
            return None
        result = None
        if job.get("status") == "completed":
            result = self.store.result(job_id)
        elif job.get("status") == "processing" and job.get("done") == job.get("total"):
            result = self.store.finish(job_id)  # the last writer died before merging: merge now, callback included
            job = self.store.get(job_id) or job
        if job.get("status") in ("completed", "failed") and job.get("callback_url") and not job.get("callback_queued"):
            self.store.queue_callback(job_id)  # a node died between failing the job and queueing its callback
        return JobView(job, result)

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

    def _stats(self, day: dt.date) -> DailyStats:
        assert self._redis is not None
        raw: dict[bytes, bytes] = self._redis.hgetall(keys.stats(day))  # type: ignore[assignment]
        value = {k.decode(): int(v) for k, v in raw.items()}
        return DailyStats(
            day=day.isoformat(),
            requests=value.get("requests", 0),
            successes=value.get("successes", 0),
            failures=value.get("failures", 0),
            processing_s=value.get("processing_ms", 0) / 1000,
            audio_s=value.get("audio_ms", 0) / 1000,
        )


def _tell_quietly(ref: pykka.ActorRef[Any], message: object) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.warning("dropped a retried %s: the ResultActor stopped", type(message).__name__)
