"""The DurationProbe: reads an upload's header so the Dispatcher can route it before decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sayit_actors import audio
from sayit_actors.replies import Asked
from sayit_actors.supervisor import SupervisedActor


@dataclass(frozen=True)
class Probe(Asked[audio.AudioInfo]):
    path: Path
    format: audio.AudioFormat | None = None


class DurationProbe(SupervisedActor):
    def handle(self, message: Any) -> Any:
        match message:
            case Probe(path, fmt):
                return audio.probe(path, fmt)
        raise TypeError(f"unexpected message {message!r}")
