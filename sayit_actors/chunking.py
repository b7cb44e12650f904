"""Splitting a long recording into chunks of at most 30 s, and their compact form in Redis.

Cut points: each chunk ends at the quietest 20 ms frame of the last ``search_s`` seconds
before its 30 s limit (lowest RMS energy). Pauses between words and sentences are the
quietest frames of speech, so the cut falls between words instead of through one, and the
chunks need no overlap, so the merge has no doubled words to remove. A chunk never passes
Whisper's 30 s window, so each chunk is one decoding window.

Chunk audio is stored as 16-bit FLAC (about half the size of raw 16-bit PCM, lossless).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

from sayit_actors.audio import SAMPLE_RATE

FRAME_S = 0.02


@dataclass(frozen=True)
class Chunk:
    index: int
    start_s: float
    samples: np.ndarray

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE


def cut_points(samples: np.ndarray, max_s: float = 30.0, search_s: float = 5.0) -> list[int]:
    """Sample offsets where chunks start (the first is 0)."""
    max_len, search = int(max_s * SAMPLE_RATE), int(search_s * SAMPLE_RATE)
    frame = int(FRAME_S * SAMPLE_RATE)
    starts = [0]
    while samples.shape[0] - starts[-1] > max_len:
        window_start = starts[-1] + max_len - search
        window = samples[window_start : starts[-1] + max_len]
        frames = window[: (window.shape[0] // frame) * frame].reshape(-1, frame)
        energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
        quietest = int(np.argmin(energy))
        starts.append(window_start + quietest * frame + frame // 2)
    return starts


def split(samples: np.ndarray, max_s: float = 30.0) -> list[Chunk]:
    starts = cut_points(samples, max_s)
    ends = [*starts[1:], samples.shape[0]]
    return [Chunk(i, s / SAMPLE_RATE, samples[s:e]) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]


def to_flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def from_flac(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"chunk audio must be 16 kHz mono, got {rate} Hz, {samples.ndim} dims")
    return np.asarray(samples, dtype=np.float32)
