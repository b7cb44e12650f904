"""The QueueConsumer: takes chunk tasks from the stream only while a local slot is free.

It never blocks its inbox for long: each step is a ``Poll`` message it sends itself, and a
blocking stream read waits at most ``poll_s``. Per step it
- renews the lease of every chunk its slots are working on (XCLAIM JUSTID resets the idle
  time without counting a delivery), and notices a slot that died mid-chunk;
- once per heartbeat interval, trims acknowledged tasks from the stream and publishes this
  node's heartbeat (id, role, slots);
- moves retries whose backoff is over back into the stream;
- reclaims tasks idle longer than the stall interval (a node died holding them): a task that
  already stalled ``max_stalls`` times is dead-lettered instead;
- reads new tasks, at most one per free slot. A task whose job has ended (failed with chunks
  still queued) or expired is acknowledged and dropped.

Any Redis error (a restart, OOM at maxmemory, READONLY, LOADING, a timeout) only pauses the
steps: the consumer backs off and tries again, and takes no new task until Redis answers. Leases
are renewed first, as XCLAIM still works when Redis refuses writes at maxmemory.

Results and failures go to the ResultActor; on SIGTERM the node drains: it stops taking tasks,
lets running chunks finish within the drain timeout, and hands back the rest.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pykka
import redis

from config import LanguageProfile, QueueSettings, SilenceSettings
from sayit_actors.dispatcher import Choices, options_for
from sayit_actors.engines import TranscriptionOptions
from sayit_actors.metrics import Metrics
from sayit_actors.result import ChunkFailure
from sayit_actors.slots import SlotPool
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.nodes import Node, NodeRegistry
from sayit_actors.store.records import Delivery
from sayit_actors.store.redis_server import Outage, client_options
from sayit_actors.store.stream import ChunkStream
from sayit_actors.supervisor import SupervisedActor, Supervisor, Told, tell_later
from sayit_actors.whisper import ChunkFailed, ChunkTranscribed, TranscribeChunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Poll(Told):
    """One step; only the latest scheduled one runs (a finished chunk supersedes a pending timer)."""

    generation: int = 0


@dataclass(frozen=True)
class Drain:
    """Stop taking tasks; answers how many chunks are still running."""


@dataclass(frozen=True)
class HandBack:
    """Put every chunk still running back in the stream; answers how many."""


@dataclass
class _Running:
    delivery: Delivery
    slot: str
    ref: pykka.ActorRef[Any]
    renewed_at: float


class QueueConsumer(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        *,
        redis_url: str,
        queue: QueueSettings,
        slots: SlotPool,
        lookup: Callable[[str], pykka.ActorRef[Any]],
        profiles: Mapping[str, LanguageProfile],
        silence: SilenceSettings,
        node: Node,
        result_name: str,
        metrics: Metrics,
        engine: str,
    ) -> None:
        super().__init__(supervisor, name)
        self._redis_url = redis_url
        self._q = queue
        self._slots = slots
        self._lookup = lookup
        self._profiles = profiles
        self._silence = silence
        self._node = node
        self._result_name = result_name
        self._metrics = metrics
        self._engine = engine
        self._consumer = node.id
        self._running: dict[str, _Running] = {}
        self._unstarted: list[Delivery] = []  # read from the stream, not started yet
        self._draining = False
        self._heartbeat_at = 0.0
        self._redis: redis.Redis | None = None
        self._stream: ChunkStream | None = None
        self._jobs: JobStore | None = None
        self._nodes: NodeRegistry | None = None
        self._outage = Outage(f"queue consumer {self._consumer}")
        self._generation = 0

    def on_start(self) -> None:
        self._redis = redis.Redis.from_url(self._redis_url, **client_options())
        self._stream = ChunkStream(self._redis)
        self._jobs = JobStore(self._redis, self._q)
        self._nodes = NodeRegistry(self._redis)
        self._schedule_poll(0)

    def on_stop(self) -> None:
        # A restart (or a stop before the drain) puts running chunks back in the queue at once;
        # their slots finish them anyway, and the first result recorded wins.
        running = list(self._running.values())
        if running or self._unstarted:
            self._hand_back()
        for item in running:
            self._slots.release(item.slot)
        if self._redis is not None:
            self._redis.close()

    @property
    def stream(self) -> ChunkStream:
        assert self._stream is not None, "QueueConsumer used before on_start"
        return self._stream

    @property
    def jobs(self) -> JobStore:
        assert self._jobs is not None, "QueueConsumer used before on_start"
        return self._jobs

    @property
    def nodes(self) -> NodeRegistry:
        assert self._nodes is not None, "QueueConsumer used before on_start"
        return self._nodes

    def handle(self, message: Any) -> Any:
        match message:
            case Poll(generation):
                if generation == self._generation:
                    self._poll()
                return None
            case ChunkTranscribed(delivery, slot, result, engine_s):
                # The slot already sent the result to the ResultActor: here only the slot is freed.
                self._finished(delivery, slot)
                self._metrics.observe_transcription(
                    "async", result["language"], self._engine, engine_s, result["duration_s"]
                )
                return None
            case ChunkFailed(delivery, slot, reason):
                self._finished(delivery, slot)
                self._tell_result(ChunkFailure(delivery, reason))
                return None
            case Drain():
                self._draining = True
                return len(self._running)
            case HandBack():
                return self._hand_back()
        raise TypeError(f"unexpected message {message!r}")

    # --- one step ------------------------------------------------------------------------------
    def _poll(self) -> None:
        took = 0
        try:
            self._renew()
            self._heartbeat()
            self.stream.move_due_retries()
            if not self._draining:
                took = self._take_work()
        except redis.RedisError as exc:
            if "NOGROUP" in str(exc) and self._create_group():
                self._schedule_poll(0)
            else:
                self._schedule_poll(self._outage.failed(exc))
            return
        except Exception:
            # Bad data in one step (a malformed task, say) is dropped and counted by the base class;
            # the loop must go on, or the node would stop taking work while it looks alive.
            self._schedule_poll(self._q.poll_s)
            raise
        self._outage.ok()
        self._schedule_poll(0 if took else (self._q.poll_s if self._free_slots() == 0 or self._draining else 0))

    def _create_group(self) -> bool:
        """A new (or emptied) Redis: create the stream and its group; False if Redis refuses that too."""
        try:
            self.stream.ensure_group()
        except redis.RedisError:
            return False
        return True

    def _schedule_poll(self, delay_s: float) -> None:
        self._generation += 1
        tell_later(self.actor_ref, Poll(self._generation), delay_s)

    def _heartbeat(self) -> None:
        """Trim, then beat: trimming frees memory, so it runs even while Redis refuses writes."""
        now = time.monotonic()
        if now - self._heartbeat_at >= self._q.heartbeat_s:
            trimmed = self.stream.trim()
            if trimmed:
                log.debug("trimmed %d acknowledged chunk tasks from the stream", trimmed)
            self.nodes.beat(replace(self._node, busy=len(self._running)), self._q.heartbeat_s)
            self._heartbeat_at = now

    def _renew(self) -> None:
        """Renew the leases due, and those of tasks read but not started yet (Redis failed meanwhile)."""
        now = time.monotonic()
        due: list[_Running] = []
        for running in list(self._running.values()):
            if not running.ref.is_alive():  # the slot crashed mid-chunk: it will never answer
                self._finished(running.delivery, running.slot)
                self._tell_result(ChunkFailure(running.delivery, "the transcription slot crashed"))
            elif now - running.renewed_at >= self._q.stall_interval_s / 3:
                due.append(running)
        self.stream.renew(self._consumer, [r.delivery.entry_id for r in due] + [d.entry_id for d in self._unstarted])
        for running in due:
            running.renewed_at = now

    def _free_slots(self) -> int:
        return self._slots.capacity - self._slots.busy

    def _take_work(self) -> int:
        """Start tasks on free slots; a task read but not started when Redis fails is started later."""
        free = self._free_slots()
        if free <= 0:
            return 0
        if not self._unstarted:
            self._unstarted = self._reclaim_stalled(free)
        if not self._unstarted:
            block_ms = round(self._q.poll_s * 1000)
            self._unstarted = self.stream.read_new(self._consumer, free, block_ms)
        took = 0
        while self._unstarted:
            self._start(self._unstarted[0])
            self._unstarted.pop(0)
            took += 1
        return took

    def _reclaim_stalled(self, count: int) -> list[Delivery]:
        stall_ms = round(self._q.stall_interval_s * 1000)
        claimable = []
        for entry_id, deliveries in self.stream.stalled(stall_ms, count):
            if entry_id in self._running:
                continue
            if deliveries > self._q.max_stalls:
                delivery = self.stream.entry(entry_id)
                if delivery is not None:
                    reason = f"chunk {delivery.task.index} stalled {deliveries} times (a worker died holding it)"
                    self._tell_result(ChunkFailure(delivery, reason, dead=True))
                continue
            claimable.append(entry_id)
        claimed = self.stream.claim(self._consumer, claimable, stall_ms)
        for delivery in claimed:
            log.warning("reclaimed stalled chunk %d of job %s", delivery.task.index, delivery.task.job_id)
        return claimed

    def _start(self, delivery: Delivery) -> None:
        task = delivery.task
        status, choices, stored = self.jobs.job_status(task.job_id)
        if status in (None, "failed", "completed"):
            # A chunk left queued when its job failed, or handed back after it completed: nothing to do.
            self.stream.ack(delivery)
            log.info("dropped chunk %d of job %s: the job is %s", task.index, task.job_id, status or "gone")
            return
        slot = self._slots.acquire(0)
        if slot is None:  # a short upload took the slot meanwhile
            self.stream.hand_back(delivery)
            return
        try:
            flac = self.stream.chunk_audio(task)
        except redis.RedisError:
            self._slots.release(slot)
            raise
        if flac is None:
            self._slots.release(slot)
            if self.stream.has_result(task):  # a copy handed back after its first delivery was recorded
                self.stream.ack(delivery)
                return
            self._tell_result(ChunkFailure(delivery, f"chunk {task.index} audio is missing"))
            return
        options = _stored_options(stored)  # computed once by the Dispatcher, when the job was made
        if options is None:  # a job made before options were stored, or by another version
            profile = self._profiles.get(task.language) or self._profiles["auto"]
            options = options_for(profile, Choices(**choices), self._silence, queued=True)
        try:
            ref = self._lookup(slot)
            record_to = self._lookup(self._result_name)
            ref.tell(TranscribeChunk(delivery, flac, options, self.actor_ref, record_to, self._consumer))
        except pykka.ActorDeadError:
            self._slots.release(slot)
            self.stream.hand_back(delivery)
            return
        self._running[delivery.entry_id] = _Running(delivery, slot, ref, time.monotonic())

    def _finished(self, delivery: Delivery, slot: str) -> None:
        if self._running.pop(delivery.entry_id, None) is not None:
            self._slots.release(slot)
            if not self._draining:
                self._schedule_poll(0)  # a slot is free: take the next task now, not at the next timer

    def _hand_back(self) -> int:
        handed = 0
        for delivery in [r.delivery for r in self._running.values()] + self._unstarted:
            try:
                self.stream.hand_back(delivery)
                handed += 1
            except redis.RedisError as exc:
                log.warning("could not hand back chunk %s: %s (it will be reclaimed)", delivery.entry_id, exc)
        self._running.clear()
        self._unstarted.clear()
        with contextlib.suppress(redis.RedisError):
            self.nodes.forget(self._consumer)
        return handed

    def _tell_result(self, message: object) -> None:
        try:
            self._lookup(self._result_name).tell(message)
        except pykka.ActorDeadError:
            log.warning("ResultActor is restarting: %s left pending, it will be redelivered", type(message).__name__)


def _stored_options(raw: dict[str, Any] | None) -> TranscriptionOptions | None:
    """A job's stored options, or None when it has none or they do not fit this version's fields."""
    if not raw:
        return None
    try:
        return TranscriptionOptions.from_dict(raw)
    except (KeyError, TypeError):
        return None
