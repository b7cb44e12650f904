"""The Dispatcher: decides how an upload is transcribed, and splits long ones into queued chunks.

Short uploads (≤ ``sync_max_duration_s`` and ≤ ``sync_max_bytes``) are transcribed at once on
a local slot; the SlotPool (``sayit_actors.slots``) leases that slot to the caller, so the
Dispatcher's inbox never waits on a transcription. Long uploads, and short ones that find
every slot busy (``Enqueue``), are decoded as a stream and cut into chunks of at most 30 s at
quiet points (``sayit_actors.chunking``); each chunk's audio goes to Redis as soon as it is
cut, so memory does not grow with the recording, and the job and its tasks are created last,
in one step. A recording longer than ``max_duration_s`` (by its header, or as it decodes) is
refused, and so is one the queued-audio budget has no room for, before any audio is written;
a job that fails midway leaves no chunk audio behind.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pykka
import redis

from config import LanguageProfile, Limits, QueueSettings, SilenceSettings
from sayit_actors import audio, chunking
from sayit_actors.audio import AudioInfo
from sayit_actors.caller import Caller
from sayit_actors.chunking import Span
from sayit_actors.engine import TranscriptionOptions
from sayit_actors.errors import AudioTooLong, InvalidLanguage
from sayit_actors.jobstore import JobStore, Owner
from sayit_actors.redis_server import client_options
from sayit_actors.supervisor import SupervisedActor, Supervisor

log = logging.getLogger(__name__)


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
    caller: Caller = field(default_factory=Caller)  # a job is made only while its request waits for it
    owner: Owner | None = None  # the tenant the job belongs to (with API keys): only it may see the job


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
        redis_url: str,
    ) -> None:
        super().__init__(supervisor, name)
        self._limits = limits
        self._queue = queue
        self._silence = silence
        self._profiles = profiles
        self._redis_url = redis_url
        self._redis: redis.Redis | None = None
        self._jobs: JobStore | None = None

    def on_start(self) -> None:
        # Its own client: chunk audio is written here, not through the ResultActor's inbox.
        self._redis = redis.Redis.from_url(self._redis_url, **client_options())
        self._jobs = JobStore(self._redis, self._queue)

    def on_stop(self) -> None:
        if self._redis is not None:
            self._redis.close()

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
        header_s, max_s = msg.info.duration_s, self._limits.max_duration_s
        if header_s > max_s:
            raise AudioTooLong(f"the header says {header_s:.0f} s, the limit is {max_s:.0f} s")
        assert self._jobs is not None, "Dispatcher used before on_start"
        jobs, job_id = self._jobs, uuid.uuid4().hex
        with self.doing(f"splitting a {header_s:.0f} s upload into job {job_id}"):
            jobs.check_room(header_s, msg.owner)
            spans: list[Span] = []
            try:
                blocks = audio.stream(msg.path, header_s, max_s)
                for chunk in chunking.stream_split(blocks, self._queue.chunk_s):
                    spans.append(chunk.span)
                    jobs.put_chunk_audio(job_id, chunk)
                duration_s = spans[-1].start_s + spans[-1].duration_s
                choices = asdict(msg.choices)
                msg.caller.commit(job_id)  # raises if the request is gone: no job behind its back
                jobs.create(job_id, msg.language, duration_s, spans, msg.filename, choices, msg.callback_url, msg.owner)
            except BaseException:
                self._drop_audio(job_id, len(spans))
                raise
        return Plan(Mode.ASYNC, options, JobTicket(job_id, len(spans)))

    def _drop_audio(self, job_id: str, chunks: int) -> None:
        """Delete what a failed job wrote; if Redis is out of reach, the audio expires on its own."""
        assert self._jobs is not None
        try:
            self._jobs.drop_chunk_audio(job_id, chunks)
        except redis.RedisError as exc:
            log.warning("chunk audio of job %s not deleted (%s): it expires in its pending TTL", job_id, exc)


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
