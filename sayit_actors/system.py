"""The actor system of one node: the Supervisor and the children it starts, by name."""

from __future__ import annotations

import logging
from typing import Any

import pykka

from config import Settings
from sayit_actors.dispatcher import Dispatcher
from sayit_actors.engine import Engine
from sayit_actors.metrics import Metrics
from sayit_actors.probe import DurationProbe
from sayit_actors.result import ResultActor
from sayit_actors.slots import SlotPool
from sayit_actors.supervisor import ChildSpec, ChildStatus, Directory, GetStatus, StartAll, Supervisor
from sayit_actors.upload import UploadActor
from sayit_actors.whisper import WhisperActor

log = logging.getLogger(__name__)

UPLOAD = "upload"
PROBE = "duration-probe"
DISPATCHER = "dispatcher"
RESULT = "result"


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
        limits = settings.limits
        specs = [
            ChildSpec(RESULT, "ResultActor", lambda sup, name: ResultActor.start(sup, name, redis_url)),
            ChildSpec(UPLOAD, "UploadActor", lambda sup, name: UploadActor.start(sup, name, settings.upload_dir)),
            ChildSpec(PROBE, "DurationProbe", lambda sup, name: DurationProbe.start(sup, name)),
            ChildSpec(
                DISPATCHER,
                "Dispatcher",
                lambda sup, name: Dispatcher.start(sup, name, limits, settings.profiles),
            ),
            *(ChildSpec(s, "WhisperActor", lambda sup, name: WhisperActor.start(sup, name, engine)) for s in slots),
        ]
        self.supervisor: pykka.ActorRef[Supervisor] = Supervisor.start(
            specs, self.directory, metrics, limits.max_restarts, limits.restart_window_s
        )

    def start(self) -> ActorSystem:
        self.supervisor.ask(StartAll(), timeout=30)
        return self

    def stop(self) -> None:
        if self.supervisor.is_alive():
            self.supervisor.stop(block=True, timeout=60)

    def ref(self, name: str) -> pykka.ActorRef[Any]:
        return self.directory.get(name)

    def status(self) -> list[ChildStatus]:
        return list(self.supervisor.ask(GetStatus(), timeout=5))
