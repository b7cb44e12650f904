"""Small audio files the tests make from the corpus: other containers, damage, silence."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np

from sayit_actors import audio


def encode(samples: np.ndarray, path: Path, container: str, codec: str, rate: int = 16_000) -> Path:
    """Write mono float32 ``samples`` (16 kHz) with PyAV's encoder ``codec`` into ``container``."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame_len = 1024
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for start in range(0, len(samples), frame_len):
            block = samples[start : start + frame_len].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
            frame.sample_rate = audio.SAMPLE_RATE
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return path


def normalized(text: str) -> str:
    """Lower case, letters and digits only, single spaces: for comparing transcripts."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
