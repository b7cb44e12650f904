"""The ResultActor: every write SayIt makes to Redis goes through here (today: the daily stats)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import pykka
import redis

from sayit_actors import keys
from sayit_actors.supervisor import SupervisedActor, Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordRequest:
    success: bool
    processing_s: float
    audio_s: float = 0.0


@dataclass(frozen=True)
class GetStats:
    day: dt.date | None = None


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


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class ResultActor(SupervisedActor):
    def __init__(self, supervisor: pykka.ActorRef[Supervisor], name: str, redis_url: str) -> None:
        super().__init__(supervisor, name)
        self._redis_url = redis_url
        self._redis: redis.Redis | None = None

    def on_start(self) -> None:
        self._redis = redis.Redis.from_url(
            self._redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )

    def on_stop(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def on_receive(self, message: Any) -> Any:
        match message:
            case RecordRequest():
                return self._record(message)
            case GetStats(day):
                return self._stats(day or _today())
        raise TypeError(f"unexpected message {message!r}")

    @property
    def _client(self) -> redis.Redis:
        assert self._redis is not None, "ResultActor used before on_start"
        return self._redis

    def _record(self, msg: RecordRequest) -> None:
        key = keys.stats(_today())
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "requests", 1)
                pipe.hincrby(key, "successes" if msg.success else "failures", 1)
                pipe.hincrby(key, "processing_ms", round(msg.processing_s * 1000))
                pipe.hincrby(key, "audio_ms", round(msg.audio_s * 1000))
                pipe.expire(key, keys.STATS_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            # Stats are best effort: a request must not fail because Redis blinked.
            log.warning("could not record request stats: %s", exc)

    def _stats(self, day: dt.date) -> DailyStats:
        raw: dict[bytes, bytes] = self._client.hgetall(keys.stats(day))  # type: ignore[assignment]
        value = {k.decode(): int(v) for k, v in raw.items()}
        return DailyStats(
            day=day.isoformat(),
            requests=value.get("requests", 0),
            successes=value.get("successes", 0),
            failures=value.get("failures", 0),
            processing_s=value.get("processing_ms", 0) / 1000,
            audio_s=value.get("audio_ms", 0) / 1000,
        )
