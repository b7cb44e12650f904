"""The samples Whisper needs.

Decoding goes through PyAV for every format and
yields 16 kHz mono float32 (FFmpeg downmixes several channels to their mean and resamples in
one step), as a stream of one-second blocks: a long upload is never whole in memory, and
every read is bounded in decoded length, whatever the header claims.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from pathlib import Path

import av
import numpy as np

from config import Limits
from sayit_actors.errors import AudioTooLong, UndecodableAudio

SAMPLE_RATE = 16_000
BLOCK_SAMPLES = SAMPLE_RATE  # the streaming reader's block: one second, 64 KB
MAX_DURATION_S = Limits.max_duration_s  # decode's bound unless a caller gives its own
# Decoded audio shorter than this share of the header's duration means a truncated file.
MIN_DECODED_SHARE = 0.9
log = logging.getLogger(__name__)


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
