"""The Dispatcher: decides how an upload is transcribed; it does no heavy work itself.

Short uploads (≤ ``sync_max_duration_s`` and ≤ ``sync_max_bytes``) are transcribed at once on
a local slot: the Dispatcher leases a free one to the caller (``Plan.slot``), and the caller
gives it back when the slot has answered, so the Dispatcher's inbox never waits on a
transcription. When every slot is busy, the caller waits for the next slot given back (short
uploads before queued chunks; ``Plan.slot_wait_s``: that wait runs on the edge, off this actor's
thread) if the slots' recent pace says it comes within ``slot_wait_s``, or when no queue could
take the upload (503 if none came); otherwise a queue with live workers takes it at once (202).

Long uploads, and short ones the busy slots send to the queue, are handed to a Splitter
(``sayit_actors.splitter``: decoding, cutting and storing chunk audio), the least loaded of the
pool; the Dispatcher answers with a ``Forward`` to that Splitter's answer, so it is free for
the next upload at once. A job's decoding options are computed here, once, and stored with it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import redis

from config import LanguageProfile, Limits, SilenceSettings
from sayit_actors.audio import AudioInfo
from sayit_actors.caller import Caller
from sayit_actors.engines import TranscriptionOptions
from sayit_actors.errors import InvalidLanguage
from sayit_actors.replies import Asked, Forward
from sayit_actors.slots import SlotPool, WorkPool
from sayit_actors.store.nodes import NodeRegistry
from sayit_actors.store.records import Owner
from sayit_actors.store.redis_server import client_options
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
class JobTicket:
    job_id: str
    chunks: int


@dataclass(frozen=True)
class Plan:
    """What becomes of an upload: SYNC on ``slot`` (leased to the caller, who gives it back), SYNC
    after waiting up to ``slot_wait_s`` for a slot (none was free and no queue could take it), or
    ASYNC as the queued ``job``."""

    mode: Mode
    options: TranscriptionOptions
    job: JobTicket | None = None
    slot: str | None = None
    slot_wait_s: float = 0.0


@dataclass(frozen=True)
class Dispatch(Asked[Plan]):
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
class Split(Asked[Plan]):
    """The Dispatcher's order to a Splitter: queue ``dispatch`` as a job decoded with ``options``."""

    dispatch: Dispatch
    options: TranscriptionOptions


class Dispatcher(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        *,
        limits: Limits,
        silence: SilenceSettings,
        profiles: Mapping[str, LanguageProfile],
        redis_url: str,
        slots: SlotPool,
        splitters: WorkPool,
        lookup: Callable[[str], pykka.ActorRef[Any]],
        local_queue: bool,
    ) -> None:
        super().__init__(supervisor, name)
        self._limits = limits
        self._silence = silence
        self._profiles = profiles
        self._redis_url = redis_url
        self._slots = slots
        self._splitters = splitters
        self._lookup = lookup
        self._local_queue = local_queue  # this node consumes the queue itself
        self._redis: redis.Redis | None = None
        self._nodes: NodeRegistry | None = None

    def on_start(self) -> None:
        # Its own client, for one quick look: whether any queue node is live.
        self._redis = redis.Redis.from_url(self._redis_url, **client_options())
        self._nodes = NodeRegistry(self._redis)

    def on_stop(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def handle(self, message: Any) -> Any:
        match message:
            case Dispatch():
                return self._dispatch(message)
        raise TypeError(f"unexpected message {message!r}")

    def mode_for(self, size_bytes: int, duration_s: float) -> Mode:
        short = duration_s <= self._limits.sync_max_duration_s and size_bytes <= self._limits.sync_max_bytes
        return Mode.SYNC if short else Mode.ASYNC

    def _dispatch(self, msg: Dispatch) -> Plan | Forward[Plan]:
        profile = self._profiles.get(msg.language)
        if profile is None:
            raise InvalidLanguage()
        if self.mode_for(msg.size_bytes, msg.info.duration_s) is Mode.SYNC:
            options = options_for(profile, msg.choices, self._silence, queued=False)
            msg.caller.check()  # gone: no slot leased for nobody
            if (slot := self._slots.acquire(0, urgent=True)) is not None:
                return Plan(Mode.SYNC, options, slot=slot)
            wait_s = self._slots.expected_wait_s()
            if (wait_s is not None and wait_s <= self._limits.slot_wait_s) or not self._queue_has_workers():
                return Plan(Mode.SYNC, options, slot_wait_s=self._limits.slot_wait_s)
        queued = options_for(profile, msg.choices, self._silence, queued=True)
        return self._split(Split(msg, queued))

    def _split(self, order: Split) -> Forward[Plan]:
        name = self._splitters.pick()
        try:
            splitter = self._lookup(name)
            return Forward(splitter, splitter.ask(order, block=False))
        except pykka.ActorDeadError:
            self._splitters.done(name)
            raise

    def _queue_has_workers(self) -> bool:
        """This node consumes the queue, or some queue node's heartbeat is live."""
        if self._local_queue:
            return True
        assert self._nodes is not None, "Dispatcher used before on_start"
        return any(node.slots for node in self._nodes.live())


def options_for(
    profile: LanguageProfile, choices: Choices, silence: SilenceSettings, queued: bool
) -> TranscriptionOptions:
    """A request's decoding options: its language profile, its choices, and the silence settings
    (``SAYIT_VAD``: ``long`` decodes queued chunks one window per pause and skips those without
    speech, ``all`` does so for every transcription, ``off`` for none; see sayit_actors.audio.silence)."""
    vad = silence.vad == "all" or (queued and silence.vad == "long")
    overrides: dict[str, Any] = {}
    if choices.temperature is not None:
        overrides["temperatures"] = (choices.temperature,)
    return TranscriptionOptions.from_profile(
        profile,
        word_timestamps=choices.word_timestamps,
        initial_prompt=choices.prompt,
        hotwords=choices.prompt,
        vad=vad,
        no_speech_threshold=silence.no_speech_threshold,
        task=choices.task,
        **overrides,
    )
