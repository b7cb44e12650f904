"""Redis faults caused for real: a Redis at maxmemory, a Redis restart, a node killed with SIGKILL,
a redis-server left running on a data folder, a job that fails with chunks still queued, and the
chunk stream trimmed of what was acknowledged."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from config import Settings, WorkerMode
from http_edge.keys import REDIS
from sayit_actors.store import keys
from sayit_actors.store.records import Task
from sayit_actors.store.redis_server import (
    DataFolderBusy,
    EmbeddedRedis,
    Outage,
    free_port,
    redis_binary,
    stop_leftover,
)
from sayit_actors.store.stream import ChunkStream
from tests.conftest import wait_for_job
from tests.forms import upload
from tests.processes import serve

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = "permission is hereby granted free of charge"


async def submit(client: TestClient, path: Path) -> str:
    response = await client.post("/api/transcribe", data=upload(path))
    body = await response.json()
    assert response.status == 202, body
    return str(body["data"]["jobId"])


async def actors(client: TestClient) -> dict[str, dict[str, Any]]:
    """The node's actors by name, as /health lists them (alive, restarts, givenUp)."""
    body = (await (await client.get("/health")).json())["data"]
    return {a["name"]: a for a in body["services"]["workers"]["actors"]}


async def eventually(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def redis_servers_on(folder: Path) -> list[psutil.Process]:
    """Live redis-server processes working in ``folder`` (redis-server works in its --dir)."""
    found = []
    for process in psutil.process_iter(["name"]):
        if not (process.info["name"] or "").startswith("redis-server"):
            continue
        try:
            if not gone(process) and Path(process.cwd()) == folder.resolve():
                found.append(process)
        except psutil.Error:
            continue
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to fill up or restart without touching the session's."""
    server = EmbeddedRedis(tmp_path / "own-redis").start()
    yield server
    server.stop()


@pytest.fixture
def leftover(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A redis-server started by hand on ``data/redis`` with its pid file, as a node that died leaves one."""
    folder = (tmp_path / "data" / "redis").resolve()
    folder.mkdir(parents=True)
    port = free_port()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--daemonize", "no",
            "--pidfile", str(folder / "redis.pid"), "--save", "", "--appendonly", "no"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while not (folder / "redis.pid").exists() or not _answers(client):
            assert time.monotonic() < deadline, "the hand-started redis-server did not answer"
            time.sleep(0.05)
        yield process, folder
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# --- no model ----------------------------------------------------------------------------------
def test_trim_removes_acknowledged_tasks_only(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    stream = ChunkStream(client)
    assert stream.trim() == 0  # nothing was ever queued
    stream.ensure_group()
    ids = [client.xadd(keys.CHUNKS, Task("a" * 32, i, i * 1000, 1000, "en").fields()).decode() for i in range(6)]
    read = stream.read_new("worker-1", 4, 100)
    assert [d.entry_id for d in read] == ids[:4]
    stream.ack(read[0])
    stream.ack(read[2])

    def left() -> list[str]:
        return [entry_id.decode() for entry_id, _ in client.xrange(keys.CHUNKS)]

    assert stream.trim() == 1  # only what is older than the oldest pending task (ids[1]) goes
    assert left() == ids[1:]
    stream.ack(read[1])
    assert stream.trim() == 2 and left() == ids[3:]
    assert stream.entry(ids[3]) is not None  # a pending task is still there to be reclaimed
    stream.ack(read[3])
    assert stream.trim() == 1 and left() == ids[4:]  # never delivered: kept
    for delivery in stream.read_new("worker-1", 10, 100):
        stream.ack(delivery)
    assert stream.trim() == 2 and client.xlen(keys.CHUNKS) == 0
    assert client.xpending(keys.CHUNKS, keys.CHUNKS_GROUP)["pending"] == 0
    client.close()


def test_a_leftover_server_is_stopped_and_a_folder_in_use_is_refused(
    leftover: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, folder = leftover
    process.send_signal(signal.SIGSTOP)  # as a server that cannot save: SIGTERM does nothing
    assert stop_leftover(folder, timeout_s=1.0) == process.pid
    assert process.wait(10) == -signal.SIGKILL and not (folder / "redis.pid").exists()

    first = EmbeddedRedis(folder).start()
    try:
        with pytest.raises(DataFolderBusy, match="in use by another node"):
            EmbeddedRedis(folder).start(lock_wait_s=0.5)
        assert [p.pid for p in redis_servers_on(folder)] == [int((folder / "redis.pid").read_text())]
        assert redis.Redis.from_url(first.url).ping()
    finally:
        first.stop()
    assert redis_servers_on(folder) == []


def test_a_pid_file_naming_another_program_signals_nothing(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "redis.pid").write_text(f"{sleeper.pid}\n")
        assert stop_leftover(tmp_path, timeout_s=1.0) is None
        assert sleeper.poll() is None and not (tmp_path / "redis.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_outage_is_logged_once_per_interval_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage("test actor", first_delay_s=0.1, max_delay_s=0.4, log_every_s=60)
    with caplog.at_level(logging.INFO, logger="sayit_actors.store.redis_server"):
        delays = [outage.failed(redis.ConnectionError("refused")) for _ in range(5)]
        outage.ok()
        outage.ok()
        # Reads answered, writes refused (a Redis at maxmemory): failures and successes alternate.
        for _ in range(10):
            assert outage.failed(redis.ResponseError("OOM command not allowed")) == 0.1
            outage.ok()
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "Redis failed (ConnectionError: refused)" in messages[0] and "answers again" in messages[1]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is missing (Debian's prometheus package)")
def test_the_redis_memory_alert_fires_at_80_percent_of_maxmemory_only() -> None:
    result = subprocess.run(["promtool", "test", "rules", str(ROOT / "ops/prometheus/alerts_test.yml")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# --- a node in this process ----------------------------------------------------------------------
@pytest.mark.slow
async def test_the_edge_waits_for_a_free_redis_connection(make_client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, redis_max_connections=2))
    pool = client.app[REDIS].connection_pool
    assert isinstance(pool, aioredis.BlockingConnectionPool) and pool.max_connections == 2
    # Thirty requests at once on two connections: each waits its turn instead of failing.
    statuses = [r.status for r in await asyncio.gather(*(client.get("/health") for _ in range(30)))]
    assert statuses == [200] * 30
    text = await (await client.get("/metrics")).text()
    assert "sayit_redis_memory_max_bytes 0.0" in text  # the test Redis has no maxmemory
    used = next(line for line in text.splitlines() if line.startswith("sayit_redis_memory_used_bytes "))
    assert float(used.split()[1]) > 100_000


@pytest.mark.slow
async def test_a_job_failed_with_chunks_still_queued_leaves_the_node_serving(
    make_client, settings: Settings, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="sayit_actors.consumer")
    api = await make_client(replace(settings, worker_mode=WorkerMode.API_ONLY, worker_id="api-node"))
    r = redis.Redis.from_url(settings.redis_url or "")
    job_id = await submit(api, corpus / "multilingual.mp3")  # 3 chunks, queued: no queue node yet
    r.set(keys.chunk_audio(job_id, 0), b"these bytes are no FLAC")
    # One slot and one attempt: chunk 0 fails the job while chunks 1 and 2 still wait in the stream.
    worker = replace(settings, worker_mode=WorkerMode.QUEUE_ONLY, worker_id="queue-node", max_concurrent_chunks=1,
                     queue=replace(settings.queue, max_attempts=1))  # fmt: skip
    node = await make_client(worker)
    failed = await wait_for_job(api, job_id)
    assert failed["status"] == "failed" and "chunk 0 failed 1 times" in failed["error"]["message"]

    async def settled() -> bool:
        return bool(r.xpending(keys.CHUNKS, keys.CHUNKS_GROUP)["pending"] == 0 and r.xlen(keys.CHUNKS) == 0)

    await eventually(settled, 30, "the failed job's chunks acknowledged and trimmed")
    assert f"dropped chunk 2 of job {job_id}: the job is failed" in caplog.text

    done = await wait_for_job(api, await submit(api, corpus / "multilingual.mp3"))
    assert done["status"] == "completed" and ENGLISH in done["transcription"].lower().replace(",", "")
    await eventually(settled, 30, "the completed job's chunks trimmed")
    running = await actors(node)
    assert all(a["alive"] and a["restarts"] == 0 for a in running.values()), running
    metrics = await (await node.get("/metrics")).text()
    assert "sayit_messages_dropped_total{" not in metrics  # no message failed on the way
    r.close()


@pytest.mark.slow
async def test_a_redis_at_maxmemory_pauses_the_node_and_it_resumes(
    own_redis: EmbeddedRedis, make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, redis_url=own_redis.url))
    r = redis.Redis.from_url(own_redis.url)
    try:
        r.config_set("maxmemory", 1)  # every write that needs memory is refused from now on
        await asyncio.sleep(3)  # many polls and heartbeats meet OOM errors meanwhile
        response = await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"))
        body = await response.json()
        assert response.status == 503 and body["error"]["code"] == "SERVICE_UNAVAILABLE", body
        assert int(response.headers["Retry-After"]) > 0
        running = await actors(client)
        consumer = running["queue-consumer"]
        assert consumer["alive"] and not consumer["givenUp"] and consumer["restarts"] == 0, consumer
        assert running["result"]["alive"] and running["result"]["restarts"] == 0
        metrics = await (await client.get("/metrics")).text()
        assert "sayit_redis_memory_max_bytes 1.0" in metrics
    finally:
        r.config_set("maxmemory", 0)
    done = await wait_for_job(client, await submit(client, corpus / "multilingual.mp3"))
    assert done["status"] == "completed" and done["progress"]["done"] == 3
    assert (await actors(client))["queue-consumer"]["restarts"] == 0
    await client.close()  # before its Redis stops
    r.close()


@pytest.mark.slow
async def test_a_redis_restart_under_a_running_node(
    own_redis: EmbeddedRedis, make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, redis_url=own_redis.url))
    assert (await client.get("/health")).status == 200
    own_redis.stop()
    await asyncio.sleep(2)  # the consumer and the edge meet a refused connection meanwhile
    assert (await client.get("/health")).status == 503
    own_redis.start()  # the same port and data folder

    async def healthy() -> bool:
        return (await client.get("/health")).status == 200

    await eventually(healthy, 30, "the node healthy again")
    done = await wait_for_job(client, await submit(client, corpus / "multilingual.mp3"))
    assert done["status"] == "completed" and done["progress"]["done"] == 3
    running = await actors(client)
    assert running["queue-consumer"]["alive"] and running["queue-consumer"]["restarts"] == 0, running
    await client.close()


# --- `sayit serve` as its own process ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_embedded_redis_takes_over_a_leftover_and_dies_with_its_node(
    leftover: tuple[subprocess.Popen[bytes], Path],
) -> None:
    hand_started, folder = leftover
    with serve(folder.parent) as (node, _):
        assert hand_started.wait(15) is not None  # the node stopped the server it found on its folder
        (server,) = redis_servers_on(folder)
        assert server.pid != hand_started.pid and server.pid == int((folder / "redis.pid").read_text())
        watchdog = server.parent()
        assert watchdog is not None and watchdog.ppid() == node.pid
        node.kill()  # SIGKILL: nothing of the node runs any more
        node.wait()
        deadline = time.monotonic() + 10
        while not (gone(server) and gone(watchdog)):
            assert time.monotonic() < deadline, "the embedded redis-server outlived its node"
            time.sleep(0.1)
    assert redis_servers_on(folder) == []
