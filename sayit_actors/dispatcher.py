"""The Dispatcher: decides how an upload is transcribed, and splits long ones into queued chunks.

Short uploads (≤ ``sync_max_duration_s`` and ≤ ``sync_max_bytes``) are transcribed at once on
a local slot; the SlotPool (``sayit_actors.slots``) leases that slot to the caller, so the
Dispatcher's inbox never waits on a transcription. Long uploads, and short ones that find
every slot busy (``Enqueue``), are decoded, cut into chunks of at most 30 s at quiet points
(``sayit_actors.chunking``) and handed to the ResultActor, which stores the job and its tasks.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pykka

from config import LanguageProfile, Limits, QueueSettings, SilenceSettings
from sayit_actors import audio, chunking
from sayit_actors.audio import AudioInfo
from sayit_actors.engine import TranscriptionOptions
from sayit_actors.errors import InvalidLanguage
from sayit_actors.result import CreateJob
from sayit_actors.supervisor import SupervisedActor, Supervisor


class Mode(enum.StrEnum):
    SYNC = "sync"
    ASYNC = "async"


@dataclass(frozen=True)
class Choices:
    """What a request chose beyond its language: word timings and a prompt (hotwords or context)."""

    word_timestamps: bool = False
    prompt: str | None = None
    task: str = "transcribe"  # or "translate" (into English)
    temperature: float | None = None  # None: the profile's fallback ladder


@dataclass(frozen=True)
class Dispatch:
    path: Path
    size_bytes: int
    info: AudioInfo
    language: str
    filename: str
    choices: Choices = Choices()
    callback_url: str | None = None  # told the result when the job ends (queued uploads)


@dataclass(frozen=True)
class Enqueue:
    """Queue an upload whatever its length (every sync slot is busy)."""

    dispatch: Dispatch


@dataclass(frozen=True)
class JobTicket:
    job_id: str
    chunks: int


@dataclass(frozen=True)
class Plan:
    mode: Mode
    options: TranscriptionOptions
    job: JobTicket | None = None


class Dispatcher(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        *,
        limits: Limits,
        queue: QueueSettings,
        silence: SilenceSettings,
        profiles: Mapping[str, LanguageProfile],
        result: Callable[[], pykka.ActorRef[Any]],
    ) -> None:
        super().__init__(supervisor, name)
        self._limits = limits
        self._queue = queue
        self._silence = silence
        self._profiles = profiles
        self._result = result

    def handle(self, message: Any) -> Any:
        match message:
            case Dispatch():
                options = self._options_for(message)
                if self.mode_for(message.size_bytes, message.info.duration_s) is Mode.SYNC:
                    return Plan(Mode.SYNC, options)
                return self._enqueue(message, options)
            case Enqueue(dispatch):
                return self._enqueue(dispatch, self._options_for(dispatch))
        raise TypeError(f"unexpected message {message!r}")

    def mode_for(self, size_bytes: int, duration_s: float) -> Mode:
        short = duration_s <= self._limits.sync_max_duration_s and size_bytes <= self._limits.sync_max_bytes
        return Mode.SYNC if short else Mode.ASYNC

    def _options_for(self, msg: Dispatch) -> TranscriptionOptions:
        profile = self._profiles.get(msg.language)
        if profile is None:
            raise InvalidLanguage()
        return options_for(profile, msg.choices, self._silence, queued=False)

    def _enqueue(self, msg: Dispatch, options: TranscriptionOptions) -> Plan:
        job_id = uuid.uuid4().hex
        with self.doing(f"splitting a {msg.info.duration_s:.0f} s upload into job {job_id}"):
            samples = audio.decode(msg.path, msg.info.duration_s)
            chunks = chunking.split(samples, self._queue.chunk_s)
            duration_s = samples.shape[0] / audio.SAMPLE_RATE
            create = CreateJob(
                job_id, msg.language, duration_s, chunks, msg.filename, asdict(msg.choices), msg.callback_url
            )
            self._result().ask(create, timeout=60)
        return Plan(Mode.ASYNC, options, JobTicket(job_id, len(chunks)))


def options_for(
    profile: LanguageProfile, choices: Choices, silence: SilenceSettings, queued: bool
) -> TranscriptionOptions:
    """A request's decoding options: its language profile, its choices, and the silence settings
    (``SAYIT_VAD``: ``long`` filters queued chunks only, ``all`` every transcription, ``off`` none)."""
    vad = silence.vad == "all" or (queued and silence.vad == "long")
    overrides: dict[str, Any] = {}
    if choices.temperature is not None:
        overrides["temperatures"] = (choices.temperature,)
    return TranscriptionOptions.from_profile(
        profile,
        word_timestamps=choices.word_timestamps,
        initial_prompt=choices.prompt,
        hotwords=choices.prompt,
        vad_filter=vad,
        no_speech_threshold=silence.no_speech_threshold,
        task=choices.task,
        **overrides,
    )
