"""Format sniffing from the bytes, header probing, decoding to 16 kHz mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sayit_actors import audio
from sayit_actors.audio import AudioFormat
from sayit_actors.errors import InvalidFormat, UndecodableAudio

CORPUS_FORMATS = {
    "jfk.flac": (AudioFormat.FLAC, 11.0, 2),
    "multilingual.mp3": (AudioFormat.MP3, 59.9, 1),
    "hotwords.mp3": (AudioFormat.MP3, 4.0, 2),
    "stereo_diarization.wav": (AudioFormat.WAV, 5.0, 2),
}


@pytest.mark.parametrize("name", sorted(CORPUS_FORMATS))
def test_corpus_sniff_and_probe(corpus: Path, name: str) -> None:
    fmt, duration, channels = CORPUS_FORMATS[name]
    assert audio.sniff_file(corpus / name) is fmt
    info = audio.probe(corpus / name)
    assert info.format is fmt and info.channels == channels
    assert info.duration_s == pytest.approx(duration, abs=0.15)


@pytest.mark.parametrize(
    ("kind", "fmt"), [("m4a", AudioFormat.MP4), ("aac", AudioFormat.AAC), ("opus", AudioFormat.OGG)]
)
def test_made_clips_sniff_and_probe(clips: dict[str, Path], kind: str, fmt: AudioFormat) -> None:
    assert audio.sniff_file(clips[kind]) is fmt
    assert audio.probe(clips[kind]).duration_s == pytest.approx(11.0, abs=0.5)


def test_sniff_ignores_names_and_rejects_non_audio(clips: dict[str, Path], tmp_path: Path) -> None:
    assert audio.sniff_file(clips["text"]) is None
    with pytest.raises(InvalidFormat):
        audio.probe(clips["text"])
    png = tmp_path / "photo.mp3"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert audio.sniff_file(png) is None


def test_decode_is_16k_mono_float32_and_mixes_stereo(corpus: Path) -> None:
    samples = audio.decode(corpus / "stereo_diarization.wav")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.shape[0] == pytest.approx(5.0 * audio.SAMPLE_RATE, abs=200)
    # One sentence per channel: the mix holds both, so it is louder than silence throughout both halves.
    assert np.abs(samples).max() <= 1.0 and np.abs(samples).mean() > 0.001


@pytest.mark.parametrize("clip", ["truncated", "corrupt"])
def test_damaged_files_are_undecodable(clips: dict[str, Path], clip: str) -> None:
    with pytest.raises(UndecodableAudio):
        info = audio.probe(clips[clip])
        audio.decode(clips[clip], info.duration_s)
