"""Long uploads through the chunk queue, in one process: jobs, retries, stalls, the budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis
from aiohttp.test_utils import TestClient

from config import Settings, WorkerMode
from sayit_actors.audio import decode
from sayit_actors.audio.chunking import split
from sayit_actors.result import today
from sayit_actors.store import keys
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.stream import ChunkStream
from tests.clips import normalized
from tests.conftest import wait_for_job
from tests.forms import upload

pytestmark = pytest.mark.slow
ENGLISH = "permission is hereby granted free of charge"
GERMAN = "der diese software und die dazu"


async def submit(client: TestClient, path: Path, language: str = "auto") -> dict:
    response = await client.post("/api/transcribe", data=upload(path, language=language))
    body = await response.json()
    assert response.status == 202, body
    return body["data"]


def store(settings: Settings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url or ""), settings.queue)


async def test_long_upload_is_a_job_with_each_chunk_in_its_language(
    client: TestClient, corpus: Path, settings: Settings
) -> None:
    accepted = await submit(client, corpus / "multilingual.mp3")
    assert accepted["mode"] == "async" and accepted["status"] == "queued" and accepted["chunks"] == 3
    assert accepted["pollInterval"] == 3 and accepted["estimatedProcessingTime"] > 0
    assert accepted["statusUrl"] == f"/api/transcribe/{accepted['jobId']}"

    data = await wait_for_job(client, accepted["jobId"])
    assert data["status"] == "completed" and data["progress"] == {"done": 3, "total": 3, "percent": 100.0}
    text = normalized(data["transcription"])
    assert ENGLISH in text and GERMAN in text
    assert {"en", "de"} <= set(data["languages"])
    starts = [s["start"] for s in data["segments"]]
    assert starts == sorted(starts) and data["segments"][-1]["end"] <= 60.5
    assert [c["index"] for c in data["chunks"]] == [0, 1, 2] and all(c["node"] == "test-node" for c in data["chunks"])

    r = redis.Redis.from_url(settings.redis_url or "")
    job_id = accepted["jobId"]
    assert r.keys(f"sayit:job:{job_id}:audio:*") == []  # chunk audio is deleted once transcribed
    assert 0 < r.ttl(keys.job(job_id)) <= 24 * 3600 and 0 < r.ttl(keys.job_result(job_id)) <= 24 * 3600
    assert int(r.get(keys.QUEUED_AUDIO_MS) or 0) == 0

    # Chunks record their speed, and the next estimate uses the measured real-time factor.
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.stats(today())).items()}
    assert stats["chunk_audio_ms"] == pytest.approx(59_900, abs=200) and stats["chunk_engine_ms"] > 0
    r.hset(keys.stats(today()), mapping={"chunk_audio_ms": 100_000, "chunk_engine_ms": 50_000})  # a slow day: 0.5
    again = await submit(client, corpus / "multilingual.mp3")
    parallel = min(3, settings.max_concurrent_chunks)
    assert again["estimatedProcessingTime"] == pytest.approx(59.9 * 0.5 / parallel + settings.queue.poll_s, abs=0.1)
    await wait_for_job(client, again["jobId"])


async def test_unknown_job_is_404(client: TestClient) -> None:
    for job_id in ("0" * 32, "not-a-job-id"):
        response = await client.get(f"/api/transcribe/{job_id}")
        body = await response.json()
        assert response.status == 404 and body["error"]["code"] == "JOB_NOT_FOUND"


async def test_queue_full_refuses_new_jobs_and_writes_nothing(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, queue=replace(settings.queue, max_queued_audio_s=45)))
    response = await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3", language="auto"))
    body = await response.json()
    assert response.status == 503 and body["error"]["code"] == "QUEUE_FULL"
    assert int(response.headers["Retry-After"]) > 0
    r = redis.Redis.from_url(settings.redis_url or "")
    assert r.keys("sayit:job:*") == [] and int(r.get(keys.QUEUED_AUDIO_MS) or 0) == 0


def test_recording_a_chunk_twice_changes_nothing(corpus: Path, settings: Settings) -> None:
    jobs = store(settings)
    stream = ChunkStream(jobs.r)
    stream.ensure_group()
    chunks = split(decode(corpus / "jfk.flac"), max_s=6.0)
    total = len(chunks)
    assert total >= 2 and all(c.duration_s <= 6.0 for c in chunks)
    jobs.create("a" * 32, "en", 11.0, chunks, "jfk.flac")
    deliveries = stream.read_new("worker-1", 10, 100)
    assert [d.task.index for d in deliveries] == list(range(total))

    def result(i: int, text: str) -> dict:
        return {"start_s": chunks[i].start_s, "duration_s": chunks[i].duration_s, "text": text, "language": "en",
                "segments": [[0.0, 1.0, text]]}  # fmt: skip

    assert jobs.record_chunk(deliveries[0], result(0, "w0")) == (True, 1, total)
    assert jobs.record_chunk(deliveries[0], result(0, "again")) == (False, 1, total)
    for i in range(1, total):
        assert jobs.record_chunk(deliveries[i], result(i, f"w{i}")) == (True, i + 1, total)
    merged = jobs.finish("a" * 32)
    assert merged is not None and merged.text == " ".join(f"w{i}" for i in range(total))
    assert [s["start"] for s in merged.segments] == [round(c.start_s, 3) for c in chunks]
    assert jobs.get("a" * 32)["status"] == "completed"  # type: ignore[index]
    assert jobs.r.xpending(keys.CHUNKS, keys.CHUNKS_GROUP)["pending"] == 0


async def _split_roles(make_client, settings: Settings):  # type: ignore[no-untyped-def]
    """An api_only node to submit and poll, and a function that starts a queue_only node."""
    api = await make_client(replace(settings, worker_mode=WorkerMode.API_ONLY, worker_id="api-node"))

    async def start_queue_node(**queue: float) -> TestClient:
        node = replace(
            settings, worker_mode=WorkerMode.QUEUE_ONLY, worker_id="queue-node", queue=replace(settings.queue, **queue)
        )
        return await make_client(node)

    return api, start_queue_node


async def test_a_chunk_that_cannot_be_transcribed_fails_its_job_only(
    make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    api, start_queue_node = await _split_roles(make_client, settings)
    poisoned = await submit(api, corpus / "multilingual.mp3")
    healthy = await submit(api, corpus / "multilingual.mp3")
    r = redis.Redis.from_url(settings.redis_url or "")
    r.set(keys.chunk_audio(poisoned["jobId"], 1), b"these bytes are no FLAC")

    queue_node = await start_queue_node()
    assert (await queue_node.get("/api/transcribe/" + "0" * 32)).status == 404  # no upload routes on a queue node
    failed = await wait_for_job(api, poisoned["jobId"])
    assert failed["status"] == "failed"
    assert "chunk 1 failed 2 times" in failed["error"]["message"] and "undecodable" in failed["error"]["message"]
    done = await wait_for_job(api, healthy["jobId"])
    assert done["status"] == "completed" and ENGLISH in normalized(done["transcription"])

    assert r.xlen(keys.DEAD_LETTERS) == 1
    assert r.keys(f"sayit:job:{poisoned['jobId']}:audio:*") == []
    assert int(r.hget(keys.chunk_attempts(poisoned["jobId"]), "1")) == 2
    health = (await (await queue_node.get("/health")).json())["data"]
    assert health["services"]["queue"]["nodes"][0]["id"] == "queue-node"


async def test_a_stalled_chunk_is_reclaimed_once_then_dead_lettered(
    make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    api, start_queue_node = await _split_roles(make_client, settings)
    stream = ChunkStream(store(settings).r)
    reclaimed = await submit(api, corpus / "multilingual.mp3")
    # A worker takes every task and dies: nothing renews them.
    held = stream.read_new("dead-node", 10, 500)
    assert len(held) == 3
    stalled_twice = await submit(api, corpus / "multilingual.mp3")
    twice = stream.read_new("dead-node", 10, 500)
    # ...and its tasks were already reclaimed once by another worker that died too.
    stream.r.xclaim(keys.CHUNKS, keys.CHUNKS_GROUP, "second-dead-node", 0, [d.entry_id for d in twice])

    await start_queue_node(stall_interval_s=1.0)
    data = await wait_for_job(api, reclaimed["jobId"])
    assert data["status"] == "completed" and GERMAN in normalized(data["transcription"])
    assert {c["node"] for c in data["chunks"]} == {"queue-node"}
    failed = await wait_for_job(api, stalled_twice["jobId"])
    assert failed["status"] == "failed" and "stalled 2 times" in failed["error"]["message"]
