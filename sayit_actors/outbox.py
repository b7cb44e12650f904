"""The CallbackDispatcher: job-end callbacks taken from the outbox in Redis, sent by any node.

A job that ends with a callback URL leaves one entry (job, event, url) in the ``sayit:callbacks``
stream (``JobStore.queue_callback``), so a callback that is due never lives only in one node's
memory. Every node with callbacks configured runs a dispatcher, which reads the stream in the
consumer group ``senders`` as the node's consumer, so an entry is with one node at a time:

- an entry read is handed to the node's ``CallbackSender``, whose threads send it; this actor's
  own thread only reads Redis and builds the body, and holds no more entries than the sender takes;
- an entry is acknowledged and deleted (XACK and XDEL in one step) only once it was delivered or
  the sender gave up after ``SAYIT_CALLBACK_ATTEMPTS``: a node that stops or dies meanwhile
  leaves it pending;
- while an entry is being sent its lease is renewed (XCLAIM JUSTID), and an entry nobody renewed
  for ``SAYIT_CALLBACK_CLAIM_S`` (its node died) is claimed (XAUTOCLAIM) and sent again; a node
  that starts again under the same id first takes back the entries it held.

Delivery is thus at least once: a node that dies after sending but before acknowledging has the
callback sent again, with the same ``webhook-id``, for the receiver to drop. A Redis error pauses
the steps with a backoff and a quiet log (``Outage``); an acknowledgement that failed is retried.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
import redis

from config import ApiSettings
from sayit_actors.callbacks import SENDERS, CallbackSender, job_payload
from sayit_actors.metrics import Metrics
from sayit_actors.store import keys
from sayit_actors.store.merge import Transcript
from sayit_actors.store.redis_server import Outage, client_options
from sayit_actors.supervisor import SupervisedActor, Supervisor, Told, tell_if_alive, tell_later

log = logging.getLogger(__name__)
CAPACITY = 4 * SENDERS  # entries a node holds at once: being sent, or waiting in the sender's queue
POLL_S = 0.5

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True)
class Poll(Told):
    """One step: acknowledge, renew leases, take entries."""


@dataclass(frozen=True)
class Sent(Told):
    """The sender is done with an entry. ``settled``: delivered or given up, so acknowledge it;
    otherwise (the sender stopped) it stays pending for a node to send again."""

    entry_id: str
    settled: bool
    delivered: bool = False


class CallbackDispatcher(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        *,
        redis_url: str,
        api: ApiSettings,
        consumer: str,
        metrics: Metrics,
        poll_s: float = POLL_S,
    ) -> None:
        super().__init__(supervisor, name)
        self._redis_url = redis_url
        self._api = api
        self._consumer = consumer
        self._metrics = metrics
        self._poll_s = poll_s
        self._claim_ms = round(api.callback_claim_s * 1000)
        self._redis: Any = None  # redis-py types replies as sync-or-async unions: read them as Any
        self._sender: CallbackSender | None = None
        self._held: dict[str, float] = {}  # entry id → when its lease was last renewed (monotonic)
        self._settled: set[str] = set()  # done with, not yet acknowledged
        self._backlog: str | None = "0"  # this consumer's own pending entries are read first, after this id
        self._outage = Outage(f"callback dispatcher {consumer}")

    def on_start(self) -> None:
        self._redis = redis.Redis.from_url(self._redis_url, **client_options())
        dropped = self._metrics.messages_dropped.labels(self.name, "callback_queue_full")
        self._sender = CallbackSender(self._api, on_drop=dropped.inc, max_pending=CAPACITY)
        self._create_group()
        self.actor_ref.tell(Poll())

    def on_stop(self) -> None:
        self._close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()
        super().on_failure(exception_type, exception_value, traceback)

    def _close(self) -> None:
        """What is being sent or waits stays pending in Redis: this node or another sends it later."""
        if self._sender is not None:
            self._sender.close()
        if self._redis is not None:
            self._redis.close()

    def handle(self, message: Any) -> Any:
        match message:
            case Poll():
                self._poll()
                return None
            case Sent(entry_id, settled, delivered):
                self._held.pop(entry_id, None)
                if settled:
                    self._metrics.callbacks.labels("delivered" if delivered else "gave_up").inc()
                    self._settled.add(entry_id)
                    with contextlib.suppress(redis.RedisError):  # the next step tries again
                        self._ack()
                return None
        raise TypeError(f"unexpected message {message!r}")

    # --- one step ------------------------------------------------------------------------------
    def _poll(self) -> None:
        took = 0
        try:
            self._ack()
            self._renew()
            took = self._take()
        except redis.RedisError as exc:
            if "NOGROUP" in str(exc) and self._create_group():
                self._schedule(0)
            else:
                self._schedule(self._outage.failed(exc))
            return
        except Exception:
            self._schedule(self._poll_s)  # bad data is dropped and counted; the loop goes on
            raise
        self._outage.ok()
        self._schedule(0 if took and len(self._held) < CAPACITY else self._poll_s)

    def _schedule(self, delay_s: float) -> None:
        tell_later(self.actor_ref, Poll(), delay_s)

    def _create_group(self) -> bool:
        """The outbox and its group, from the first entry: entries written before any sender ran count."""
        try:
            self._redis.xgroup_create(keys.CALLBACKS, keys.CALLBACKS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            return "BUSYGROUP" in str(exc)
        except redis.RedisError:
            return False
        return True

    def _ack(self) -> None:
        """Acknowledge and delete the settled entries in one step: the outbox keeps only what is due."""
        if not self._settled:
            return
        done = list(self._settled)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.CALLBACKS, keys.CALLBACKS_GROUP, *done)
            pipe.xdel(keys.CALLBACKS, *done)
            pipe.execute()
        self._settled.difference_update(done)

    def _renew(self) -> None:
        """Reset the idle time of entries still held (JUSTID: no delivery counted), so none is reclaimed."""
        now = time.monotonic()
        due = [entry_id for entry_id, at in self._held.items() if (now - at) * 1000 >= self._claim_ms / 3]
        if due:
            self._redis.xclaim(keys.CALLBACKS, keys.CALLBACKS_GROUP, self._consumer, 0, due, justid=True)
            for entry_id in due:
                self._held[entry_id] = now

    def _take(self) -> int:
        """Entries for the sender, as many as it has room for: own pending first, then stalled, then new."""
        room = CAPACITY - len(self._held)
        if room <= 0:
            return 0
        entries = self._own_pending(room) or self._reclaim(room) or self._read_new(room)
        took = 0
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if entry_id in self._held or entry_id in self._settled:
                continue
            self._send(entry_id, {k.decode(): v.decode() for k, v in fields.items()})
            took += 1
        return took

    def _own_pending(self, count: int) -> list[Entry]:
        if self._backlog is None:
            return []
        reply = self._redis.xreadgroup(keys.CALLBACKS_GROUP, self._consumer, {keys.CALLBACKS: self._backlog}, count)
        entries: list[Entry] = reply[0][1] if reply else []
        self._backlog = entries[-1][0].decode() if entries else None
        if entries:
            log.info("taking back %d callbacks this node held before it started", len(entries))
        return entries

    def _reclaim(self, count: int) -> list[Entry]:
        _, entries, *_ = self._redis.xautoclaim(
            keys.CALLBACKS, keys.CALLBACKS_GROUP, self._consumer, self._claim_ms, "0-0", count=count
        )
        for raw_id, fields in entries:
            log.warning("reclaimed callback %s of job %s: the node sending it stopped", raw_id.decode(),
                        fields.get(b"job", b"?").decode())  # fmt: skip
        return list(entries)

    def _read_new(self, count: int) -> list[Entry]:
        reply = self._redis.xreadgroup(keys.CALLBACKS_GROUP, self._consumer, {keys.CALLBACKS: ">"}, count)
        return list(reply[0][1]) if reply else []

    def _send(self, entry_id: str, entry: dict[str, str]) -> None:
        """Build the body from the job as Redis keeps it, and hand it to a sender thread."""
        job_id, event, url = entry.get("job"), entry.get("event"), entry.get("url")
        raw_job = self._redis.hgetall(keys.job(job_id)) if job_id else {}
        if not (job_id and event and url and raw_job):  # an entry emptied by hand, or a job expired
            log.warning("callback %s of job %s dropped: its job is gone", entry_id, job_id)
            self._settled.add(entry_id)
            return
        job = {k.decode(): v.decode() for k, v in raw_job.items()}
        raw_result = self._redis.get(keys.job_result(job_id)) if event == "job.completed" else None
        payload = job_payload(job_id, event, job, Transcript.from_json(raw_result) if raw_result else None)
        assert self._sender is not None, "CallbackDispatcher used before on_start"
        self._held[entry_id] = time.monotonic()
        future = self._sender.send(url, event, payload)
        future.add_done_callback(functools.partial(_report, self.actor_ref, entry_id))


def _report(ref: pykka.ActorRef[Any], entry_id: str, future: Future[bool]) -> None:
    """On a sender thread: tell the dispatcher how an entry's sending ended."""
    if future.cancelled():
        sent = Sent(entry_id, settled=False)
    else:
        sent = Sent(entry_id, settled=True, delivered=future.exception() is None and bool(future.result()))
    tell_if_alive(ref, sent)
