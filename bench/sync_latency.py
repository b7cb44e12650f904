"""Per-request overhead of the SayIt service compared with the bare Whisper engine.

A synchronous ``POST /api/transcribe`` walks the upload through the aiohttp edge, the actors
(Upload, DurationProbe, Dispatcher, a WhisperActor slot, Result) and the embedded Redis before and
after the engine does the real work. This benchmark measures what all of that costs: it times the
same audio file sent to a real ``sayit serve`` over HTTP, then decoded and transcribed directly by
the same engine with the same settings in this process, and reports the ratio of the medians
(target: at most 1.10) along with the server's resident memory at rest and after the load
(target: at most 1500 MB).

The two phases run one after the other (server first, stopped before the direct engine is loaded)
so that they never compete for the CPU cores.

    .venv/bin/python bench/sync_latency.py [--runs 20] [--slots 4] [--audio FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from sayit_actors import audio
from sayit_actors.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO_ROOT.parent / "shared" / "corpus" / "jfk.flac"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
WARMUP_RUNS = 2
HEALTH_WAIT_S = 60.0
STOP_WAIT_S = 20.0
REQUEST_TIMEOUT_S = 300.0
TARGET_RATIO = 1.10
TARGET_RSS_MB = 1500.0
MB = 1024 * 1024
# Settings the server would otherwise inherit from this shell; both phases must run on the defaults.
SERVER_ENV_DROP = ("REDIS_URL", "WORKER_MODE", "WORKER_ID", "MAX_CONCURRENT_CHUNKS")
LOG_PROBLEM_MARKS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Exception")


class BenchError(RuntimeError):
    """The benchmark cannot go on (the server did not start, a request failed)."""


@dataclass
class HttpPhase:
    timings_s: list[float] = field(default_factory=list)
    rss_after_each_mb: list[float] = field(default_factory=list)
    rss_rest_mb: float = 0.0
    rss_load_mb: float = 0.0
    redis_rss_rest_mb: float = 0.0
    redis_rss_load_mb: float = 0.0
    server_engine: dict[str, Any] = field(default_factory=dict)
    transcription: str = ""
    log_problems: list[str] = field(default_factory=list)


@dataclass
class DirectPhase:
    timings_s: list[float] = field(default_factory=list)
    model: str = ""
    device: str = ""
    compute_type: str = ""
    transcription: str = ""


# --- the server ----------------------------------------------------------------------------------


def server_env(data_dir: Path, slots: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROP and not k.startswith("SAYIT_")}
    env.update(HF_HUB_OFFLINE="1", SAYIT_DATA_DIR=str(data_dir), MAX_CONCURRENT_CHUNKS=str(slots))
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no server log: {exc})"


def log_problems(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(mark in line for mark in LOG_PROBLEM_MARKS)]


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    """The /health body once it answers 200; raises BenchError if the server exits or never does."""
    deadline = time.monotonic() + HEALTH_WAIT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with code {proc.returncode} before /health answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return dict(json.loads(body))
            last = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = type(exc).__name__
        finally:
            conn.close()
        time.sleep(0.25)
    raise BenchError(f"/health did not answer 200 within {HEALTH_WAIT_S:.0f} s (last: {last})")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (aiohttp's graceful shutdown), then a kill after STOP_WAIT_S; its children go too."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        print(f"the server did not stop within {STOP_WAIT_S:.0f} s of SIGINT: killing it", file=sys.stderr)
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:  # e.g. the embedded redis-server of a killed server
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of the process itself and of all its children together, in MB."""
    process = psutil.Process(pid)
    own = process.memory_info().rss
    children = 0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            children += child.memory_info().rss
    return own / MB, children / MB


# --- HTTP ----------------------------------------------------------------------------------------


def multipart_body(audio_path: Path, language: str) -> tuple[bytes, str]:
    """A multipart/form-data body with the fields ``file`` and ``language``, and its Content-Type."""
    boundary = f"sayit-bench-{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="language"\r\n\r\n'
        f"{language}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{audio_path.name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + audio_path.read_bytes() + tail, f"multipart/form-data; boundary={boundary}"


def post_transcribe(port: int, body: bytes, content_type: str) -> tuple[float, str]:
    """Seconds from connecting to the last byte of the answer, and the transcription."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", "/api/transcribe", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise BenchError(f"POST /api/transcribe answered {response.status}: {raw[:500]!r}")
    text = str(json.loads(raw).get("data", {}).get("transcription", "")).strip()
    if not text:
        raise BenchError(f"POST /api/transcribe answered 200 with no transcription: {raw[:500]!r}")
    return elapsed, text


def run_http_phase(audio_path: Path, runs: int, slots: int) -> HttpPhase:
    result = HttpPhase()
    data_dir = Path(tempfile.mkdtemp(prefix="sayit-bench-"))
    log_path = data_dir / "server.log"
    port = free_port()
    command = [sys.executable, "-m", "sayit_actors.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=server_env(data_dir, slots),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            health = wait_healthy(proc, port)
            result.server_engine = dict(health.get("services", {}).get("whisper", {}))
            result.server_engine["slots"] = health.get("services", {}).get("workers", {}).get("slots")
            result.rss_rest_mb, result.redis_rss_rest_mb = rss_mb(proc.pid)
            print(f"server up on port {port} (pid {proc.pid}): {result.server_engine}")

            body, content_type = multipart_body(audio_path, "en")
            for _ in range(WARMUP_RUNS):
                post_transcribe(port, body, content_type)
            for i in range(runs):
                elapsed, result.transcription = post_transcribe(port, body, content_type)
                result.timings_s.append(elapsed)
                result.rss_after_each_mb.append(rss_mb(proc.pid)[0])
                print(f"  http   {i + 1:>3}/{runs}: {elapsed:.3f} s")
            result.rss_load_mb, result.redis_rss_load_mb = rss_mb(proc.pid)
        except BaseException:
            print(f"--- tail of the server log ({log_path}) ---\n{log_tail(log_path)}", file=sys.stderr)
            raise
    finally:
        if proc is not None:
            stop_server(proc)
        result.log_problems = log_problems(log_path)
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


# --- the bare engine -----------------------------------------------------------------------------


def run_direct_phase(audio_path: Path, runs: int, slots: int) -> DirectPhase:
    # Imported here so that the engine's libraries load only once the server has stopped.
    from config import load_settings
    from sayit_actors.engine import TranscriptionOptions
    from sayit_actors.faster_engine import FasterWhisperEngine

    settings = load_settings({"MAX_CONCURRENT_CHUNKS": str(slots)})
    engine = FasterWhisperEngine.load(settings.engine, workers=slots)
    options = TranscriptionOptions.from_profile(settings.profiles["en"])
    info = audio.probe(audio_path)
    result = DirectPhase(model=engine.model, device=engine.device, compute_type=engine.compute_type)

    def once() -> tuple[float, str]:
        started = time.perf_counter()
        samples = audio.decode(audio_path, info.duration_s)
        transcript = engine.transcribe(samples, options)
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


# --- the report ----------------------------------------------------------------------------------


def summary(timings_s: list[float]) -> dict[str, float]:
    values = np.asarray(timings_s, dtype=float)
    return {
        "median_s": float(np.median(values)),
        "p95_s": float(np.percentile(values, 95)),
        "min_s": float(values.min()),
        "max_s": float(values.max()),
        "mean_s": float(values.mean()),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "python": platform.python_version(),
    }


def table_rows(http: HttpPhase, direct: DirectPhase) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, verdict) rows shared by the console and Markdown reports."""
    h, d = summary(http.timings_s), summary(direct.timings_s)
    ratio = h["median_s"] / d["median_s"]
    return [
        ("HTTP median / p95 / min", f"{h['median_s']:.3f} / {h['p95_s']:.3f} / {h['min_s']:.3f} s", "", ""),
        ("direct median / p95 / min", f"{d['median_s']:.3f} / {d['p95_s']:.3f} / {d['min_s']:.3f} s", "", ""),
        ("median HTTP - direct", f"{(h['median_s'] - d['median_s']) * 1000:+.0f} ms", "", ""),
        ("ratio median HTTP / direct", f"{ratio:.3f}", f"≤ {TARGET_RATIO:.2f}", verdict(ratio <= TARGET_RATIO)),
        (
            "server RSS at rest",
            f"{http.rss_rest_mb:.0f} MB",
            f"≤ {TARGET_RSS_MB:.0f} MB",
            verdict(http.rss_rest_mb <= TARGET_RSS_MB),
        ),
        (
            "server RSS after load",
            f"{http.rss_load_mb:.0f} MB",
            f"≤ {TARGET_RSS_MB:.0f} MB",
            verdict(http.rss_load_mb <= TARGET_RSS_MB),
        ),
        ("redis-server RSS rest / load", f"{http.redis_rss_rest_mb:.0f} / {http.redis_rss_load_mb:.0f} MB", "", ""),
    ]


def console_table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| figure | value | target | |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def write_results(out: Path, report: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sync_latency.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    machine = report["machine"]
    settings = report["settings"]
    markdown = [
        "# Sync latency: SayIt over HTTP vs the bare engine",
        "",
        f"- {report['timestamp']}, {machine['cpu_model']} ({machine['cpu_count']} CPUs), "
        f"{machine['platform']}, Python {machine['python']}",
        f"- Whisper {settings['model']} {settings['compute_type']} on {settings['device']}, "
        f"{settings['slots']} slots, {settings['runs']} timed runs after {settings['warmup_runs']} warm-up, "
        f"audio `{Path(settings['audio']).name}` ({settings['audio_duration_s']:.1f} s), language en",
        "- HTTP: one request at a time, a new connection each, timed from connecting to the last byte; "
        "direct: `audio.decode` + `engine.transcribe` in the benchmark process after the server stopped.",
        "",
        markdown_table(rows),
        "",
    ]
    (out / "sync_latency.md").write_text("\n".join(markdown))


# --- main ----------------------------------------------------------------------------------------


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=positive_int, default=20, help="timed runs per phase (default 20)")
    parser.add_argument("--slots", type=positive_int, default=4, help="MAX_CONCURRENT_CHUNKS (default 4)")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help=f"audio file (default {DEFAULT_AUDIO})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def timed_phase(name: str, run: Callable[[], Any]) -> Any:
    print(f"{name} phase")
    started = time.perf_counter()
    result = run()
    print(f"{name} phase done in {time.perf_counter() - started:.1f} s")
    return result


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

    rows = table_rows(http, direct)
    h, d = summary(http.timings_s), summary(direct.timings_s)
    report: dict[str, Any] = {
        "benchmark": "sync_latency",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "settings": {
            "model": direct.model,
            "compute_type": direct.compute_type,
            "device": direct.device,
            "slots": args.slots,
            "runs": args.runs,
            "warmup_runs": WARMUP_RUNS,
            "audio": str(audio_path),
            "audio_duration_s": duration_s,
            "language": "en",
            "server_engine": http.server_engine,
        },
        "http": {
            **h,
            "timings_s": http.timings_s,
            "rss_rest_mb": http.rss_rest_mb,
            "rss_load_mb": http.rss_load_mb,
            "rss_after_each_request_mb": http.rss_after_each_mb,
            "redis_rss_rest_mb": http.redis_rss_rest_mb,
            "redis_rss_load_mb": http.redis_rss_load_mb,
            "transcription": http.transcription,
            "server_log_problems": http.log_problems,
        },
        "direct": {**d, "timings_s": direct.timings_s, "transcription": direct.transcription},
        "ratio_median_http_direct": h["median_s"] / d["median_s"],
        "same_transcription": http.transcription == direct.transcription,
        "targets": {"ratio_max": TARGET_RATIO, "rss_max_mb": TARGET_RSS_MB},
    }
    write_results(args.out, report, rows)

    print()
    print(console_table(rows))
    print(f"same transcription over HTTP and direct: {report['same_transcription']}")
    if http.log_problems:
        print(f"server log: {len(http.log_problems)} warning/error line(s):")
        for line in http.log_problems[:20]:
            print(f"  {line}")
    else:
        print("server log: no warnings or errors")
    print(f"results in {args.out / 'sync_latency.json'} and {args.out / 'sync_latency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
