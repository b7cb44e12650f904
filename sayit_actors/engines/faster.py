"""The faster-whisper engine (CTranslate2): CPU int8 or CUDA float16.

One model per process; ``num_workers`` equals the node's slot count so that the slots' threads
decode in parallel instead of queueing on one model replica.
"""

from __future__ import annotations

import logging
import os
import time

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel

from config import EngineSettings
from sayit_actors.audio import silence
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
    model_store,
)

log = logging.getLogger(__name__)
_HUB_MODELS = ("tiny", "base", "small", "medium", "large-v2", "large-v3")


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _cpu_threads(requested: int, workers: int) -> int:
    """Threads per worker: the cores shared out so that busy slots do not oversubscribe them."""
    return requested or max(1, (os.cpu_count() or 1) // workers)


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(self, model: WhisperModel, model_name: str, device: str, compute_type: str, workers: int):
        self._model = model
        self.model = model_name
        self.device = device
        self.compute_type = compute_type
        self.workers = workers

    @property
    def whisper_model(self) -> WhisperModel:
        """The loaded faster-whisper model, for comparing with faster-whisper's own pipelines."""
        return self._model

    @classmethod
    def load(cls, settings: EngineSettings, workers: int) -> FasterWhisperEngine:
        device = _device(settings.device)
        if device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise EngineUnavailable("SAYIT_DEVICE=cuda but CTranslate2 sees no CUDA device")
        compute_type = settings.compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        common = {
            "device": device,
            "compute_type": compute_type,
            "cpu_threads": _cpu_threads(settings.cpu_threads, workers),
            "num_workers": workers,
        }
        started = time.perf_counter()
        name = settings.model
        try:
            if name == model_store.BUNDLED:
                model = WhisperModel(name, files=model_store.bundled_files(), **common)
            elif (folder := model_store.local_model_dir(name)) is not None:
                model = WhisperModel(str(folder), **common)
            elif name in _HUB_MODELS:
                # Only a copy already in the local Hugging Face cache: no download at run time.
                model = WhisperModel(name, local_files_only=True, **common)
            else:
                raise EngineUnavailable(
                    f"SAYIT_MODEL={name!r} is neither 'base', a model name ({', '.join(_HUB_MODELS)}) "
                    "nor a folder holding a CTranslate2 model.bin"
                )
        except EngineUnavailable:
            raise
        except FileNotFoundError as exc:
            raise EngineUnavailable(str(exc)) from exc
        except Exception as exc:
            raise EngineUnavailable(
                f"cannot load Whisper model {name!r} on {device}/{compute_type}: {exc}. "
                f"For {name!r}, download it once where there is network "
                f"(huggingface-cli download Systran/faster-whisper-{name}) or point SAYIT_MODEL "
                "at a local CTranslate2 folder."
            ) from exc
        log.info(
            "loaded Whisper %s with faster-whisper on %s/%s, %d workers, in %.2f s",
            name,
            device,
            compute_type,
            workers,
            time.perf_counter() - started,
        )
        return cls(model, name, device, compute_type, workers)

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcript:
        return silence.transcribe(self._decode, audio, options)

    def _decode(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcript:
        """One faster-whisper call on all of ``audio`` (its own Silero filter is never used: it
        joins the speech of a chunk into one window, and Whisper stops after the first passage)."""
        segments_iter, info = self._model.transcribe(
            audio,
            language=options.language,
            task=options.task,
            beam_size=options.beam_size,
            patience=options.patience,
            best_of=options.best_of,
            temperature=list(options.temperatures),
            condition_on_previous_text=options.condition_on_previous_text,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt,
            hotwords=options.hotwords,
            no_speech_threshold=options.no_speech_threshold,
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.log_prob_threshold,
            without_timestamps=options.without_timestamps,
        )
        segments = tuple(
            Segment(
                start=round(s.start, 3),
                end=round(s.end, 3),
                text=s.text.strip(),
                words=tuple(
                    Word(round(w.start, 3), round(w.end, 3), w.word, round(w.probability, 4)) for w in s.words or ()
                ),
                no_speech_prob=round(s.no_speech_prob, 4),
                avg_logprob=round(s.avg_logprob, 4),
                compression_ratio=round(s.compression_ratio, 4),
            )
            for s in segments_iter
        )
        return Transcript(
            text=join_text(segments),
            language=info.language,
            language_probability=round(float(info.language_probability), 4),
            duration_s=round(float(info.duration), 3),
            segments=segments,
            options=options,
        )

    def detect_language(self, audio: np.ndarray) -> LanguageGuess:
        language, probability, ranked = self._model.detect_language(audio[:DETECT_SAMPLES])
        candidates = tuple((str(lang), round(float(p), 4)) for lang, p in ranked[:LANGUAGE_CANDIDATES])
        return LanguageGuess(str(language), round(float(probability), 4), candidates)
