"""The WhisperActor: one transcription slot on the node's shared engine.

Decoding happens here too, so the CPU work of a request is bounded by the slot count. An
engine error is answered to the caller and then crashes the actor, so the Supervisor replaces
the slot instead of leaving it in whatever state the engine failed in. Bad audio is not an
engine error: it is answered as UNDECODABLE_AUDIO and the slot carries on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from sayit_actors import audio
from sayit_actors.engine import Engine, Transcript, TranscriptionOptions
from sayit_actors.errors import EngineFailure
from sayit_actors.supervisor import SupervisedActor, Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcribe:
    path: Path
    expected_duration_s: float
    options: TranscriptionOptions


@dataclass(frozen=True)
class Transcribed:
    transcript: Transcript
    engine_s: float


@dataclass(frozen=True)
class _EngineBroke:
    error: str


class EngineBroke(RuntimeError):
    """Raised inside the actor to have the Supervisor replace it."""


class WhisperActor(SupervisedActor):
    def __init__(self, supervisor: pykka.ActorRef[Supervisor], name: str, engine: Engine) -> None:
        super().__init__(supervisor, name)
        self._engine = engine

    def on_receive(self, message: Any) -> Any:
        match message:
            case Transcribe():
                return self._transcribe(message)
            case _EngineBroke(error):
                raise EngineBroke(error)
        raise TypeError(f"unexpected message {message!r}")

    def _transcribe(self, msg: Transcribe) -> Transcribed:
        samples = audio.decode(msg.path, msg.expected_duration_s)
        started = time.perf_counter()
        try:
            transcript = self._engine.transcribe(samples, msg.options)
        except Exception as exc:
            log.exception("engine failed in %s", self.name)
            self.actor_ref.tell(_EngineBroke(repr(exc)))
            raise EngineFailure() from exc
        return Transcribed(transcript, time.perf_counter() - started)
