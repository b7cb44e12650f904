"""A real cluster on loopback: redis-server, one api_only node and three queue_only nodes, each
its own process, as the reference deployment runs them. Chunks of one file are spread over the
nodes; a killed node, a drained node and a restarted Redis lose no chunk and double none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import soundfile

from sayit_actors import audio, keys
from sayit_actors.redis_server import EmbeddedRedis, free_port
from tests.clips import normalized

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
QUEUE_NODES = ("queue-1", "queue-2", "queue-3")
STALL_S = 8
QUEUE_ENV = {
    "SAYIT_STALL_INTERVAL_S": str(STALL_S),
    "SAYIT_MAX_ATTEMPTS": "2",
    "SAYIT_RETRY_BACKOFF_S": "0.5",
    "SAYIT_POLL_S": "0.2",
    "SAYIT_HEARTBEAT_S": "1",
    "SAYIT_DRAIN_TIMEOUT_S": "20",
}


@dataclass
class Node:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    redis: EmbeddedRedis
    api: Node
    queue: dict[str, Node] = field(default_factory=dict)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)


def _start_node(name: str, mode: str, slots: int, redis_url: str, folder: Path) -> Node:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAYIT_")}
    env.update(QUEUE_ENV, HF_HUB_OFFLINE="1", WORKER_MODE=mode, WORKER_ID=name, REDIS_URL=redis_url,
               MAX_CONCURRENT_CHUNKS=str(slots), SAYIT_DATA_DIR=str(folder / name))  # fmt: skip
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sayit_actors.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Node(name, f"http://127.0.0.1:{port}", process, log)


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    server = EmbeddedRedis(folder / "redis").start()
    api = _start_node("api", "api_only", 4, server.url, folder)
    nodes = Cluster(server, api, {n: _start_node(n, "queue_only", 2, server.url, folder) for n in QUEUE_NODES})
    try:
        for node in [api, *nodes.queue.values()]:
            _wait(lambda n=node: n.process.poll() is None and _get(f"{n.url}/health")[0] == 200, 90, node.name)
        _wait(lambda: len(_get(f"{api.url}/health")[1]["services"]["queue"]["nodes"]) == 3, 30, "3 queue nodes")
        yield nodes
    finally:
        for node in [api, *nodes.queue.values()]:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGINT)
        for node in [api, *nodes.queue.values()]:
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                node.process.kill()
        server.stop()


@pytest.fixture(scope="module")
def recordings(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    clip = {name: audio.decode(corpus / name) for name in ("jfk.flac", "multilingual.mp3", "stereo_diarization.wav",
                                                           "hotwords.mp3")}  # fmt: skip
    pause = np.zeros(audio.SAMPLE_RATE // 2, np.float32)

    def write(name: str, parts: list[np.ndarray]) -> Path:
        path = folder / name
        soundfile.write(path, np.concatenate([p for part in parts for p in (part, pause)]), audio.SAMPLE_RATE,
                        subtype="PCM_16")  # fmt: skip
        return path

    mixed = [clip["multilingual.mp3"], clip["jfk.flac"], clip["stereo_diarization.wav"], clip["hotwords.mp3"]]
    return {
        "long": write("three_minutes.wav", [clip["multilingual.mp3"]] * 3 + [clip["jfk.flac"]]),  # 3 min 12 s
        "mixed": write("mixed.wav", mixed),  # 82 s, every part different
        "multilingual": corpus / "multilingual.mp3",
    }


def submit(cluster: Cluster, path: Path, language: str = "auto") -> str:
    boundary = "sayit-topology"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\n{language}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n\r\n'
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{cluster.api.url}/api/transcribe", data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 202
        return str(json.load(response)["data"]["jobId"])


def job(cluster: Cluster, job_id: str) -> dict[str, Any]:
    status, body = _get(f"{cluster.api.url}/api/transcribe/{job_id}")
    assert status == 200, body
    return dict(body["data"])


def finished(cluster: Cluster, job_id: str, timeout_s: float = 150) -> dict[str, Any]:
    return dict(
        _wait(lambda: (d := job(cluster, job_id))["status"] in ("completed", "failed") and d, timeout_s, job_id)
    )


def holder(cluster: Cluster, job_id: str) -> tuple[str, int]:
    """(queue node, chunk index) of a chunk of ``job_id`` being transcribed right now."""

    def find() -> tuple[str, int] | None:
        r = cluster.client()
        for row in r.xpending_range(keys.CHUNKS, keys.CHUNKS_GROUP, "-", "+", 100):
            entry = r.xrange(keys.CHUNKS, row["message_id"], row["message_id"])
            consumer = row["consumer"].decode()
            if entry and entry[0][1][b"job"].decode() == job_id and consumer in cluster.queue:
                return consumer, int(entry[0][1][b"index"])
        return None

    return tuple(_wait(find, 30, f"a chunk of {job_id} in progress"))  # type: ignore[return-value]


def test_both_languages_of_a_switching_recording(cluster: Cluster, recordings: dict[str, Path]) -> None:
    data = finished(cluster, submit(cluster, recordings["multilingual"]))
    assert data["status"] == "completed"
    text = normalized(data["transcription"])
    assert "permission is hereby granted" in text and "der diese software" in text
    assert {"en", "de"} <= set(data["languages"])


def test_a_long_recording_is_shared_by_the_nodes(cluster: Cluster, recordings: dict[str, Path]) -> None:
    data = finished(cluster, submit(cluster, recordings["long"]))
    assert data["status"] == "completed" and data["duration"] >= 180
    assert data["progress"]["done"] == data["progress"]["total"] == len(data["chunks"]) >= 7
    nodes = {chunk["node"] for chunk in data["chunks"]}
    assert len(nodes) > 1 and nodes <= set(QUEUE_NODES)
    assert normalized(data["transcription"]).count("permission is hereby granted") == 3


def test_a_poisoned_job_fails_while_its_neighbours_complete(cluster: Cluster, recordings: dict[str, Path]) -> None:
    busy = submit(cluster, recordings["long"], "en")  # keeps every slot busy for a while
    poisoned = submit(cluster, recordings["multilingual"])
    r = cluster.client()
    for index in range(3):  # before any worker reaches them: the chunks can never be transcribed
        r.set(keys.chunk_audio(poisoned, index), b"not audio")
    beside = submit(cluster, recordings["mixed"], "en")
    failed = finished(cluster, poisoned)
    assert failed["status"] == "failed" and "failed 2 times" in failed["error"]["message"]
    assert finished(cluster, busy)["status"] == "completed"
    assert finished(cluster, beside)["status"] == "completed"
    assert r.xlen(keys.DEAD_LETTERS) >= 1


def test_a_redis_restart_mid_job_loses_nothing(cluster: Cluster, recordings: dict[str, Path]) -> None:
    job_id = submit(cluster, recordings["long"])
    _wait(lambda: job(cluster, job_id)["progress"]["done"] >= 1, 60, "a first chunk")
    cluster.redis.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(1.0)
    cluster.redis.start()
    data = finished(cluster, job_id)
    assert data["status"] == "completed" and len({c["index"] for c in data["chunks"]}) == len(data["chunks"])
    assert normalized(data["transcription"]).count("permission is hereby granted") == 3


def test_a_draining_node_finishes_or_hands_back_its_chunks(cluster: Cluster, recordings: dict[str, Path]) -> None:
    job_id = submit(cluster, recordings["mixed"], "en")
    name, _ = holder(cluster, job_id)
    node = cluster.queue[name]
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(40) == 0
    assert cluster.client().get(keys.node(name)) is None  # it left the live list at once
    data = finished(cluster, job_id, timeout_s=STALL_S)  # no stall was needed to recover
    assert data["status"] == "completed"
    assert normalized(data["transcription"]).count("ask not what your country can do for you") == 1


def test_a_killed_node_loses_no_chunk_and_doubles_none(cluster: Cluster, recordings: dict[str, Path]) -> None:
    job_id = submit(cluster, recordings["mixed"], "en")
    name, index = holder(cluster, job_id)
    cluster.queue[name].process.send_signal(signal.SIGKILL)
    cluster.queue[name].process.wait(10)
    data = finished(cluster, job_id)
    assert data["status"] == "completed"
    assert [c["index"] for c in data["chunks"]] == list(range(len(data["chunks"])))
    assert data["chunks"][index]["node"] != name  # another node took over the chunk it held
    text = normalized(data["transcription"])
    assert text.count("ask not what your country can do for you") == 1
    assert text.count("permission is hereby granted") == 1
