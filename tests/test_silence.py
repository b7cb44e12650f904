"""Dropping text Whisper invents over silence: only where the voice-activity detector hears none."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from config import SilenceSettings, load_profiles
from config.settings import INVENTED_PHRASES
from sayit_actors import audio
from sayit_actors.audio import silence
from sayit_actors.dispatcher import Choices, options_for
from sayit_actors.engines import Segment, Transcript, TranscriptionOptions


def transcript(*segments: Segment) -> Transcript:
    options = TranscriptionOptions.from_profile(load_profiles()["en"])
    return Transcript(" ".join(s.text for s in segments), "en", 1.0, 11.0, segments, options)


@pytest.fixture(scope="module")
def jfk_then_silence(corpus: Path) -> np.ndarray:
    speech = audio.decode(corpus / "jfk.flac")  # 11 s
    return np.concatenate([speech, np.zeros(10 * audio.SAMPLE_RATE, np.float32)])


def test_an_invented_phrase_over_silence_is_dropped(jfk_then_silence: np.ndarray) -> None:
    spoken = Segment(0.0, 10.5, "And so my fellow Americans, ask not what your country can do for you")
    invented = Segment(13.0, 20.0, "Thanks for watching!")
    kept, dropped = silence.drop_invented(transcript(spoken, invented), jfk_then_silence, INVENTED_PHRASES)
    assert dropped == 1 and kept.segments == (spoken,) and "watching" not in kept.text


def test_the_same_phrase_over_speech_is_kept(jfk_then_silence: np.ndarray) -> None:
    said = Segment(1.0, 4.0, "Thank you")
    kept, dropped = silence.drop_invented(transcript(said), jfk_then_silence, INVENTED_PHRASES)
    assert dropped == 0 and kept.segments == (said,)


def test_unsure_segments_over_silence_are_dropped_and_sure_ones_kept(jfk_then_silence: np.ndarray) -> None:
    unsure = Segment(12.0, 18.0, "the horizon", no_speech_prob=0.9)
    sure = Segment(12.0, 18.0, "the horizon", no_speech_prob=0.1)
    assert silence.drop_invented(transcript(unsure), jfk_then_silence, INVENTED_PHRASES)[1] == 1
    assert silence.drop_invented(transcript(sure), jfk_then_silence, INVENTED_PHRASES)[1] == 0


def test_the_detector_runs_only_for_suspect_segments(
    jfk_then_silence: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = silence.speech_regions
    monkeypatch.setattr(silence, "speech_regions", lambda samples: calls.append(samples.size) or real(samples))
    silence.drop_invented(transcript(Segment(0.0, 10.5, "ask not")), jfk_then_silence, INVENTED_PHRASES)
    silence.drop_invented(transcript(Segment(13.0, 14.0, "Yes.")), jfk_then_silence, INVENTED_PHRASES)
    assert calls == []
    silence.drop_invented(transcript(Segment(13.0, 20.0, "you")), jfk_then_silence, INVENTED_PHRASES)
    assert len(calls) == 1


def test_a_repeated_token_over_silence_is_dropped(jfk_then_silence: np.ndarray) -> None:
    loop = Segment(12.0, 20.0, "la la la la la la")
    assert silence.drop_invented(transcript(loop), jfk_then_silence, INVENTED_PHRASES)[1] == 1


@pytest.mark.parametrize(
    ("vad", "queued", "filtered"),
    [("long", True, True), ("long", False, False), ("all", False, True), ("off", True, False)],
)
def test_the_silence_settings_reach_the_decoding_options(vad: str, queued: bool, filtered: bool) -> None:
    silence_settings = SilenceSettings(vad=vad, no_speech_threshold=0.45)
    options = options_for(load_profiles()["ko"], Choices(), silence_settings, queued=queued)
    assert options.vad is filtered and options.no_speech_threshold == 0.45


def test_windows_cover_the_whole_chunk_and_cut_only_long_pauses(corpus: Path) -> None:
    speech = audio.decode(corpus / "jfk.flac")  # its own pauses are shorter than PAUSE_S
    samples = np.concatenate([speech, np.zeros(3 * audio.SAMPLE_RATE, np.float32), speech])
    spans = silence.windows(samples)
    assert len(spans) == 2 and spans[0][0] == 0.0 and spans[-1][1] == samples.size / audio.SAMPLE_RATE
    assert spans[0][1] == spans[1][0] and 11.0 < spans[0][1] < 14.0  # in the pause, nothing left out
    assert silence.windows(np.zeros(20 * audio.SAMPLE_RATE, np.float32)) == []


def test_a_chunk_without_speech_is_not_decoded() -> None:
    calls: list[int] = []

    def decode(windows: Sequence[np.ndarray], options: TranscriptionOptions) -> list[Transcript]:
        calls.extend(w.size for w in windows)
        raise AssertionError("decoded")

    options = replace(TranscriptionOptions.from_profile(load_profiles()["ko"]), vad=True)
    rng = np.random.default_rng(0)
    for quiet in (np.zeros(30 * audio.SAMPLE_RATE), rng.normal(0, 0.003, 30 * audio.SAMPLE_RATE)):
        result = silence.transcribe(decode, quiet.astype(np.float32), options)
        assert result.text == "" and result.segments == () and result.language == "ko" and result.duration_s == 30
    assert calls == []


def test_each_window_finds_its_own_language_on_the_chunk_clock(corpus: Path, engine) -> None:  # type: ignore[no-untyped-def]
    english, korean = audio.decode(corpus / "jfk.flac"), audio.decode(corpus / "ko" / "leopard_test_ko.wav")
    samples = np.concatenate([english, np.zeros(2 * audio.SAMPLE_RATE, np.float32), korean])
    options = options_for(load_profiles()["auto"], Choices(), SilenceSettings(vad="long"), queued=True)
    result = engine.transcribe(samples, options)
    assert "ask not what your country" in silence.normalize(result.text) and "피하면서" in result.text
    korean_segments = [s for s in result.segments if "피하면서" in s.text]
    assert korean_segments and korean_segments[0].start >= 11.0 and result.segments[-1].end <= 17.5
    assert result.language == "en"  # heard longest


def test_bare_punctuation_over_silence_is_dropped(jfk_then_silence: np.ndarray) -> None:
    dots = Segment(12.0, 20.0, ". . . . .")
    assert silence.drop_invented(transcript(dots), jfk_then_silence, INVENTED_PHRASES)[1] == 1
