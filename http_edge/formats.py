"""A transcript's segments as plain text, SubRip (SRT) or WebVTT subtitles.

Subtitle cues use the segments' own times (already shifted to the recording's timeline for
queued jobs); a cue never ends before it starts, and cues never go backwards in time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FORMATS = ("json", "txt", "srt", "vtt")
CONTENT_TYPES = {"txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cues(segments: Iterable[Mapping[str, Any]]) -> list[tuple[float, float, str]]:
    cues: list[tuple[float, float, str]] = []
    last_end = 0.0
    for segment in segments:
        text = str(segment["text"]).strip()
        if not text:
            continue
        start = max(float(segment["start"]), last_end)
        end = max(float(segment["end"]), start + 0.001)
        cues.append((start, end, text))
        last_end = end
    return cues


def to_srt(segments: Iterable[Mapping[str, Any]]) -> str:
    blocks = [
        f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Iterable[Mapping[str, Any]]) -> str:
    blocks = [f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n" for start, end, text in _cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_text(segments: Iterable[Mapping[str, Any]]) -> str:
    return "\n".join(text for _, _, text in _cues(segments)) + "\n"


def render(fmt: str, segments: Iterable[Mapping[str, Any]]) -> str:
    """``segments`` in ``fmt`` (txt, srt or vtt)."""
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_text(segments)
    raise ValueError(f"unknown format {fmt!r}")
