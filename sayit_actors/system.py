"""The actor system of one node: the Supervisor and the children its role needs, by name.

| role | children |
|---|---|
| ``all`` | Result, Upload, DurationProbe, Dispatcher, the Splitters, the slots, QueueConsumer |
| ``api_only`` | Result, Upload, DurationProbe, Dispatcher, the Splitters, the slots (short uploads only) |
| ``queue_only`` | Result, the slots, QueueConsumer |

The Splitters (``SPLITTERS`` of them) decode and cut long uploads; the Dispatcher only decides
and hands each one to the least loaded (``slots.WorkPool``). Two keep one long upload from
holding up the next without letting decoding take every core from the slots.

With callbacks configured (``SAYIT_CALLBACK_HOSTS``) every role also runs the CallbackDispatcher:
any node sends the callbacks waiting in the outbox in Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import pykka

from config import Settings, WorkerMode
from sayit_actors.consumer import Drain, HandBack, QueueConsumer
from sayit_actors.dispatcher import Dispatcher
from sayit_actors.engines import Engine
from sayit_actors.metrics import Metrics
from sayit_actors.outbox import CallbackDispatcher
from sayit_actors.probe import DurationProbe
from sayit_actors.result import ResultActor
from sayit_actors.slots import SlotPool, WorkPool
from sayit_actors.splitter import Splitter
from sayit_actors.store.nodes import Node
from sayit_actors.supervisor import ChildSpec, ChildStatus, Directory, GetStatus, StartAll, Supervisor
from sayit_actors.upload import UploadActor
from sayit_actors.whisper import WhisperActor

log = logging.getLogger(__name__)

UPLOAD = "upload"
PROBE = "duration-probe"
DISPATCHER = "dispatcher"
RESULT = "result"
CONSUMER = "queue-consumer"
CALLBACKS = "callback-dispatcher"
SPLITTERS = 2


def splitter_name(index: int) -> str:
    return f"splitter-{index}"


def slot_name(index: int) -> str:
    return f"whisper-{index}"


class ActorSystem:
    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, redis_url: str) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.directory = Directory()
        slots = [slot_name(i) for i in range(settings.max_concurrent_chunks)]
        self.slots = SlotPool(slots, metrics)
        self.splitters = WorkPool([splitter_name(i) for i in range(SPLITTERS)])
        mode, limits, queue = settings.worker_mode, settings.limits, settings.queue
        self.serves_uploads = mode is not WorkerMode.QUEUE_ONLY
        self.consumes_queue = mode is not WorkerMode.API_ONLY
        specs = [
            ChildSpec(
                RESULT,
                "ResultActor",
                lambda sup, name: ResultActor.start(sup, name, redis_url, queue, metrics),
            )
        ]
        if self.serves_uploads:
            specs += [
                ChildSpec(UPLOAD, "UploadActor", lambda sup, name: UploadActor.start(sup, name, settings.upload_dir)),
                ChildSpec(PROBE, "DurationProbe", lambda sup, name: DurationProbe.start(sup, name)),
                ChildSpec(
                    DISPATCHER,
                    "Dispatcher",
                    lambda sup, name: Dispatcher.start(
                        sup,
                        name,
                        limits=limits,
                        silence=settings.silence,
                        profiles=settings.profiles,
                        redis_url=redis_url,
                        slots=self.slots,
                        splitters=self.splitters,
                        lookup=self.directory.get,
                        local_queue=self.consumes_queue,
                    ),
                ),
            ]
            specs += [
                ChildSpec(
                    s,
                    "Splitter",
                    lambda sup, name: Splitter.start(
                        sup, name, limits=limits, queue=queue, redis_url=redis_url, pool=self.splitters
                    ),
                )
                for s in self.splitters.names
            ]
        specs += [
            ChildSpec(s, "WhisperActor", lambda sup, name: WhisperActor.start(sup, name, engine, settings.silence))
            for s in slots
        ]
        if self.consumes_queue:
            node = Node(settings.worker_id, mode.value, len(slots))
            specs.append(
                ChildSpec(
                    CONSUMER,
                    "QueueConsumer",
                    lambda sup, name: QueueConsumer.start(
                        sup,
                        name,
                        redis_url=redis_url,
                        queue=queue,
                        slots=self.slots,
                        lookup=self.directory.get,
                        profiles=settings.profiles,
                        silence=settings.silence,
                        node=node,
                        result_name=RESULT,
                        metrics=metrics,
                        engine=engine.name,
                    ),
                )
            )
        if settings.api.callback_hosts:
            specs.append(
                ChildSpec(
                    CALLBACKS,
                    "CallbackDispatcher",
                    lambda sup, name: CallbackDispatcher.start(
                        sup, name, redis_url=redis_url, api=settings.api, consumer=settings.worker_id, metrics=metrics
                    ),
                )
            )
        self.supervisor: pykka.ActorRef[Supervisor] = Supervisor.start(
            specs, self.directory, metrics, limits.max_restarts, limits.restart_window_s
        )

    def start(self) -> ActorSystem:
        self.supervisor.ask(StartAll(), timeout=30)
        self.engine.batcher.observers.add(self.metrics.observe_batch)
        return self

    def drain(self, timeout_s: float) -> int:
        """Stop taking chunk tasks, wait for running ones, hand back the rest; returns how many."""
        if not self.consumes_queue:
            return 0
        try:
            consumer = self.directory.get(CONSUMER)
            deadline = time.monotonic() + timeout_s
            while consumer.ask(Drain(), timeout=10) and time.monotonic() < deadline:
                time.sleep(0.1)
            handed = cast(int, consumer.ask(HandBack(), timeout=10))
        except (pykka.ActorDeadError, pykka.Timeout):
            return 0
        if handed:
            log.warning("drain timeout: handed %d running chunks back to the queue", handed)
        return handed

    def stop(self) -> None:
        self.engine.batcher.observers.discard(self.metrics.observe_batch)
        if self.supervisor.is_alive():
            self.supervisor.stop(block=True, timeout=60)

    def ref(self, name: str) -> pykka.ActorRef[Any]:
        return self.directory.get(name)

    def status(self) -> list[ChildStatus]:
        return list(self.supervisor.ask(GetStatus(), timeout=5))
