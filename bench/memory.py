"""Memory: the resident set of an api node and of a queue node, at rest and after load.

An api_only node (4 slots) and a queue_only node (2 slots) run against one redis-server with the
real bundled model. "After load": the api node after 40 short uploads from 4 clients at once, the
queue node after it transcribed a recording of several minutes. Target: ≤ 1.5 GB per node.

What it does not show: memory over days (leaks would need a soak test), other models (small and
medium weigh more), or the redis-server's own memory (reported apart, it grows with queued audio).

    .venv/bin/python bench/memory.py [--minutes 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import common
import numpy as np
import soundfile
from common import Row, verdict

from sayit_actors import audio
from sayit_actors.store.redis_server import EmbeddedRedis

TARGET_MB = 1500.0
SERVE = [sys.executable, "-m", "sayit_cli.cli", "serve"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=common.positive_number, default=3.0)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sayit-memory-") as tmp:
        folder = Path(tmp)
        clip = audio.decode(common.CORPUS / "multilingual.mp3")
        repeats = int(np.ceil(args.minutes * 60 * audio.SAMPLE_RATE / clip.size))
        long_wav = folder / "long.wav"
        soundfile.write(long_wav, np.tile(clip, repeats), audio.SAMPLE_RATE, subtype="PCM_16")
        redis = EmbeddedRedis(folder / "redis").start()
        api = common.launch("api", folder, SERVE, WORKER_MODE="api_only", MAX_CONCURRENT_CHUNKS="4",
                            REDIS_URL=redis.url)  # fmt: skip
        queue = common.launch("queue", folder, SERVE, WORKER_MODE="queue_only", MAX_CONCURRENT_CHUNKS="2",
                              REDIS_URL=redis.url)  # fmt: skip
        try:
            for server in (api, queue):
                common.wait_healthy(server)
            rest = {"api": api.rss_mb(), "queue": queue.rss_mb()}
            body, content_type = common.multipart_body(common.CORPUS / "jfk.flac", "en")

            statuses: list[int] = []

            def client() -> None:
                for _ in range(10):
                    status, _ = common.request(api.port, "POST", "/api/transcribe", body, content_type, timeout_s=300)
                    statuses.append(status)

            threads = [threading.Thread(target=client) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            long_body, long_type = common.multipart_body(long_wav, "auto")
            common.run_job(api.port, long_body, long_type)  # raises unless it completes
            whisper = dict(api.health.get("services", {}).get("whisper", {}))
            after = {"api": api.rss_mb(), "queue": queue.rss_mb()}
            problems = api.log_problems() + queue.log_problems()
        finally:
            for server in (api, queue):
                common.stop(server)
            redis.stop()
    if failed := len(statuses) - statuses.count(200):
        print(f"{failed} of {len(statuses)} load requests were not answered 200 ({sorted(set(statuses))}): "
              "a memory figure after them means nothing", file=sys.stderr)  # fmt: skip
        return 1
    nodes = [
        {"role": "api_only", "slots": 4, "rest_mb": round(rest["api"], 1), "after_load_mb": round(after["api"], 1)},
        {"role": "queue_only", "slots": 2, "rest_mb": round(rest["queue"], 1),
         "after_load_mb": round(after["queue"], 1)},
    ]  # fmt: skip
    rows: list[Row] = []
    for node in nodes:
        rows.append((f"{node['role']} ({node['slots']} slots) at rest", f"{node['rest_mb']:.0f} MB",
                     f"≤ {TARGET_MB:.0f} MB", verdict(node["rest_mb"] <= TARGET_MB)))  # fmt: skip
        rows.append((f"{node['role']} ({node['slots']} slots) after load", f"{node['after_load_mb']:.0f} MB",
                     f"≤ {TARGET_MB:.0f} MB", verdict(node["after_load_mb"] <= TARGET_MB)))  # fmt: skip
    notes = (
        f"- Resident set size of each node process (psutil), Whisper {whisper.get('model')} "
        f"{whisper.get('computeType')} on {whisper.get('device')}, one redis-server; "
        f"load: 40 × jfk.flac from 4 clients on the api node (all answered 200), then a {args.minutes:.0f}-minute job "
        "on the queue node."
    )
    report = {"settings": {"minutes": args.minutes, "model": whisper.get("model"),
                           "compute_type": whisper.get("computeType"), "device": whisper.get("device"),
                           "load_requests": len(statuses), "load_requests_not_200": 0, "log_problems": problems},
              "nodes": nodes}  # fmt: skip
    common.write_results(args.out, "memory", "Memory per node", report, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
