"""Audio: sniffing and probing (``sniff``), bounded streaming decoding (``decode``), cutting a
recording into chunks (``chunking``) and the silence guards around the engine (``silence``)."""

from sayit_actors.audio.decode import BLOCK_SAMPLES, SAMPLE_RATE, decode, short_bound_s, stream, window
from sayit_actors.audio.sniff import AudioFormat, AudioInfo, probe, sniff, sniff_file

__all__ = [
    "BLOCK_SAMPLES",
    "SAMPLE_RATE",
    "AudioFormat",
    "AudioInfo",
    "decode",
    "probe",
    "short_bound_s",
    "sniff",
    "sniff_file",
    "stream",
    "window",
]
