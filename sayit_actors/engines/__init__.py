"""The engines: one loaded Whisper model serving every slot of a node.

``base`` holds the interface every engine meets; ``faster`` (CTranslate2; Linux, CPU int8 or
CUDA float16) and ``mlx`` (Apple Silicon) implement it. ``create_engine`` picks one from the
settings and fails at start, with what to install, when the chosen one cannot be had; it never
swaps models silently. The implementations are imported only when chosen, so the interface
never depends on them.
"""

from __future__ import annotations

import platform
import sys

from config import EngineSettings
from sayit_actors.engines.base import (
    DETECT_S,
    DETECT_SAMPLES,
    LANGUAGE_CANDIDATES,
    Engine,
    EngineUnavailable,
    LanguageGuess,
    Segment,
    Transcript,
    TranscriptionOptions,
    Word,
    join_text,
)

__all__ = [
    "DETECT_S",
    "DETECT_SAMPLES",
    "LANGUAGE_CANDIDATES",
    "Engine",
    "EngineUnavailable",
    "LanguageGuess",
    "Segment",
    "Transcript",
    "TranscriptionOptions",
    "Word",
    "create_engine",
    "is_apple_silicon",
    "join_text",
]


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def create_engine(settings: EngineSettings, workers: int, data_dir: str = "data") -> Engine:
    """The engine the settings ask for, loaded and ready; raises EngineUnavailable."""
    choice = settings.engine
    if choice == "auto":
        choice = "mlx" if is_apple_silicon() and _mlx_installed() else "faster-whisper"
    if choice == "mlx":
        from sayit_actors.engines.mlx import MlxEngine

        return MlxEngine.load(settings, workers, data_dir)
    from sayit_actors.engines.faster import FasterWhisperEngine

    return FasterWhisperEngine.load(settings, workers, data_dir)


def _mlx_installed() -> bool:
    try:
        import mlx_whisper  # noqa: F401
    except ImportError:
        return False
    return True
