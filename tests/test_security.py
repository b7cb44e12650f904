"""What the service guards: callbacks that cannot reach inside, headers on every response, no
server detail in errors, the app's /health, safe settings, and Redis over TLS.

Every receiver and server here listens on 127.0.0.1; addresses outside it are only ever refused
before any connection, never called.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest
import soundfile
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config import ApiSettings, ConfigError, Settings, load_settings
from http_edge.middlewares import SECURITY_HEADERS
from sayit_actors import audio, callbacks
from sayit_actors.callbacks import SIGNATURE_HEADER, CallbackSender, check_url
from sayit_actors.errors import CallbackNotAllowed
from tests.conftest import wait_for_job

ALLOWED_ORIGIN = "https://app.sayit.example"
SECRET = "whsec_" + base64.b64encode(b"a 32-byte key for the test hooks").decode()
Received = list[tuple[bytes, Any]]


def hook_settings(port: int, **changes: Any) -> ApiSettings:
    """Callbacks to 127.0.0.1 and localhost on ``port``; private targets refused unless changed."""
    fields: dict[str, Any] = {
        "callback_hosts": ("127.0.0.1", "localhost", "hooks.example"),
        "callback_secret": SECRET,
        "callback_ports": (port,),
        "callback_timeout_s": 5.0,
        "callback_attempts": 1,
        "result_cache": False,
    }
    return ApiSettings(**{**fields, **changes})


async def deliver(settings: ApiSettings, url: str, payload: dict[str, Any] | None = None) -> bool:
    """One callback through a fresh sender, as the ResultActor sends it."""
    sender = CallbackSender(settings)
    try:
        future = sender.send(url, "job.completed", payload or {"jobId": "a" * 32, "status": "completed"})
        return await asyncio.wait_for(asyncio.wrap_future(future), 30)
    finally:
        sender.close()


def verify_standard_webhook(body: bytes, headers: Any) -> None:
    """The receiver's check, written from the Standard Webhooks specification."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    assert "v1," + base64.b64encode(digest).decode() in headers["webhook-signature"].split(" ")
    assert abs(int(timestamp) - time.time()) < 300  # the specification's tolerance
    legacy = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], legacy)


@pytest.fixture
async def receiver(aiohttp_server) -> AsyncIterator[tuple[TestServer, Received, list[int]]]:  # type: ignore[no-untyped-def]
    """A webhook receiver on 127.0.0.1: what it got, and the statuses it answers in turn (then 204)."""
    received: Received = []
    statuses: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.copy()))
        return web.Response(status=statuses.pop(0) if statuses else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    yield await aiohttp_server(app), received, statuses


@pytest.fixture
async def dripping() -> AsyncIterator[tuple[int, list[int]]]:
    """A receiver on 127.0.0.1 that reads the request, then answers one byte every 0.3 s."""
    handlers: set[asyncio.Task[None]] = set()
    connections: list[int] = []

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        connections.append(1)
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.3)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], connections
    server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()


# --- callbacks ------------------------------------------------------------------------------------


async def test_a_loopback_receiver_gets_a_signed_callback_only_when_private_targets_are_allowed(receiver) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    url = f"http://127.0.0.1:{server.port}/hook"
    with pytest.raises(CallbackNotAllowed, match="not public"):
        check_url(url, hook_settings(server.port))  # refused at upload
    assert await deliver(hook_settings(server.port), url) is False  # and by the sender
    assert received == []

    assert await deliver(hook_settings(server.port, callback_allow_private=True), url) is True
    ((body, headers),) = received
    verify_standard_webhook(body, headers)
    assert headers["webhook-id"] == f"msg_{'a' * 32}_job_completed"
    assert json.loads(body)["event"] == "job.completed" and headers["Host"] == f"127.0.0.1:{server.port}"


async def test_a_listed_name_resolving_to_loopback_is_refused_unless_allowed(receiver) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    url = f"http://localhost:{server.port}/hook"
    assert check_url(url, hook_settings(server.port)) == url  # a name: its addresses are checked when sent
    assert await deliver(hook_settings(server.port), url) is False
    assert received == []
    assert await deliver(hook_settings(server.port, callback_allow_private=True), url) is True
    ((body, headers),) = received
    verify_standard_webhook(body, headers)
    assert headers["Host"] == f"localhost:{server.port}"  # the name, though the socket went to the address


async def test_a_port_outside_the_allowed_ones_is_refused(receiver) -> None:  # type: ignore[no-untyped-def]
    server, received, _ = receiver
    settings = hook_settings(server.port + 1, callback_allow_private=True)
    url = f"http://127.0.0.1:{server.port}/hook"
    with pytest.raises(CallbackNotAllowed, match=f"port {server.port}"):
        check_url(url, settings)
    assert await deliver(settings, url) is False
    assert received == []
    with pytest.raises(CallbackNotAllowed, match="port 80"):
        check_url("http://hooks.example/hook", settings)  # the scheme's own port counts too


async def test_a_listed_name_pointing_inside_is_refused_before_any_connection(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The name's DNS answer is made up here; no connection to it may be attempted."""
    real_getaddrinfo = socket.getaddrinfo
    answers = {
        "hooks.example": ["10.0.0.1"],
        "mixed.example": ["93.184.215.14", "169.254.169.254"],  # one inside is enough to refuse
    }

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]
        return real_getaddrinfo(host, port, *args, **kwargs)

    connected: list[Any] = []
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(callbacks, "_connect", lambda *args: connected.append(args))
    settings = hook_settings(443, callback_hosts=("hooks.example", "mixed.example", "10.0.0.1"))
    for url in ("https://hooks.example/hook", "https://mixed.example/hook"):
        assert check_url(url, settings) == url
        assert await deliver(settings, url) is False
    with pytest.raises(CallbackNotAllowed):
        check_url("https://10.0.0.1/hook", settings)
    assert await deliver(settings, "https://10.0.0.1/hook") is False
    assert connected == []


async def test_a_retry_carries_the_same_delivery_id(receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, received, statuses = receiver
    monkeypatch.setattr(callbacks, "RETRY_BASE_S", 0.05)
    statuses.extend([503, 500])
    settings = hook_settings(server.port, callback_allow_private=True, callback_attempts=3)
    assert await deliver(settings, f"http://127.0.0.1:{server.port}/hook") is True
    assert len(received) == 3
    for body, headers in received:
        verify_standard_webhook(body, headers)
    assert len({headers["webhook-id"] for _, headers in received}) == 1
    assert len({body for body, _ in received}) == 1


async def test_a_refusing_receiver_is_not_retried(receiver) -> None:  # type: ignore[no-untyped-def]
    server, received, statuses = receiver
    statuses.extend([400, 400])
    settings = hook_settings(server.port, callback_allow_private=True, callback_attempts=2)
    assert await deliver(settings, f"http://127.0.0.1:{server.port}/hook") is False
    assert len(received) == 1


async def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(dripping) -> None:  # type: ignore[no-untyped-def]
    port, connections = dripping
    settings = hook_settings(port, callback_allow_private=True, callback_timeout_s=1.0)
    started = time.monotonic()
    # Its status line alone takes 7.5 s at its pace: a timeout per read would wait for all of it.
    assert await deliver(settings, f"http://127.0.0.1:{port}/hook") is False
    assert time.monotonic() - started < 5.0
    assert connections == [1]


async def test_a_full_queue_drops_and_counts(dripping) -> None:  # type: ignore[no-untyped-def]
    port, connections = dripping
    dropped: list[int] = []
    settings = hook_settings(port, callback_allow_private=True, callback_timeout_s=3.0)
    sender = CallbackSender(settings, on_drop=lambda: dropped.append(1), max_pending=1)
    url = f"http://127.0.0.1:{port}/hook"
    try:
        sending = []
        for i in range(callbacks.SENDERS):  # one at a time: each sender takes one and holds it
            sending.append(sender.send(url, "job.completed", {"jobId": f"{i:032x}"}))
            deadline = time.monotonic() + 10
            while len(connections) <= i:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        waiting = sender.send(url, "job.completed", {"jobId": "b" * 32})
        refused = sender.send(url, "job.completed", {"jobId": "c" * 32})
        assert refused.done() and refused.result() is False and dropped == [1]
        assert not waiting.done()
    finally:
        sender.close()
    assert waiting.cancelled()  # closing drops what waits
    results = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in sending)), 10)
    assert results == [False] * callbacks.SENDERS


async def test_an_upload_with_a_private_callback_is_refused(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, receiver, corpus: Path
) -> None:
    server, received, _ = receiver
    client = await make_client(replace(settings, api=hook_settings(server.port)))
    data = aiohttp.FormData()
    data.add_field("file", (corpus / "jfk.flac").read_bytes(), filename="jfk.flac")
    data.add_field("callbackUrl", f"http://127.0.0.1:{server.port}/hook")
    response = await client.post("/api/transcribe", data=data)
    assert response.status == 400 and (await response.json())["error"]["code"] == "CALLBACK_NOT_ALLOWED"
    assert received == []


# --- headers --------------------------------------------------------------------------------------


def assert_guarded(response: aiohttp.ClientResponse, origin: str | None = ALLOWED_ORIGIN) -> None:
    """The security headers, the Server header and, for an allowed origin, CORS with credentials."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response.headers["Server"] == "SayIt"
    assert len(response.headers["X-Request-Id"]) > 0
    if origin is not None:
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        assert "Origin" in response.headers.getall("Vary")


def silence(path: Path, seconds: float) -> Path:
    soundfile.write(path, np.zeros(int(seconds * audio.SAMPLE_RATE), np.float32), audio.SAMPLE_RATE)
    return path


@pytest.mark.slow
async def test_the_event_stream_carries_every_header(client: TestClient, tmp_path: Path) -> None:
    data = aiohttp.FormData()
    data.add_field("file", silence(tmp_path / "quiet.wav", 31).read_bytes(), filename="quiet.wav")
    accepted = await client.post("/api/transcribe", data=data)
    assert accepted.status == 202
    assert accepted.headers["Cache-Control"] == "no-store"
    job_id = (await accepted.json())["data"]["jobId"]
    origin = {"Origin": ALLOWED_ORIGIN}
    async with client.get(f"/api/transcribe/{job_id}/events", headers=origin) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        assert_guarded(stream)
        assert stream.headers["Cache-Control"] == "no-store"
        assert b"retry:" in await stream.content.readline()  # the stream itself works
    await wait_for_job(client, job_id)
    status = await client.get(f"/api/transcribe/{job_id}", headers=origin)
    assert_guarded(status)
    assert status.headers["Cache-Control"] == "no-store"


async def test_errors_and_preflights_carry_every_header(client: TestClient) -> None:
    origin = {"Origin": ALLOWED_ORIGIN}
    missing = await client.get(f"/api/transcribe/{'f' * 32}", headers=origin)
    assert missing.status == 404
    assert_guarded(missing)
    assert missing.headers["Cache-Control"] == "no-store"
    nowhere = await client.get("/nowhere", headers=origin)
    assert nowhere.status == 404
    assert_guarded(nowhere)
    preflight = await client.options(
        "/api/transcribe", headers={**origin, "Access-Control-Request-Method": "POST",
                                    "Access-Control-Request-Headers": "authorization"}
    )  # fmt: skip
    assert preflight.status == 204
    assert_guarded(preflight)
    other = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert_guarded(other, origin=None)
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Credentials" not in other.headers


@pytest.mark.slow
async def test_a_transcript_is_not_stored(client: TestClient, corpus: Path) -> None:
    data = aiohttp.FormData()
    data.add_field("file", (corpus / "jfk.flac").read_bytes(), filename="jfk.flac")
    data.add_field("language", "en")
    response = await client.post("/api/transcribe", data=data, headers={"Origin": ALLOWED_ORIGIN})
    assert response.status == 200 and "ask not" in (await response.json())["data"]["transcription"]
    assert response.headers["Cache-Control"] == "no-store"
    assert_guarded(response)


async def test_an_undecodable_upload_names_no_server_path(
    client: TestClient, corpus: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = bytearray((corpus / "jfk.flac").read_bytes())
    damaged[7] = 0xF8  # STREAMINFO's length: libsndfile reads the header, FFmpeg refuses the file
    data = aiohttp.FormData()
    data.add_field("file", bytes(damaged), filename="jfk.flac")
    caplog.set_level(logging.INFO, logger="http_edge.middlewares")
    response = await client.post("/api/transcribe", data=data, headers={"X-Request-Id": "undecodable-1"})
    body = await response.json()
    assert response.status == 422 and body["error"]["code"] == "UNDECODABLE_AUDIO"
    message = body["error"]["message"]
    assert "/" not in message and settings.upload_dir.name not in message and "Errno" not in message
    assert "the decoder stopped" in message
    logged = [r.getMessage() for r in caplog.records if "undecodable-1" in r.getMessage()]
    assert any(str(settings.upload_dir) in line for line in logged), logged  # the log keeps the detail


async def test_the_server_header_has_no_version(client: TestClient) -> None:
    for response in (await client.get("/health"), await client.get("/metrics"), await client.get("/nowhere")):
        assert response.headers["Server"] == "SayIt"


async def test_health_answers_the_apps_envelope(client: TestClient) -> None:
    response = await client.get("/health")
    body = await response.json()
    assert response.status == 200 and body["success"] is True
    data = body["data"]
    assert data["status"] == "healthy" and data["uptime"] >= 0 and data["timestamp"].endswith("+00:00")
    assert {"whisper", "redis", "workers"} <= set(data["services"]) and "stats" in data
    assert data["services"]["redis"]["status"] == "up"


# --- settings -------------------------------------------------------------------------------------


def test_an_empty_variable_counts_as_unset() -> None:
    settings = load_settings({"SAYIT_ADMIN_TOKEN": "", "SAYIT_PORT": " ", "REDIS_URL": "", "SAYIT_API_KEYS": ""})
    assert settings.admin_token is None and settings.port == 3000 and settings.redis_url is None
    assert settings.api_keys == ()


@pytest.mark.parametrize(
    ("env", "names", "hidden"),
    [
        ({"SAYIT_ADMIN_TOKEN": "short-token"}, ["SAYIT_ADMIN_TOKEN", "16 characters"], "short-token"),
        ({"SAYIT_CALLBACK_SECRET": "whsec_not base64!"}, ["SAYIT_CALLBACK_SECRET", "whsec_"], "not base64"),
        ({"SAYIT_CORS_ORIGINS": "*"}, ["SAYIT_CORS_ORIGINS", "not *"], None),
        ({"SAYIT_CALLBACK_PORTS": "443,http"}, ["SAYIT_CALLBACK_PORTS", "ports"], None),
        ({"SAYIT_CALLBACK_ALLOW_PRIVATE": "maybe"}, ["SAYIT_CALLBACK_ALLOW_PRIVATE", "true or false"], None),
        ({"REDIS_URL": "localhost://:hunter2@redis"}, ["REDIS_URL", "rediss://"], "hunter2"),
    ],
)
def test_unsafe_settings_are_refused_without_echoing_secrets(
    env: dict[str, str], names: list[str], hidden: str | None
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    for name in names:
        assert name in str(refused.value)
    if hidden is not None:
        assert hidden not in str(refused.value)


def test_callback_settings_are_read() -> None:
    api = load_settings(
        {"SAYIT_CALLBACK_PORTS": "443, 8443", "SAYIT_CALLBACK_ALLOW_PRIVATE": "true", "SAYIT_ADMIN_TOKEN": "x" * 16}
    ).api
    assert api.callback_ports == (443, 8443) and api.callback_allow_private is True
    assert load_settings({}).api.callback_ports == (80, 443) and load_settings({}).api.callback_allow_private is False


# --- Redis over TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_redis_url(redis_url: str, certificate: tuple[Path, Path]) -> AsyncIterator[tuple[str, list[int]]]:
    """A ``rediss://`` URL: a TLS endpoint on 127.0.0.1 (its certificate verified) before the test Redis."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    backend = urlsplit(redis_url).port
    tasks: set[asyncio.Task[None]] = set()
    accepted: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        accepted.append(1)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required", accepted
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_node_works_against_redis_over_tls(
    tls_redis_url: tuple[str, list[int]], make_client: Callable[..., Any], settings: Settings
) -> None:
    url, accepted = tls_redis_url
    assert load_settings({"REDIS_URL": url}).redis_url == url
    client = await make_client(replace(settings, redis_url=url))
    body = (await (await client.get("/health")).json())["data"]
    assert body["status"] == "healthy" and body["services"]["redis"]["status"] == "up"
    assert body["stats"] is not None  # read over TLS too
    # The actors' own clients (the consumer's polls, the ResultActor's) connect from their threads.
    for _ in range(100):
        if len(accepted) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(accepted) >= 2
