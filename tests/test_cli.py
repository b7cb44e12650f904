"""``sayit serve`` as a newcomer runs it: its own Redis, the bundled model, a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sayit_actors.store.redis_server import free_port
from tests.clips import normalized
from tests.known_speech import JFK
from tests.processes import node_env, serve


def _multipart(path: Path, language: str) -> tuple[bytes, str]:
    boundary = "sayit-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\n{language}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with serve(tmp_path / "data", MAX_CONCURRENT_CHUNKS="2") as started:
        yield started


@pytest.mark.slow
def test_serve_transcribes_with_an_embedded_redis_and_stops_cleanly(
    server: tuple[subprocess.Popen[bytes], str], corpus: Path
) -> None:
    process, url = server
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("redis-server" in child.name() for child in children)
    body, content_type = _multipart(corpus / "jfk.flac", "en")
    request = urllib.request.Request(f"{url}/api/transcribe", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.load(response)["data"]
    assert normalized(data["transcription"]) == normalized(JFK)

    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_MODE": "both"}, "WORKER_MODE='both' is invalid: expected one of all, api_only, queue_only"),
        ({"SAYIT_ENGINE": "mlx", "SAYIT_MODEL": "/no/such/model"}, "SAYIT_MODEL='/no/such/model' has no MLX form"),
        ({"SAYIT_MODEL": "huge"}, "SAYIT_MODEL='huge'"),
    ],
)
def test_bad_start_says_why(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sayit_cli.cli", "serve", "--port", str(free_port())],
        env=node_env(SAYIT_DATA_DIR=str(tmp_path), **env),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()
    # Where Redis had started before the failure, it was stopped with the server.
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert left == []
