"""Does accepting a long upload stall short ones? A short upload's time alone and during a large one.

A real ``sayit serve`` (api_only, two slots, against its own redis-server, no queue consumer, so
the long jobs stay queued and nothing but the accepting competes) takes jfk.flac (11 s) alone,
several times; then the same, each sent while a large upload is being accepted: a ~96 MB WAV of
~50 min (16 kHz mono, the corpus' speech repeated), which the node receives, decodes, cuts and
stores as chunks before its 202. The short upload is sent as soon as the large one's first chunk
audio shows up in Redis (it is being cut: the step that once held the Dispatcher); a run where
the short answer came after the large 202 is marked (it did not wholly overlap).
Target: the short upload during the large one takes at most 1.3 × its time alone (medians).

    .venv/bin/python bench/stall.py [--runs 8] [--minutes 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import soundfile
from common import Row, verdict
from redis import Redis

from sayit_actors import audio
from sayit_actors.store import keys
from sayit_actors.store.redis_server import EmbeddedRedis

TARGET_RATIO = 1.3
SHORT = common.CORPUS / "jfk.flac"
FIRST_CHUNK = keys.chunk_audio("*", 0)


def long_wav(path: Path, minutes: float) -> Path:
    """The corpus' speech, repeated with a little noise, as 16 kHz mono PCM WAV of ``minutes``."""
    clip = np.concatenate([audio.decode(common.CORPUS / n) for n in ("multilingual.mp3", "jfk.flac")])
    rng = np.random.default_rng(0)
    left = round(minutes * 60 * audio.SAMPLE_RATE)
    with soundfile.SoundFile(str(path), "w", audio.SAMPLE_RATE, 1, subtype="PCM_16", format="WAV") as out:
        while left > 0:
            block = clip[: min(left, clip.size)]
            out.write(block + rng.normal(0, 0.002, block.shape).astype(np.float32))
            left -= block.size
    return path


def wait_for_new_job(client: Redis, known: set[bytes], big: threading.Thread) -> set[bytes]:
    """Once a job's first chunk audio is stored (the upload is being cut): every job's first chunk key."""
    while big.is_alive():
        now = set(client.scan_iter(match=FIRST_CHUNK, count=1000))
        if now - known:
            return now
        time.sleep(0.01)
    raise common.BenchError("the large upload ended before any chunk audio was seen")


def short_upload(port: int, body: bytes, content_type: str) -> float:
    started = time.perf_counter()
    status, answer = common.request(port, "POST", "/api/transcribe", body, content_type, timeout_s=300)
    if status != 200:
        raise common.BenchError(f"the short upload answered {status}: {str(answer)[:300]}")
    return time.perf_counter() - started


class LargeUpload(threading.Thread):
    """POSTs the large body; ``ended_at`` is when its answer came."""

    def __init__(self, port: int, body: bytes, content_type: str) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.content_type = port, body, content_type
        self.ended_at = 0.0
        self.accept_s = 0.0
        self.status = 0
        self.answer: Any = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        started = time.perf_counter()
        try:
            conn.request("POST", "/api/transcribe", body=self.body, headers={"Content-Type": self.content_type})
            response = conn.getresponse()
            self.status, raw = response.status, response.read()
            self.answer = json.loads(raw) if raw else None
        finally:
            conn.close()
            self.ended_at = time.perf_counter()
            self.accept_s = self.ended_at - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=common.positive_int, default=8)
    parser.add_argument("--minutes", type=common.positive_number, default=50.0)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    short_body, short_type = common.multipart_body(SHORT, "en")
    with tempfile.TemporaryDirectory(prefix="sayit-stall-") as tmp:
        folder = Path(tmp)
        large = long_wav(folder / "long.wav", args.minutes)
        large_mb = large.stat().st_size / common.MB
        large_body, large_type = common.multipart_body(large, "auto")
        redis = EmbeddedRedis(folder / "redis").start()
        settings = {
            "WORKER_MODE": "api_only", "REDIS_URL": redis.url, "MAX_CONCURRENT_CHUNKS": "2",
            "SAYIT_MAX_QUEUED_AUDIO_S": str(args.minutes * 60 * (args.runs + 2)), "SAYIT_RATE_LIMIT_PER_MIN": "0",
        }  # fmt: skip
        try:
            with common.sayit_server(folder, "api", **settings) as server:
                for _ in range(2):  # warm-up: the engine's first calls are slower
                    short_upload(server.port, short_body, short_type)
                alone = [short_upload(server.port, short_body, short_type) for _ in range(args.runs)]
                during, accepts, overlapped = [], [], []
                client = Redis.from_url(redis.url)
                known: set[bytes] = set()
                for _ in range(args.runs):
                    big = LargeUpload(server.port, large_body, large_type)
                    big.start()
                    known = wait_for_new_job(client, known, big)
                    during.append(short_upload(server.port, short_body, short_type))
                    short_ended = time.perf_counter()
                    big.join()
                    if big.status != 202:
                        raise common.BenchError(f"the large upload answered {big.status}: {str(big.answer)[:300]}")
                    accepts.append(big.accept_s)
                    overlapped.append(short_ended <= big.ended_at)
                client.close()
                problems = server.log_problems()
        finally:
            redis.stop()
    alone_s, during_s = float(np.median(alone)), float(np.median(during))
    ratio = during_s / alone_s
    rows: list[Row] = [
        ("short upload (jfk.flac) alone, median", f"{alone_s:.2f} s", "", ""),
        (f"the same during a {large_mb:.0f} MB / {args.minutes:.0f} min upload, median", f"{during_s:.2f} s", "", ""),
        ("ratio during / alone", f"{ratio:.2f}", f"≤ {TARGET_RATIO}", verdict(ratio <= TARGET_RATIO)),
        ("large upload: time to its 202, median", f"{float(np.median(accepts)):.1f} s", "", ""),
        ("runs wholly within the large upload's splitting", f"{sum(overlapped)} of {args.runs}", "", ""),
    ]
    report = {
        "benchmark": "stall",
        "commit": common.source_revision(),
        "machine": common.machine_info(),
        "settings": {k: v for k, v in settings.items() if k != "REDIS_URL"},
        "runs": args.runs,
        "large_mb": round(large_mb, 1),
        "large_minutes": args.minutes,
        "alone_s": [round(x, 3) for x in alone],
        "during_s": [round(x, 3) for x in during],
        "large_accept_s": [round(x, 3) for x in accepts],
        "overlapped": overlapped,
        "alone": common.summary(alone),
        "during": common.summary(during),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "log_problems": problems,
        "rows": [list(row) for row in rows],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stall.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(common.console_table(rows))
    common.print_log_problems(problems)
    print(f"results in {args.out / 'stall.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
