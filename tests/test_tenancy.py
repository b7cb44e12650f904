"""Tenants kept apart (jobs, events, the result cache, Idempotency-Keys), rate limits shared by
every api node, and each tenant's share of the queued-audio budget; real Redis, real HTTP.

Most tests run an ``api_only`` node with a low ``sync_max_duration_s``: jfk.flac (11 s) becomes
a queued job that no queue node takes, so jobs stay as they were made and nothing transcribes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient, make_mocked_request

from config import ConfigError, Settings, WorkerMode, load_settings
from config.settings import key_entry
from http_edge import repeats
from http_edge.keys import TENANT
from sayit_actors.audio import decode
from sayit_actors.audio.chunking import split
from sayit_actors.errors import QueueFull
from sayit_actors.store import keys
from sayit_actors.store.jobs import JobStore
from sayit_actors.store.records import Owner
from sayit_actors.store.stream import ChunkStream
from tests import forms

ALPHA, BETA = "sk-alpha-0f3c9a71e2", "sk-beta-77d1b0c4aa"
A = {"Authorization": f"Bearer {ALPHA}"}
B = {"Authorization": f"Bearer {BETA}"}


def tenants(settings: Settings, **changes: Any) -> Settings:
    """Two named tenants on a node whose uploads over 5 s are queued jobs (and stay queued)."""
    changes.setdefault("worker_mode", WorkerMode.API_ONLY)
    changes.setdefault("limits", replace(settings.limits, sync_max_duration_s=5.0))
    changes.setdefault("api", replace(settings.api, result_cache=True))
    return replace(settings, api_keys=(f"alpha:{ALPHA}", f"beta:{BETA}"), **changes)


def upload(path: Path, filename: str | None = None, **fields: str) -> aiohttp.FormData:
    return forms.upload(path, filename, language="en", **fields)


async def post(client: TestClient, path: Path, headers: dict[str, str], **fields: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/transcribe", data=upload(path, **fields), headers=headers)
    return response.status, await response.json()


def job_hash(settings: Settings, job_id: str) -> dict[str, str]:
    r = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    try:
        return r.hgetall(keys.job(job_id))  # type: ignore[return-value]
    finally:
        r.close()


# --- settings ------------------------------------------------------------------------------------


def test_keys_are_named_and_bare_keys_get_a_digest_name(tmp_path: Path) -> None:
    settings = load_settings({"SAYIT_API_KEYS": f"alpha:{ALPHA},legacy-key-123"})
    assert settings.tenants[0] == ("alpha", ALPHA)
    name, key = settings.tenants[1]
    assert key == "legacy-key-123" and name == key_entry("legacy-key-123")[0]
    assert name.startswith("key-") and len(name) == 12 and "legacy" not in name

    path = tmp_path / "keys"
    path.write_text(f"# the app\nbeta:{BETA}\n\nalpha:sk-alpha-rotated-9\n")
    settings = load_settings({"SAYIT_API_KEYS": f"alpha:{ALPHA}", "SAYIT_API_KEYS_FILE": str(path)})
    assert settings.tenants == (("alpha", ALPHA), ("beta", BETA), ("alpha", "sk-alpha-rotated-9"))


def test_bad_keys_are_refused_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SAYIT_API_KEYS=<hidden>") as refused:
        load_settings({"SAYIT_API_KEYS": f"alpha:{ALPHA},beta:{ALPHA}"})  # one key, two tenants
    assert ALPHA not in str(refused.value)
    path = tmp_path / "keys"
    path.write_text(f"alpha:{ALPHA}\n{BETA}\n")  # a line without a name
    with pytest.raises(ConfigError, match="SAYIT_API_KEYS_FILE") as refused:
        load_settings({"SAYIT_API_KEYS_FILE": str(path)})
    assert BETA not in str(refused.value) and ALPHA not in str(refused.value)
    path.write_text(f"alpha:{ALPHA}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings({"SAYIT_API_KEYS": f"beta:{ALPHA}", "SAYIT_API_KEYS_FILE": str(path)})
    assert ALPHA not in str(refused.value)
    with pytest.raises(ConfigError, match="SAYIT_TENANT_QUEUE_SHARE"):
        load_settings({"SAYIT_TENANT_QUEUE_SHARE": "1.5"})
    with pytest.raises(ConfigError, match="SAYIT_RATE_LIMIT_PER_MIN"):
        load_settings({"SAYIT_RATE_LIMIT_PER_MIN": "-1"})


# --- jobs are their tenant's ---------------------------------------------------------------------


async def test_another_tenant_gets_404_for_a_job_its_status_events_and_subtitles(
    make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(tenants(settings))
    status, body = await post(client, corpus / "jfk.flac", A)
    assert status == 202, body
    job_id = body["data"]["jobId"]
    assert job_hash(settings, job_id)["owner"] == "alpha"

    assert (await client.get(f"/api/transcribe/{job_id}", headers=A)).status == 200
    assert (await client.get(f"/api/transcribe/{job_id}?format=srt", headers=A)).status == 202  # not done yet
    unknown = await client.get(f"/api/transcribe/{'0' * 32}", headers=B)
    expected = await unknown.json()
    assert unknown.status == 404 and expected["error"]["code"] == "JOB_NOT_FOUND"
    for path in (f"/api/transcribe/{job_id}", f"/api/transcribe/{job_id}?format=srt",
                 f"/api/transcribe/{job_id}/events"):  # fmt: skip
        response = await client.get(path, headers=B)
        assert response.status == 404, path
        assert await response.json() == expected, path  # the same answer as an unknown job


async def test_another_tenants_upload_of_the_same_bytes_gets_its_own_job(
    make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(tenants(settings))
    _, first = await post(client, corpus / "jfk.flac", A)
    _, again = await post(client, corpus / "jfk.flac", A)
    assert again["data"]["jobId"] == first["data"]["jobId"] and again["data"]["cached"] is True

    status, other = await post(client, corpus / "jfk.flac", B)
    assert status == 202, other
    assert other["data"]["jobId"] != first["data"]["jobId"] and "cached" not in other["data"]
    assert job_hash(settings, other["data"]["jobId"])["owner"] == "beta"


async def test_a_callback_url_is_never_lost_to_the_cache(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    api = replace(settings.api, result_cache=True, callback_hosts=("hooks.example.com",), callback_secret="s" * 32)
    client = await make_client(replace(tenants(settings), api=api))
    _, first = await post(client, corpus / "jfk.flac", B)
    url = "https://hooks.example.com/sayit"
    status, second = await post(client, corpus / "jfk.flac", B, callbackUrl=url)
    assert status == 202, second
    job_id = second["data"]["jobId"]
    assert job_id != first["data"]["jobId"] and "cached" not in second["data"]
    assert job_hash(settings, job_id)["callback_url"] == url


async def test_idempotency_keys_are_each_tenants_own(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(tenants(settings), api=replace(settings.api, result_cache=False)))
    key = {"Idempotency-Key": "upload-1"}
    _, from_a = await post(client, corpus / "jfk.flac", {**A, **key})
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers={**B, **key})
    from_b = await response.json()
    assert response.status == 202 and "Idempotent-Replayed" not in response.headers
    assert from_b["data"]["jobId"] != from_a["data"]["jobId"]
    for headers, first in ((A, from_a), (B, from_b)):
        response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers={**headers, **key})
        assert response.headers["Idempotent-Replayed"] == "true"
        assert (await response.json())["data"]["jobId"] == first["data"]["jobId"]


async def test_without_keys_an_idempotency_key_is_one_client_addresss(
    make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    def request(remote: str) -> Any:
        return make_mocked_request("POST", "/api/transcribe").clone(remote=remote)

    assert repeats.idempotency_scope(request("10.0.0.1"), "k") != repeats.idempotency_scope(request("10.0.0.2"), "k")
    with_key = make_mocked_request("POST", "/api/transcribe").clone(remote="10.0.0.1")
    with_key[TENANT] = "alpha"
    assert "alpha" in repeats.idempotency_scope(with_key, "k")[1]

    client = await make_client(replace(settings, limits=replace(settings.limits, sync_max_duration_s=5.0),
                                       worker_mode=WorkerMode.API_ONLY))  # fmt: skip
    key = {"Idempotency-Key": "guessable"}
    _, first = await post(client, corpus / "jfk.flac", key)
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers=key)
    assert response.headers["Idempotent-Replayed"] == "true"  # the same client (127.0.0.1) gets its answer
    assert (await response.json())["data"]["jobId"] == first["data"]["jobId"]
    here = make_mocked_request("POST", "/api/transcribe").clone(remote="127.0.0.1")
    stored = keys.idempotency(repeats._digest(repeats.idempotency_scope(here, "guessable")))
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        assert r.exists(stored) == 1  # the key is stored under the client's address
    finally:
        r.close()


@pytest.mark.slow
async def test_cached_transcripts_are_not_shared_between_tenants(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(tenants(settings, worker_mode=WorkerMode.ALL, limits=settings.limits))
    status, first = await post(client, corpus / "jfk.flac", A, filename="a-secret-meeting.flac")
    assert status == 200 and first["data"]["mode"] == "sync"
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", "b.flac"), headers=B)
    other = (await response.json())["data"]
    assert "cached" not in other and other["filename"] == "b.flac"
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", "b2.flac"), headers=B)
    again = (await response.json())["data"]
    assert again["cached"] is True and again["filename"] == "b2.flac"  # its own entry now

    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        before = len(list(r.scan_iter(keys.result_cache("*"))))
        for headers in (A, B):
            data = aiohttp.FormData()
            data.add_field("file", (corpus / "jfk.flac").read_bytes(), filename="jfk.flac")
            data.add_field("model", "whisper-1")
            response = await client.post("/v1/audio/transcriptions", data=data, headers=headers)
            assert response.status == 200
            assert "ask not what your country" in (await response.json())["text"].lower()
        assert len(list(r.scan_iter(keys.result_cache("*")))) == before + 2  # each tenant transcribed its own
    finally:
        r.close()


# --- rate limits ---------------------------------------------------------------------------------


async def test_rate_limit_is_per_tenant_and_shared_by_every_node(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    limited = tenants(settings, api=replace(settings.api, result_cache=False))
    limited = replace(limited, limits=replace(limited.limits, rate_limit_per_min=3))
    first = await make_client(replace(limited, worker_id="api-1"))
    second = await make_client(replace(limited, worker_id="api-2"))
    remaining = []
    for node in (first, second, first):
        response = await node.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers=A)
        assert response.status == 202, await response.text()
        assert response.headers["RateLimit-Limit"] == "3"
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]

    response = await second.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers=A)
    body = await response.json()
    assert response.status == 429 and body["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] == "3" and response.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60
    openai = await second.post("/v1/audio/transcriptions", data=upload(corpus / "jfk.flac"), headers=A)
    assert openai.status == 429 and (await openai.json())["error"]["type"] == "rate_limit_error"

    response = await second.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers=B)
    assert response.status == 202 and response.headers["RateLimit-Remaining"] == "2"  # the other tenant's own count


async def test_audio_limit_counts_probed_seconds(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    limited = tenants(settings, api=replace(settings.api, result_cache=False))
    client = await make_client(replace(limited, limits=replace(limited.limits, audio_limit_s_per_hour=20.0)))
    assert (await post(client, corpus / "jfk.flac", A))[0] == 202  # 11 s of 20
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac"), headers=A)
    assert response.status == 429 and (await response.json())["error"]["code"] == "RATE_LIMITED"
    assert response.headers["RateLimit-Limit"] == "20" and int(response.headers["RateLimit-Remaining"]) < 10
    assert int(response.headers["Retry-After"]) > 60  # an hour's window
    assert (await post(client, corpus / "jfk.flac", B))[0] == 202


async def test_logs_name_the_tenant_never_the_key(
    make_client, settings: Settings, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    limited = tenants(settings)
    client = await make_client(replace(limited, limits=replace(limited.limits, rate_limit_per_min=1)))
    with caplog.at_level(logging.INFO):
        assert (await post(client, corpus / "jfk.flac", A))[0] == 202
        assert (await post(client, corpus / "jfk.flac", A))[0] == 429
    assert "queued for alpha" in caplog.text and "alpha is over its limit" in caplog.text
    assert ALPHA not in caplog.text and BETA not in caplog.text


# --- fair share of the queue ---------------------------------------------------------------------


async def test_a_tenant_past_its_share_of_the_queue_gets_queue_full_alone(
    make_client, settings: Settings, corpus: Path
) -> None:  # type: ignore[no-untyped-def]
    shared = tenants(settings, api=replace(settings.api, result_cache=False))
    client = await make_client(replace(shared, queue=replace(shared.queue, max_queued_audio_s=30.0)))  # 15 s each
    assert (await post(client, corpus / "jfk.flac", A))[0] == 202
    status, body = await post(client, corpus / "jfk.flac", A)  # 22 s > 15 s: its share is used
    assert status == 503 and body["error"]["code"] == "QUEUE_FULL"
    status, body = await post(client, corpus / "jfk.flac", B)
    assert status == 202, body
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        owned = [int(r.get(keys.tenant_queued_audio_ms(name)) or 0) for name in ("alpha", "beta")]
        assert owned[0] == owned[1] > 10_000
        assert int(r.get(keys.QUEUED_AUDIO_MS) or 0) == sum(owned)
    finally:
        r.close()


def test_a_tenants_queued_audio_follows_its_chunks(settings: Settings, corpus: Path) -> None:
    r = redis.Redis.from_url(settings.redis_url or "")
    jobs = JobStore(r, replace(settings.queue, max_queued_audio_s=60.0))
    stream = ChunkStream(r)
    try:
        stream.ensure_group()
        chunks = split(decode(corpus / "jfk.flac"), max_s=6.0)
        owner = Owner("alpha", 0.5)
        jobs.create("a" * 32, "en", 11.0, chunks, "jfk.flac", owner=owner)
        queued = sum(round(c.duration_s * 1000) for c in chunks)
        assert int(r.get(keys.tenant_queued_audio_ms("alpha")) or 0) == queued
        jobs.create("b" * 32, "en", 11.0, chunks, "jfk.flac", owner=owner)  # 22 s of its share of 30 s
        with pytest.raises(QueueFull):  # 33 s would pass it (the budget, 60 s, would not)
            jobs.create("c" * 32, "en", 11.0, chunks, "jfk.flac", owner=owner)
        assert int(r.get(keys.tenant_queued_audio_ms("alpha")) or 0) == 2 * queued
        first, *rest = stream.read_new("worker-1", 10, 100)
        result = {"start_s": 0.0, "duration_s": chunks[0].duration_s, "text": "w", "language": "en",
                  "segments": [[0.0, 1.0, "w"]]}  # fmt: skip
        jobs.record_chunk(first, result)
        assert int(r.get(keys.tenant_queued_audio_ms("alpha")) or 0) == 2 * queued - first.task.duration_ms
        for delivery in rest:
            jobs.fail(delivery, "test")
        assert r.exists(keys.tenant_queued_audio_ms("alpha")) == 0  # both jobs ended: nothing left counted
        assert int(r.get(keys.QUEUED_AUDIO_MS) or 0) == 0
    finally:
        r.close()
