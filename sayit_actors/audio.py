"""Audio: what the bytes are, how long they last, and the samples Whisper needs.

The format is sniffed from the bytes, never taken from the client's Content-Type. Duration
comes from the header (soundfile for WAV/FLAC/OGG/MP3, PyAV's demuxer for MP4/AAC/WebM) so a
100 MB upload is judged without decoding it. Decoding goes through PyAV for every format and
yields 16 kHz mono float32 (FFmpeg downmixes several channels to their mean and resamples in
one step), as a stream of one-second blocks: a long upload is never whole in memory, and
every read is bounded in decoded length, whatever the header claims.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile

from config import Limits
from sayit_actors.errors import AudioTooLong, InvalidFormat, UndecodableAudio

SAMPLE_RATE = 16_000
BLOCK_SAMPLES = SAMPLE_RATE  # the streaming reader's block: one second, 64 KB
MAX_DURATION_S = Limits.max_duration_s  # decode's bound unless a caller gives its own
# Decoded audio shorter than this share of the header's duration means a truncated file.
MIN_DECODED_SHARE = 0.9
_HEAD_BYTES = 64
log = logging.getLogger(__name__)


class AudioFormat(enum.StrEnum):
    WAV = "wav"
    FLAC = "flac"
    MP3 = "mp3"
    OGG = "ogg"
    MP4 = "mp4"
    AAC = "aac"
    WEBM = "webm"


_SOUNDFILE_FORMATS = {AudioFormat.WAV, AudioFormat.FLAC, AudioFormat.OGG, AudioFormat.MP3}


@dataclass(frozen=True)
class AudioInfo:
    format: AudioFormat
    duration_s: float
    sample_rate: int
    channels: int


def _id3_size(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (its size is a 28-bit 'synchsafe' integer)."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def _frame_sync(head: bytes) -> AudioFormat | None:
    """MPEG audio (MP3) and ADTS (AAC) frames share a 12-bit sync word; the layer bits differ."""
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    layer = (head[1] >> 1) & 0b11
    if layer == 0:
        return AudioFormat.AAC if head[1] & 0xF0 == 0xF0 else None
    return AudioFormat.MP3


def sniff(head: bytes) -> AudioFormat | None:
    """The format of a file that starts with ``head`` (after any ID3 tag), or None."""
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return AudioFormat.WAV
    if head[:4] == b"fLaC":
        return AudioFormat.FLAC
    if head[:4] == b"OggS":
        return AudioFormat.OGG
    if head[4:8] == b"ftyp":
        return AudioFormat.MP4
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return AudioFormat.WEBM
    return _frame_sync(head)


def sniff_file(path: Path) -> AudioFormat | None:
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES)
        skip = _id3_size(head)
        if skip:
            handle.seek(skip)
            head = handle.read(_HEAD_BYTES)
            if head[:4] == b"fLaC":
                return AudioFormat.FLAC
            return _frame_sync(head)
    return sniff(head)


def _probe_soundfile(path: Path, fmt: AudioFormat) -> AudioInfo:
    info = soundfile.info(str(path))
    return AudioInfo(fmt, float(info.duration), int(info.samplerate), int(info.channels))


def _probe_av(path: Path, fmt: AudioFormat) -> AudioInfo:
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise UndecodableAudio("no audio stream")
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            raise UndecodableAudio("no duration in the header")
        return AudioInfo(fmt, duration, int(stream.rate or 0), int(stream.channels or 0))


def probe(path: Path, fmt: AudioFormat | None = None) -> AudioInfo:
    """Header facts of an audio file; raises InvalidFormat or UndecodableAudio."""
    fmt = fmt or sniff_file(path)
    if fmt is None:
        raise InvalidFormat()
    errors: list[str] = []
    probes = (_probe_soundfile, _probe_av) if fmt in _SOUNDFILE_FORMATS else (_probe_av,)
    for reader in probes:
        try:
            info = reader(path, fmt)
        except UndecodableAudio as exc:
            errors.append(str(exc))
        except (soundfile.LibsndfileError, RuntimeError, av.FFmpegError, OSError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            if info.duration_s > 0 and info.sample_rate > 0:
                return info
            errors.append("header reports no audio")
    log.info("probe failed for a %s upload: %s", fmt, "; ".join(errors))
    raise UndecodableAudio(f"{fmt} header unreadable")


def stream(
    path: Path, expected_duration_s: float | None = None, max_s: float | None = None
) -> Generator[np.ndarray, None, None]:
    """16 kHz mono float32 blocks of one second (the last may be shorter), decoded as they are read.

    The upload's bytes say little about its length (a few MB of FLAC can hold hours of silence),
    so the decoded length is bounded: past ``max_s`` the reader raises AudioTooLong and decodes
    nothing more. After the last block, audio shorter than ``MIN_DECODED_SHARE`` of the header's
    duration raises UndecodableAudio (a truncated upload); so does a corrupt one, at any point.
    """
    limit = None if max_s is None else round(max_s * SAMPLE_RATE)
    decoded = 0
    with contextlib.closing(_blocks(path)) as blocks:  # the file closes as soon as reading stops
        for block in blocks:
            decoded += block.shape[0]
            if limit is not None and decoded > limit:
                said = f" (the header says {expected_duration_s:.0f} s)" if expected_duration_s else ""
                raise AudioTooLong(f"the audio runs past {max_s:.0f} s{said}")
            yield block
    if decoded == 0:
        raise UndecodableAudio("no decodable audio frames")
    decoded_s = decoded / SAMPLE_RATE
    if expected_duration_s and decoded_s < MIN_DECODED_SHARE * expected_duration_s:
        raise UndecodableAudio(f"truncated: the header says {expected_duration_s:.1f} s, only {decoded_s:.1f} s decode")


def short_bound_s(expected_duration_s: float) -> float:
    """How long a short upload may decode: well past its header, whose length can be an estimate
    (an MP3 without a frame count), but never the hours a lying header could hide."""
    return 1.5 * expected_duration_s + 30.0


def decode(path: Path, expected_duration_s: float | None = None, max_s: float = MAX_DURATION_S) -> np.ndarray:
    """The whole recording in memory, for audio known to be short; bounded by ``max_s`` all the same."""
    return np.concatenate(list(stream(path, expected_duration_s, max_s)))


def window(path: Path, seconds: float, expected_duration_s: float | None = None) -> np.ndarray:
    """The first ``seconds`` of a recording; nothing after them is decoded.

    A recording that ends inside the window is checked for truncation against its header.
    """
    wanted = round(seconds * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    have = 0
    with contextlib.closing(stream(path, expected_duration_s)) as blocks:
        for block in blocks:
            parts.append(block[: wanted - have])
            have += parts[-1].shape[0]
            if have >= wanted:
                break
    return np.concatenate(parts)


def _blocks(path: Path) -> Generator[np.ndarray, None, None]:
    """Every decoded frame, downmixed and resampled by FFmpeg into one-second blocks.

    ``rematrix_maxval=1`` scales the downmix so that no sample can pass full scale: stereo
    becomes the mean of its channels (FFmpeg's default for float output is their sum / √2).
    """
    resampler = av.AudioResampler(
        format="flt", layout="mono", rate=SAMPLE_RATE, frame_size=BLOCK_SAMPLES, options={"rematrix_maxval": "1.0"}
    )
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UndecodableAudio("no audio stream")
            track = container.streams.audio[0]
            for frame in _frames(container, track):
                for resampled in resampler.resample(frame):
                    yield resampled.to_ndarray()[0]
            for resampled in resampler.resample(None):
                yield resampled.to_ndarray()[0]
    except (av.FFmpegError, OSError, ValueError) as exc:
        # The library's message names the server's file: it stays in the log (the edge logs the
        # cause with the request id), and the client hears only what is wrong with its audio.
        what = "invalid data in the audio stream" if isinstance(exc, av.InvalidDataError) else "damaged audio frames"
        raise UndecodableAudio(f"the decoder stopped: {what}") from exc


def _frames(container: av.container.InputContainer, stream: av.AudioStream):  # type: ignore[no-untyped-def]
    """Decoded frames, skipping damaged packets the way ffmpeg does; stops at a broken tail."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            continue
