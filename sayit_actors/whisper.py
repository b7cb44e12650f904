"""The WhisperActor: one transcription slot on the node's shared engine.

Decoding happens here too; the engine's batcher decodes the windows of every slot together, so
the slot count bounds how many windows a node works on at once. An
engine error is answered to the caller and then crashes the actor, so the Supervisor replaces
the slot instead of leaving it in whatever state the engine failed in. Bad audio is not an
engine error: it is answered as UNDECODABLE_AUDIO and the slot carries on.

Short uploads are asked for (``Transcribe``); queued chunks are told (``TranscribeChunk``) and
answered with a message to the QueueConsumer, which never waits on a slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pykka

from config import SilenceSettings
from sayit_actors import audio
from sayit_actors.audio.chunking import from_flac
from sayit_actors.audio.silence import drop_invented
from sayit_actors.caller import Caller
from sayit_actors.engines import DETECT_S, Engine, LanguageGuess, Segment, Transcript, TranscriptionOptions
from sayit_actors.errors import EngineFailure
from sayit_actors.replies import Asked
from sayit_actors.result import RecordChunk
from sayit_actors.store.records import Delivery
from sayit_actors.supervisor import ActorBroken, SupervisedActor, Supervisor, Told

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Transcribe(Asked["Transcribed"]):
    path: Path
    expected_duration_s: float
    options: TranscriptionOptions
    caller: Caller = field(default_factory=Caller)  # gone: dropped before the engine starts


@dataclass(frozen=True)
class DetectLanguage(Asked[LanguageGuess]):
    path: Path
    expected_duration_s: float
    caller: Caller = field(default_factory=Caller)


@dataclass(frozen=True)
class Transcribed:
    transcript: Transcript
    engine_s: float
    dropped: int = 0  # segments invented over silence, removed


@dataclass(frozen=True)
class TranscribeChunk(Told):
    """A queued chunk: its result goes straight to ``record_to`` (the ResultActor), and
    ``reply_to`` (the QueueConsumer, which may be waiting on a stream read) learns the slot is free."""

    delivery: Delivery
    flac: bytes
    options: TranscriptionOptions
    reply_to: pykka.ActorRef[Any]
    record_to: pykka.ActorRef[Any]
    node: str


@dataclass(frozen=True)
class ChunkTranscribed(Told):
    delivery: Delivery
    slot: str
    result: dict[str, Any]
    engine_s: float


@dataclass(frozen=True)
class ChunkFailed(Told):
    delivery: Delivery
    slot: str
    reason: str


@dataclass(frozen=True)
class _EngineBroke(Told):
    error: str


class EngineBroke(ActorBroken):
    """Raised inside the actor to have the Supervisor replace it."""


class WhisperActor(SupervisedActor):
    def __init__(
        self, supervisor: pykka.ActorRef[Supervisor], name: str, engine: Engine, silence: SilenceSettings
    ) -> None:
        super().__init__(supervisor, name)
        self._engine = engine
        self._silence = silence

    def handle(self, message: Any) -> Any:
        match message:
            case Transcribe():
                with self.doing(f"transcribing a {message.expected_duration_s:.0f} s upload"):
                    expected_s = message.expected_duration_s
                    samples = audio.decode(message.path, expected_s, max_s=audio.short_bound_s(expected_s))
                    message.caller.check()  # its request is gone (hung up, timed out): no engine call
                    return self._run(samples, message.options, urgent=True)
            case DetectLanguage():
                with self.doing("detecting a language"):
                    samples = audio.window(message.path, DETECT_S, message.expected_duration_s)
                    message.caller.check()
                    return self._engine_call(self._engine.detect_language, samples)
            case TranscribeChunk():
                task = message.delivery.task
                with self.doing(f"transcribing chunk {task.index} of job {task.job_id}"):
                    return self._chunk(message)
            case _EngineBroke(error):
                raise EngineBroke(error)
        raise TypeError(f"unexpected message {message!r}")

    def _engine_call(self, call: Callable[..., T], *args: Any) -> T:
        """An engine call; a failure is answered as EngineFailure, then the slot is replaced."""
        try:
            return call(*args)
        except Exception as exc:
            log.exception("engine failed in %s", self.name)
            self.actor_ref.tell(_EngineBroke(repr(exc)))
            raise EngineFailure() from exc

    def _run(self, samples: np.ndarray, options: TranscriptionOptions, urgent: bool = False) -> Transcribed:
        started = time.perf_counter()
        transcript = self._engine_call(self._engine.transcribe, samples, options, urgent)
        engine_s = time.perf_counter() - started
        transcript, dropped = drop_invented(
            transcript, samples, self._silence.invented_phrases, self._silence.no_speech_threshold
        )
        return Transcribed(transcript, engine_s, dropped)

    def _chunk(self, msg: TranscribeChunk) -> None:
        started_at = time.time()
        try:
            samples = from_flac(msg.flac)
        except Exception as exc:  # corrupt chunk audio: the queue retries, then dead-letters it
            _reply(msg, ChunkFailed(msg.delivery, self.name, f"undecodable chunk audio ({exc})"))
            return
        try:
            done = self._run(samples, msg.options)
        except EngineFailure:
            _reply(msg, ChunkFailed(msg.delivery, self.name, "engine failure"))
            return
        except Exception as exc:  # the consumer must hear of every chunk it sent, or its slot stays taken
            _reply(msg, ChunkFailed(msg.delivery, self.name, f"transcription failed ({type(exc).__name__})"))
            raise
        t = done.transcript
        result = {
            "start_s": msg.delivery.task.start_ms / 1000,
            "duration_s": msg.delivery.task.duration_ms / 1000,
            "text": t.text,
            "language": t.language,
            "segments": [segment_record(s) for s in t.segments],
            "dropped": done.dropped,
            "started_at": round(started_at, 3),
            "finished_at": round(time.time(), 3),
            "node": msg.node,
            "engine_s": round(done.engine_s, 3),
        }
        try:
            msg.record_to.tell(RecordChunk(msg.delivery, result))
        except pykka.ActorDeadError:  # the ResultActor is restarting: the chunk will be redelivered
            log.warning("chunk %d of job %s not recorded: the ResultActor is restarting", msg.delivery.task.index,
                        msg.delivery.task.job_id)  # fmt: skip
        _reply(msg, ChunkTranscribed(msg.delivery, self.name, result, done.engine_s))


def _reply(msg: TranscribeChunk, answer: object) -> None:
    """Answer the consumer that sent the chunk; one restarted since has handed the chunk back."""
    try:
        msg.reply_to.tell(answer)
    except pykka.ActorDeadError:
        log.info("chunk %d of job %s finished after its consumer restarted", msg.delivery.task.index,
                 msg.delivery.task.job_id)  # fmt: skip


def segment_record(segment: Segment) -> list[Any]:
    """A segment in a chunk result: [start, end, text] and, with word timestamps, its words."""
    record: list[Any] = [segment.start, segment.end, segment.text]
    if segment.words:
        record.append([[w.start, w.end, w.word, w.probability] for w in segment.words])
    return record
