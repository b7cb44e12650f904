"""The mlx-whisper engine: Apple Silicon's GPU (and MLX's CPU build elsewhere, for CI).

mlx-whisper 0.4 has no beam search (``beam_size`` raises NotImplementedError), so a profile's
``beam_size`` and ``patience`` cannot take effect here: the first pass is greedy at
temperature 0, then the profile's temperature ladder with ``best_of`` samples, as on
faster-whisper. The model is a local folder of ``config.json`` + ``weights.npz``: a configured
MLX folder (``SAYIT_MODEL``), or the bundled base (or a CTranslate2 folder) converted once
under ``<SAYIT_DATA_DIR>/mlx/``; nothing is fetched from a hub. Audio is passed as decoded
samples, so no ffmpeg binary is needed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from config import EngineSettings
from sayit_actors.engines import (
    DETECT_SAMPLES,
    LANGUAGE_CANDIDATES,
    EngineUnavailable,
    LanguageGuess,
    Segment,
    Transcript,
    TranscriptionOptions,
    Word,
    join_text,
)
from sayit_actors.engines.batcher import BatchedEngine, Rest, Window
from sayit_actors.engines.mlx_convert import ConversionError, ensure_converted

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_mlx_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("weights.npz", "weights.safetensors")
    )


def mlx_model_dir(model: str, data_dir: str) -> Path:
    """The MLX folder for ``model``: itself when it is one, else its conversion under ``data_dir``."""
    path = Path(model).expanduser()
    if is_mlx_folder(path):
        return path
    try:
        return ensure_converted(model, data_dir)
    except (ConversionError, FileNotFoundError) as exc:
        raise EngineUnavailable(
            f"SAYIT_MODEL={model!r} has no MLX form: give an MLX folder (config.json + weights.npz), "
            f"'base', or a CTranslate2 folder to convert ({exc})"
        ) from exc


class _MlxThread:
    """The one thread every MLX call of the process runs on, the load included.

    MLX keeps its streams per thread: a thread that did not create one fails with "There is no
    Stream(cpu, 0) in current thread". One model evaluates one graph at a time anyway, so the
    slots' calls run in turn. The thread is a daemon that never ends: an MLX thread that exits
    before the process aborts it at exit ("terminate called without an active exception").
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sayit-mlx", daemon=True)
                self._thread.start()
        future: Future[T] = Future()
        self._calls.put((future, lambda: fn(*args, **kwargs)))
        return future.result()

    def _run(self) -> None:
        while True:
            future, fn = self._calls.get()
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


_MLX = _MlxThread()


class MlxEngine(BatchedEngine):
    name = "mlx"

    def __init__(
        self, module: Any, folder: Path, model_name: str, device: str, compute_type: str, workers: int,
        settings: EngineSettings,
    ):  # fmt: skip
        self._mlx_whisper = module
        self._folder = str(folder)
        # The same batcher as faster-whisper's, but its passes decode their windows one after
        # another: mlx-whisper's decoder takes a batch of mel windows only without its temperature
        # ladder, word timestamps and timestamp rules, which the profiles need.
        super().__init__(model_name, device, compute_type, workers, settings, self._decode_batch)

    @classmethod
    def load(cls, settings: EngineSettings, workers: int, data_dir: str) -> MlxEngine:
        return _MLX.call(cls._load, settings, workers, data_dir)

    @classmethod
    def _load(cls, settings: EngineSettings, workers: int, data_dir: str) -> MlxEngine:
        try:
            import mlx.core as mx
            import mlx_whisper
            from mlx_whisper.load_models import load_model
            from mlx_whisper.transcribe import ModelHolder
        except ImportError as exc:
            raise EngineUnavailable(
                "SAYIT_ENGINE=mlx needs mlx-whisper: pip install 'sayit[mlx]' on an Apple Silicon Mac, "
                f"or 'sayit[mlx-cpu]' on Linux ({exc})"
            ) from exc
        started = time.perf_counter()
        folder = mlx_model_dir(settings.model, data_dir)
        device = str(mx.default_device())
        compute_type = settings.compute_type
        if compute_type == "auto":  # half precision on the GPU; the CPU build computes float32 natively
            compute_type = "float16" if "gpu" in device else "float32"
        dtype = mx.float16 if compute_type == "float16" else mx.float32
        # Load once at start, so the first request does not pay for it (mlx-whisper caches by path).
        ModelHolder.model = load_model(str(folder), dtype=dtype)
        ModelHolder.model_path = str(folder)
        heads = _alignment_heads(folder)
        if heads is not None:
            ModelHolder.model.set_alignment_heads(heads)
        log.info(
            "loaded Whisper %s with mlx-whisper from %s on %s/%s in %.2f s",
            settings.model, folder, device, compute_type, time.perf_counter() - started,
        )  # fmt: skip
        return cls(mlx_whisper, folder, settings.model, device, compute_type, workers, settings)

    def _decode_batch(self, windows: Sequence[Window], wide: bool) -> list[Transcript | Rest | BaseException]:
        results: list[Transcript | Rest | BaseException] = []
        for window in windows:
            try:
                results.append(self._decode(window.samples, window.options))
            except Exception as exc:
                results.append(exc)
        return results

    def _decode(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcript:
        """One mlx-whisper call on all of ``audio``."""
        result = _MLX.call(
            self._mlx_whisper.transcribe,
            audio,
            path_or_hf_repo=self._folder,
            verbose=None,
            temperature=options.temperatures,
            condition_on_previous_text=options.condition_on_previous_text,
            language=options.language,
            task=options.task,
            best_of=options.best_of,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt or options.hotwords,  # no hotwords in mlx-whisper
            no_speech_threshold=options.no_speech_threshold,
            compression_ratio_threshold=options.compression_ratio_threshold,
            logprob_threshold=options.log_prob_threshold,
            without_timestamps=options.without_timestamps,
            fp16=self.compute_type == "float16",
        )
        segments = tuple(
            Segment(
                start=round(float(s["start"]), 3),
                end=round(float(s["end"]), 3),
                text=str(s["text"]).strip(),
                words=tuple(
                    Word(
                        round(float(w["start"]), 3),
                        round(float(w["end"]), 3),
                        str(w["word"]),
                        round(float(w["probability"]), 4),
                    )
                    for w in s.get("words", ())
                ),
                no_speech_prob=round(float(s.get("no_speech_prob", 0.0)), 4),
                avg_logprob=round(float(s.get("avg_logprob", 0.0)), 4),
                compression_ratio=round(float(s.get("compression_ratio", 0.0)), 4),
            )
            for s in result["segments"]
        )
        return Transcript(
            text=join_text(segments),
            language=str(result.get("language") or options.language or ""),
            language_probability=1.0 if options.language else 0.0,  # mlx-whisper does not report it
            duration_s=round(audio.shape[0] / 16_000, 3),
            segments=segments,
            options=options,
        )

    def detect_language(self, audio: np.ndarray) -> LanguageGuess:
        return _MLX.call(self._detect_language, audio)

    def _detect_language(self, audio: np.ndarray) -> LanguageGuess:
        import mlx.core as mx
        from mlx_whisper.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim
        from mlx_whisper.decoding import detect_language
        from mlx_whisper.transcribe import ModelHolder

        model = ModelHolder.model
        window = mx.array(audio[:DETECT_SAMPLES].astype(np.float32))
        mel = log_mel_spectrogram(pad_or_trim(window, N_SAMPLES), n_mels=model.dims.n_mels)
        dtype = mx.float16 if self.compute_type == "float16" else mx.float32
        _, probabilities = detect_language(model, mel.astype(dtype))
        ranked = sorted(probabilities.items(), key=lambda item: item[1], reverse=True)  # one window: one dict
        candidates = tuple((str(lang), round(float(p), 4)) for lang, p in ranked[:LANGUAGE_CANDIDATES])
        return LanguageGuess(candidates[0][0], candidates[0][1], candidates)


def _alignment_heads(folder: Path) -> np.ndarray | None:
    """The model's word-timing attention heads, kept by the converter from CTranslate2's config."""
    meta = folder / "sayit.json"
    if not meta.is_file():
        return None
    heads = json.loads(meta.read_text()).get("alignment_heads")
    return np.asarray(heads, dtype=np.int64) if heads else None
