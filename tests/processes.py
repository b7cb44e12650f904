"""``sayit serve`` as its own process, as a user starts it: for the tests of the commands."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from sayit_actors.store.redis_server import free_port

HEALTHY_WITHIN_S = 60.0


def node_env(**extra: str) -> dict[str, str]:
    """This environment without any SayIt setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAYIT_") and k not in ("REDIS_URL", "WORKER_MODE")}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


@contextlib.contextmanager
def serve(data_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A healthy ``sayit serve`` on a free port (its process and URL), killed afterwards if still running."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The log goes to a file: a pipe nobody drains would block the node once it fills up.
    log = data_dir.parent / f"{data_dir.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sayit_cli.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=node_env(SAYIT_DATA_DIR=str(data_dir), **env),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
