"""The faster-whisper engine (CTranslate2): CPU int8 or CUDA float16.

One model per process, driven by the batcher (see ``batcher``) and loaded twice: once with every
core for a wide pass and, on a CPU, once with a one-thread worker per batcher lane for the narrow
passes that run side by side. A wide pass always encodes with every core; whether it also decodes
with every core is timed once at load (``_decoder_gains_from_threads``): on some CPUs one thread
runs the decoder's small steps faster than several, and then a wide pass shares its windows'
decoding out over the lanes' one-thread workers. The windows every slot hands over go through the
encoder and the decoder together, the way faster-whisper's ``BatchedInferencePipeline`` decodes
one file's windows, but across requests. Each window keeps its own language (detected per window
when none is given), prompt and hotwords; windows that differ in the settings a pass shares (beam
size, patience, word timestamps, task) go in separate passes. A window the pass heard badly
(compression ratio or average log-probability past the profile's thresholds) is decoded again on
its own with the profile's temperature ladder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from config import EngineSettings
from sayit_actors.audio import SAMPLE_RATE
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
from sayit_actors.engines.batcher import BatchedEngine, Rest, Window

log = logging.getLogger(__name__)
_HUB_MODELS = ("tiny", "base", "small", "medium", "large-v2", "large-v3")
N_SAMPLES = 30 * SAMPLE_RATE  # one Whisper window: longer audio is decoded by the sequential path
CALIBRATION_STEPS = 24  # decoder steps timed at load on each model
MIN_REST_S = 0.5  # speech left after a window's last segment shorter than this is not decoded again
_PREPEND = "\"'“¿([{-"  # faster-whisper's defaults for attaching punctuation to words
_APPEND = "\"'.。,，!！?？:：”)]}、"


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _load_model(name: str, data_dir: str | Path | None, **options: Any) -> WhisperModel:
    if name == model_store.BUNDLED:
        if data_dir is not None:
            try:
                return WhisperModel(str(model_store.bundled_dir(data_dir)), **options)
            except OSError as exc:  # a read-only or full data directory: the model from memory
                log.warning("cannot write the bundled model under %s (%s); loading it from memory", data_dir, exc)
        return WhisperModel(name, files=model_store.bundled_files(), **options)
    if (folder := model_store.local_model_dir(name)) is not None:
        return WhisperModel(str(folder), **options)
    if name in _HUB_MODELS:  # only a copy already in the local Hugging Face cache: no download at run time
        return WhisperModel(name, local_files_only=True, **options)
    raise EngineUnavailable(
        f"SAYIT_MODEL={name!r} is neither 'base', a model name ({', '.join(_HUB_MODELS)}) "
        "nor a folder holding a CTranslate2 model.bin"
    )


def _decoder_gains_from_threads(wide: WhisperModel, narrow: WhisperModel) -> bool:
    """Whether a wide pass decodes faster with every thread than on one lane's one-thread worker:
    a lone window's beam search over a silent window, ``CALIBRATION_STEPS`` steps on each model,
    the faster of two runs. The encoder's large matrices gain from threads; the decoder's small
    steps may not (on a 2-vCPU VM two threads decoded a lone window 2.2 times slower than one)."""
    tokenizer = Tokenizer(wide.hf_tokenizer, wide.model.is_multilingual, task="transcribe", language="en")
    prompt = wide.get_prompt(tokenizer, [], without_timestamps=False)
    silent = pad_or_trim(wide.feature_extractor(np.zeros(SAMPLE_RATE, np.float32)))
    encoder_output = wide.encode(silent[np.newaxis].astype(np.float32))
    seconds = []
    for model in (wide, narrow):
        best = math.inf
        for _ in range(2):
            started = time.perf_counter()
            model.model.generate(
                encoder_output, [prompt], beam_size=5, max_length=len(prompt) + CALIBRATION_STEPS,
                suppress_tokens=[-1, tokenizer.eot],  # never the end: every run takes its steps
            )  # fmt: skip
            best = min(best, time.perf_counter() - started)
        seconds.append(best)
    log.info(
        "a lone window's %d decoder steps: %.0f ms with every thread, %.0f ms on one lane's worker",
        CALIBRATION_STEPS, seconds[0] * 1000, seconds[1] * 1000,
    )  # fmt: skip
    return seconds[0] <= seconds[1]


def _batch_key(options: TranscriptionOptions) -> tuple[Any, ...]:
    """What the windows of one pass must share (a window's language, prompt and hotwords are its own)."""
    return (
        options.language is None,
        options.language,
        options.task,
        options.beam_size,
        options.patience,
        options.temperatures[:1],
        options.word_timestamps,
        options.without_timestamps,
    )


def _rows(output: ctranslate2.StorageView, rows: list[int]) -> ctranslate2.StorageView:
    """Some rows of an encoder output (windows of one language in a pass of several)."""
    on_cpu = output.to_device(ctranslate2.Device.cpu) if output.device != "cpu" else output
    picked = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(on_cpu)[rows]))
    return picked.to_device(ctranslate2.Device.cuda) if output.device != "cpu" else picked


def _segment(part: dict[str, Any], no_speech_prob: float, avg_logprob: float) -> Segment:
    return Segment(
        start=round(float(part["start"]), 3),
        end=round(float(part["end"]), 3),
        text=part["text"].strip(),
        words=tuple(
            Word(round(float(w["start"]), 3), round(float(w["end"]), 3), w["word"], round(float(w["probability"]), 4))
            for w in part.get("words") or ()
        ),
        no_speech_prob=round(float(no_speech_prob), 4),
        avg_logprob=round(float(avg_logprob), 4),
        compression_ratio=round(get_compression_ratio(part["text"]), 4),
    )


class FasterWhisperEngine(BatchedEngine):
    name = "faster-whisper"

    def __init__(
        self, model: WhisperModel, model_name: str, device: str, compute_type: str, workers: int,
        settings: EngineSettings, narrow: WhisperModel | None = None, lanes: int = 1,
        decodes_wide: bool = True, wide_decoder_threads: int | None = None,
    ):  # fmt: skip
        self._model = model
        self._narrow = narrow or model
        self._decodes_wide = decodes_wide  # a wide pass decodes on every thread, else on the lanes' workers
        self.wide_decoder_threads = wide_decoder_threads
        super().__init__(model_name, device, compute_type, workers, settings, self._decode_batch, lanes)

    @property
    def whisper_model(self) -> WhisperModel:
        """The loaded faster-whisper model, for comparing with faster-whisper's own pipelines."""
        return self._model

    @classmethod
    def load(cls, settings: EngineSettings, workers: int, data_dir: str | Path | None = None) -> FasterWhisperEngine:
        """The engine with its models loaded; the bundled model is read from a folder it writes
        under ``data_dir`` (from memory without one, at a cost of its size for each model)."""
        device = _device(settings.device)
        if device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise EngineUnavailable("SAYIT_DEVICE=cuda but CTranslate2 sees no CUDA device")
        compute_type = settings.compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        threads, lanes = settings.threads(), settings.batch_lanes_for(device)
        started = time.perf_counter()
        name = settings.model
        try:
            # The wide passes' model: one worker with every thread. The narrow passes' (when the
            # batcher has lanes): a worker per lane, each with its share of the threads.
            kwargs = {"device": device, "compute_type": compute_type}
            model = _load_model(name, data_dir, cpu_threads=threads, num_workers=1, **kwargs)
            narrow = None
            if lanes > 1:
                narrow = _load_model(name, data_dir, cpu_threads=threads // lanes, num_workers=lanes, **kwargs)
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
            "loaded Whisper %s with faster-whisper on %s/%s, %d slots, %d batch lanes, in %.2f s",
            name,
            device,
            compute_type,
            workers,
            lanes,
            time.perf_counter() - started,
        )
        decodes_wide = narrow is None or _decoder_gains_from_threads(model, narrow)
        # On a CPU, the threads that decode one window of a wide pass: every one, or a lane's share.
        decoder_threads = (threads if decodes_wide else threads // lanes) if device == "cpu" else None
        return cls(model, name, device, compute_type, workers, settings, narrow, lanes, decodes_wide, decoder_threads)

    def _whisper(self, wide: bool) -> WhisperModel:
        return self._model if wide else self._narrow

    def _generate(
        self, encoder_output: ctranslate2.StorageView, prompts: list[list[int]], wide: bool, **options: Any
    ) -> list[Any]:
        """The decoder over a pass's windows. A wide pass on a CPU whose decoder gains nothing from
        threads hands its windows to the lanes' one-thread workers, side by side, one share each."""
        if not wide or self._decodes_wide:
            return list(self._whisper(wide).model.generate(encoder_output, prompts, **options))
        lanes = self.batcher.lanes
        shares = [list(range(lane, len(prompts), lanes)) for lane in range(min(lanes, len(prompts)))]
        pending = [
            self._narrow.model.generate(
                encoder_output if len(shares) == 1 else _rows(encoder_output, share),
                [prompts[i] for i in share],
                asynchronous=True,
                **options,
            )
            for share in shares
        ]
        results: list[Any] = [None] * len(prompts)
        for share, answers in zip(shares, pending, strict=True):
            for i, answer in zip(share, answers, strict=True):
                results[i] = answer.result()
        return results

    def _decode_batch(self, windows: Sequence[Window], wide: bool) -> list[Transcript | Rest | BaseException]:
        """Batched passes over the windows, grouped by the settings a pass shares; a window longer
        than 30 s, or one a pass heard badly, is decoded on its own with the temperature ladder
        (faster-whisper's sequential ``transcribe``)."""
        results: list[Transcript | Rest | BaseException | None] = [None] * len(windows)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, window in enumerate(windows):
            if window.samples.shape[0] <= N_SAMPLES:
                groups.setdefault(_batch_key(window.options), []).append(i)
        for members in groups.values():
            try:
                heard = self._pass([windows[i] for i in members], wide)
            except Exception:  # each on its own: a window that fails fails only itself
                log.exception("a batched pass of %d windows failed; decoding them one by one", len(members))
                continue
            for i, transcript in zip(members, heard, strict=True):
                results[i] = transcript
        return [
            self._alone(window, wide) if result is None else result
            for window, result in zip(windows, results, strict=True)
        ]

    def _alone(self, window: Window, wide: bool) -> Transcript | BaseException:
        """A window the passes could not take, decoded by the sequential path; its failure is its own."""
        try:
            return self._sequential(window.samples, window.options, wide and self._decodes_wide)
        except Exception as exc:
            return exc

    def _pass(self, windows: Sequence[Window], wide: bool = True) -> list[Transcript | Rest | None]:
        """Windows (each at most 30 s, same settings) through the encoder and the decoder together.

        A window whose text stops before its end without closing its last segment (Whisper writes
        what it is sure of and leaves the rest) is answered with a ``Rest`` from its last complete
        segment, decoded again in a next pass, as the sequential path seeks on; None for a window
        the sequential path's checks would decode again hotter."""
        model = self._whisper(wide)
        options = windows[0].options
        # Every frame the feature extractor gives, as the sequential path's language detection hears
        # them: a window of two languages is then given the one the sequential path would give it.
        features = np.stack([pad_or_trim(model.feature_extractor(w.samples)) for w in windows])
        encoder_output = model.encode(features.astype(np.float32))
        languages: list[tuple[str, float]] = []
        detected = model.model.detect_language(encoder_output) if options.language is None else None
        for i in range(len(windows)):
            if detected is None:
                languages.append((str(options.language), 1.0))
            else:
                token, probability = detected[i][0]
                languages.append((token[2:-2], float(probability)))  # "<|en|>" -> "en"
        tokenizers = {
            lang: Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=options.task, language=lang)
            for lang in {lang for lang, _ in languages}
        }
        prompts = [
            model.get_prompt(
                tokenizers[lang],
                previous_tokens=tokenizers[lang].encode(" " + w.options.initial_prompt.strip())
                if w.options.initial_prompt
                else [],
                without_timestamps=options.without_timestamps,
                hotwords=w.options.hotwords,
            )
            for w, (lang, _) in zip(windows, languages, strict=True)
        ]
        results = self._generate(
            encoder_output,
            prompts,
            wide,
            beam_size=options.beam_size,
            patience=options.patience,
            length_penalty=1,
            max_length=model.max_length,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(next(iter(tokenizers.values())), [-1]),
            return_scores=True,
            return_no_speech_prob=True,
            sampling_temperature=options.temperatures[0] if options.temperatures else 0.0,
        )
        split: list[list[dict[str, Any]]] = []
        sizes: list[int] = []
        resumes: list[float | None] = []
        for window, result, (lang, _) in zip(windows, results, languages, strict=True):
            tokenizer = tokenizers[lang]
            size = int(math.ceil(window.audio_s) * model.frames_per_second)
            parts, seek, _ = model._split_segments_by_timestamps(
                tokenizer=tokenizer, tokens=result.sequences_ids[0], time_offset=0.0, segment_size=size,
                segment_duration=window.audio_s, seek=0,
            )  # fmt: skip
            for part in parts:
                part["text"] = tokenizer.decode(part["tokens"])
            split.append(parts)
            sizes.append(size)
            resume_s = seek / model.frames_per_second
            resumes.append(resume_s if seek < size and window.audio_s - resume_s >= MIN_REST_S else None)
        if options.word_timestamps:
            for lang, tokenizer in tokenizers.items():
                members = [i for i, (language, _) in enumerate(languages) if language == lang]
                output = encoder_output if len(members) == len(windows) else _rows(encoder_output, members)
                model.add_word_timestamps(
                    [split[i] for i in members], tokenizer, output, [sizes[i] for i in members],
                    _PREPEND, _APPEND, 0.0,
                )  # fmt: skip
        out: list[Transcript | Rest | None] = []
        for window, result, parts, (lang, probability), resume_s in zip(
            windows, results, split, languages, resumes, strict=True
        ):
            seq_len = len(result.sequences_ids[0])
            avg_logprob = result.scores[0] * seq_len / (seq_len + 1)  # length_penalty 1, as faster-whisper
            text = "".join(p["text"] for p in parts)
            silent = result.no_speech_prob > window.options.no_speech_threshold and (
                avg_logprob < window.options.log_prob_threshold
            )
            if (
                not silent
                and len(window.options.temperatures) > 1
                and (
                    get_compression_ratio(text) > window.options.compression_ratio_threshold
                    or avg_logprob < window.options.log_prob_threshold
                )
            ):
                out.append(None)  # the sequential path decodes it again with the temperature ladder
                continue
            segments = () if silent else tuple(
                _segment(p, result.no_speech_prob, avg_logprob) for p in parts if p["text"].strip()
            )  # fmt: skip
            heard = Transcript(
                join_text(segments), lang, round(probability, 4), round(window.audio_s, 3), segments, window.options
            )
            out.append(heard if silent or resume_s is None else Rest(heard, resume_s))
        return out

    def _sequential(self, audio: np.ndarray, options: TranscriptionOptions, wide: bool = True) -> Transcript:
        """One faster-whisper call on all of ``audio`` (its own Silero filter is never used: it
        joins the speech of a chunk into one window, and Whisper stops after the first passage)."""
        segments_iter, info = self._whisper(wide and self._decodes_wide).transcribe(
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
        language, probability, ranked = self.batcher.call(lambda: self._model.detect_language(audio[:DETECT_SAMPLES]))
        candidates = tuple((str(lang), round(float(p), 4)) for lang, p in ranked[:LANGUAGE_CANDIDATES])
        return LanguageGuess(str(language), round(float(probability), 4), candidates)
