"""Long recordings: SayIt's chunked async path compared with one bare engine call on the whole file.

A ``POST /api/transcribe`` of more than 30 s answers 202 with a job; the server splits the recording
into chunks of at most 30 s that its slots (MAX_CONCURRENT_CHUNKS) transcribe in parallel, then
merges them. The promise is that this is faster than a user calling faster-whisper once on the whole
file, without costing accuracy. This benchmark checks both: it builds a recording of at least
``--minutes`` from the corpus (jfk.flac, stereo_diarization.wav, the English first 30 s of
multilingual.mp3, hotwords.mp3, 0.5 s of silence between clips, repeated), times it through a
real ``sayit serve`` (from just before the POST until a 0.1 s status poll first sees ``completed``,
so the server's decode and split are included), then times one ``engine.transcribe`` on the decoded
samples in this process (decode not timed; one worker, all cores). Targets: async wall / direct wall
at most 0.70, and a word error rate of the async transcript against the direct one of at most 3 %.

What it does not show: one machine, one run of each phase (no spread), the CPU int8 ``base`` model
by default, a synthetic recording whose clips repeat, and the WER against the direct transcript
rather than a human reference (it measures what chunking changes, not absolute accuracy; the direct
transcript has its own long-context errors, so both are also scored, for information only, against
each clip transcribed alone by the same engine). The two phases run one after the other (server
stopped first) so that they never compete for the cores.

    .venv/bin/python bench/longform.py [--minutes 3] [--slots 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
import soundfile
from common import BenchError, Row, verdict

from sayit_actors import audio

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
TARGET_RATIO = 0.70
TARGET_WER = 0.03


@dataclass
class AsyncPhase:
    wall_s: float = 0.0
    server_processing_s: float | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    transcription: str = ""
    rss_after_mb: float = 0.0
    redis_rss_after_mb: float = 0.0
    server_engine: dict[str, Any] = field(default_factory=dict)
    server_log_problems: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return sorted({str(chunk.get("node")) for chunk in self.chunks})


@dataclass
class DirectPhase:
    wall_s: float = 0.0
    model: str = ""
    device: str = ""
    compute_type: str = ""
    transcription: str = ""
    clip_texts: dict[str, str] = field(default_factory=dict)


# --- the recording -------------------------------------------------------------------------------


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


# --- the two phases ------------------------------------------------------------------------------


def run_async_phase(wav: Path, slots: int, folder: Path) -> AsyncPhase:
    """One warm-up with a short clip (answered at once), then the long upload as a job polled every POLL_S."""
    result = AsyncPhase()
    settings = {"MAX_CONCURRENT_CHUNKS": str(slots), "SAYIT_POLL_S": str(POLL_S)}
    with common.sayit_server(folder, **settings) as server:
        services = server.health.get("services", {})
        result.server_engine = {**services.get("whisper", {}), "slots": services.get("workers", {}).get("slots")}
        print(f"server up on port {server.port} (pid {server.process.pid}): {result.server_engine}")
        warmup = common.multipart_body(WARMUP_AUDIO, "en")
        status, answer = common.request(server.port, "POST", "/api/transcribe", *warmup, common.REQUEST_TIMEOUT_S)
        if status != 200:
            raise BenchError(f"warm-up POST /api/transcribe answered {status}: {str(answer)[:500]}")
        _, result.wall_s, data = common.run_job(server.port, *common.multipart_body(wav, "en"), poll_s=POLL_S)
        result.rss_after_mb, result.redis_rss_after_mb = server.rss_mb(), server.children_rss_mb()
        result.server_processing_s = data.get("processingTime")
        result.chunks = list(data.get("chunks", []))
        result.languages = list(data.get("languages", []))
        result.transcription = str(data.get("transcription", "")).strip()
        print(f"  async: {result.wall_s:.2f} s, {len(result.chunks)} chunks on {', '.join(result.nodes)}")
    result.server_log_problems = server.log_problems()  # after the stop: shutdown problems count too
    if not result.transcription:
        raise BenchError("the async job completed with an empty transcription")
    return result


def run_direct_phase(samples: np.ndarray, clips: dict[str, np.ndarray]) -> DirectPhase:
    # Imported here so that the engine's libraries load only once the server has stopped.
    from config import load_settings
    from sayit_actors.engine import TranscriptionOptions
    from sayit_actors.faster_engine import FasterWhisperEngine

    settings = load_settings({})
    engine = FasterWhisperEngine.load(settings.engine, workers=1)  # cpu_threads 0: all cores for the one worker
    options = TranscriptionOptions.from_profile(settings.profiles["en"])
    result = DirectPhase(model=engine.model, device=engine.device, compute_type=engine.compute_type)
    engine.transcribe(audio.decode(WARMUP_AUDIO), options)
    started = time.perf_counter()
    transcript = engine.transcribe(samples, options)
    result.wall_s = time.perf_counter() - started
    result.transcription = transcript.text.strip()
    print(f"  direct: {result.wall_s:.2f} s")
    if not result.transcription:
        raise BenchError("the engine returned an empty transcription")
    # Not timed: each clip alone, a second reference that neither path's long-context behaviour shapes.
    result.clip_texts = {name: engine.transcribe(clip, options).text.strip() for name, clip in clips.items()}
    return result


# --- word error rate -----------------------------------------------------------------------------


def normalize(text: str) -> list[str]:
    """Lower case, punctuation removed, split on whitespace."""
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + insertions + deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


# --- the report ----------------------------------------------------------------------------------


def table_rows(report: dict[str, Any]) -> list[Row]:
    """(figure, value, target, verdict) rows shared by the console and Markdown reports."""
    a, d, r = report["async"], report["direct"], report["results"]
    duration = report["settings"]["audio_duration_s"]
    return [
        ("audio length", f"{duration:.1f} s ({duration / 60:.2f} min)", "", ""),
        ("async wall (POST to completed)", f"{a['wall_s']:.2f} s", "", ""),
        ("direct wall (one transcribe)", f"{d['wall_s']:.2f} s", "", ""),
        ("ratio async / direct", f"{r['ratio']:.3f}", f"≤ {TARGET_RATIO:.2f}", verdict(r["ratio"] <= TARGET_RATIO)),
        ("real-time factor async / direct", f"{r['rtf_async']:.3f} / {r['rtf_direct']:.3f}", "", ""),
        ("speed async / direct", f"{1 / r['rtf_async']:.1f}× / {1 / r['rtf_direct']:.1f}× real time", "", ""),
        (
            "WER async vs direct",
            f"{r['wer'] * 100:.2f} % ({r['word_errors']} / {r['reference_words']} words)",
            f"≤ {TARGET_WER * 100:.0f} %",
            verdict(r["wer"] <= TARGET_WER),
        ),
        (
            "WER vs clip-by-clip: async / direct",
            f"{r['wer_async_vs_clips'] * 100:.2f} % / {r['wer_direct_vs_clips'] * 100:.2f} %",
            "",
            "",
        ),
        ("chunks / nodes", f"{len(a['chunks'])} / {', '.join(a['nodes'])}", "", ""),
        ("server RSS after (redis-server)", f"{a['rss_after_mb']:.0f} MB ({a['redis_rss_after_mb']:.0f} MB)", "", ""),
    ]


def print_log_problems(problems: list[str]) -> None:
    if not problems:
        print("server log: no warnings or errors")
        return
    print(f"server log: {len(problems)} warning/error line(s):")
    for line in problems[:20]:
        print(f"  {line}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=common.positive_number, default=3.0, help="recording length (default 3)")
    parser.add_argument("--slots", type=common.positive_int, default=2, help="MAX_CONCURRENT_CHUNKS (default 2)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help=f"results folder (default {common.RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clip_samples = load_clips()
    samples, clips = build_recording(clip_samples, args.minutes)
    duration_s = samples.size / SR
    print(f"recording: {duration_s:.1f} s from {len(clips)} clips")
    with common.workspace() as folder:
        wav = folder / f"longform-{args.minutes:g}min.wav"
        soundfile.write(wav, samples, SR, subtype="PCM_16")
        samples = audio.decode(wav)  # both phases get the same 16-bit samples
        try:
            print("async phase")
            asynchronous = run_async_phase(wav, args.slots, folder)
            print("direct phase")
            direct = run_direct_phase(samples, clip_samples)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1

    reference, hypothesis = normalize(direct.transcription), normalize(asynchronous.transcription)
    errors = word_errors(reference, hypothesis)
    by_clips = normalize(" ".join(direct.clip_texts[name] for name in clips))
    settings = {
        "model": direct.model, "compute_type": direct.compute_type, "device": direct.device, "slots": args.slots,
        "minutes": args.minutes, "audio_duration_s": duration_s, "clips": clips, "gap_s": GAP_S, "language": "en",
        "status_poll_s": POLL_S, "server_queue_poll_s": POLL_S, "server_engine": asynchronous.server_engine,
    }  # fmt: skip
    report: dict[str, Any] = {
        "settings": settings,
        "async": {
            **{k: v for k, v in asdict(asynchronous).items() if k != "server_engine"},
            "nodes": asynchronous.nodes,
        },
        "direct": {"wall_s": direct.wall_s, "transcription": direct.transcription},
        "clip_by_clip": {"texts": direct.clip_texts, "words": len(by_clips)},
        "results": {
            "ratio": asynchronous.wall_s / direct.wall_s,
            "rtf_async": asynchronous.wall_s / duration_s,
            "rtf_direct": direct.wall_s / duration_s,
            "wer": errors / max(1, len(reference)),
            "word_errors": errors,
            "reference_words": len(reference),
            "hypothesis_words": len(hypothesis),
            "wer_async_vs_clips": word_errors(by_clips, hypothesis) / max(1, len(by_clips)),
            "wer_direct_vs_clips": word_errors(by_clips, reference) / max(1, len(by_clips)),
        },
        "targets": {"ratio_max": TARGET_RATIO, "wer_max": TARGET_WER},
    }
    notes = (
        f"- Whisper {direct.model} {direct.compute_type} on {direct.device}; server: {args.slots} slots, queue poll "
        f"{POLL_S} s; direct: 1 worker, all cores; language en\n"
        f"- recording: {duration_s:.1f} s, {len(clips)} clips ({', '.join(name for name, _ in CLIPS)}, "
        f"multilingual.mp3 cut to its English first 30 s), {GAP_S} s of silence between them\n"
        "- async: from just before the POST until a status poll (every 0.1 s) first sees `completed`, so it "
        "includes the upload and the server's decode and split; direct: `engine.transcribe` on the already decoded "
        "samples. One run each, after one warm-up with jfk.flac.\n"
        "- WER: the async transcript against the direct one (normalized words), not against a human reference; "
        "for information, both against each clip transcribed alone by the same engine, concatenated."
    )
    print()
    title = "Long form: SayIt's async chunked path vs one bare engine call"
    common.write_results(args.out, "longform", title, report, table_rows(report), notes)
    print(f"load average (1/5/15 min) at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_log_problems(asynchronous.server_log_problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
