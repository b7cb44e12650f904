"""A SayIt cluster of real processes on loopback for the tests: redis-server and nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from sayit_actors.store.redis_server import EmbeddedRedis, free_port

QUEUE_ENV = {
    "SAYIT_STALL_INTERVAL_S": "8",
    "SAYIT_MAX_ATTEMPTS": "2",
    "SAYIT_RETRY_BACKOFF_S": "0.5",
    "SAYIT_POLL_S": "0.2",
    "SAYIT_HEARTBEAT_S": "1",
    "SAYIT_DRAIN_TIMEOUT_S": "20",
    "SAYIT_RESULT_CACHE": "false",  # the same file submitted again must be a new job
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


def start_node(name: str, mode: str, slots: int, redis_url: str, folder: Path) -> Node:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAYIT_")}
    env.update(QUEUE_ENV, HF_HUB_OFFLINE="1", WORKER_MODE=mode, WORKER_ID=name, REDIS_URL=redis_url,
               MAX_CONCURRENT_CHUNKS=str(slots), SAYIT_DATA_DIR=str(folder / name))  # fmt: skip
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sayit_cli.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Node(name, f"http://127.0.0.1:{port}", process, log)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def wait(predicate: Any, timeout_s: float, what: str) -> Any:
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


def multipart(path: Path, language: str) -> tuple[bytes, str]:
    """An upload's body with its language, and its Content-Type."""
    boundary = "sayit-cluster"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\n{language}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n\r\n'
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def submit(cluster: Cluster, path: Path, language: str = "auto") -> str:
    body, content_type = multipart(path, language)
    request = urllib.request.Request(
        f"{cluster.api.url}/api/transcribe", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 202
        return str(json.load(response)["data"]["jobId"])


def job(cluster: Cluster, job_id: str) -> dict[str, Any]:
    status, body = get(f"{cluster.api.url}/api/transcribe/{job_id}")
    assert status == 200, body
    return dict(body["data"])


def finished(cluster: Cluster, job_id: str, timeout_s: float = 150) -> dict[str, Any]:
    return dict(wait(lambda: (d := job(cluster, job_id))["status"] in ("completed", "failed") and d, timeout_s, job_id))


def start_cluster(folder: Path, queue_nodes: tuple[str, ...], api_slots: int = 4) -> Cluster:
    """redis-server, one api_only node and queue_only nodes of 2 slots, all healthy."""
    server = EmbeddedRedis(folder / "redis").start()
    api = start_node("api", "api_only", api_slots, server.url, folder)
    nodes = Cluster(server, api, {n: start_node(n, "queue_only", 2, server.url, folder) for n in queue_nodes})
    try:
        for node in [api, *nodes.queue.values()]:
            wait(lambda n=node: n.process.poll() is None and get(f"{n.url}/health")[0] == 200, 90, node.name)
        live = len(queue_nodes)
        wait(lambda: len(get(f"{api.url}/health")[1]["data"]["services"]["queue"]["nodes"]) == live, 30, "queue nodes")
    except BaseException:
        stop_cluster(nodes)
        raise
    return nodes


def stop_cluster(nodes: Cluster) -> None:
    every = [nodes.api, *nodes.queue.values()]
    for node in every:
        if node.process.poll() is None:
            node.process.send_signal(2)  # SIGINT: a clean stop
    for node in every:
        try:
            node.process.wait(30)
        except subprocess.TimeoutExpired:
            node.process.kill()
    nodes.redis.stop()
