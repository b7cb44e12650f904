"""The engine interface: what every engine takes (options, samples) and gives (a transcript)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from config import LanguageProfile

if TYPE_CHECKING:
    from sayit_actors.engines.batcher import Batcher


class EngineUnavailable(RuntimeError):
    """The configured engine or model cannot be loaded on this machine."""


@dataclass(frozen=True)
class TranscriptionOptions:
    """The decoding settings of one request, echoed back with its result."""

    profile: str
    language: str | None
    beam_size: int
    patience: float
    best_of: int
    temperatures: tuple[float, ...]
    condition_on_previous_text: bool
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    vad: bool = False  # decode only audio with speech, one window per pause (see sayit_actors.audio.silence)
    without_timestamps: bool = False  # text only: one segment per call
    no_speech_threshold: float = 0.6
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    task: str = "transcribe"  # or "translate" (to English)

    @classmethod
    def from_profile(cls, profile: LanguageProfile, **overrides: Any) -> TranscriptionOptions:
        options = cls(
            profile=profile.name,
            language=profile.language,
            beam_size=profile.beam_size,
            patience=profile.patience,
            best_of=profile.best_of,
            temperatures=profile.temperatures(),
            condition_on_previous_text=profile.condition_on_previous_text,
        )
        return replace(options, **overrides) if overrides else options

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["temperatures"] = list(self.temperatures)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranscriptionOptions:
        """The options ``to_dict`` gave; TypeError or KeyError when they do not fit this version's fields."""
        return cls(**{**data, "temperatures": tuple(data["temperatures"])})


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0


@dataclass(frozen=True)
class LanguageGuess:
    """The language heard in the first 30 s: the best guess and the runners-up, most likely first."""

    language: str
    probability: float
    candidates: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: tuple[Segment, ...]
    options: TranscriptionOptions


class Engine(Protocol):
    name: str
    model: str
    device: str
    compute_type: str
    workers: int
    batcher: Batcher
    wide_decoder_threads: int | None  # a CPU engine's: threads decoding one window of a wide pass

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions, urgent: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 samples; safe to call from ``workers`` threads at once,
        whose windows share the engine's batched passes (``urgent`` ones first: short uploads)."""
        ...

    def detect_language(self, audio: np.ndarray) -> LanguageGuess:
        """The language of the first 30 s of 16 kHz mono float32 samples."""
        ...


LANGUAGE_CANDIDATES = 5
DETECT_S = 30.0  # language detection hears one Whisper window
DETECT_SAMPLES = round(DETECT_S * 16_000)


def join_text(segments: tuple[Segment, ...] | list[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())
