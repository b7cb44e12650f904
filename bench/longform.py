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
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import soundfile

from sayit_actors import audio
from sayit_actors.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = REPO_ROOT.parent / "shared" / "corpus"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# (file, seconds to keep or None for all): multilingual.mp3 turns German after ~30 s.
# Order matters for the bare engine: base drops stereo_diarization.wav when hotwords.mp3 follows it
# in one 30 s window, which would count as a chunking error; each short clip sits before a long one.
CLIPS: tuple[tuple[str, float | None], ...] = (
    ("jfk.flac", None),
    ("stereo_diarization.wav", None),
    ("multilingual.mp3", 30.0),
    ("hotwords.mp3", None),
)
WARMUP_AUDIO = CORPUS / "jfk.flac"
GAP_S = 0.5
SR = audio.SAMPLE_RATE
HEALTH_WAIT_S = 60.0
STOP_WAIT_S = 20.0
REQUEST_TIMEOUT_S = 300.0
POLL_S = 0.1
JOB_TIMEOUT_S = 3600.0
TARGET_RATIO = 0.70
TARGET_WER = 0.03
MB = 1024 * 1024
SERVER_ENV_DROP = ("REDIS_URL", "WORKER_MODE", "WORKER_ID", "MAX_CONCURRENT_CHUNKS")
LOG_PROBLEM_MARKS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Exception")


class BenchError(RuntimeError):
    """The benchmark cannot go on (the server did not start, a request or the job failed)."""


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
    log_problems: list[str] = field(default_factory=list)

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
    return {name: audio.decode(CORPUS / name)[: round(keep * SR) if keep else None] for name, keep in CLIPS}


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


# --- the server (as in sync_latency.py) ----------------------------------------------------------


def server_env(data_dir: Path, slots: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROP and not k.startswith("SAYIT_")}
    env.update(
        HF_HUB_OFFLINE="1", SAYIT_DATA_DIR=str(data_dir), MAX_CONCURRENT_CHUNKS=str(slots), SAYIT_POLL_S=str(POLL_S)
    )
    return env


def log_problems(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(mark in line for mark in LOG_PROBLEM_MARKS)]


def request(port: int, method: str, path: str, body: bytes | None = None, content_type: str = "") -> tuple[int, Any]:
    """HTTP status and JSON body (None if not JSON) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    deadline = time.monotonic() + HEALTH_WAIT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with code {proc.returncode} before /health answered")
        try:
            status, body = request(port, "GET", "/health")
            if status == 200:
                return dict(body)
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = type(exc).__name__
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
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of the process itself and of all its children together, in MB."""
    process = psutil.Process(pid)
    children = 0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            children += child.memory_info().rss
    return process.memory_info().rss / MB, children / MB


def multipart_body(audio_path: Path, language: str) -> tuple[bytes, str]:
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


def transcribe(port: int, audio_path: Path) -> tuple[float, dict[str, Any]]:
    """POST the file (language en), poll a 202's job every POLL_S; seconds until done and the final data."""
    body, content_type = multipart_body(audio_path, "en")
    started = time.perf_counter()
    status, answer = request(port, "POST", "/api/transcribe", body, content_type)
    if status == 200:
        return time.perf_counter() - started, dict(answer["data"])
    if status != 202:
        raise BenchError(f"POST /api/transcribe answered {status}: {str(answer)[:500]}")
    status_url = answer["data"]["statusUrl"]
    while time.perf_counter() - started < JOB_TIMEOUT_S:
        status, answer = request(port, "GET", status_url)
        if status != 200:
            raise BenchError(f"GET {status_url} answered {status}: {str(answer)[:500]}")
        data = dict(answer["data"])
        if data.get("status") == "completed":
            return time.perf_counter() - started, data
        if data.get("status") == "failed":
            raise BenchError(f"job {data.get('jobId')} failed: {data.get('error')}")
        time.sleep(POLL_S)
    raise BenchError(f"job not completed within {JOB_TIMEOUT_S:.0f} s")


def run_async_phase(wav: Path, slots: int) -> AsyncPhase:
    result = AsyncPhase()
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
            services = wait_healthy(proc, port).get("services", {})
            result.server_engine = {**services.get("whisper", {}), "slots": services.get("workers", {}).get("slots")}
            print(f"server up on port {port} (pid {proc.pid}): {result.server_engine}")
            transcribe(port, WARMUP_AUDIO)
            result.wall_s, data = transcribe(port, wav)
            result.rss_after_mb, result.redis_rss_after_mb = rss_mb(proc.pid)
            result.server_processing_s = data.get("processingTime")
            result.chunks = list(data.get("chunks", []))
            result.languages = list(data.get("languages", []))
            result.transcription = str(data.get("transcription", "")).strip()
            print(f"  async: {result.wall_s:.2f} s, {len(result.chunks)} chunks on {', '.join(result.nodes)}")
        except BaseException:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            print(f"--- tail of the server log ({log_path}) ---\n{tail}", file=sys.stderr)
            raise
    finally:
        if proc is not None:
            stop_server(proc)
        result.log_problems = log_problems(log_path)
        shutil.rmtree(data_dir, ignore_errors=True)
    if not result.transcription:
        raise BenchError("the async job completed with an empty transcription")
    return result


# --- the bare engine -----------------------------------------------------------------------------


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
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
    }


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
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


def console_table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def write_results(out: Path, report: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "longform.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    machine, settings = report["machine"], report["settings"]
    markdown = [
        "# Long form: SayIt's async chunked path vs one bare engine call",
        "",
        f"- {report['timestamp']}, {machine['cpu_model']} ({machine['cpu_count']} CPUs), "
        f"{machine['platform']}, Python {machine['python']}, load average {machine['load_average'][0]:.2f}",
        f"- Whisper {settings['model']} {settings['compute_type']} on {settings['device']}; server: "
        f"{settings['slots']} slots, queue poll {POLL_S} s; direct: 1 worker, all cores; language en",
        f"- recording: {settings['audio_duration_s']:.1f} s, {len(settings['clips'])} clips "
        f"({', '.join(name for name, _ in CLIPS)}, multilingual.mp3 cut to its English first 30 s), "
        f"{GAP_S} s of silence between them",
        "- async: from just before the POST until a status poll (every 0.1 s) first sees `completed`, "
        "so it includes the upload and the server's decode and split; direct: `engine.transcribe` on "
        "the already decoded samples. One run each, after one warm-up with jfk.flac.",
        "- WER: the async transcript against the direct one (normalized words), not against a human reference; "
        "for information, both against each clip transcribed alone by the same engine, concatenated.",
        "",
        "| figure | value | target | |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
    ]
    (out / "longform.md").write_text("\n".join(markdown))


# --- main ----------------------------------------------------------------------------------------


def positive_number(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=positive_number, default=3.0, help="recording length (default 3)")
    parser.add_argument("--slots", type=positive_int, default=2, help="MAX_CONCURRENT_CHUNKS (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clip_samples = load_clips()
    samples, clips = build_recording(clip_samples, args.minutes)
    duration_s = samples.size / SR
    print(f"recording: {duration_s:.1f} s from {len(clips)} clips")
    work_dir = Path(tempfile.mkdtemp(prefix="sayit-longform-"))
    wav = work_dir / f"longform-{args.minutes:g}min.wav"
    try:
        soundfile.write(wav, samples, SR, subtype="PCM_16")
        # Both phases get the same 16-bit samples.
        samples = audio.decode(wav)
        print("async phase")
        asynchronous = run_async_phase(wav, args.slots)
        print("direct phase")
        direct = run_direct_phase(samples, clip_samples)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    reference, hypothesis = normalize(direct.transcription), normalize(asynchronous.transcription)
    errors = word_errors(reference, hypothesis)
    by_clips = normalize(" ".join(direct.clip_texts[name] for name in clips))
    report: dict[str, Any] = {
        "benchmark": "longform",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "settings": {
            "model": direct.model,
            "compute_type": direct.compute_type,
            "device": direct.device,
            "slots": args.slots,
            "minutes": args.minutes,
            "audio_duration_s": duration_s,
            "clips": clips,
            "gap_s": GAP_S,
            "language": "en",
            "status_poll_s": POLL_S,
            "server_queue_poll_s": POLL_S,
            "server_engine": asynchronous.server_engine,
        },
        "async": {
            "wall_s": asynchronous.wall_s,
            "server_processing_s": asynchronous.server_processing_s,
            "chunks": asynchronous.chunks,
            "nodes": asynchronous.nodes,
            "languages": asynchronous.languages,
            "rss_after_mb": asynchronous.rss_after_mb,
            "redis_rss_after_mb": asynchronous.redis_rss_after_mb,
            "server_log_problems": asynchronous.log_problems,
            "transcription": asynchronous.transcription,
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
    rows = table_rows(report)
    write_results(args.out, report, rows)

    print()
    print(console_table(rows))
    print(f"load average (1/5/15 min) at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if asynchronous.log_problems:
        print(f"server log: {len(asynchronous.log_problems)} warning/error line(s):")
        for line in asynchronous.log_problems[:20]:
            print(f"  {line}")
    else:
        print("server log: no warnings or errors")
    print(f"results in {args.out / 'longform.json'} and {args.out / 'longform.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
