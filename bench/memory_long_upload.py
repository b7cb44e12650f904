"""Memory while a node accepts a long upload: its peak RSS over idle, against decoding it whole.

An api_only node (no queue consumer, so nothing is transcribed) against one redis-server takes
two uploads: four hours of silence (FLAC, 44.1 kHz stereo, a few MB: the length limit) and about
95 MB of speech (FLAC, the byte limit). The node's RSS is sampled every 5 ms from the POST to its
202. The anchor, measured in the same run on the same files: the peak RSS growth of a process
that decodes the file whole and splits it in memory (``audio.decode`` + ``chunking.split``), as
a node did before uploads were decoded as a stream. Target: ≤ 300 MB over idle.

What it does not show: the redis-server's memory (it holds the chunk audio, as designed) or
uploads in other formats (every format goes through the same reader).

    .venv/bin/python bench/memory_long_upload.py [--hours 4] [--speech-mb 95]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import psutil
import soundfile
from common import Row, verdict
from redis import Redis

from sayit_actors import audio
from sayit_actors.store.redis_server import EmbeddedRedis

TARGET_MB = 300.0
SERVE = [sys.executable, "-m", "sayit_cli.cli", "serve"]
# Run in a child process: the peak RSS growth of decoding a file whole and splitting it in memory.
WHOLE = """
import resource, sys
from pathlib import Path
from sayit_actors import audio
from sayit_actors.audio import chunking
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
chunks = chunking.split(audio.decode(Path(sys.argv[1]), max_s=1e9))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, len(chunks))
"""


def silent_flac(path: Path, hours: float) -> Path:
    block = np.zeros((44_100 * 600, 2), np.int16)
    with soundfile.SoundFile(str(path), "w", 44_100, 2, subtype="PCM_16", format="FLAC") as out:
        left = round(hours * 3600 * 44_100)
        while left:
            out.write(block[: min(left, len(block))])
            left -= min(left, len(block))
    return path


def speech_flac(path: Path, megabytes: float) -> Path:
    """The corpus' speech, repeated with a little noise (so it does not compress away) up to ``megabytes``."""
    clip = np.concatenate([audio.decode(common.CORPUS / n) for n in ("multilingual.mp3", "jfk.flac")])
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(str(path), "w", audio.SAMPLE_RATE, 1, subtype="PCM_16", format="FLAC") as out:
        while path.stat().st_size < megabytes * common.MB:
            out.write(clip + rng.normal(0, 0.002, clip.shape).astype(np.float32))
    return path


def accept(server: common.Server, recording: Path) -> dict[str, Any]:
    """POST ``recording`` and sample the node's RSS until the answer: idle, peak, seconds, answer."""
    node = psutil.Process(server.process.pid)
    body, content_type = common.multipart_body(recording, "auto")
    time.sleep(1.0)
    idle = node.memory_info().rss
    peak, stop = [idle], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], node.memory_info().rss)
            stop.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        status, answer = common.request(server.port, "POST", "/api/transcribe", body, content_type, timeout_s=600)
    finally:
        stop.set()
        sampler.join()
    if status != 202:
        raise common.BenchError(f"POST /api/transcribe answered {status}: {str(answer)[:300]}\n{server.log_tail()}")
    return {
        "file": recording.name,
        "file_mb": round(recording.stat().st_size / common.MB, 1),
        "audio_s": answer["data"]["duration"],
        "chunks": answer["data"]["chunks"],
        "accept_s": round(time.perf_counter() - started, 1),
        "idle_mb": round(idle / common.MB, 1),
        "peak_mb": round(peak[0] / common.MB, 1),
        "growth_mb": round((peak[0] - idle) / common.MB, 1),
    }


def whole_decode_growth_mb(recording: Path) -> float:
    done = subprocess.run([sys.executable, "-c", WHOLE, str(recording)], cwd=common.REPO_ROOT, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return round(float(done.stdout.split()[0]), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=common.positive_number, default=4.0)
    parser.add_argument("--speech-mb", type=common.positive_number, default=95.0)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sayit-long-upload-") as tmp:
        folder = Path(tmp)
        recordings = [silent_flac(folder / "silence.flac", args.hours), speech_flac(folder / "speech.flac",
                                                                                    args.speech_mb)]  # fmt: skip
        redis = EmbeddedRedis(folder / "redis").start()
        uploads, problems = [], []
        try:
            for recording in recordings:  # a fresh node for each: its idle RSS holds nothing of the other
                api = common.launch("api", folder, SERVE, WORKER_MODE="api_only", REDIS_URL=redis.url)
                try:
                    uploads.append(accept(common.wait_healthy(api), recording))
                    problems += api.log_problems()
                finally:
                    common.stop(api)
                redis_client = Redis.from_url(redis.url)
                redis_client.flushall()  # the job stays queued (no consumer): room for the next
                redis_client.close()
        finally:
            redis.stop()
        for upload, recording in zip(uploads, recordings, strict=True):
            upload["whole_decode_growth_mb"] = whole_decode_growth_mb(recording)
    rows: list[Row] = []
    for u in uploads:
        what = f"{u['audio_s'] / 3600:.1f} h in {u['file_mb']:.0f} MB ({u['file']})"
        rows.append((f"node RSS growth accepting {what}", f"{u['growth_mb']:.0f} MB", f"≤ {TARGET_MB:.0f} MB",
                     verdict(u["growth_mb"] <= TARGET_MB)))  # fmt: skip
        rows.append((f"anchor: decoding {u['file']} whole and splitting it", f"{u['whole_decode_growth_mb']:.0f} MB",
                     "", ""))  # fmt: skip
        rows.append((f"time to the 202 ({u['chunks']} chunks stored)", f"{u['accept_s']:.1f} s", "", ""))
    notes = (
        "- Peak resident set of an api_only node (psutil, sampled every 5 ms) over its idle RSS while it "
        "accepts one upload (decode, cut, store each chunk in Redis, create the job); the anchor is the "
        "peak RSS growth (ru_maxrss) of a process decoding the same file whole, in the same run."
    )
    report = {"settings": {"hours": args.hours, "speech_mb": args.speech_mb, "log_problems": problems},
              "uploads": uploads}  # fmt: skip
    common.write_results(args.out, "memory_long_upload", "Memory while accepting a long upload", report, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
