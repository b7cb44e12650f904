"""Scale-out, simulated: the queue's orchestration cost with 1, 2, 4 and 8 queue nodes on one Redis.

Every node runs a BENCH-ONLY engine that takes a fixed time per chunk (bench/fixed_time_node.py),
so the figures show what SayIt adds around the engine (splitting, Redis, claiming, leases,
merging), not transcription speed. For each node count a 10-minute recording (built from the
corpus) is submitted to an api_only node; the wall time after the 202 is compared with the ideal
``ceil(chunks / slots) × chunk time``, and the excess is spread over the chunks:
``overhead per chunk = (wall − ideal) × slots ÷ chunks``. Splitting the upload (decode, cut,
store) is reported apart, as it happens once per upload before any chunk runs.

What it does not show: real engines (on one 2-core machine, 16 slots of a real model would only
share 2 cores), network latency between machines, or a Redis under other load.

    .venv/bin/python bench/scaleout.py [--nodes 1 2 4 8] [--chunk-seconds 2] [--minutes 10]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import numpy as np
import soundfile
from common import Row, verdict

from sayit_actors import audio
from sayit_actors.store.redis_server import EmbeddedRedis

TARGET_RATIO = 1.25
TARGET_OVERHEAD_MS = 20.0
NODE = [sys.executable, str(Path(__file__).resolve().parent / "fixed_time_node.py")]


def recording(minutes: float, folder: Path) -> tuple[Path, float]:
    clips = [audio.decode(common.CORPUS / n) for n in ("jfk.flac", "multilingual.mp3", "stereo_diarization.wav")]
    parts: list[np.ndarray] = []
    total = 0
    while total < minutes * 60 * audio.SAMPLE_RATE:
        clip = clips[len(parts) % len(clips)]
        parts.append(clip)
        total += clip.size
    path = folder / "recording.wav"
    soundfile.write(path, np.concatenate(parts), audio.SAMPLE_RATE, subtype="PCM_16")
    return path, total / audio.SAMPLE_RATE


def run(nodes: int, wav: Path, chunk_s: float, folder: Path) -> dict[str, Any]:
    redis = EmbeddedRedis(folder / f"redis-{nodes}").start()
    env = {"REDIS_URL": redis.url, "BENCH_CHUNK_SECONDS": str(chunk_s), "SAYIT_POLL_S": "0.5"}
    servers: list[common.Server] = []
    try:
        servers.append(common.launch(f"api-{nodes}", folder, NODE, WORKER_MODE="api_only", WORKER_ID="api", **env))
        for i in range(nodes):
            servers.append(common.launch(f"queue-{nodes}-{i}", folder, NODE, WORKER_MODE="queue_only",
                                         WORKER_ID=f"queue-{i}", MAX_CONCURRENT_CHUNKS="2", **env))  # fmt: skip
        for server in servers:
            common.wait_healthy(server)
        body, content_type = common.multipart_body(wav, "en")
        split_s, wall_s, data = common.run_job(servers[0].port, body, content_type, poll_s=0.005)
        chunks, slots = len(data["chunks"]), 2 * nodes
        ideal_s = math.ceil(chunks / slots) * chunk_s
        after_split = wall_s - split_s
        return {
            "nodes": nodes, "slots": slots, "chunks": chunks, "split_s": round(split_s, 3),
            "wall_s": round(after_split, 3), "wall_with_split_s": round(wall_s, 3), "ideal_s": ideal_s,
            "ratio": round(after_split / ideal_s, 3),
            "overhead_ms_per_chunk": round((after_split - ideal_s) * slots / chunks * 1000, 1),
            "nodes_used": sorted({c["node"] for c in data["chunks"]}),
            "chunk_times": [(c["node"], c["startedAt"], c["finishedAt"]) for c in data["chunks"]],
            "log_problems": [line for s in servers for line in s.log_problems()],
        }  # fmt: skip
    finally:
        for server in servers:
            common.stop(server)
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=common.positive_int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--chunk-seconds", type=common.positive_number, default=2.0)
    parser.add_argument("--minutes", type=common.positive_number, default=10.0)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sayit-scaleout-") as tmp:
        folder = Path(tmp)
        wav, file_s = recording(args.minutes, folder)
        runs = []
        for nodes in args.nodes:
            result = run(nodes, wav, args.chunk_seconds, folder)
            print(f"{nodes} nodes × 2 slots: {result['chunks']} chunks in {result['wall_s']:.2f} s after a "
                  f"{result['split_s']:.2f} s split (ideal {result['ideal_s']:.1f} s, ratio {result['ratio']:.3f}, "
                  f"{result['overhead_ms_per_chunk']:.1f} ms per chunk)")  # fmt: skip
            runs.append(result)
    rows: list[Row] = []
    largest = max(args.nodes)
    for r in runs:
        gated = r["nodes"] == largest  # the target is for the largest cluster
        ratio = f"{r['wall_s']:.2f} / {r['ideal_s']:.1f} s = {r['ratio']:.3f}"
        rows.append((f"{r['nodes']} nodes: wall / ideal", ratio, f"≤ {TARGET_RATIO}" if gated else "",
                     verdict(r["ratio"] <= TARGET_RATIO) if gated else ""))  # fmt: skip
        overhead_ok = r["overhead_ms_per_chunk"] <= TARGET_OVERHEAD_MS
        rows.append((f"{r['nodes']} nodes: overhead per chunk", f"{r['overhead_ms_per_chunk']:.1f} ms",
                     f"≤ {TARGET_OVERHEAD_MS:.0f} ms", verdict(overhead_ok)))  # fmt: skip
    rows.append(("split of the upload (once)", f"{np.median([r['split_s'] for r in runs]):.2f} s median", "", ""))
    settings = {"chunk_s": args.chunk_seconds, "file_s": round(file_s, 1), "chunks": runs[0]["chunks"],
                "slots_per_node": 2, "engine": "bench-only fixed-time engine"}  # fmt: skip
    notes = (
        f"- A {file_s / 60:.1f}-minute recording; queue nodes with 2 slots each and a BENCH-ONLY engine taking "
        f"{args.chunk_seconds:.1f} s per chunk; one api_only node; one redis-server; all on this machine.\n"
        "- wall = from the 202 to the job completed (polled every 5 ms); ideal = ceil(chunks / slots) × chunk time; "
        "overhead per chunk = (wall − ideal) × slots ÷ chunks."
    )
    common.write_results(
        args.out, "scaleout", "Scale-out, simulated", {"settings": settings, "runs": runs}, rows, notes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
