"""Throughput under load: concurrent clients posting short clips, against the bare engine.

For 1, 2, 4, 8 and 16 concurrent clients, each client posts jfk.flac (11 s) again and again for
a fixed time to a real ``sayit serve`` in the api_only role (so every request is answered at
once or refused: no queue takes the overflow), then the same number of threads call the bare
engine directly (decode + one faster-whisper ``WhisperModel.transcribe``, same model and options,
a worker per server slot with the cores shared out between them) for the same time. Reported:
audio seconds transcribed per second, latency p50/p95, the ratio of the two throughputs, and how
many requests were refused with 503 and Retry-After.

What it does not show: clients on other machines (here they share the 2 cores with the server),
long recordings, or keep-alive connections (each request opens its own, as a mobile app does).

    .venv/bin/python bench/throughput.py [--clients 1 2 4 8 16] [--seconds 15] [--slots 4]
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import Row, summary, verdict

from config import load_settings
from sayit_actors import audio
from sayit_actors.engines.faster import FasterWhisperEngine

TARGET_RATIO_AT_8 = 0.90


def hammer(clients: int, seconds: float, call: Callable[[], int]) -> tuple[list[float], list[int], float]:
    """``clients`` threads calling ``call`` until ``seconds`` pass: latencies, statuses, elapsed time."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    def client() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status = call()
            with lock:
                latencies.append(time.perf_counter() - t0)
                statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses, time.perf_counter() - started


def http_levels(
    levels: list[int], seconds: float, slots: int, clip: Path, clip_s: float
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    body, content_type = common.multipart_body(clip, "en")

    results = []
    with (
        common.workspace() as folder,
        common.sayit_server(folder, WORKER_MODE="api_only", MAX_CONCURRENT_CHUNKS=str(slots)) as server,
    ):

        def post() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=common.REQUEST_TIMEOUT_S)
            try:
                conn.request("POST", "/api/transcribe", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()

        for _ in range(2):
            post()  # warm-up
        for clients in levels:
            latencies, statuses, elapsed = hammer(clients, seconds, post)
            ok = [lat for lat, status in zip(latencies, statuses, strict=True) if status == 200]
            results.append({
                "clients": clients, "requests": len(statuses), "ok": len(ok),
                "rejected_503": statuses.count(503), "other_errors": len(statuses) - len(ok) - statuses.count(503),
                "audio_s_per_s": len(ok) * clip_s / elapsed, "latency": summary(ok),
            })  # fmt: skip
            print(f"http   {clients:>2} clients: {results[-1]['audio_s_per_s']:.1f} audio-s/s, "
                  f"p95 {results[-1]['latency'].get('p95_s', 0):.2f} s, {statuses.count(503)} × 503")  # fmt: skip
        problems = server.log_problems()
        whisper = dict(server.health.get("services", {}).get("whisper", {}))
    return results, problems, whisper


def direct_levels(levels: list[int], seconds: float, slots: int, clip: Path, clip_s: float) -> list[dict[str, Any]]:
    settings = load_settings({"MAX_CONCURRENT_CHUNKS": str(slots)})
    engine = FasterWhisperEngine.load(settings.engine, workers=1)  # for its device and compute type only
    threads = max(1, (os.cpu_count() or 1) // slots)
    model = common.load_whisper(settings, engine.device, engine.compute_type, cpu_threads=threads, num_workers=slots)
    options = common.server_options(settings, queued=False)

    def once() -> int:
        common.plain_transcribe(model, audio.decode(clip), options)
        return 200

    once()  # warm-up
    results = []
    for clients in levels:
        latencies, _, elapsed = hammer(clients, seconds, once)
        results.append({"clients": clients, "calls": len(latencies), "audio_s_per_s": len(latencies) * clip_s / elapsed,
                        "latency": summary(latencies)})  # fmt: skip
        print(f"direct {clients:>2} threads: {results[-1]['audio_s_per_s']:.1f} audio-s/s, "
              f"p95 {results[-1]['latency']['p95_s']:.2f} s")  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=common.positive_int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=common.positive_number, default=15.0, help="per level (default 15)")
    parser.add_argument("--slots", type=common.positive_int, default=4)
    parser.add_argument("--audio", type=Path, default=common.CORPUS / "jfk.flac")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    clip_s = audio.probe(args.audio).duration_s
    http, problems, whisper = http_levels(args.clients, args.seconds, args.slots, args.audio, clip_s)
    direct = direct_levels(args.clients, args.seconds, args.slots, args.audio, clip_s)
    levels = []
    rows: list[Row] = []
    for h, d in zip(http, direct, strict=True):
        ratio = h["audio_s_per_s"] / d["audio_s_per_s"]
        levels.append({"clients": h["clients"], "http": h, "direct": d, "ratio": round(ratio, 3)})
        gated = h["clients"] == 8
        rows.append((
            f"{h['clients']} clients: audio-s/s HTTP / direct",
            f"{h['audio_s_per_s']:.1f} / {d['audio_s_per_s']:.1f} = {ratio:.3f}",
            f"≥ {TARGET_RATIO_AT_8}" if gated else "", verdict(ratio >= TARGET_RATIO_AT_8) if gated else "",
        ))  # fmt: skip
        rows.append((
            f"{h['clients']} clients: p50 / p95 HTTP (direct)",
            f"{h['latency'].get('p50_s', 0):.2f} / {h['latency'].get('p95_s', 0):.2f} s "
            f"({d['latency']['p50_s']:.2f} / {d['latency']['p95_s']:.2f} s)", "", "",
        ))  # fmt: skip
        rows.append((f"{h['clients']} clients: 503 with Retry-After", str(h["rejected_503"]), "", ""))
    settings = {"slots": args.slots, "duration_s_per_level": args.seconds, "audio": args.audio.name,
                "audio_duration_s": clip_s, "model": whisper.get("model"), "compute_type": whisper.get("computeType"),
                "device": whisper.get("device"), "mode": "api_only",
                "log_problems": problems}  # fmt: skip
    notes = (
        f"- `sayit serve` as api_only with {args.slots} slots (embedded Redis), Whisper {whisper.get('model')} "
        f"{whisper.get('computeType')} on {whisper.get('device')}; "
        f"clients post {args.audio.name} ({clip_s:.1f} s) in a loop for {args.seconds:.0f} s per level, a new "
        "connection each; direct: the same number of threads calling decode + one `WhisperModel.transcribe` on one "
        f"model with {args.slots} workers (the cores shared out between them), after the server stopped."
    )
    common.write_results(args.out, "throughput", "Throughput under load", {"settings": settings, "levels": levels},
                         rows, notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
