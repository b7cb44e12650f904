"""No invented text over silence: Whisper writes "Thanks for watching" or "시청해주셔서 감사합니다"
(or a repeated token) when it hears nothing. A segment is dropped when the voice-activity
detector (faster-whisper's bundled Silero model) finds no speech in its span and either its text
is one of the known inventions or the model itself rated it as probably not speech.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from sayit_actors.audio import SAMPLE_RATE
from sayit_actors.engine import Segment, Transcript, join_text

_VAD = VadOptions(min_silence_duration_ms=500, speech_pad_ms=200)
MIN_REPEATED_WORDS = 4  # "la la la la" is a loop; a one-word answer ("Yes.") is not


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def speech_regions(samples: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches the voice-activity detector hears speech in."""
    return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in get_speech_timestamps(samples, _VAD)]


@functools.cache
def _known(phrases: tuple[str, ...]) -> frozenset[str]:
    """The invented phrases as they compare (normalized once per list, not per transcript)."""
    return frozenset(normalize(p) for p in phrases)


def _has_speech(segment: Segment, regions: Sequence[tuple[float, float]]) -> bool:
    return any(start < segment.end and segment.start < end for start, end in regions)


def _invented(segment: Segment, phrases: frozenset[str], no_speech_threshold: float) -> bool:
    text = normalize(segment.text)
    words = text.split()
    repeated = len(words) >= MIN_REPEATED_WORDS and len(set(words)) <= max(1, len(words) // 10)
    return text in phrases or repeated or segment.no_speech_prob >= no_speech_threshold


def drop_invented(
    transcript: Transcript, samples: np.ndarray, phrases: tuple[str, ...], no_speech_threshold: float = 0.6
) -> tuple[Transcript, int]:
    """The transcript without segments invented over silence, and how many were dropped.

    The voice-activity detector costs tens of milliseconds per 30 s of audio, so it runs only
    when a segment looks invented, to confirm that no speech is under it.
    """
    known = _known(phrases)
    suspects = [s for s in transcript.segments if _invented(s, known, no_speech_threshold)]
    if not suspects:
        return transcript, 0
    regions = speech_regions(samples)
    dropped_ids = {id(s) for s in suspects if not _has_speech(s, regions)}
    kept = tuple(s for s in transcript.segments if id(s) not in dropped_ids)
    dropped = len(transcript.segments) - len(kept)
    if not dropped:
        return transcript, 0
    return replace(transcript, segments=kept, text=join_text(kept)), dropped
