"""What the benchmarks share: a real server process, a stdlib HTTP client, statistics, reports.

Scripts in this folder import it as ``common`` (Python puts the script's folder on the path).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from sayit_actors.store.redis_server import free_port  # noqa: E402

CORPUS = REPO_ROOT.parent / "shared" / "corpus"
RESULTS = REPO_ROOT / "docs" / "results"
MB = 1024 * 1024
HEALTH_WAIT_S = 90.0
STOP_WAIT_S = 30.0
REQUEST_TIMEOUT_S = 600.0
# Settings a server would otherwise inherit from this shell: every run uses its own.
ENV_DROP = ("REDIS_URL", "WORKER_MODE", "WORKER_ID", "MAX_CONCURRENT_CHUNKS")
LOG_PROBLEM_MARKS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
Row = tuple[str, str, str, str]  # figure, value, target, verdict


class BenchError(RuntimeError):
    """The benchmark cannot go on (a server did not start, a request failed)."""


@dataclass
class Server:
    """A node started as its own process; see ``start_server``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Resident memory of the node process itself (not its children), in MB."""
        return psutil.Process(self.process.pid).memory_info().rss / MB

    def children_rss_mb(self) -> float:
        total = 0
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total / MB

    def log_problems(self) -> list[str]:
        with contextlib.suppress(OSError):
            lines = self.log.read_text(errors="replace").splitlines()
            return [line for line in lines if any(mark in line for mark in LOG_PROBLEM_MARKS)]
        return []

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def node_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """A node's environment: its own data folder and the result cache off, so that every request
    the benchmarks send again (the same clip, over and over) is transcribed, not answered from Redis."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP and not k.startswith("SAYIT_")}
    env.update(HF_HUB_OFFLINE="1", SAYIT_DATA_DIR=str(data_dir), SAYIT_RESULT_CACHE="false", **settings)
    return env


def launch(name: str, folder: Path, command: Sequence[str], **settings: str) -> Server:
    """Start a node (``command`` gets ``--host`` and ``--port``); its log goes to ``folder``."""
    port = free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=node_env(folder / name, **settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Server(name, port, process, log)


def wait_healthy(server: Server) -> Server:
    deadline = time.monotonic() + HEALTH_WAIT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            status, body = request(server.port, "GET", "/health", timeout_s=5)
            if status == 200:
                server.health = body["data"]  # the app's envelope
                return server
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    raise BenchError(f"{server.name}: /health did not answer 200 within {HEALTH_WAIT_S:.0f} s (last: {last})")


def stop(server: Server) -> None:
    """SIGINT (a graceful stop), a kill after STOP_WAIT_S; its children (an embedded Redis) go too."""
    if server.process.poll() is not None:
        return
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    server.process.send_signal(signal.SIGINT)
    try:
        server.process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        print(f"{server.name} did not stop within {STOP_WAIT_S:.0f} s of SIGINT: killing it", file=sys.stderr)
        server.process.kill()
        server.process.wait()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sayit-bench-"))
    try:
        yield folder
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def sayit_server(folder: Path, name: str = "server", **settings: str) -> Iterator[Server]:
    """``sayit serve`` with ``settings`` (environment variables), healthy, stopped afterwards."""
    server = launch(name, folder, [sys.executable, "-m", "sayit_cli.cli", "serve"], **settings)
    try:
        yield wait_healthy(server)
    except BenchError:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        stop(server)


# --- HTTP ----------------------------------------------------------------------------------------


def request(
    port: int, method: str, path: str, body: bytes | None = None, content_type: str = "", timeout_s: float = 60
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def multipart_body(audio: Path | bytes, language: str, filename: str = "audio") -> tuple[bytes, str]:
    """A multipart/form-data body with the fields ``file`` and ``language``, and its Content-Type."""
    data = audio.read_bytes() if isinstance(audio, Path) else audio
    name = audio.name if isinstance(audio, Path) else filename
    boundary = f"sayit-bench-{uuid.uuid4().hex}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\n{language}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def run_job(port: int, body: bytes, content_type: str, poll_s: float = 0.1) -> tuple[float, float, dict[str, Any]]:
    """POST a long upload and poll it: (seconds to the 202, seconds to completed, the job's data)."""
    started = time.perf_counter()
    status, answer = request(port, "POST", "/api/transcribe", body, content_type, timeout_s=REQUEST_TIMEOUT_S)
    if status != 202:
        raise BenchError(f"POST /api/transcribe answered {status}: {str(answer)[:300]}")
    accepted = time.perf_counter() - started
    job_id = answer["data"]["jobId"]
    while True:
        status, answer = request(port, "GET", f"/api/transcribe/{job_id}")
        data = answer["data"] if status == 200 else {}
        if data.get("status") == "completed":
            return accepted, time.perf_counter() - started, data
        if status != 200 or data.get("status") == "failed":
            raise BenchError(f"job {job_id}: {status} {str(answer)[:300]}")
        time.sleep(poll_s)


# --- figures and reports -------------------------------------------------------------------------


def summary(values_s: Sequence[float]) -> dict[str, float]:
    values = np.asarray(values_s, dtype=float)
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        "median_s": float(np.median(values)),
        "p50_s": float(np.percentile(values, 50)),
        "p95_s": float(np.percentile(values, 95)),
        "min_s": float(values.min()),
        "max_s": float(values.max()),
        "mean_s": float(values.mean()),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def source_revision() -> str:
    """The commit measured, marked ``+changes`` when the tree differs from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"],  # docs: the outputs
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}+changes" if dirty else rev


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
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def console_table(rows: Sequence[Row]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| figure | value | target | |", "|---|---|---|---|"]
    return "\n".join([*lines, *(f"| {' | '.join(row)} |" for row in rows)])


def write_results(out: Path, name: str, title: str, report: dict[str, Any], rows: Sequence[Row], notes: str) -> None:
    """``<name>.json`` (everything) and ``<name>.md`` (the table and how it was measured)."""
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": name,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "commit": source_revision(),
        "machine": machine_info(),
        **report,
    }
    report["rows"] = [list(row) for row in rows]
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    machine = report["machine"]
    lines = [f"# {title}", "", f"- {report['timestamp']}, {machine['cpu_model']} ({machine['cpu_count']} CPUs)", notes]
    (out / f"{name}.md").write_text("\n".join([*lines, "", markdown_table(rows), ""]))
    print(console_table(rows))
    print(f"results in {out / (name + '.json')} and {out / (name + '.md')}")


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_number(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def print_log_problems(problems: list[str]) -> None:
    if not problems:
        print("server log: no warnings or errors")
        return
    print(f"server log: {len(problems)} warning/error line(s):")
    for line in problems[:20]:
        print(f"  {line}")


def server_options(settings: Any, queued: bool) -> Any:
    """The decoding options a server with ``settings`` uses for English audio (a queued chunk, or
    a short upload): the direct phases call the engine with exactly these."""
    from sayit_actors.dispatcher import Choices, options_for

    return options_for(settings.profiles["en"], Choices(), settings.silence, queued=queued)


def load_whisper(settings: Any, device: str, compute_type: str, cpu_threads: int, num_workers: int) -> Any:
    """A bare faster-whisper ``WhisperModel`` from the files the node loads (``settings.engine.model``),
    with the given threads per worker and workers."""
    from faster_whisper import WhisperModel

    from sayit_actors.engines import model_store

    kwargs = {"device": device, "compute_type": compute_type, "cpu_threads": cpu_threads, "num_workers": num_workers}
    name = settings.engine.model
    if name == model_store.BUNDLED:
        return WhisperModel(name, files=model_store.bundled_files(), **kwargs)
    if (folder := model_store.local_model_dir(name)) is not None:
        return WhisperModel(str(folder), **kwargs)
    return WhisperModel(name, local_files_only=True, **kwargs)


def plain_transcribe(model: Any, samples: np.ndarray, options: Any) -> str:
    """One ``WhisperModel.transcribe`` with a request's options, as the engine's sequential path calls
    it (no VAD filter); the text of all its segments."""
    segments, _ = model.transcribe(
        samples, language=options.language, task=options.task, beam_size=options.beam_size,
        patience=options.patience, best_of=options.best_of, temperature=list(options.temperatures),
        condition_on_previous_text=options.condition_on_previous_text, word_timestamps=options.word_timestamps,
        initial_prompt=options.initial_prompt, hotwords=options.hotwords,
        no_speech_threshold=options.no_speech_threshold,
        compression_ratio_threshold=options.compression_ratio_threshold,
        log_prob_threshold=options.log_prob_threshold, without_timestamps=options.without_timestamps,
    )  # fmt: skip
    return " ".join(s.text.strip() for s in segments).strip()
