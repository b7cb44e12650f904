"""Callbacks kept in Redis: written when a job ends, sent by any node, none lost, each sent once.

Jobs are ended with the JobStore directly (no transcription), as the ResultActor ends them; the
nodes are real apps against the real Redis, and the receiver a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config import ApiSettings, Settings, WorkerMode
from sayit_actors.audio.chunking import Span
from sayit_actors.store import keys
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.stream import ChunkStream
from tests.test_security import SECRET, verify_standard_webhook

Received = list[tuple[dict[str, Any], Any]]
SPANS = [Span(0, 0.0, 30.0), Span(1, 30.0, 12.0)]


@pytest.fixture
async def receiver(aiohttp_server) -> AsyncIterator[tuple[TestServer, Received, list[int]]]:  # type: ignore[no-untyped-def]
    """A webhook receiver on 127.0.0.1: the bodies and headers it got, and statuses to answer in turn."""
    received: Received = []
    statuses: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        verify_standard_webhook(body, request.headers)
        received.append((json.loads(body), request.headers.copy()))
        return web.Response(status=statuses.pop(0) if statuses else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    yield await aiohttp_server(app), received, statuses


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    client = redis.Redis.from_url(settings.redis_url or "")
    ChunkStream(client).ensure_group()
    yield JobStore(client, settings.queue)
    client.close()


def node(settings: Settings, port: int, worker_id: str, claim_s: float = 1.0) -> Settings:
    """An api node (no queue consumer: the chunk tasks here are the test's) sending callbacks to ``port``."""
    api = ApiSettings(
        callback_hosts=("127.0.0.1",), callback_secret=SECRET, callback_ports=(port,), callback_allow_private=True,
        callback_timeout_s=5.0, callback_attempts=1, callback_claim_s=claim_s, result_cache=False,
    )  # fmt: skip
    return replace(settings, worker_mode=WorkerMode.API_ONLY, worker_id=worker_id, api=api)


def end_job(jobs: JobStore, job_id: str, outcome: str, url: str | None) -> None:
    """Make a job of two chunks and end it as a worker would: ``completed``, ``failed``, or
    ``unmerged`` (every chunk recorded, then the worker died before merging)."""
    stream = ChunkStream(jobs.r)
    jobs.create(job_id, "en", 42.0, SPANS, f"{job_id[:4]}.mp3", callback_url=url)
    deliveries = stream.read_new("worker-1", 10, 100)
    assert sorted(d.task.index for d in deliveries) == [0, 1] and {d.task.job_id for d in deliveries} == {job_id}
    if outcome == "failed":
        assert jobs.fail(deliveries[0], "chunk 0 could not be decoded")
        for delivery in deliveries[1:]:
            stream.ack(delivery)
        return
    for delivery in deliveries:
        span = SPANS[delivery.task.index]
        text = f"w{span.index}"
        result = {"start_s": span.start_s, "duration_s": span.duration_s, "text": text, "language": "en",
                  "segments": [[0.0, 1.0, text]]}  # fmt: skip
        assert jobs.record_chunk(delivery, result)[0]
    if outcome == "completed":
        assert jobs.finish(job_id) is not None


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    for _ in range(round(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def outbox_empty(jobs: JobStore) -> bool:
    """Every delivery acknowledged and trimmed."""
    return jobs.r.xlen(keys.CALLBACKS) == 0 and jobs.r.xpending(keys.CALLBACKS, keys.CALLBACKS_GROUP)["pending"] == 0


def by_id(received: Received) -> Counter[str]:
    return Counter(headers["webhook-id"] for _, headers in received)


async def test_callbacks_of_jobs_that_ended_while_no_node_sent_are_delivered_once_a_node_starts(
    make_client, settings: Settings, receiver, store: JobStore
) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    url = f"http://127.0.0.1:{server.port}/hook"
    done, failed, quiet = "a" * 32, "b" * 32, "c" * 32
    end_job(store, done, "completed", url)
    end_job(store, failed, "failed", url)
    end_job(store, quiet, "completed", None)
    # Ending again changes nothing: one delivery per job.
    assert store.finish(done) is not None and not store.queue_callback(done) and not store.queue_callback(failed)
    assert store.r.xlen(keys.CALLBACKS) == 2
    await asyncio.sleep(0.5)
    assert received == []  # no node runs: nothing is sent, nothing is lost

    await make_client(node(settings, server.port, "node-1"))
    await until(lambda: len(received) >= 2 and outbox_empty(store), "two callbacks delivered and trimmed")
    assert by_id(received) == {f"msg_{done}_job_completed": 1, f"msg_{failed}_job_failed": 1}
    bodies = {body["jobId"]: body for body, _ in received}
    assert bodies[done]["status"] == "completed" and bodies[done]["result"]["transcription"] == "w0 w1"
    assert bodies[done]["duration"] == 42.0 and bodies[done]["filename"] == "aaaa.mp3"
    assert bodies[failed]["status"] == "failed" and bodies[failed]["result"] is None
    assert bodies[failed]["error"] == {"code": "JOB_FAILED", "message": "chunk 0 could not be decoded"}


async def test_a_delivery_held_by_a_node_that_died_is_sent_by_another(
    make_client, settings: Settings, receiver, store: JobStore
) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    job_id = "d" * 32
    end_job(store, job_id, "completed", f"http://127.0.0.1:{server.port}/hook")
    store.r.xgroup_create(keys.CALLBACKS, keys.CALLBACKS_GROUP, id="0")
    held = store.r.xreadgroup(keys.CALLBACKS_GROUP, "dead-node", {keys.CALLBACKS: ">"}, count=10)
    assert len(held[0][1]) == 1  # claimed by a node that then died without acknowledging

    await make_client(node(settings, server.port, "node-2"))
    await until(lambda: len(received) >= 1 and outbox_empty(store), "the held callback reclaimed and delivered")
    assert by_id(received) == {f"msg_{job_id}_job_completed": 1}


async def test_a_node_that_starts_again_sends_what_it_held(
    make_client, settings: Settings, receiver, store: JobStore
) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    job_id = "e" * 32
    end_job(store, job_id, "failed", f"http://127.0.0.1:{server.port}/hook")
    store.r.xgroup_create(keys.CALLBACKS, keys.CALLBACKS_GROUP, id="0")
    store.r.xreadgroup(keys.CALLBACKS_GROUP, "node-3", {keys.CALLBACKS: ">"}, count=10)  # read, then it stopped

    await make_client(node(settings, server.port, "node-3", claim_s=3600.0))  # no reclaiming: its own entry
    await until(lambda: len(received) >= 1 and outbox_empty(store), "the node's own pending callback delivered")
    assert by_id(received) == {f"msg_{job_id}_job_failed": 1}


async def test_a_job_merged_on_a_status_read_gets_its_callback(
    make_client, settings: Settings, receiver, store: JobStore
) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    job_id = "f" * 32
    end_job(store, job_id, "unmerged", f"http://127.0.0.1:{server.port}/hook")
    assert store.get(job_id)["status"] == "processing"  # type: ignore[index]
    assert store.r.exists(keys.CALLBACKS) == 0

    client: TestClient = await make_client(node(settings, server.port, "node-4"))
    response = await client.get(f"/api/transcribe/{job_id}")
    assert response.status == 200 and (await response.json())["data"]["status"] == "completed"
    await until(lambda: len(received) >= 1 and outbox_empty(store), "the merged job's callback delivered")
    assert by_id(received) == {f"msg_{job_id}_job_completed": 1}
    assert received[0][0]["result"]["transcription"] == "w0 w1"
    assert (await client.get(f"/api/transcribe/{job_id}")).status == 200
    assert store.r.xlen(keys.CALLBACKS) == 0  # reading it again queues nothing


async def test_two_nodes_send_each_callback_once(make_client, settings: Settings, receiver, store: JobStore) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    url = f"http://127.0.0.1:{server.port}/hook"
    await make_client(node(settings, server.port, "node-5"))
    await make_client(node(settings, server.port, "node-6"))
    jobs = [f"{i:032x}" for i in range(8)]
    for i, job_id in enumerate(jobs):
        end_job(store, job_id, "completed" if i % 2 else "failed", url)
    await until(lambda: len(received) >= len(jobs) and outbox_empty(store), "every callback delivered")
    expected = {f"msg_{job_id}_job_{'completed' if i % 2 else 'failed'}": 1 for i, job_id in enumerate(jobs)}
    assert by_id(received) == expected


async def test_a_receiver_that_refuses_is_given_up_on_and_the_entry_trimmed(
    make_client, settings: Settings, receiver, store: JobStore
) -> None:  # type: ignore[no-untyped-def]
    server, received, statuses = receiver
    statuses.append(400)
    job_id = "9" * 32
    await make_client(node(settings, server.port, "node-7"))
    end_job(store, job_id, "completed", f"http://127.0.0.1:{server.port}/hook")
    await until(lambda: len(received) >= 1 and outbox_empty(store), "the refused callback given up and trimmed")
    await asyncio.sleep(1.5)  # past the claim interval: nothing is left to send again
    assert by_id(received) == {f"msg_{job_id}_job_completed": 1}
