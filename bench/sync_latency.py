"""Per-request overhead of the SayIt service compared with the bare Whisper engine.

A synchronous ``POST /api/transcribe`` walks the upload through the aiohttp edge, the actors
(Upload, DurationProbe, Dispatcher, a WhisperActor slot, Result) and the embedded Redis before and
after the engine does the real work. This benchmark measures what all of that costs: it times the
same audio file sent to a real ``sayit serve`` over HTTP, then decoded and transcribed directly by
one faster-whisper ``WhisperModel.transcribe`` (the engine's model, all cores, the same options) in
this process, and reports the ratio of the medians
(target: at most 1.10) along with the server's resident memory at rest and after the load
(target: at most 1500 MB).

The two phases run one after the other (server first, stopped before the direct engine is loaded)
so that they never compete for the CPU cores.

What it does not show: concurrent requests (one at a time here; see throughput.py), long
recordings (see longform.py), clients on another machine, or any model but the configured one
(CPU int8 ``base`` by default).

    .venv/bin/python bench/sync_latency.py [--runs 20] [--slots 4] [--audio FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
from common import BenchError, Row, summary, verdict

from sayit_actors import audio

DEFAULT_AUDIO = common.CORPUS / "jfk.flac"
WARMUP_RUNS = 2
TARGET_RATIO = 1.10
TARGET_RSS_MB = 1500.0


@dataclass
class HttpPhase:
    timings_s: list[float] = field(default_factory=list)
    rss_after_each_request_mb: list[float] = field(default_factory=list)
    rss_rest_mb: float = 0.0
    rss_load_mb: float = 0.0
    redis_rss_rest_mb: float = 0.0
    redis_rss_load_mb: float = 0.0
    server_engine: dict[str, Any] = field(default_factory=dict)
    transcription: str = ""
    server_log_problems: list[str] = field(default_factory=list)


@dataclass
class DirectPhase:
    timings_s: list[float] = field(default_factory=list)
    model: str = ""
    device: str = ""
    compute_type: str = ""
    transcription: str = ""


def post_transcribe(port: int, body: bytes, content_type: str) -> tuple[float, str]:
    """Seconds from connecting to the answer, and the transcription; a new connection each, as a phone app."""
    started = time.perf_counter()
    status, answer = common.request(port, "POST", "/api/transcribe", body, content_type, common.REQUEST_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    data = answer.get("data", {}) if isinstance(answer, dict) else {}
    text = str(data.get("transcription", "")).strip()
    if status != 200 or not text:
        raise BenchError(f"POST /api/transcribe answered {status} with no transcription: {str(answer)[:500]}")
    return elapsed, text


def run_http_phase(audio_path: Path, runs: int, slots: int) -> HttpPhase:
    result = HttpPhase()
    body, content_type = common.multipart_body(audio_path, "en")
    with common.workspace() as folder:
        with common.sayit_server(folder, MAX_CONCURRENT_CHUNKS=str(slots)) as server:
            services = server.health.get("services", {})
            result.server_engine = {**services.get("whisper", {}), "slots": services.get("workers", {}).get("slots")}
            result.rss_rest_mb, result.redis_rss_rest_mb = server.rss_mb(), server.children_rss_mb()
            print(f"server up on port {server.port} (pid {server.process.pid}): {result.server_engine}")
            for _ in range(WARMUP_RUNS):
                post_transcribe(server.port, body, content_type)
            for i in range(runs):
                elapsed, result.transcription = post_transcribe(server.port, body, content_type)
                result.timings_s.append(elapsed)
                result.rss_after_each_request_mb.append(server.rss_mb())
                print(f"  http   {i + 1:>3}/{runs}: {elapsed:.3f} s")
            result.rss_load_mb, result.redis_rss_load_mb = server.rss_mb(), server.children_rss_mb()
        result.server_log_problems = server.log_problems()  # after the stop, so that shutdown problems count too
    return result


def run_direct_phase(audio_path: Path, runs: int, slots: int) -> DirectPhase:
    # Imported here so that the engine's libraries load only once the server has stopped.
    from config import load_settings
    from sayit_actors.engines.faster import FasterWhisperEngine

    settings = load_settings({"MAX_CONCURRENT_CHUNKS": str(slots)})
    engine = FasterWhisperEngine.load(settings.engine, workers=slots)
    options = common.server_options(settings, queued=False)
    info = audio.probe(audio_path)
    result = DirectPhase(model=engine.model, device=engine.device, compute_type=engine.compute_type)

    def once() -> tuple[float, str]:
        started = time.perf_counter()
        samples = audio.decode(audio_path, info.duration_s)
        transcript = engine._sequential(samples, options)  # one WhisperModel.transcribe, not the batcher
        elapsed = time.perf_counter() - started
        if not transcript.text.strip():
            raise BenchError("the engine returned an empty transcription")
        return elapsed, transcript.text.strip()

    for _ in range(WARMUP_RUNS):
        once()
    for i in range(runs):
        elapsed, result.transcription = once()
        result.timings_s.append(elapsed)
        print(f"  direct {i + 1:>3}/{runs}: {elapsed:.3f} s")
    return result


def table_rows(http: HttpPhase, direct: DirectPhase) -> list[Row]:
    h, d = summary(http.timings_s), summary(direct.timings_s)
    ratio = h["median_s"] / d["median_s"]
    rss_target = f"≤ {TARGET_RSS_MB:.0f} MB"
    return [
        ("HTTP median / p95 / min", f"{h['median_s']:.3f} / {h['p95_s']:.3f} / {h['min_s']:.3f} s", "", ""),
        ("direct median / p95 / min", f"{d['median_s']:.3f} / {d['p95_s']:.3f} / {d['min_s']:.3f} s", "", ""),
        ("median HTTP - direct", f"{(h['median_s'] - d['median_s']) * 1000:+.0f} ms", "", ""),
        ("ratio median HTTP / direct", f"{ratio:.3f}", f"≤ {TARGET_RATIO:.2f}", verdict(ratio <= TARGET_RATIO)),
        ("server RSS at rest", f"{http.rss_rest_mb:.0f} MB", rss_target, verdict(http.rss_rest_mb <= TARGET_RSS_MB)),
        ("server RSS after load", f"{http.rss_load_mb:.0f} MB", rss_target, verdict(http.rss_load_mb <= TARGET_RSS_MB)),
        ("redis-server RSS rest / load", f"{http.redis_rss_rest_mb:.0f} / {http.redis_rss_load_mb:.0f} MB", "", ""),
    ]


def timed_phase(name: str, run: Callable[[], Any]) -> Any:
    print(f"{name} phase")
    started = time.perf_counter()
    result = run()
    print(f"{name} phase done in {time.perf_counter() - started:.1f} s")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=common.positive_int, default=20, help="timed runs per phase (default 20)")
    parser.add_argument("--slots", type=common.positive_int, default=4, help="MAX_CONCURRENT_CHUNKS (default 4)")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help=f"audio file (default {DEFAULT_AUDIO})")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help=f"results folder (default {common.RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    audio_path: Path = args.audio.resolve()
    if not audio_path.is_file():
        print(f"no audio file at {audio_path}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    duration_s = audio.probe(audio_path).duration_s
    try:
        http: HttpPhase = timed_phase("HTTP", lambda: run_http_phase(audio_path, args.runs, args.slots))
        direct: DirectPhase = timed_phase("direct", lambda: run_direct_phase(audio_path, args.runs, args.slots))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1

    h, d = summary(http.timings_s), summary(direct.timings_s)
    settings = {
        "model": direct.model, "compute_type": direct.compute_type, "device": direct.device, "slots": args.slots,
        "runs": args.runs, "warmup_runs": WARMUP_RUNS, "audio": audio_path.name, "audio_duration_s": duration_s,
        "language": "en", "server_engine": http.server_engine,
    }  # fmt: skip
    report: dict[str, Any] = {
        "settings": settings,
        "http": {**h, **{k: v for k, v in asdict(http).items() if k != "server_engine"}},
        "direct": {**d, "timings_s": direct.timings_s, "transcription": direct.transcription},
        "ratio_median_http_direct": h["median_s"] / d["median_s"],
        "same_transcription": http.transcription == direct.transcription,
        "targets": {"ratio_max": TARGET_RATIO, "rss_max_mb": TARGET_RSS_MB},
    }
    notes = (
        f"- Whisper {direct.model} {direct.compute_type} on {direct.device}, {args.slots} slots, {args.runs} timed "
        f"runs after {WARMUP_RUNS} warm-up, audio `{audio_path.name}` ({duration_s:.1f} s), language en\n"
        "- HTTP: one request at a time, a new connection each, timed from connecting to the last byte; "
        "direct: `audio.decode` + one `WhisperModel.transcribe` (the engine's sequential path, all cores) in the "
        "benchmark process after the server stopped."
    )
    print()
    title = "Sync latency: SayIt over HTTP vs the bare engine"
    common.write_results(args.out, "sync_latency", title, report, table_rows(http, direct), notes)
    print(f"same transcription over HTTP and direct: {report['same_transcription']}")
    common.print_log_problems(http.server_log_problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
