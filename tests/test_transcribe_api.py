"""POST /api/transcribe end to end: real Redis, the real bundled model, real audio."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient

from config import Limits, Settings, WorkerMode
from sayit_actors.result import today
from sayit_actors.store import keys
from tests.clips import normalized
from tests.conftest import DATA, SLOTS, wait_for_job
from tests.forms import upload
from tests.known_speech import JFK

pytestmark = pytest.mark.slow


def form(path: Path, language: str | None = None, content_type: str = "application/octet-stream") -> aiohttp.FormData:
    return upload(path, content_type=content_type, **({} if language is None else {"language": language}))


async def post(client: TestClient, path: Path, language: str | None = None, **headers: str) -> tuple[int, dict]:
    response = await client.post("/api/transcribe", data=form(path, language), headers=headers)
    return response.status, await response.json()


async def test_jfk_gives_the_reference_sentence(client: TestClient, corpus: Path) -> None:
    status, body = await post(client, corpus / "jfk.flac", "en")
    assert status == 200, body
    data = body["data"]
    assert normalized(data["transcription"]) == normalized(JFK)
    assert data["mode"] == "sync"
    assert data["language"] == "en"
    assert data["duration"] == pytest.approx(11.0, abs=0.1)
    assert data["processingTime"] > 0
    assert data["segments"] and data["segments"][-1]["end"] <= 11.5
    assert data["options"]["profile"] == "en" and data["options"]["temperatures"][0] == 0.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hotwords.mp3", "folder"),  # MP3; base writes "confu i" for ComfyUI, so only the rest is checked
        ("stereo_diarization.wav", "against the wizard"),  # stereo WAV, mixed down
    ],
)
async def test_corpus_formats(client: TestClient, corpus: Path, name: str, expected: str) -> None:
    status, body = await post(client, corpus / name, "en")
    assert status == 200, body
    assert expected in normalized(body["data"]["transcription"])


@pytest.mark.parametrize("kind", ["m4a", "aac", "opus"])
async def test_made_formats_transcribe_jfk(client: TestClient, clips: dict[str, Path], kind: str) -> None:
    status, body = await post(client, clips[kind], "en")
    assert status == 200, body
    assert "ask not what your country can do for you" in normalized(body["data"]["transcription"])


async def test_korean_clip(client: TestClient) -> None:
    status, body = await post(client, DATA / "ko_greeting.ogg", "ko")
    assert status == 200, body
    assert body["data"]["language"] == "ko"
    assert re.search(r"[\uac00-\ud7a3]", body["data"]["transcription"]), body["data"]["transcription"]


async def test_auto_detects_english(client: TestClient, corpus: Path) -> None:
    status, body = await post(client, corpus / "jfk.flac")
    assert status == 200
    assert body["data"]["language"] == "en"
    assert body["data"]["options"]["profile"] == "auto" and body["data"]["options"]["language"] is None


async def test_requests_are_counted_in_redis(client: TestClient, corpus: Path, settings: Settings) -> None:
    assert (await post(client, corpus / "jfk.flac", "en"))[0] == 200
    assert (await post(client, corpus / "jfk.flac", "xx"))[0] == 400
    r = redis.Redis.from_url(settings.redis_url or "")
    key = keys.stats(today())
    for _ in range(50):  # the ResultActor records after the reply is sent
        if int(r.hget(key, "requests") or 0) >= 2:
            break
        await asyncio.sleep(0.05)
    stats = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
    assert stats["requests"] == 2 and stats["successes"] == 1 and stats["failures"] == 1
    assert stats["processing_ms"] > 0
    assert 0 < r.ttl(key) <= keys.STATS_TTL_S
    health = (await (await client.get("/health")).json())["data"]
    assert health["stats"]["requests"] == 2 and health["stats"]["successRate"] == 0.5


async def test_twice_the_slots_concurrent_requests_all_succeed(client: TestClient, corpus: Path) -> None:
    results = await asyncio.gather(*(post(client, corpus / "jfk.flac", "en") for _ in range(2 * SLOTS)))
    texts = []
    for status, body in results:
        assert status in (200, 202), body
        data = body["data"] if status == 200 else await wait_for_job(client, body["data"]["jobId"])
        texts.append(normalized(data["transcription"]))
    assert texts == [normalized(JFK)] * (2 * SLOTS)


async def test_busy_slots_turn_a_short_upload_into_a_job(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, max_concurrent_chunks=1))
    first = asyncio.create_task(post(client, corpus / "jfk.flac", "en"))
    await _until_busy(client, 1)
    status, body = await post(client, corpus / "jfk.flac", "en")
    assert status == 202 and body["data"]["mode"] == "async", body
    assert (await first)[0] == 200
    data = await wait_for_job(client, body["data"]["jobId"])
    assert data["status"] == "completed" and normalized(data["transcription"]) == normalized(JFK)


async def test_busy_slots_without_a_queue_answer_503(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    # An api_only node with no live queue node: nobody would take a job, so it waits, then says so.
    api = replace(
        settings,
        worker_mode=WorkerMode.API_ONLY,
        max_concurrent_chunks=1,
        limits=Limits(slot_wait_s=0.2, retry_after_s=7),
    )
    client = await make_client(api)
    first = asyncio.create_task(post(client, corpus / "jfk.flac", "en"))
    await _until_busy(client, 1)
    response = await client.post("/api/transcribe", data=form(corpus / "jfk.flac", "en"))
    body = await response.json()
    assert response.status == 503 and body["error"]["code"] == "SERVER_BUSY"
    assert response.headers["Retry-After"] == "7"
    assert (await first)[0] == 200


async def _until_busy(client: TestClient, slots: int) -> None:
    busy = 0.0
    for _ in range(250):
        text = await (await client.get("/metrics")).text()
        match = re.search(r'^sayit_chunk_slots_busy\{node="test-node",role="\w+"\} (\S+)$', text, re.M)
        busy = float(match.group(1)) if match else 0.0
        if busy == slots:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"slots never became busy ({busy})")


async def test_crashed_whisper_actor_is_restarted(client: TestClient, corpus: Path, engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A fault the real engine cannot be made to produce on demand (a CUDA or library failure).
    calls = {"n": 0}
    real = type(engine).transcribe

    def failing_once(self, samples, options, urgent=False):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated engine failure")
        return real(self, samples, options, urgent)

    monkeypatch.setattr(type(engine), "transcribe", failing_once)
    status, body = await post(client, corpus / "jfk.flac", "en")
    assert status == 500 and body["error"]["code"] == "INTERNAL"

    for _ in range(100):
        health = (await (await client.get("/health")).json())["data"]
        restarted = [a for a in health["services"]["workers"]["actors"] if a["restarts"] == 1]
        if restarted and all(a["alive"] for a in health["services"]["workers"]["actors"]):
            break
        await asyncio.sleep(0.05)
    assert len(restarted) == 1 and restarted[0]["kind"] == "WhisperActor"

    for _ in range(SLOTS + 1):  # every slot, the replaced one included, serves again
        status, body = await post(client, corpus / "jfk.flac", "en")
        assert status == 200, body
    metrics = await (await client.get("/metrics")).text()
    assert f'sayit_actor_restarts_total{{actor="{restarted[0]["name"]}"}} 1.0' in metrics
