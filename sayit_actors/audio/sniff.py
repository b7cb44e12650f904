"""What the bytes are and how long they last, judged from the header alone.

The format is sniffed from the bytes, never taken from the client's Content-Type. Duration
comes from the header (soundfile for WAV/FLAC/OGG/MP3, PyAV's demuxer for MP4/AAC/WebM) so a
100 MB upload is judged without decoding it.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import soundfile

from sayit_actors.errors import InvalidFormat, UndecodableAudio

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
