"""Long recordings: SayIt's chunked async path compared with one bare engine call on the whole file.

A ``POST /api/transcribe`` of more than 30 s answers 202 with a job; the server splits the recording
into chunks of at most 30 s that its slots (MAX_CONCURRENT_CHUNKS) transcribe in parallel, then
merges them. The promise is that this is faster than a user calling faster-whisper once on the whole
file, without costing accuracy, and that the gain holds as recordings grow. This benchmark checks
that at several lengths (``--minutes``, 1, 3 and 10 by default): for each it builds a recording of
at least that length from the corpus (jfk.flac, stereo_diarization.wav, the English first 30 s of
multilingual.mp3, hotwords.mp3, 0.5 s of silence between clips, repeated), times it through a real
``sayit serve`` (from just before the POST until a 0.1 s status poll first sees ``completed``, so
the server's decode and split are included), then times the bare engine on the decoded samples in
this process (decode not timed; one worker, all cores; the decoding options the server gives a
queued chunk, voice-activity filter included: one faster-whisper ``WhisperModel.transcribe`` per
window between pauses, one after the other, not the node's batcher). Targets, at every length: async
wall / direct wall at most 0.70, and a word error rate of the async transcript against the direct
one of at most 3 %. A least-squares line of wall seconds against audio minutes, for each path, shows
how wall time grows with length.

What it does not show: one machine, one run of each phase per length (no spread), the CPU int8
``base`` model by default, synthetic recordings whose clips repeat, and the WER against the direct
transcript rather than a human reference (it measures what chunking changes, not absolute accuracy;
the direct transcript has its own long-context errors, so both are also scored, for information
only, against each clip transcribed alone by the same engine). The growth line is fitted to a few
lengths, not a model of longer ones. One server, warmed up once, takes the jobs one after another
(shortest first), and one engine, loaded once, then takes the direct calls; the two phases run one
after the other (server stopped first) so that they never compete for the cores.

    .venv/bin/python bench/longform.py [--minutes 1 3 10] [--slots 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
import soundfile
from common import BenchError, Row, verdict

from sayit_actors import audio
from sayit_actors.engines import Transcript, TranscriptionOptions, textmetrics

# (file, seconds to keep or None for all): multilingual.mp3 turns German after ~30 s.
# Order matters for the bare engine: base drops stereo_diarization.wav when hotwords.mp3 follows it
# in one 30 s window, which would count as a chunking error; each short clip sits before a long one.
CLIPS: tuple[tuple[str, float | None], ...] = (
    ("jfk.flac", None),
    ("stereo_diarization.wav", None),
    ("multilingual.mp3", 30.0),
    ("hotwords.mp3", None),
)
WARMUP_AUDIO = common.CORPUS / "jfk.flac"
GAP_S = 0.5
SR = audio.SAMPLE_RATE
POLL_S = 0.1
DEFAULT_MINUTES = (1.0, 3.0, 10.0)
TARGET_RATIO = 0.70
TARGET_WER = 0.03


@dataclass
class Recording:
    """One length: the WAV that the server gets and the same 16-bit samples for the engine."""

    minutes: float
    wav: Path
    samples: np.ndarray
    clips: list[str]

    @property
    def duration_s(self) -> float:
        return self.samples.size / SR


@dataclass
class AsyncRun:
    wall_s: float = 0.0
    server_processing_s: float | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    transcription: str = ""
    rss_after_mb: float = 0.0

    @property
    def nodes(self) -> list[str]:
        return sorted({str(chunk.get("node")) for chunk in self.chunks})


@dataclass
class AsyncPhase:
    runs: list[AsyncRun] = field(default_factory=list)
    rss_after_last_mb: float = 0.0
    redis_rss_after_last_mb: float = 0.0
    server_engine: dict[str, Any] = field(default_factory=dict)
    server_log_problems: list[str] = field(default_factory=list)


@dataclass
class DirectRun:
    wall_s: float = 0.0
    transcription: str = ""


@dataclass
class DirectPhase:
    model: str = ""
    device: str = ""
    compute_type: str = ""
    runs: list[DirectRun] = field(default_factory=list)
    clip_texts: dict[str, str] = field(default_factory=dict)


# --- the recordings ------------------------------------------------------------------------------


def load_clips() -> dict[str, np.ndarray]:
    """Each clip's 16 kHz mono float32 samples, cut to its kept length."""
    return {name: audio.decode(common.CORPUS / name)[: round(keep * SR) if keep else None] for name, keep in CLIPS}


def build_recording(clips: dict[str, np.ndarray], minutes: float) -> tuple[np.ndarray, list[str]]:
    """The clips in turn, GAP_S apart, until at least ``minutes``; the samples and the clips' names in order."""
    decoded = list(clips.items())
    gap = np.zeros(round(GAP_S * SR), dtype=np.float32)
    parts: list[np.ndarray] = []
    names: list[str] = []
    length = 0
    while length < minutes * 60 * SR:
        name, samples = decoded[len(names) % len(decoded)]
        if parts:
            parts.append(gap)
            length += gap.size
        parts.append(samples)
        names.append(name)
        length += samples.size
    return np.concatenate(parts), names


def write_recordings(clips: dict[str, np.ndarray], lengths: Sequence[float], folder: Path) -> list[Recording]:
    """One WAV per length; both phases then get the same 16-bit samples, decoded back from it."""
    recordings = []
    for minutes in lengths:
        samples, names = build_recording(clips, minutes)
        wav = folder / f"longform-{minutes:g}min.wav"
        soundfile.write(wav, samples, SR, subtype="PCM_16")
        recordings.append(Recording(minutes, wav, audio.decode(wav), names))
        print(f"recording {minutes:g} min: {recordings[-1].duration_s:.1f} s from {len(names)} clips")
    return recordings


# --- the two phases ------------------------------------------------------------------------------


def run_async_phase(recordings: Sequence[Recording], slots: int, folder: Path) -> AsyncPhase:
    """One server and one warm-up (a short clip, answered at once) for all lengths: then each long
    upload in turn as a job polled every POLL_S, so that the jobs never overlap."""
    phase = AsyncPhase()
    settings = {"MAX_CONCURRENT_CHUNKS": str(slots), "SAYIT_POLL_S": str(POLL_S)}
    with common.sayit_server(folder, **settings) as server:
        services = server.health.get("services", {})
        phase.server_engine = {**services.get("whisper", {}), "slots": services.get("workers", {}).get("slots")}
        print(f"server up on port {server.port} (pid {server.process.pid}): {phase.server_engine}")
        warmup = common.multipart_body(WARMUP_AUDIO, "en")
        status, answer = common.request(server.port, "POST", "/api/transcribe", *warmup, common.REQUEST_TIMEOUT_S)
        if status != 200:
            raise BenchError(f"warm-up POST /api/transcribe answered {status}: {str(answer)[:500]}")
        for recording in recordings:
            run = AsyncRun()
            _, run.wall_s, data = common.run_job(server.port, *common.multipart_body(recording.wav, "en"), POLL_S)
            run.rss_after_mb = server.rss_mb()
            run.server_processing_s = data.get("processingTime")
            run.chunks = list(data.get("chunks", []))
            run.languages = list(data.get("languages", []))
            run.transcription = str(data.get("transcription", "")).strip()
            if not run.transcription:
                raise BenchError(f"the {recording.minutes:g} min job completed with an empty transcription")
            phase.runs.append(run)
            print(
                f"  {recording.minutes:g} min: {run.wall_s:.2f} s, {len(run.chunks)} chunks on {', '.join(run.nodes)}"
            )
        phase.rss_after_last_mb, phase.redis_rss_after_last_mb = server.rss_mb(), server.children_rss_mb()
    phase.server_log_problems = server.log_problems()  # after the stop: shutdown problems count too
    return phase


def run_direct_phase(recordings: Sequence[Recording], clips: dict[str, np.ndarray]) -> DirectPhase:
    """One engine, loaded and warmed up once, then one call per recording and (not timed) one per clip."""
    # Imported here so that the engine's libraries load only once the server has stopped.
    from config import load_settings
    from sayit_actors.engines.faster import FasterWhisperEngine

    settings = load_settings({})
    from sayit_actors.audio import silence

    engine = FasterWhisperEngine.load(settings.engine, workers=1)  # cpu_threads 0: all cores for the one worker

    def transcribe(samples: np.ndarray, options: TranscriptionOptions) -> Transcript:
        # One WhisperModel.transcribe per window, one after the other: the bare engine, not the node's batcher.
        return silence.transcribe(lambda windows, o: [engine._sequential(w, o) for w in windows], samples, options)

    options = common.server_options(settings, queued=True)
    phase = DirectPhase(model=engine.model, device=engine.device, compute_type=engine.compute_type)
    transcribe(audio.decode(WARMUP_AUDIO), options)
    for recording in recordings:
        started = time.perf_counter()
        transcript = transcribe(recording.samples, options)
        run = DirectRun(wall_s=time.perf_counter() - started, transcription=transcript.text.strip())
        if not run.transcription:
            raise BenchError(f"the engine returned an empty transcription for {recording.minutes:g} min")
        phase.runs.append(run)
        print(f"  {recording.minutes:g} min: {run.wall_s:.2f} s")
    # Each clip alone: a second reference that neither path's long-context behaviour shapes.
    phase.clip_texts = {name: transcribe(clip, options).text.strip() for name, clip in clips.items()}
    return phase


# --- word error rate and growth ------------------------------------------------------------------


def compare(
    recording: Recording, asynchronous: AsyncRun, direct: DirectRun, clip_texts: dict[str, str]
) -> dict[str, Any]:
    """One length's figures: the ratio of walls, and the WER of the async text against the direct one."""
    reference, hypothesis = textmetrics.words(direct.transcription), textmetrics.words(asynchronous.transcription)
    errors = textmetrics.errors(reference, hypothesis).total
    by_clips = textmetrics.words(" ".join(clip_texts[name] for name in recording.clips))
    return {
        "ratio": asynchronous.wall_s / direct.wall_s,
        "rtf_async": asynchronous.wall_s / recording.duration_s,
        "rtf_direct": direct.wall_s / recording.duration_s,
        "wer": errors / max(1, len(reference)),
        "word_errors": errors,
        "reference_words": len(reference),
        "hypothesis_words": len(hypothesis),
        "clip_by_clip_words": len(by_clips),
        "wer_async_vs_clips": textmetrics.errors(by_clips, hypothesis).rate,
        "wer_direct_vs_clips": textmetrics.errors(by_clips, reference).rate,
    }


def fit_growth(minutes: Sequence[float], walls_s: Sequence[float]) -> dict[str, float | None]:
    """Least-squares line of wall seconds on audio minutes, and the log-log slope (1: linear, 2: quadratic).

    None with fewer than two distinct lengths: one point has no slope.
    """
    if len(set(minutes)) < 2:
        return {"slope_s_per_min": None, "intercept_s": None, "exponent": None}
    slope, intercept = np.polyfit(minutes, walls_s, 1)
    exponent = np.polyfit(np.log(minutes), np.log(walls_s), 1)[0]
    return {"slope_s_per_min": float(slope), "intercept_s": float(intercept), "exponent": float(exponent)}


def growth_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How wall time grows with length, for each path; their slopes' ratio is what the ratio tends to."""
    minutes = [run["audio_duration_s"] / 60 for run in runs]
    result: dict[str, Any] = {
        "fit": "least squares of wall seconds on audio minutes; exponent: of log wall on log minutes",
        "lengths_min": minutes,
        "async": fit_growth(minutes, [run["async"]["wall_s"] for run in runs]),
        "direct": fit_growth(minutes, [run["direct"]["wall_s"] for run in runs]),
    }
    slopes = result["async"]["slope_s_per_min"], result["direct"]["slope_s_per_min"]
    result["slope_ratio"] = slopes[0] / slopes[1] if None not in slopes and slopes[1] else None
    return result


# --- the report ----------------------------------------------------------------------------------


def run_rows(run: dict[str, Any]) -> list[Row]:
    a, d, r = run["async"], run["direct"], run["results"]
    length = f"{run['minutes']:g} min"
    return [
        (
            f"{length} ({run['audio_duration_s']:.0f} s): wall async / direct",
            f"{a['wall_s']:.2f} s / {d['wall_s']:.2f} s (RTF {r['rtf_async']:.3f} / {r['rtf_direct']:.3f})",
            "",
            "",
        ),
        (
            f"{length}: ratio async / direct",
            f"{r['ratio']:.3f}",
            f"≤ {TARGET_RATIO:.2f}",
            verdict(r["ratio"] <= TARGET_RATIO),
        ),
        (
            f"{length}: WER async vs direct",
            f"{r['wer'] * 100:.2f} % ({r['word_errors']} / {r['reference_words']} words)",
            f"≤ {TARGET_WER * 100:.0f} %",
            verdict(r["wer"] <= TARGET_WER),
        ),
        (
            f"{length}: WER vs clip-by-clip, async / direct",
            f"{r['wer_async_vs_clips'] * 100:.2f} % / {r['wer_direct_vs_clips'] * 100:.2f} %",
            "",
            "",
        ),
        (f"{length}: chunks / nodes", f"{len(a['chunks'])} / {', '.join(a['nodes'])}", "", ""),
    ]


def growth_rows(growth: dict[str, Any]) -> list[Row]:
    a, d = growth["async"], growth["direct"]
    if a["slope_s_per_min"] is None or d["slope_s_per_min"] is None:
        return [("growth of wall time with length", "not fitted: needs two lengths or more", "", "")]
    return [
        (
            "growth: wall s per audio minute, async / direct",
            f"{a['slope_s_per_min']:.2f} / {d['slope_s_per_min']:.2f} (intercepts {a['intercept_s']:.1f} / "
            f"{d['intercept_s']:.1f} s)",
            "",
            "",
        ),
        ("growth: slope async / slope direct", f"{growth['slope_ratio']:.3f}", "", ""),
        (
            "growth: exponent (log-log), async / direct",
            f"{a['exponent']:.2f} / {d['exponent']:.2f} (1 = linear)",
            "",
            "",
        ),
    ]


def table_rows(report: dict[str, Any]) -> list[Row]:
    """(figure, value, target, verdict) rows shared by the console and Markdown reports."""
    server = report["server"]
    rss = f"{server['rss_after_last_mb']:.0f} MB ({server['redis_rss_after_last_mb']:.0f} MB)"
    return [
        *(row for run in report["runs"] for row in run_rows(run)),
        *growth_rows(report["growth"]),
        ("server RSS after the last job (redis-server)", rss, "", ""),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--minutes", type=common.positive_number, nargs="+", default=list(DEFAULT_MINUTES),
        help="recording lengths, each above 0.5 (30 s or less is answered at once, not as a job); default 1 3 10",
    )  # fmt: skip
    parser.add_argument("--slots", type=common.positive_int, default=2, help="MAX_CONCURRENT_CHUNKS (default 2)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help=f"results folder (default {common.RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lengths = sorted(set(args.minutes))
    clip_samples = load_clips()
    with common.workspace() as folder:
        recordings = write_recordings(clip_samples, lengths, folder)
        try:
            print("async phase")
            asynchronous = run_async_phase(recordings, args.slots, folder)
            print("direct phase")
            direct = run_direct_phase(recordings, clip_samples)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1

    runs = [
        {
            "minutes": recording.minutes,
            "audio_duration_s": recording.duration_s,
            "clips": recording.clips,
            "async": {**asdict(run_async), "nodes": run_async.nodes},
            "direct": asdict(run_direct),
            "results": compare(recording, run_async, run_direct, direct.clip_texts),
        }
        for recording, run_async, run_direct in zip(recordings, asynchronous.runs, direct.runs, strict=True)
    ]
    settings = {
        "model": direct.model, "compute_type": direct.compute_type, "device": direct.device, "slots": args.slots,
        "minutes": ", ".join(f"{m:g}" for m in lengths), "gap_s": GAP_S, "language": "en", "status_poll_s": POLL_S,
        "server_queue_poll_s": POLL_S, "server_engine": asynchronous.server_engine,
    }  # fmt: skip
    report: dict[str, Any] = {
        "settings": settings,
        "runs": runs,
        "growth": growth_summary(runs),
        "server": {
            "rss_after_last_mb": asynchronous.rss_after_last_mb,
            "redis_rss_after_last_mb": asynchronous.redis_rss_after_last_mb,
            "log_problems": asynchronous.server_log_problems,
        },
        "clip_by_clip": {"texts": direct.clip_texts},
        "targets": {"ratio_max": TARGET_RATIO, "wer_max": TARGET_WER},
    }
    durations = ", ".join(f"{r.duration_s:.1f} s ({len(r.clips)} clips)" for r in recordings)
    notes = (
        f"- Whisper {direct.model} {direct.compute_type} on {direct.device}; server: {args.slots} slots, queue poll "
        f"{POLL_S} s; direct: 1 worker, all cores, the server's options for a queued chunk (VAD on); language en\n"
        f"- recordings: {durations}; clips {', '.join(name for name, _ in CLIPS)} in turn (multilingual.mp3 cut to "
        f"its English first 30 s), {GAP_S} s of silence between them\n"
        "- async: from just before the POST until a status poll (every 0.1 s) first sees `completed`, so it "
        "includes the upload and the server's decode and split; direct: one `WhisperModel.transcribe` per window "
        "between pauses, one after the other, on the already decoded samples. One run of each per length: one "
        "server, warmed up once with jfk.flac, takes the jobs one after "
        "another (shortest first); then one engine, warmed up once, takes the direct calls.\n"
        "- WER: the async transcript against the direct one (normalized words), not against a human reference; "
        "for information, both against each clip transcribed alone by the same engine, concatenated.\n"
        "- growth: a least-squares line of wall seconds on audio minutes for each path, which shows how wall time "
        "grows with length (its slope: seconds per added minute; slope async / slope direct: the ratio that longer "
        "recordings tend to), and the slope of log wall on log minutes (1: linear growth)."
    )
    print()
    title = "Long form: SayIt's async chunked path vs one bare engine call, by length"
    common.write_results(args.out, "longform", title, report, table_rows(report), notes)
    print(f"load average (1/5/15 min) at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    common.print_log_problems(asynchronous.server_log_problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
