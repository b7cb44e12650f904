"""The mlx-whisper engine: Apple Silicon's GPU (and MLX's CPU build elsewhere).

mlx-whisper 0.4 has no beam search (``beam_size`` raises NotImplementedError), so a profile's
``beam_size`` and ``patience`` cannot take effect here: the first pass is greedy at
temperature 0, then the profile's temperature ladder with ``best_of`` samples, as on
faster-whisper. The model is a local folder of ``config.json`` + ``weights.npz``
(``SAYIT_MODEL``, or ``<SAYIT_DATA_DIR>/mlx/<model>`` for a converted model); nothing is
fetched from a hub. Audio is passed as decoded samples, so no ffmpeg binary is needed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from config import EngineSettings
from sayit_actors.engine import EngineUnavailable, Segment, Transcript, TranscriptionOptions, join_text

log = logging.getLogger(__name__)


def mlx_model_dir(model: str, data_dir: str) -> Path:
    path = Path(model).expanduser()
    if (path / "weights.npz").is_file() or (path / "weights.safetensors").is_file():
        return path
    return Path(data_dir) / "mlx" / model


class MlxEngine:
    name = "mlx"
    compute_type = "float16"

    def __init__(self, module: Any, folder: Path, model_name: str, device: str, workers: int):
        self._mlx_whisper = module
        self._folder = str(folder)
        self.model = model_name
        self.device = device
        self.workers = workers
        # MLX evaluates on one GPU stream per process: calls from several slots run one at a time.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: EngineSettings, workers: int, data_dir: str) -> MlxEngine:
        try:
            import mlx.core as mx
            import mlx_whisper
        except ImportError as exc:
            raise EngineUnavailable(
                f"SAYIT_ENGINE=mlx needs mlx-whisper: pip install 'sayit[mlx]' on an Apple Silicon Mac ({exc})"
            ) from exc
        folder = mlx_model_dir(settings.model, data_dir)
        if not (folder / "config.json").is_file():
            raise EngineUnavailable(
                f"no MLX model at {folder}: convert one (sayit convert-mlx) or set SAYIT_MODEL to a folder "
                "holding config.json and weights.npz"
            )
        from mlx_whisper.load_models import load_model
        from mlx_whisper.transcribe import ModelHolder

        # Load once at start so the first request does not pay for it (mlx_whisper caches by path).
        ModelHolder.model = load_model(str(folder), dtype=mx.float16)
        ModelHolder.model_path = str(folder)
        device = str(mx.default_device())
        log.info("loaded Whisper %s with mlx-whisper from %s on %s", settings.model, folder, device)
        return cls(mlx_whisper, folder, settings.model, device, workers)

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcript:
        with self._lock:
            result = self._mlx_whisper.transcribe(
                audio,
                path_or_hf_repo=self._folder,
                verbose=None,
                temperature=options.temperatures,
                condition_on_previous_text=options.condition_on_previous_text,
                language=options.language,
                best_of=options.best_of,
            )
        segments = tuple(
            Segment(start=round(float(s["start"]), 3), end=round(float(s["end"]), 3), text=str(s["text"]).strip())
            for s in result["segments"]
        )
        return Transcript(
            text=join_text(segments),
            language=str(result.get("language") or options.language or ""),
            language_probability=1.0 if options.language else 0.0,
            duration_s=round(audio.shape[0] / 16_000, 3),
            segments=segments,
            options=options,
        )
