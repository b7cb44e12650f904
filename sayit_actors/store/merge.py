"""Chunk results into one transcript, on the recording's clock.

A chunk result is what a slot recorded (``whisper.py``): its segments on the chunk's own clock,
as ``[start, end, text, words?]``. Here they become records in the recording's time, with
snake_case fields; clients' JSON is shaped from these records outside the store (``wire.py``),
so the stored form need not follow the API's.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, NotRequired, TypedDict


class Word(TypedDict):
    start: float
    end: float
    word: str
    probability: float


class TimedSegment(TypedDict):
    """A segment on the recording's clock, with the language of its chunk."""

    start: float
    end: float
    text: str
    language: str
    words: NotRequired[list[Word]]


@dataclass(frozen=True)
class ChunkDone:
    """Which chunk of the recording a transcript part came from, who transcribed it, and when."""

    index: int
    start_s: float
    duration_s: float
    language: str
    node: str | None
    started_at: float | None  # s since the epoch
    finished_at: float | None


@dataclass(frozen=True)
class Transcript:
    """A job's merged result, as stored in ``keys.job_result``."""

    text: str
    language: str  # the language of most of the audio
    languages: list[str]  # by seconds of audio, most first
    segments: list[TimedSegment]
    dropped_segments: int
    chunks: list[ChunkDone]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Transcript:
        """Either stored form: this one, or the API's camelCase one results were once stored in."""
        d = json.loads(raw)
        if "transcription" in d:
            return cls(d["transcription"], d["language"], d["languages"], d["segments"], int(d["droppedSegments"]),
                       [ChunkDone(c["index"], c["start"], c["duration"], c["language"], c.get("node"),
                                  c.get("startedAt"), c.get("finishedAt")) for c in d["chunks"]])  # fmt: skip
        return cls(d["text"], d["language"], d["languages"], d["segments"], int(d["dropped_segments"]),
                   [ChunkDone(**c) for c in d["chunks"]])  # fmt: skip


@dataclass(frozen=True)
class ChunkProgress:
    """A chunk as a job's progress event carries it (``keys.job_events``), the moment it is done."""

    index: int
    start_s: float
    duration_s: float
    language: str
    text: str
    segments: list[TimedSegment]
    dropped_segments: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ChunkProgress:
        """Either stored form: this one, or the API's camelCase one events were once written in."""
        d = json.loads(raw)
        if "droppedSegments" in d:
            return cls(d["index"], d["start"], d["duration"], d["language"], d["text"], d["segments"],
                       int(d["droppedSegments"]))  # fmt: skip
        return cls(**d)


def shifted_segments(chunk: dict[str, Any]) -> list[TimedSegment]:
    """A chunk result's segments (and words) on the recording's clock."""
    offset = chunk["start_s"]
    segments: list[TimedSegment] = []
    for start, end, text, *words in chunk["segments"]:
        segment = TimedSegment(start=round(start + offset, 3), end=round(end + offset, 3), text=text,
                               language=chunk["language"])  # fmt: skip
        if words:
            segment["words"] = [Word(start=round(ws + offset, 3), end=round(we + offset, 3), word=w, probability=p)
                                for ws, we, w, p in words[0]]  # fmt: skip
        segments.append(segment)
    return segments


def chunk_progress(index: int, chunk: dict[str, Any]) -> ChunkProgress:
    """A finished chunk as a job's live events show it."""
    return ChunkProgress(index, chunk["start_s"], chunk["duration_s"], chunk["language"], chunk["text"],
                         shifted_segments(chunk), int(chunk.get("dropped", 0)))  # fmt: skip


def merge(chunks: list[dict[str, Any]]) -> Transcript:
    """One transcript from chunk results in order: segments (and words) shifted by each chunk's start."""
    segments: list[TimedSegment] = []
    texts: list[str] = []
    seconds_by_language: Counter[str] = Counter()
    done_by: list[ChunkDone] = []
    for index, chunk in enumerate(chunks):
        done_by.append(ChunkDone(index, chunk["start_s"], chunk["duration_s"], chunk["language"], chunk.get("node"),
                                 chunk.get("started_at"), chunk.get("finished_at")))  # fmt: skip
        segments.extend(shifted_segments(chunk))
        if chunk["text"]:
            texts.append(chunk["text"])
        seconds_by_language[chunk["language"]] += chunk["duration_s"]
    languages = [lang for lang, _ in seconds_by_language.most_common()]
    return Transcript(
        text=" ".join(texts),
        language=languages[0] if languages else "",
        languages=languages,
        segments=segments,
        dropped_segments=sum(int(chunk.get("dropped", 0)) for chunk in chunks),
        chunks=done_by,
    )
