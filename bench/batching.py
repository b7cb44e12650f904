"""Continuous batching: a node's batcher against the bare engine and faster-whisper's own batched pipeline.

The node decodes every 30 s window its slots hand over in shared engine passes (a wide pass with
every core for a lone window, else a pass per lane, one core each). Four figures check what that
promises, each against its anchor measured in the same run, the two interleaved request by
request or round by round so that a busy machine slows both. One ``sayit serve`` at its default
settings (result cache off) serves every level; the anchors run in this process with the same
model, compute type and decoding options as the node.

0. What a pass costs on this machine, which decides what batching can win here: the windows'
first passes (no rests) of the clips through the anchors' copy of the node's engine, in audio
seconds per second, with one window and with the node's batch in each pass, on the lanes side by
side (a one-thread worker each), and in wide passes of one window (a lone request's), encoded with
every thread and decoded with every thread or on one lane's worker (the engine times which at
load). No target: it explains the others.

1. A lone short request: jfk.flac (11 s, language en) posted to an idle node, one at a time,
against the bare engine (one faster-whisper ``WhisperModel.transcribe`` with every core, one worker,
the options the node gives an English short upload; decode + transcribe timed). Target: node
p50 at most 1.10 × bare p50. The same call on one thread (one lane's worker) is reported too: on
a CPU whose decoder gains nothing from threads it is the faster anchor.

2. Eight clients posting 29 s clips of real speech (built from the corpus) in rounds: the node's
throughput in audio seconds per second, latency p50/p90, and how many answers were 202 or 503;
against (a) the design before batching, run bare: one ``WhisperModel`` with one thread per worker
and a worker per core, eight threads calling ``transcribe`` on the same clips, and (b)
faster-whisper's ``BatchedInferencePipeline`` on the same clips joined, with ``clip_timestamps`` at
their boundaries (no voice-activity filter), batch size 8 (its best here), the node's beam size,
patience and timestamps. Targets: node at least 1.4 × (a) and at least 0.9 × (b).

3. A long recording (10 minutes by default, built as longform.py builds it) through the node's job
path, from just before the POST until a status poll sees ``completed``, against
``BatchedInferencePipeline`` on the whole file (its default voice-activity filter, batch size 8;
decode timed too). The word error rate of the job's transcript against the same job path
decoded without batching (the same chunks and windows, each window one plain faster-whisper call)
is the target; against one ``WhisperModel.transcribe`` over the whole file it is reported.
Targets: job wall at most 1.1 × the pipeline's, WER at most 3 %.

4. Memory: the peak resident set of the node process plus its children (the embedded Redis),
sampled every 0.1 s during level 2 at the default batch size. Target: at most 1.5 GB; every load
request of level 2 must have been answered 200 for the figure to count.

What it does not show: clients on other machines (they share the node's cores here), models other
than the configured one, GPUs (see gpu.sh), recordings of many speakers or noisy rooms (the clips
repeat), and the WER against a human reference (the long-form WER compares two machine transcripts).
The anchors run fewer clips than the node (throughput only, no latency).

    .venv/bin/python bench/batching.py [--lone-requests 200] [--clients-requests 200] [--minutes 10]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import common
import longform
import numpy as np
import soundfile
from common import BenchError, Row, verdict

from config import load_settings
from sayit_actors import audio
from sayit_actors.audio import chunking, silence
from sayit_actors.engines import Transcript, TranscriptionOptions
from sayit_actors.engines.batcher import Window
from sayit_actors.engines.textmetrics import word_error_rate

SR = audio.SAMPLE_RATE
T = TypeVar("T")
LONE_AUDIO = common.CORPUS / "jfk.flac"
CLIP_S = 29.0
GAP_S = 0.5
CLIENTS = 8
PAUSE_S = 0.2  # between two timed calls of level 1: the last call's spinning threads go idle
RSS_EVERY_S = 0.1
WARMUP = 2
# The 29 s clips of level 2: corpus clips (file, seconds kept from its start or None for all)
# GAP_S apart, cut or padded with silence to CLIP_S. No clip says a sentence twice: a window
# that repeats itself compresses well and is decoded again hotter, by the node and by faster-whisper.
CLIP_RECIPES: tuple[tuple[str, tuple[tuple[str, float | None], ...]], ...] = (
    ("mit-29s", (("multilingual.mp3", CLIP_S),)),
    ("jfk-stereo-hotwords-mit", (("jfk.flac", None), ("stereo_diarization.wav", None), ("hotwords.mp3", None),
                                 ("multilingual.mp3", 8.0))),
    ("mit-jfk-stereo", (("multilingual.mp3", 11.0), ("jfk.flac", None), ("stereo_diarization.wav", None))),
)  # fmt: skip
# The pipeline's batch size: its best on a CPU (faster-whisper's own CPU figures are at 8), not the
# node's smaller one: the strongest anchor the pipeline makes here.
PIPELINE_BATCH_SIZE = 8
PASS_CLIPS = 12  # level 0
TARGET_LONE_RATIO = 1.10
TARGET_VS_THREADS = 1.4
TARGET_VS_BIP = 0.9
TARGET_JOB_VS_BIP = 1.1
TARGET_WER = 0.03
TARGET_RSS_MB = 1500.0


@dataclass
class Clip:
    name: str
    wav: Path
    samples: np.ndarray
    body: bytes = b""
    content_type: str = ""

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / SR


@dataclass
class Anchors:
    """The models in this process: ``engine`` as the node loads it (all cores, one worker) and one
    with a thread per worker and a worker per core (the design before batching)."""

    engine: Any  # FasterWhisperEngine
    threads_model: Any  # faster_whisper.WhisperModel
    pipeline: Any  # faster_whisper.BatchedInferencePipeline
    batch_size: int  # the node's windows per pass
    cores: int
    pipeline_batch_size: int = PIPELINE_BATCH_SIZE


@dataclass
class Answer:
    status: int
    latency_s: float
    audio_s: float
    text: str = ""


@dataclass
class RssSampler:
    """Peak resident set of a node and of node plus children, sampled on a thread."""

    server: common.Server
    peak_node_mb: float = 0.0
    peak_total_mb: float = 0.0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                node = self.server.rss_mb()
                self.peak_node_mb = max(self.peak_node_mb, node)
                self.peak_total_mb = max(self.peak_total_mb, node + self.server.children_rss_mb())
                self.samples += 1
            self._stop.wait(RSS_EVERY_S)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --- what the anchors call -----------------------------------------------------------------------


def pipeline_transcribe(
    pipeline: Any, samples: np.ndarray, options: TranscriptionOptions, batch_size: int, **extra: Any
) -> str:
    """``BatchedInferencePipeline.transcribe`` with what the node's batched pass shares: language,
    beam size, patience, first temperature, timestamps (the pipeline's default is text only)."""
    segments, _ = pipeline.transcribe(
        samples, language=options.language, task=options.task, beam_size=options.beam_size,
        patience=options.patience, temperature=list(options.temperatures[:1]),
        without_timestamps=options.without_timestamps, word_timestamps=options.word_timestamps,
        batch_size=batch_size, **extra,
    )  # fmt: skip
    return " ".join(s.text.strip() for s in segments).strip()


def load_anchors(settings: Any) -> Anchors:
    from faster_whisper import BatchedInferencePipeline

    from sayit_actors.engines.faster import FasterWhisperEngine

    engine = FasterWhisperEngine.load(settings.engine, workers=1)
    cores = os.cpu_count() or 1
    threads_model = common.load_whisper(settings, engine.device, engine.compute_type, cpu_threads=1, num_workers=cores)
    return Anchors(engine, threads_model, BatchedInferencePipeline(engine.whisper_model),
                   engine.batcher.batch_size, cores)  # fmt: skip


# --- HTTP ----------------------------------------------------------------------------------------


def post(port: int, body: bytes, content_type: str, audio_s: float) -> Answer:
    """One upload on a new connection; a 202 is polled to its end so that its work does not spill into
    what is measured next (its latency then counts to completion)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=common.REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", "/api/transcribe", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        raw = response.read()
        status = response.status
    finally:
        conn.close()
    text = ""
    if status in (200, 202):
        data = json.loads(raw).get("data", {})
        if status == 202:
            job = data["jobId"]
            while data.get("status") not in ("completed", "failed"):
                time.sleep(0.1)
                _, answer = common.request(port, "GET", f"/api/transcribe/{job}")
                data = answer.get("data", {}) if isinstance(answer, dict) else {}
        text = str(data.get("transcription", "")).strip()
    return Answer(status, time.perf_counter() - started, audio_s, text)


def scrape_batch_metrics(port: int) -> dict[str, float]:
    """The node's ``sayit_batch_*`` series (sums and counts), empty when it exposes none."""
    status, text = common.request(port, "GET", "/metrics")
    if status != 200 or not isinstance(text, str):
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(sayit_batch_\w+?)(?:\{[^}]*\})?\s+([-+\d.eE]+|NaN)$", line)
        if match and not match.group(1).endswith("_bucket") and not match.group(1).endswith("_created"):
            found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(2))
    return found


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    if delta.get("sayit_batch_windows_count"):
        delta["mean_windows_per_pass"] = delta.get("sayit_batch_windows_sum", 0.0) / delta["sayit_batch_windows_count"]
    if delta.get("sayit_batch_wait_seconds_count"):
        delta["mean_wait_s"] = delta.get("sayit_batch_wait_seconds_sum", 0.0) / delta["sayit_batch_wait_seconds_count"]
    return delta


def latency(values: Sequence[float]) -> dict[str, float]:
    stats = common.summary(values)
    if values:
        stats["p90_s"] = float(np.percentile(np.asarray(values, dtype=float), 90))
    return stats


def in_threads(count: int, work: Callable[[int], None]) -> float:
    """``work(i)`` on ``count`` threads at once; the wall seconds until the last ends."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def shared_out(count: int, items: Iterable[T], work: Callable[[T], None]) -> float:
    """``count`` threads taking ``items`` in turn, each its next as soon as its last is done; the wall
    seconds until the last ends."""
    left = iter(items)
    lock = threading.Lock()

    def worker(_: int) -> None:
        while True:
            with lock:
                item = next(left, None)
            if item is None:
                return
            work(item)

    return in_threads(count, worker)


# --- level 1: a lone short request ---------------------------------------------------------------


def lone_level(server: common.Server, anchors: Anchors, options: TranscriptionOptions, requests: int) -> dict[str, Any]:
    body, content_type = common.multipart_body(LONE_AUDIO, "en")
    clip_s = audio.probe(LONE_AUDIO).duration_s
    node: list[float] = []
    bare: list[float] = []
    bare_engine_only: list[float] = []
    one_thread: list[float] = []
    failures: list[str] = []
    texts = {"node": "", "bare": "", "one_thread": ""}

    def node_once() -> float:
        answer = post(server.port, body, content_type, clip_s)
        if answer.status != 200 or not answer.text:
            failures.append(f"HTTP {answer.status}")
        texts["node"] = answer.text
        return answer.latency_s

    def bare_once(wide: bool = True) -> tuple[float, float]:
        started = time.perf_counter()
        samples = audio.decode(LONE_AUDIO)
        decoded = time.perf_counter()
        texts["bare" if wide else "one_thread"] = anchors.engine._sequential(samples, options, wide).text.strip()
        done = time.perf_counter()
        return done - started, done - decoded

    for _ in range(WARMUP):
        node_once()
        bare_once()
        bare_once(wide=False)
    failures.clear()
    for i in range(requests):
        # ABBA: which path goes first alternates, so neither always follows the other's spin-down.
        for side in ("node", "bare", "one_thread") if i % 2 == 0 else ("one_thread", "bare", "node"):
            if side == "node":
                node.append(node_once())
            elif side == "one_thread":
                one_thread.append(bare_once(wide=False)[0])
            else:
                whole, engine_only = bare_once()
                bare.append(whole)
                bare_engine_only.append(engine_only)
            time.sleep(PAUSE_S)
        if (i + 1) % 10 == 0 or i + 1 == requests:
            print(f"  lone {i + 1:>4}/{requests}: node p50 {np.median(node):.3f} s, bare p50 {np.median(bare):.3f} s, "
                  f"one thread p50 {np.median(one_thread):.3f} s")  # fmt: skip
    n, b, one = latency(node), latency(bare), latency(one_thread)
    return {
        "audio": LONE_AUDIO.name, "audio_duration_s": clip_s, "requests": requests, "node": n, "bare": b,
        "bare_transcribe_only": latency(bare_engine_only), "ratio_p50": n["p50_s"] / b["p50_s"],
        "bare_one_thread": one, "ratio_p50_vs_one_thread": n["p50_s"] / one["p50_s"],
        "ratio_p90": n["p90_s"] / b["p90_s"], "non_200": len(failures), "failures": failures[:20],
        "same_text": texts["node"] == texts["bare"], "texts": texts,
        "timings_s": {"node": node, "bare": bare, "one_thread": one_thread},
    }  # fmt: skip


# --- level 0: what a pass costs ------------------------------------------------------------------


def pass_costs(anchors: Anchors, clips: Sequence[Clip], options: TranscriptionOptions, lanes: int) -> dict[str, Any]:
    """First passes of ``PASS_CLIPS`` clips through the engine's ``_pass``: per lane (one-thread
    workers side by side) with 1 window and with the batch size, and wide with 1 window (a lone
    request's pass), its decoder on every thread and on the lanes' workers; audio seconds per
    second of each."""
    engine = anchors.engine
    chosen = [clips[i % len(clips)].samples for i in range(PASS_CLIPS)]
    audio_s = sum(c.shape[0] for c in chosen) / SR

    def timed(size: int, wide: bool) -> float:
        groups = [chosen[i : i + size] for i in range(0, len(chosen), size)]
        return audio_s / shared_out(
            1 if wide else lanes, groups, lambda group: engine._pass([Window(w, options) for w in group], wide)
        )

    timed(1, False)  # warm-up
    out: dict[str, Any] = {"clips": PASS_CLIPS, "audio_s": audio_s, "lanes": lanes, "batch_size": anchors.batch_size,
                           "wide_decoder_threads": engine.wide_decoder_threads}  # fmt: skip
    out["lanes_1_window"] = timed(1, False)
    out["lanes_batch"] = timed(anchors.batch_size, False)
    chose = engine._decodes_wide
    try:
        for every_thread, key in ((True, "wide_every_thread"), (False, "wide_lanes_decode")):
            engine._decodes_wide = every_thread
            out[key] = timed(1, True)
    finally:
        engine._decodes_wide = chose
    print(f"  first passes, audio-s/s: {lanes} lanes × 1 window {out['lanes_1_window']:.1f}, "
          f"{lanes} lanes × {anchors.batch_size} {out['lanes_batch']:.1f}; one wide pass × 1, decoded on every "
          f"thread {out['wide_every_thread']:.1f}, on a lane {out['wide_lanes_decode']:.1f} (the engine decodes "
          f"a wide pass on {engine.wide_decoder_threads} thread(s))")  # fmt: skip
    return out


# --- level 2: eight clients with 29 s clips ------------------------------------------------------


def build_clips(folder: Path) -> list[Clip]:
    decoded: dict[tuple[str, float | None], np.ndarray] = {}
    gap = np.zeros(round(GAP_S * SR), dtype=np.float32)
    target = round(CLIP_S * SR)
    clips = []
    for name, parts in CLIP_RECIPES:
        pieces: list[np.ndarray] = []
        for part in parts:
            if part not in decoded:
                file, keep = part
                decoded[part] = audio.decode(common.CORPUS / file)[: round(keep * SR) if keep else None]
            pieces += [gap, decoded[part]] if pieces else [decoded[part]]
        samples = np.concatenate(pieces)[:target]
        samples = np.concatenate([samples, np.zeros(target - samples.size, dtype=np.float32)])
        wav = folder / f"{name}.wav"
        soundfile.write(wav, samples, SR, subtype="PCM_16")
        clip = Clip(name, wav, audio.decode(wav))  # the same 16-bit samples as the node gets
        clip.body, clip.content_type = common.multipart_body(wav, "en")
        clips.append(clip)
    return clips


def node_round(server: common.Server, clips: Sequence[Clip], first: int, count: int) -> tuple[list[Answer], float]:
    """``count`` uploads (clips in turn from ``first``) by CLIENTS clients, each posting its next one as
    soon as its last is answered; the answers and the round's wall seconds."""
    answers: list[Answer] = []

    def client(index: int) -> None:
        clip = clips[index % len(clips)]
        answers.append(post(server.port, clip.body, clip.content_type, clip.duration_s))  # list.append is atomic

    return answers, shared_out(CLIENTS, range(first, first + count), client)


def threads_round(anchors: Anchors, clips: Sequence[Clip], first: int, count: int, options: Any) -> float:
    """(a): CLIENTS threads calling ``transcribe`` on the worker-per-core model; the round's wall seconds."""

    def worker(index: int) -> None:
        if not common.plain_transcribe(anchors.threads_model, clips[index % len(clips)].samples, options):
            raise BenchError("anchor (a) returned an empty transcription")

    return shared_out(CLIENTS, range(first, first + count), worker)


def pipeline_round(anchors: Anchors, clips: Sequence[Clip], first: int, count: int, options: Any) -> float:
    """(b): the clips joined, one window per clip (``clip_timestamps``), one pipeline call."""
    chosen = [clips[i % len(clips)] for i in range(first, first + count)]
    started = time.perf_counter()
    joined = np.concatenate([clip.samples for clip in chosen])
    bounds = np.cumsum([0.0, *(clip.duration_s for clip in chosen)])
    stamps = [{"start": float(a), "end": float(b)} for a, b in itertools.pairwise(bounds)]
    text = pipeline_transcribe(anchors.pipeline, joined, options, anchors.pipeline_batch_size,
                               clip_timestamps=stamps, vad_filter=False)  # fmt: skip
    if not text:
        raise BenchError("anchor (b) returned an empty transcription")
    return time.perf_counter() - started


def clients_level(
    server: common.Server, anchors: Anchors, clips: Sequence[Clip], options: Any, requests: int, round_size: int,
    anchor_clips: int,
) -> dict[str, Any]:  # fmt: skip
    rounds = max(1, -(-requests // round_size))
    answers: list[Answer] = []
    node_wall = threads_wall = pipeline_wall = 0.0
    node_audio = threads_audio = pipeline_audio = 0.0
    clip_s = clips[0].duration_s
    warm, _ = node_round(server, clips, 0, CLIENTS)  # warm-up: every slot once
    threads_round(anchors, clips, 0, CLIENTS, options)
    pipeline_round(anchors, clips, 0, anchors.pipeline_batch_size, options)
    metrics_before = scrape_batch_metrics(server.port)
    with RssSampler(server) as rss:
        for r in range(rounds):
            first = r * round_size
            count = min(round_size, requests - first)
            steps: list[tuple[str, Callable[[], float]]] = [
                ("node", lambda first=first, count=count: _node_step(server, clips, first, count, answers)),
                ("threads", lambda first=first: threads_round(anchors, clips, first, anchor_clips, options)),
                ("pipeline", lambda first=first: pipeline_round(anchors, clips, first, anchor_clips, options)),
            ]
            for name, step in steps[r % 3 :] + steps[: r % 3]:  # each path goes first in turn
                wall = step()
                if name == "node":
                    node_wall += wall
                    node_audio += sum(a.audio_s for a in answers[-count:] if a.status == 200)
                elif name == "threads":
                    threads_wall += wall
                    threads_audio += anchor_clips * clip_s
                else:
                    pipeline_wall += wall
                    pipeline_audio += anchor_clips * clip_s
            rates = node_audio / node_wall, threads_audio / threads_wall, pipeline_audio / pipeline_wall
            print(f"  round {r + 1}/{rounds}: node {rates[0]:.1f}, threads {rates[1]:.1f}, "
                  f"pipeline {rates[2]:.1f} audio-s/s")  # fmt: skip
    metrics = metrics_delta(metrics_before, scrape_batch_metrics(server.port))
    statuses = [a.status for a in answers]
    ok = [a.latency_s for a in answers if a.status == 200]
    node_rate, threads_rate = node_audio / node_wall, threads_audio / threads_wall
    pipeline_rate = pipeline_audio / pipeline_wall
    return {
        "clients": CLIENTS, "clips": [c.name for c in clips], "clip_duration_s": clip_s, "rounds": rounds,
        "requests": len(answers), "ok": len(ok), "answered_202": statuses.count(202),
        "answered_503": statuses.count(503),
        "other_non_200": len(statuses) - len(ok) - statuses.count(202) - statuses.count(503),
        "empty_transcriptions": sum(1 for a in answers if a.status == 200 and not a.text),
        "warmup_statuses": [a.status for a in warm],
        "node": {"audio_s_per_s": node_rate, "wall_s": node_wall, "audio_s": node_audio, "latency": latency(ok)},
        "threads": {"audio_s_per_s": threads_rate, "wall_s": threads_wall, "audio_s": threads_audio,
                    "clips": anchor_clips * rounds, "model": f"cpu_threads=1, num_workers={anchors.cores}"},
        "pipeline": {"audio_s_per_s": pipeline_rate, "wall_s": pipeline_wall, "audio_s": pipeline_audio,
                     "clips": anchor_clips * rounds, "batch_size": anchors.pipeline_batch_size},
        "ratio_vs_threads": node_rate / threads_rate, "ratio_vs_pipeline": node_rate / pipeline_rate,
        "batch_metrics": metrics,
        "memory": {"peak_node_mb": rss.peak_node_mb, "peak_node_and_children_mb": rss.peak_total_mb,
                   "samples": rss.samples, "every_s": RSS_EVERY_S},
    }  # fmt: skip


def _node_step(server: common.Server, clips: Sequence[Clip], first: int, count: int, into: list[Answer]) -> float:
    answers, wall = node_round(server, clips, first, count)
    into.extend(answers)
    return wall


# --- level 3: a long recording through the job path ----------------------------------------------


def unbatched_job_path(anchors: Anchors, samples: np.ndarray, options: TranscriptionOptions) -> str:
    """What the job path writes without batching: the same chunks and windows, each window decoded
    by one plain faster-whisper call (what a slot did before the batcher), the same silence guards."""
    settings = load_settings({})

    def decode(windows: Sequence[np.ndarray], opts: TranscriptionOptions) -> list[Transcript]:
        return [anchors.engine._sequential(w, opts) for w in windows]

    texts = []
    for chunk in chunking.split(samples):
        heard = silence.transcribe(decode, chunk.samples, options)
        kept, _ = silence.drop_invented(
            heard, chunk.samples, settings.silence.invented_phrases, settings.silence.no_speech_threshold
        )
        texts.append(kept.text)
    return " ".join(t for t in texts if t).strip()


def longform_level(
    server: common.Server, anchors: Anchors, folder: Path, minutes: float, runs: int, queued: Any
) -> dict[str, Any]:
    samples, names = longform.build_recording(longform.load_clips(), minutes)
    wav = folder / f"batching-{minutes:g}min.wav"
    soundfile.write(wav, samples, SR, subtype="PCM_16")
    duration_s = samples.shape[0] / SR
    print(f"  recording: {duration_s:.1f} s from {len(names)} clips")
    body, content_type = common.multipart_body(wav, "en")
    jobs: list[dict[str, Any]] = []
    pipeline: list[dict[str, Any]] = []
    for r in range(runs):
        for side in ("job", "pipeline") if r % 2 == 0 else ("pipeline", "job"):
            if side == "job":
                _, wall, data = common.run_job(server.port, body, content_type)
                jobs.append({"wall_s": wall, "chunks": len(data.get("chunks", [])),
                             "transcription": str(data.get("transcription", "")).strip()})  # fmt: skip
            else:
                started = time.perf_counter()
                text = pipeline_transcribe(anchors.pipeline, audio.decode(wav), queued, anchors.pipeline_batch_size)
                pipeline.append({"wall_s": time.perf_counter() - started, "transcription": text})
            print(f"  run {r + 1}/{runs} {side}: {(jobs if side == 'job' else pipeline)[-1]['wall_s']:.2f} s")
    started = time.perf_counter()
    sequential = anchors.engine._sequential(audio.decode(wav), queued).text.strip()
    sequential_s = time.perf_counter() - started
    print(f"  sequential, whole file (for a WER): {sequential_s:.2f} s")
    started = time.perf_counter()
    unbatched = unbatched_job_path(anchors, audio.decode(wav), queued)
    print(f"  the job path decoded window by window, unbatched (for the WER): {time.perf_counter() - started:.2f} s")
    job_wall = float(np.median([j["wall_s"] for j in jobs]))
    pipeline_wall = float(np.median([p["wall_s"] for p in pipeline]))
    job_text, pipeline_text = jobs[-1]["transcription"], pipeline[-1]["transcription"]
    if not job_text:
        raise BenchError("the job completed with an empty transcription")
    return {
        "minutes": minutes, "audio_duration_s": duration_s, "clips": len(names), "runs": runs,
        "job": {"wall_s": job_wall, "walls_s": [j["wall_s"] for j in jobs], "chunks": jobs[-1]["chunks"],
                "audio_s_per_s": duration_s / job_wall},
        "pipeline": {"wall_s": pipeline_wall, "walls_s": [p["wall_s"] for p in pipeline],
                     "audio_s_per_s": duration_s / pipeline_wall, "batch_size": anchors.pipeline_batch_size,
                     "vad_filter": "default"},
        "sequential": {"wall_s": sequential_s},
        "ratio_job_vs_pipeline": job_wall / pipeline_wall,
        "wer_job_vs_sequential": word_error_rate(sequential, job_text),
        "wer_job_vs_unbatched": word_error_rate(unbatched, job_text),
        "wer_pipeline_vs_sequential": word_error_rate(sequential, pipeline_text),
        "wer_job_vs_pipeline": word_error_rate(pipeline_text, job_text),
        "transcriptions": {"job": job_text, "pipeline": pipeline_text, "sequential": sequential,
                           "unbatched": unbatched},
    }  # fmt: skip


# --- the report ----------------------------------------------------------------------------------


def table_rows(passes: dict[str, Any], lone: dict[str, Any], load: dict[str, Any], long: dict[str, Any]) -> list[Row]:
    n, b = lone["node"], lone["bare"]
    c = load["node"]
    lat = c["latency"]
    refused = load["requests"] - load["ok"] + load["empty_transcriptions"]  # a 200 without text failed too
    mem = load["memory"]["peak_node_and_children_mb"]
    batch = load["batch_metrics"]
    per_pass = f"{batch['mean_windows_per_pass']:.2f}" if "mean_windows_per_pass" in batch else "not exposed"
    lanes, size = passes["lanes"], passes["batch_size"]
    one = lone["bare_one_thread"]
    return [
        (f"first passes: {lanes} lanes × 1 window / {lanes} lanes × {size}",
         f"{passes['lanes_1_window']:.1f} / {passes['lanes_batch']:.1f} audio-s/s", "", ""),
        ("first passes: one wide pass × 1, decoder on every thread / on a lane's worker",
         f"{passes['wide_every_thread']:.1f} / {passes['wide_lanes_decode']:.1f} audio-s/s (the node's choice: "
         f"{passes['wide_decoder_threads']} thread(s))", "", ""),
        ("lone jfk.flac: p50 / p90 node", f"{n['p50_s']:.3f} / {n['p90_s']:.3f} s", "", ""),
        ("lone jfk.flac: p50 / p90 bare engine", f"{b['p50_s']:.3f} / {b['p90_s']:.3f} s", "", ""),
        ("lone: p50 node / bare", f"{lone['ratio_p50']:.3f} (p90 {lone['ratio_p90']:.3f})",
         f"≤ {TARGET_LONE_RATIO:.2f}", verdict(lone["ratio_p50"] <= TARGET_LONE_RATIO and not lone["non_200"])),
        ("lone jfk.flac: p50 / p90 bare engine on one thread", f"{one['p50_s']:.3f} / {one['p90_s']:.3f} s", "", ""),
        ("lone: p50 node / bare engine on one thread", f"{lone['ratio_p50_vs_one_thread']:.3f}", "", ""),
        ("lone: non-200 answers", str(lone["non_200"]), "", ""),
        (f"{CLIENTS} clients × {load['clip_duration_s']:.0f} s: node audio-s/s",
         f"{c['audio_s_per_s']:.2f} ({load['ok']} / {load['requests']} answered 200)", "", ""),
        (f"{CLIENTS} clients: node latency p50 / p90", f"{lat.get('p50_s', 0):.2f} / {lat.get('p90_s', 0):.2f} s",
         "", ""),
        (f"{CLIENTS} clients: answers 202 / 503 / other non-200 / 200 without text",
         f"{load['answered_202']} / {load['answered_503']} / {load['other_non_200']} / "
         f"{load['empty_transcriptions']}", "0", verdict(refused == 0)),
        (f"{CLIENTS} clients: node / threads (cpu_threads 1, worker per core)",
         f"{c['audio_s_per_s']:.2f} / {load['threads']['audio_s_per_s']:.2f} = {load['ratio_vs_threads']:.3f}",
         f"≥ {TARGET_VS_THREADS}", verdict(load["ratio_vs_threads"] >= TARGET_VS_THREADS)),
        (f"{CLIENTS} clients: node / BatchedInferencePipeline",
         f"{c['audio_s_per_s']:.2f} / {load['pipeline']['audio_s_per_s']:.2f} = {load['ratio_vs_pipeline']:.3f}",
         f"≥ {TARGET_VS_BIP}", verdict(load["ratio_vs_pipeline"] >= TARGET_VS_BIP)),
        (f"{CLIENTS} clients: windows per engine pass (node metrics)", per_pass, "", ""),
        (f"{long['minutes']:g} min job: wall job / pipeline",
         f"{long['job']['wall_s']:.1f} / {long['pipeline']['wall_s']:.1f} s = {long['ratio_job_vs_pipeline']:.3f}",
         f"≤ {TARGET_JOB_VS_BIP}", verdict(long["ratio_job_vs_pipeline"] <= TARGET_JOB_VS_BIP)),
        (f"{long['minutes']:g} min: WER job (batched) vs the job path unbatched",
         f"{long['wer_job_vs_unbatched'] * 100:.2f} %",
         f"≤ {TARGET_WER * 100:.0f} %", verdict(long["wer_job_vs_unbatched"] <= TARGET_WER)),
        (f"{long['minutes']:g} min: WER job vs sequential (whole file)", f"{long['wer_job_vs_sequential'] * 100:.2f} %",
         "", ""),
        (f"{long['minutes']:g} min: WER pipeline vs sequential", f"{long['wer_pipeline_vs_sequential'] * 100:.2f} %",
         "", ""),
        ("peak RSS node + children during the clients' load",
         f"{mem:.0f} MB (node {load['memory']['peak_node_mb']:.0f} MB)",
         f"≤ {TARGET_RSS_MB:.0f} MB", verdict(mem <= TARGET_RSS_MB and refused == 0)),
    ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--lone-requests", type=common.positive_int, default=200, help="level 1 (default 200)")
    parser.add_argument("--clients-requests", type=common.positive_int, default=200, help="level 2 (default 200)")
    parser.add_argument("--round-size", type=common.positive_int, default=2 * CLIENTS,
                        help=f"level 2: node uploads per round (default {2 * CLIENTS})")  # fmt: skip
    parser.add_argument("--anchor-clips", type=common.positive_int, default=CLIENTS,
                        help=f"level 2: clips per anchor round (default {CLIENTS})")  # fmt: skip
    parser.add_argument("--minutes", type=common.positive_number, default=10.0, help="level 3 length (default 10)")
    parser.add_argument("--job-runs", type=common.positive_int, default=2, help="level 3 runs of each (default 2)")
    parser.add_argument("--batch-size", type=int, default=0, help="SAYIT_BATCH_SIZE (default 0: the node's auto)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help=f"results folder (default {common.RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from config import load_settings

    node_settings = {"SAYIT_BATCH_SIZE": str(args.batch_size)} if args.batch_size else {}
    settings = load_settings({"HF_HUB_OFFLINE": "1", **node_settings})
    short, queued = common.server_options(settings, queued=False), common.server_options(settings, queued=True)
    try:
        with common.workspace() as folder:
            clips = build_clips(folder)
            with common.sayit_server(folder, **node_settings) as server:
                whisper = server.health.get("services", {}).get("whisper", {})
                slots = server.health.get("services", {}).get("workers", {}).get("slots")
                print(f"node up on port {server.port} (pid {server.process.pid}): {whisper}, {slots} slots")
                anchors = load_anchors(settings)
                engine = anchors.engine
                if (whisper.get("model"), whisper.get("computeType")) != (engine.model, engine.compute_type):
                    raise BenchError(f"node {whisper} and anchors ({engine.model}, {engine.compute_type}) differ")
                if whisper.get("batchSize") not in (None, anchors.batch_size):
                    raise BenchError(f"node batch size {whisper['batchSize']}, anchors {anchors.batch_size}")
                lanes = whisper.get("batchLanes", 1)
                print(f"level 0: first passes of {PASS_CLIPS} clips")
                passes = pass_costs(anchors, clips, short, lanes)
                print(f"level 1: lone {LONE_AUDIO.name}, {args.lone_requests} requests each, interleaved")
                lone = lone_level(server, anchors, short, args.lone_requests)
                print(f"level 2: {CLIENTS} clients, {args.clients_requests} uploads of {CLIP_S:g} s, in rounds")
                busy = clients_level(server, anchors, clips, short, args.clients_requests, args.round_size,
                                     args.anchor_clips)  # fmt: skip
                print(f"level 3: a {args.minutes:g}-minute job, {args.job_runs} run(s) of each path")
                long = longform_level(server, anchors, folder, args.minutes, args.job_runs, queued)
            problems = server.log_problems()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    report_settings = {
        "model": whisper.get("model"), "compute_type": whisper.get("computeType"), "device": whisper.get("device"),
        "slots": slots, "batch_size": anchors.batch_size, "batch_lanes": lanes,
        "pipeline_batch_size": anchors.pipeline_batch_size, "batch_wait_ms": settings.engine.batch_wait_ms,
        "cpu_threads": settings.engine.cpu_threads or anchors.cores, "clients": CLIENTS, "clip_duration_s": CLIP_S,
        "lone_requests": args.lone_requests, "clients_requests": args.clients_requests,
        "round_size": args.round_size, "anchor_clips_per_round": args.anchor_clips, "minutes": args.minutes,
        "job_runs": args.job_runs, "language": "en", "beam_size": short.beam_size, "patience": short.patience,
        "log_problems": problems,
    }  # fmt: skip
    report = {
        "settings": report_settings, "passes": passes, "lone": lone, "clients": busy, "longform": long,
        "memory": {**busy["memory"], "requests_not_200": busy["requests"] - busy["ok"]},
        "targets": {"lone_ratio_max": TARGET_LONE_RATIO, "vs_threads_min": TARGET_VS_THREADS,
                    "vs_pipeline_min": TARGET_VS_BIP, "job_vs_pipeline_max": TARGET_JOB_VS_BIP,
                    "wer_max": TARGET_WER, "rss_max_mb": TARGET_RSS_MB},
    }  # fmt: skip
    notes = (
        f"- Whisper {whisper.get('model')} {whisper.get('computeType')} on {whisper.get('device')}; one node at its "
        f"defaults ({slots} slots, batch size {anchors.batch_size}, {lanes} batch lanes, batch wait "
        f"{settings.engine.batch_wait_ms:g} ms); pipeline batch size {anchors.pipeline_batch_size}; "
        f"anchors in the benchmark process with the same model, beam {short.beam_size}, patience {short.patience}\n"
        f"- lone: {args.lone_requests} × {LONE_AUDIO.name} on the node and, in turn, decode + one "
        "`WhisperModel.transcribe` (all cores, one worker; the target's anchor) and on one thread (one lane's "
        "worker)\n"
        f"- clients: {CLIENTS} clients, {args.clients_requests} uploads of {CLIP_S:g} s clips "
        f"({', '.join(c.name for c in clips)}) in rounds of {args.round_size}; each round also {args.anchor_clips} "
        f"clips through (a) {CLIENTS} threads on `WhisperModel(cpu_threads=1, num_workers={anchors.cores})` and "
        "(b) one `BatchedInferencePipeline` call on the clips joined, `clip_timestamps` at their boundaries; "
        "peak RSS sampled every 0.1 s\n"
        f"- long form: {long['audio_duration_s']:.0f} s through the job path against `BatchedInferencePipeline` "
        "(default VAD) on the whole file, medians of the runs; WER against one `WhisperModel.transcribe` over it"
    )
    print()
    common.write_results(
        args.out, "batching", "Continuous batching", report, table_rows(passes, lone, busy, long), notes
    )
    common.print_log_problems(problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
