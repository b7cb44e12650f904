"""The edge's middlewares: CORS allow-list, security headers, API keys, request ids, health, metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient

from config import Settings, load_settings
from http_edge.middlewares import SECURITY_HEADERS
from sayit_actors.store.redis_server import EmbeddedRedis

ALLOWED = "https://app.sayit.example"


async def test_security_headers_on_every_response(client: TestClient) -> None:
    for response in (await client.get("/health"), await client.get("/nowhere"), await client.post("/api/transcribe")):
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value


async def test_cors_preflight_from_an_allowed_origin(client: TestClient) -> None:
    response = await client.options(
        "/api/transcribe",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert set(response.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Origin" in response.headers.getall("Vary")


async def test_cors_refuses_other_origins(client: TestClient) -> None:
    response = await client.options(
        "/api/transcribe", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await client.get("/health", headers={"Origin": ALLOWED})
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_api_keys_are_required_when_configured(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(replace(settings, api_keys=("k-one", "k-two")))

    def upload() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("file", (corpus / "jfk.flac").read_bytes(), filename="jfk.flac")
        data.add_field("language", "en")
        return data

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k-one"}):
        response = await client.post("/api/transcribe", data=upload(), headers=headers)
        body = await response.json()
        assert response.status == 401 and body["error"]["code"] == "UNAUTHORIZED", headers
    response = await client.post("/api/transcribe", data=upload(), headers={"Authorization": "Bearer k-two"})
    assert response.status == 200
    assert (await client.get("/health")).status == 200  # only /api/* needs a key


async def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    response = await client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    response = await client.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert len(response.headers["X-Request-Id"]) == 32


async def test_health_reports_the_parts(client: TestClient) -> None:
    response = await client.get("/health")
    envelope = await response.json()
    assert response.status == 200 and envelope["success"] is True
    body = envelope["data"]
    assert body["status"] == "healthy"
    services = body["services"]
    assert services["redis"]["status"] == "up"
    engine = load_settings({}).engine
    decoder_threads = services["whisper"].pop("wideDecoderThreads")  # timed at load: this CPU's choice
    assert decoder_threads in {engine.threads(), engine.threads() // engine.batch_lanes_for("cpu")}
    assert services["whisper"] == {
        "status": "up",
        "engine": "faster-whisper",
        "model": "base",
        "device": "cpu",
        "computeType": "int8",
        "batchSize": 2,
        "batchLanes": engine.batch_lanes_for("cpu"),  # one per core
    }
    kinds = sorted({a["kind"] for a in services["workers"]["actors"]})
    assert kinds == [
        "Dispatcher",
        "DurationProbe",
        "QueueConsumer",
        "ResultActor",
        "Splitter",
        "UploadActor",
        "WhisperActor",
    ]
    assert services["workers"]["slots"] == 2 and services["workers"]["busy"] == 0
    assert body["uptime"] >= 0 and body["timestamp"]


async def test_health_is_503_when_redis_is_down(make_client, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    own = EmbeddedRedis(tmp_path / "own-redis").start()
    try:
        client = await make_client(replace(settings, redis_url=own.url))
        assert (await client.get("/health")).status == 200
    finally:
        own.stop()
    response = await client.get("/health")
    body = (await response.json())["data"]
    assert response.status == 503 and body["status"] == "unhealthy"
    assert body["services"]["redis"]["status"] == "down"
    assert "sayit_redis_up 0.0" in await (await client.get("/metrics")).text()


async def test_metrics_count_requests_and_slots(client: TestClient) -> None:
    await client.get("/health")
    await client.get("/nowhere")
    text = await (await client.get("/metrics")).text()
    assert 'sayit_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert 'sayit_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'sayit_chunk_slots{node="test-node",role="all"} 2.0' in text
    assert 'sayit_chunk_slots_busy{node="test-node",role="all"} 0.0' in text
    assert "sayit_http_request_duration_seconds_bucket" in text
