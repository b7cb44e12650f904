"""Splitting a long recording into chunks of at most 30 s, and their compact form in Redis.

Cut points: each chunk ends at the quietest 20 ms frame of the last ``search_s`` seconds
before its 30 s limit (lowest RMS energy). Pauses between words and sentences are the
quietest frames of speech, so the cut falls between words instead of through one, and the
chunks need no overlap, so the merge has no doubled words to remove. A chunk never passes
Whisper's 30 s window, so each chunk is one decoding window.

A long upload is cut as it decodes (``stream_split``), so only about one chunk of it is ever
in memory; ``split`` cuts a recording already in memory at the same points.

Chunk audio is stored as 16-bit FLAC (about half the size of raw 16-bit PCM, lossless).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import soundfile

from sayit_actors.audio import SAMPLE_RATE

FRAME_S = 0.02


@dataclass(frozen=True)
class Span:
    """Where a chunk lies in its recording, without its samples: all a job's tasks need."""

    index: int
    start_s: float
    duration_s: float


@dataclass(frozen=True)
class Chunk:
    index: int
    start_s: float
    samples: np.ndarray

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE

    @property
    def span(self) -> Span:
        return Span(self.index, self.start_s, self.duration_s)


def _cut(samples: np.ndarray, max_len: int, search: int) -> int:
    """Where the chunk that starts at ``samples[0]`` ends: the middle of the quietest frame of
    the last ``search`` samples before ``max_len`` (``samples`` holds more than ``max_len``)."""
    frame = int(FRAME_S * SAMPLE_RATE)
    window_start = max(0, max_len - search)
    window = samples[window_start:max_len]
    frames = window[: (window.shape[0] // frame) * frame].reshape(-1, frame)
    energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return window_start + int(np.argmin(energy)) * frame + frame // 2


def cut_points(samples: np.ndarray, max_s: float = 30.0, search_s: float = 5.0) -> list[int]:
    """Sample offsets where chunks start (the first is 0)."""
    max_len, search = int(max_s * SAMPLE_RATE), int(search_s * SAMPLE_RATE)
    starts = [0]
    while samples.shape[0] - starts[-1] > max_len:
        starts.append(starts[-1] + _cut(samples[starts[-1] :], max_len, search))
    return starts


def split(samples: np.ndarray, max_s: float = 30.0) -> list[Chunk]:
    """Chunks of a recording already in memory (views of ``samples``)."""
    starts = cut_points(samples, max_s)
    ends = [*starts[1:], samples.shape[0]]
    return [Chunk(i, s / SAMPLE_RATE, samples[s:e]) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]


def stream_split(blocks: Iterable[np.ndarray], max_s: float = 30.0, search_s: float = 5.0) -> Iterator[Chunk]:
    """Chunks cut from a stream of sample blocks, one by one, at the same points as ``split``.

    Holds at most one chunk and one block: the blocks since the last cut are joined once they
    pass ``max_s`` (once per chunk, so the copying stays linear in the recording's length),
    the chunk before the cut is handed out and the rest kept for the next one.
    """
    max_len, search = int(max_s * SAMPLE_RATE), int(search_s * SAMPLE_RATE)
    pending: list[np.ndarray] = []
    have = start = index = 0
    for block in blocks:
        pending.append(block)
        have += block.shape[0]
        if have <= max_len:
            continue
        rest = np.concatenate(pending)
        while rest.shape[0] > max_len:
            cut = _cut(rest, max_len, search)
            yield Chunk(index, start / SAMPLE_RATE, rest[:cut])
            index, start, rest = index + 1, start + cut, rest[cut:]
        pending, have = [rest.copy()], rest.shape[0]  # a copy, so the chunk handed out can be freed
    if have:
        yield Chunk(index, start / SAMPLE_RATE, np.concatenate(pending))


def to_flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def from_flac(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"chunk audio must be 16 kHz mono, got {rate} Hz, {samples.ndim} dims")
    return np.asarray(samples, dtype=np.float32)
