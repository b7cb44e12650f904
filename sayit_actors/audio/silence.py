"""Silence, and what Whisper does with it: where a chunk is decoded, and text invented over it.

Windows. A queued chunk (and, with ``SAYIT_VAD=all``, any upload) is decoded one window at a time:
the chunk cut in the middle of every pause of at least ``PAUSE_S`` between the stretches of speech
the voice-activity detector (faster-whisper's bundled Silero model) hears, and not decoded at all
when it hears none. The detector only chooses the cuts and whether there is anything to decode:
every sample of a chunk with speech is in a window, so a word it fails to hear is still decoded.
Measured on recordings of known text (docs/ACCURACY.md): a chunk's detected speech joined into one
window (faster-whisper's ``vad_filter``) lost whole sentences, Whisper ending the window after the
first passage; a chunk decoded as one window wrote a sentence said again after a pause once (or
one said once twice), and heard one language in a chunk of two; a window per pause kept them all.

Inventions. Whisper writes "Thanks for watching" or "시청해주셔서 감사합니다" (or a repeated token,
or bare punctuation) when it hears nothing. A segment is dropped when the detector finds no
speech in its span and either its text is one of the known inventions or the model itself rated
it as probably not speech.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from sayit_actors.audio import SAMPLE_RATE
from sayit_actors.engines import Segment, Transcript, TranscriptionOptions, join_text
from sayit_actors.engines.textmetrics import align

_VAD = VadOptions(min_silence_duration_ms=500, speech_pad_ms=200)
MIN_REPEATED_WORDS = 4  # "la la la la" is a loop; a one-word answer ("Yes.") is not
# A pause this long between two detected stretches of speech (each padded by 0.2 s) ends a window:
# the pause between sentences, not the one between words. Shorter windows lose Whisper's context.
PAUSE_S = 1.0
ECHO_S = 0.5  # a segment ending this far past the audio it was decoded from was not all heard
# Speech this long after a window's last segment was not written: Whisper left it for a next
# window that, a word at the end of a chunk long, it then took for silence. The window is then
# decoded again in one piece, without timestamps, and what that adds at its end is kept.
UNHEARD_S = 0.3
Decode = Callable[[Sequence[np.ndarray], TranscriptionOptions], list[Transcript]]


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def speech_regions(samples: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches the voice-activity detector hears speech in."""
    return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in get_speech_timestamps(samples, _VAD)]


def windows(samples: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of the windows ``samples`` are decoded in: all of it, cut in the middle
    of each pause of at least ``PAUSE_S``; none when the detector hears no speech at all."""
    return _windows(speech_regions(samples), samples.shape[0] / SAMPLE_RATE)


def _windows(regions: Sequence[tuple[float, float]], duration_s: float) -> list[tuple[float, float]]:
    if not regions:
        return []
    cuts = [(end + start) / 2 for (_, end), (start, _) in itertools.pairwise(regions) if start - end >= PAUSE_S]
    return list(itertools.pairwise([0.0, *cuts, duration_s]))


def transcribe(decode: Decode, samples: np.ndarray, options: TranscriptionOptions) -> Transcript:
    """``decode`` (the engine's decoding of several windows at once) over ``samples`` as
    ``options.vad`` asks: all of it as one window, or one window per pause (see ``windows``), all
    handed over together, with each window's segments on the clock of ``samples``.

    Each window is decoded on its own, as faster-whisper's batched pipeline does: it detects its
    own language when none is given (the transcript's is the one heard longest; none when no
    speech is heard and no language was given), and it is not prompted with the text of the window
    before, which pulled a Korean window into English after an English one, and made Whisper write
    a sentence said again more than once.
    """
    if not options.vad:
        return decode([samples], options)[0]
    duration_s = samples.shape[0] / SAMPLE_RATE
    regions = speech_regions(samples)
    spans = _windows(regions, duration_s)
    parts = decode([_between(samples, start, end) for start, end in spans], options) if spans else []
    kept_by_window = [
        [_shifted(s, start) for s in _without_echo(part.segments, end - start)]
        for (start, end), part in zip(spans, parts, strict=True)
    ]
    unheard = [
        i
        for i, kept in enumerate(kept_by_window)
        if kept and _speech_between(regions, kept[-1].end, spans[i][1]) >= UNHEARD_S
    ]
    if unheard:
        wholes = decode([_between(samples, *spans[i]) for i in unheard], replace(options, without_timestamps=True))
        for i, whole in zip(unheard, wholes, strict=True):
            if (rest := _rest(kept_by_window[i], whole, *spans[i])) is not None:
                kept_by_window[i].append(rest)
    segments: list[Segment] = []
    heard: dict[str, float] = {}
    best: dict[str, float] = {}
    detected = options.language or ""
    for (start, end), part, kept in zip(spans, parts, kept_by_window, strict=True):
        detected = detected or part.language
        segments.extend(kept)
        if kept:
            heard[part.language] = heard.get(part.language, 0.0) + end - start
            best[part.language] = max(best.get(part.language, 0.0), part.language_probability)
    language = max(heard, key=heard.__getitem__) if heard else detected
    return Transcript(
        join_text(segments), language, best.get(language, 0.0), round(duration_s, 3), tuple(segments), options
    )


def _between(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return samples[round(start_s * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)]


def _speech_between(regions: Sequence[tuple[float, float]], start_s: float, end_s: float) -> float:
    """Seconds of detected speech between ``start_s`` and ``end_s``, without the detector's padding."""
    pad = _VAD.speech_pad_ms / 1000
    return sum(max(0.0, min(b - pad, end_s) - max(a + pad, start_s)) for a, b in regions)


def _rest(said: list[Segment], retold: Transcript, start_s: float, end_s: float) -> Segment | None:
    """What a window decoded in one piece (``retold``, from ``start_s``) says after the last word
    its segments (``said``) have in common with it; None when nothing, or when the two mostly
    disagree."""
    old = [w for w in (normalize(t) for t in join_text(said).split()) if w]
    told = [t for t in retold.text.split() if normalize(t)]
    new = [normalize(t) for t in told]
    common = [h for r, h in align(old, new) if r is not None and h is not None and old[r] == new[h]]
    if not common or len(common) * 2 < len(old) or common[-1] == len(new) - 1:
        return None
    rest = told[common[-1] + 1 :]
    words = [w for s in retold.segments for w in _shifted(s, start_s).words][-len(rest) :]
    begin = said[-1].end
    return Segment(begin, round(max(end_s, begin), 3), " ".join(rest), tuple(words) if len(words) == len(rest) else ())


def _without_echo(segments: Sequence[Segment], duration_s: float) -> list[Segment]:
    """A window's segments without the echo Whisper may add to a short window: its last sentence
    written again, running past the end of the audio into the window's padding."""
    kept: list[Segment] = []
    for segment in segments:
        echo = kept and normalize(segment.text) == normalize(kept[-1].text) and segment.end > duration_s + ECHO_S
        if not echo:
            kept.append(segment)
    return kept


def _shifted(segment: Segment, offset_s: float) -> Segment:
    def at(t: float) -> float:
        return round(t + offset_s, 3)

    words = tuple(replace(w, start=at(w.start), end=at(w.end)) for w in segment.words)
    return replace(segment, start=at(segment.start), end=at(segment.end), words=words)


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
    return not words or text in phrases or repeated or segment.no_speech_prob >= no_speech_threshold


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
