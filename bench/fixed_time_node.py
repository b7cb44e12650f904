"""A SayIt node whose engine is a BENCH-ONLY stand-in that takes a fixed time per chunk.

It measures the orchestration on its own (queue, Redis, actors, HTTP) without the model: the
scale-out benchmark runs many nodes on one machine, where real engines would only fight for
the same cores. Nothing here is used by the service.

    python bench/fixed_time_node.py --host 127.0.0.1 --port 3101   (settings from the environment)
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import common  # noqa: F401  (puts the repository on the path)
import numpy as np
from aiohttp import web

from config import load_settings
from http_edge import create_app
from sayit_actors.engines import Segment, Transcript, TranscriptionOptions
from sayit_actors.engines.batcher import Batcher


class FixedTimeEngine:
    """BENCH-ONLY: sleeps ``seconds`` per call and returns a one-segment placeholder transcript."""

    name = "bench-fixed-time"
    model = "none"
    device = "cpu"
    compute_type = "none"
    wide_decoder_threads = None

    def __init__(self, seconds: float, workers: int) -> None:
        self.seconds = seconds
        self.workers = workers
        # Never fed: every slot sleeps on its own thread, so the slots, not a batch, set the pace.
        self.batcher = Batcher(lambda windows, wide: [], batch_size=1, batch_wait_ms=0, name="fixed-time-batcher")

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions, urgent: bool = False) -> Transcript:
        time.sleep(self.seconds)
        duration = audio.shape[0] / 16_000
        segment = Segment(0.0, round(duration, 3), "chunk")
        return Transcript("chunk", options.language or "en", 1.0, duration, (segment,), options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(host=args.host, port=args.port)
    engine = FixedTimeEngine(float(os.environ.get("BENCH_CHUNK_SECONDS", "2.0")), settings.max_concurrent_chunks)
    web.run_app(create_app(settings, engine=engine), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
