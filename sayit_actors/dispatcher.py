"""The Dispatcher: decides how an upload is transcribed and with which decoding settings.

Short uploads (≤ ``sync_max_duration_s`` and ≤ ``sync_max_bytes``) are transcribed at once
on a local slot; longer ones will go to the chunk queue, which this node does not serve yet.
Which slot runs a short upload is the SlotPool's choice (``sayit_actors.slots``): slots are
leased by the caller so the Dispatcher's inbox never waits on a transcription.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka

from config import LanguageProfile, Limits
from sayit_actors.audio import AudioInfo
from sayit_actors.engine import TranscriptionOptions
from sayit_actors.errors import AsyncUnavailable, InvalidLanguage
from sayit_actors.supervisor import SupervisedActor, Supervisor


class Mode(enum.StrEnum):
    SYNC = "sync"
    ASYNC = "async"


@dataclass(frozen=True)
class Dispatch:
    size_bytes: int
    info: AudioInfo
    language: str


@dataclass(frozen=True)
class Plan:
    mode: Mode
    options: TranscriptionOptions


class Dispatcher(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Supervisor],
        name: str,
        limits: Limits,
        profiles: Mapping[str, LanguageProfile],
    ) -> None:
        super().__init__(supervisor, name)
        self._limits = limits
        self._options = {lang: TranscriptionOptions.from_profile(p) for lang, p in profiles.items()}

    def on_receive(self, message: Any) -> Any:
        match message:
            case Dispatch():
                return self._dispatch(message)
        raise TypeError(f"unexpected message {message!r}")

    def mode_for(self, size_bytes: int, duration_s: float) -> Mode:
        short = duration_s <= self._limits.sync_max_duration_s and size_bytes <= self._limits.sync_max_bytes
        return Mode.SYNC if short else Mode.ASYNC

    def _dispatch(self, msg: Dispatch) -> Plan:
        options = self._options.get(msg.language)
        if options is None:
            raise InvalidLanguage()
        mode = self.mode_for(msg.size_bytes, msg.info.duration_s)
        if mode is Mode.ASYNC:
            raise AsyncUnavailable(f"{msg.info.duration_s:.0f} s, {msg.size_bytes / 1e6:.1f} MB")
        return Plan(mode, options)
