"""Abusive and broken clients over real HTTP: slow or oversized requests, hang-ups, too many at
once; and timeouts that stop work or wait for it (slots, jobs, Idempotency-Keys)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis
import soundfile
from aiohttp.test_utils import TestClient, TestServer

from config import Settings, WorkerMode
from http_edge import create_app
from http_edge.keys import ACTORS, ADMISSION
from http_edge.server import KEEPALIVE_TIMEOUT_S, server_options
from sayit_actors import audio
from sayit_actors.metrics import Metrics
from sayit_actors.store import keys
from sayit_actors.supervisor import ChildSpec, Directory, StartAll, Supervisor
from sayit_actors.upload import INCOMING, UploadActor
from tests.forms import upload

BOUNDARY = "sayit-test-boundary"
JOB_KEY = re.compile(rb"^sayit:job:[0-9a-f]{32}$")


# --- raw HTTP -------------------------------------------------------------------------------------


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart/form-data body of (name, data, filename) parts, with BOUNDARY."""
    body = bytearray()
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return bytes(body + f"--{BOUNDARY}--\r\n".encode())


def request_head(path: str, length: int, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: sayit.test", f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
             f"Content-Length: {length}", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(client: TestClient, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the client's server that has sent ``data``."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def response_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, Any]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers, json.loads(body)


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def until(check: Callable[[], bool | Awaitable[bool]], within_s: float, what: str) -> None:
    """Wait (bounded) until ``check`` holds."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert asyncio.get_running_loop().time() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


def temp_files(settings: Settings) -> list[Path]:
    folder = settings.upload_dir / INCOMING
    return [p for p in folder.iterdir() if p.is_file()] if folder.exists() else []


async def job_keys(redis_url: str) -> list[bytes]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(keys.job("*")) if JOB_KEY.match(key)]
    finally:
        await client.aclose()


async def blocked_redis_clients(redis_url: str) -> int:
    """Connections waiting in a blocking command (an XREAD BLOCK of an event stream or a job wait)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in await client.client_list() if "b" in c["flags"])
    finally:
        await client.aclose()


def with_limits(settings: Settings, **limits: Any) -> Settings:
    return replace(settings, limits=replace(settings.limits, **limits))


async def queued_job(client: TestClient, corpus: Path) -> str:
    """A job on an api_only node with no queue node: it stays queued, and its event stream open."""
    response = await client.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"))
    assert response.status == 202, await response.text()
    return str((await response.json())["data"]["jobId"])


async def until_queued(stream: aiohttp.ClientResponse) -> None:
    """Read an event stream up to its job's first event: the stream then waits in Redis."""
    assert (await stream.content.readuntil(b"\n\n")).startswith(b"retry:")
    assert b"event: queued" in await stream.content.readuntil(b"\n\n")


# --- slow and oversized requests ------------------------------------------------------------------


async def test_an_upload_that_goes_quiet_gets_408_and_its_file_is_deleted(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path
) -> None:
    settings = with_limits(settings, upload_idle_timeout_s=1.0)
    client = await make_client(settings)
    body = multipart(("file", (corpus / "jfk.flac").read_bytes(), "jfk.flac"))
    reader, writer = await connect(client, request_head("/api/transcribe", len(body)) + body[:20_000])
    try:
        for _ in range(5):  # a byte every 3 s: never quiet for 30 s, but for more than 1 s each time
            try:
                status, _, answer = await asyncio.wait_for(response_of(reader), 3.0)
                break
            except TimeoutError:
                writer.write(b"x")
                await writer.drain()
        else:
            raise AssertionError("a client dripping a byte every 3 s was never answered")
        assert status == 408 and answer["error"]["code"] == "REQUEST_TIMEOUT", answer
        assert temp_files(settings) == []  # deleted before the answer was sent
    finally:
        await hang_up(writer)
    assert (await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))).status == 200


async def test_a_client_that_hangs_up_mid_upload_leaves_no_file(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path
) -> None:
    client = await make_client(settings)
    body = multipart(("file", (corpus / "jfk.flac").read_bytes(), "jfk.flac"))
    _, writer = await connect(client, request_head("/api/transcribe", len(body)) + body[: len(body) // 2])
    await until(lambda: bool(temp_files(settings)), 10, "the upload is being written")
    await hang_up(writer)
    await until(lambda: not temp_files(settings), 10, "the half upload is deleted")
    assert client.server.app[ADMISSION].uploads.inside == 0
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))
    assert response.status == 200 and "ask not" in (await response.json())["data"]["transcription"]


async def test_a_megabyte_text_field_is_refused_while_it_streams(  # type: ignore[no-untyped-def]
    client: TestClient, corpus: Path, settings: Settings
) -> None:
    body = multipart(("file", (corpus / "jfk.flac").read_bytes(), "jfk.flac"), ("prompt", b"x" * 1024 * 1024, None))
    sent = body.index(b'name="prompt"') + 64 * 1024  # the file and the field's first 64 KB, then nothing
    reader, writer = await connect(client, request_head("/api/transcribe", len(body)) + body[:sent])
    try:
        # Answered with most of the field still unsent: it was refused as it came, not once it was all held.
        status, _, answer = await asyncio.wait_for(response_of(reader), 10)
        assert status == 400 and answer["error"]["code"] == "INVALID_REQUEST", answer
        assert "longer than 4096 bytes" in answer["error"]["message"]
        assert temp_files(settings) == []  # the file part before it is deleted
    finally:
        await hang_up(writer)
    response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", prompt="x" * (1024 * 1024)))
    assert response.status == 400 and (await response.json())["error"]["code"] == "INVALID_REQUEST"


async def test_a_second_file_part_is_refused(client: TestClient, corpus: Path, settings: Settings) -> None:
    form = upload(corpus / "jfk.flac")
    form.add_field("file", (corpus / "jfk.flac").read_bytes(), filename="again.flac")
    response = await client.post("/api/transcribe", data=form)
    answer = await response.json()
    assert response.status == 400 and answer["error"]["code"] == "INVALID_REQUEST", answer
    assert "one file per request" in answer["error"]["message"]
    assert temp_files(settings) == []


async def test_a_request_head_dripped_slowly_is_cut_off(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    # aiohttp's keep-alive timer bounds the head: 1 s here, KEEPALIVE_TIMEOUT_S in production.
    assert server_options()["keepalive_timeout"] == KEEPALIVE_TIMEOUT_S
    server = TestServer(create_app(settings, engine=engine))
    await server.start_server(keepalive_timeout=1.0)
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: sayit.test\r\n")
        closed = False
        for _ in range(50):  # a header byte every 0.2 s, never a whole head
            writer.write(b"X")
            try:
                await writer.drain()
                closed = await asyncio.wait_for(reader.read(1), 0.2) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
            if closed:
                break
        assert closed, "a connection dripping its request head for 10 s was never closed"
        writer.close()
    finally:
        await server.close()


# --- too many at once -----------------------------------------------------------------------------


async def test_uploads_past_the_cap_are_refused_before_their_body_is_read(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path
) -> None:
    settings = with_limits(settings, max_uploads_in_flight=2, retry_after_s=7)
    client = await make_client(settings)
    gate = client.server.app[ADMISSION].uploads
    body = multipart(("file", (corpus / "jfk.flac").read_bytes(), "jfk.flac"))
    held = [await connect(client, request_head("/api/transcribe", len(body)) + body[:5000]) for _ in range(2)]
    await until(lambda: gate.inside == 2, 10, "two slow uploads are in")

    # Only a head, no body at all: the answer comes anyway.
    reader, writer = await connect(client, request_head("/api/transcribe", len(body)))
    status, headers, answer = await asyncio.wait_for(response_of(reader), 10)
    assert status == 503 and headers["retry-after"] == "7" and answer["error"]["code"] == "SERVER_BUSY", answer
    await hang_up(writer)
    response = await client.post("/v1/audio/transcriptions", data=upload(corpus / "jfk.flac", model="whisper-1"))
    assert response.status == 503 and response.headers["Retry-After"] == "7"

    for _, held_writer in held:
        await hang_up(held_writer)
    await until(lambda: gate.inside == 0 and not temp_files(settings), 10, "the slow uploads are gone")
    assert (await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))).status == 200


async def test_event_streams_past_the_cap_are_refused_and_a_closed_one_frees_its_place(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path
) -> None:
    settings = with_limits(replace(settings, worker_mode=WorkerMode.API_ONLY), max_event_streams=2, retry_after_s=3)
    client = await make_client(settings)
    job_id = await queued_job(client, corpus)
    url = f"/api/transcribe/{job_id}/events"

    async def open_stream() -> aiohttp.ClientResponse:
        stream = await client.get(url)
        if stream.status == 200:
            await until_queued(stream)
        return stream

    streams = [await open_stream(), await open_stream()]
    refused = await open_stream()
    assert refused.status == 503 and refused.headers["Retry-After"] == "3"
    assert (await refused.json())["error"]["code"] == "SERVER_BUSY"

    streams.pop().close()
    # At once: well before the stream's next keep-alive write (5 s) would have noticed the hang-up.
    gate = client.server.app[ADMISSION].streams
    await until(lambda: gate.inside == 1, 2, "the closed stream's place is free")
    again = await open_stream()
    assert again.status == 200
    for stream in [*streams, again]:
        stream.close()
    await until(lambda: gate.inside == 0, 2, "every stream's place is free")


@pytest.mark.slow
async def test_150_event_streams_leave_health_and_short_uploads_answering(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path
) -> None:
    settings = replace(settings, worker_mode=WorkerMode.API_ONLY)  # default stream cap and Redis pool
    client = await make_client(settings)
    url = client.make_url(f"/api/transcribe/{await queued_job(client, corpus)}/events")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def open_stream() -> aiohttp.ClientResponse:
            stream = await session.get(url)
            if stream.status == 200:
                await until_queued(stream)
            else:
                await stream.read()
            return stream

        streams = await asyncio.gather(*(open_stream() for _ in range(150)))
        try:
            statuses = [s.status for s in streams]
            cap = settings.limits.max_event_streams
            assert statuses.count(200) == cap and statuses.count(503) == 150 - cap, statuses
            ready = await client.get("/health/ready")
            assert ready.status == 200, await ready.text()
            response = await client.post("/api/transcribe", data=upload(corpus / "jfk.flac", language="en"))
            assert response.status == 200, await response.text()
        finally:
            for stream in streams:
                stream.close()
    await until(lambda: client.server.app[ADMISSION].streams.inside == 0, 10, "every stream's place is free")


async def test_a_hung_up_openai_wait_lets_its_redis_connection_go_and_its_key_keeps_the_job(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path, redis_url: str
) -> None:
    client = await make_client(replace(settings, worker_mode=WorkerMode.API_ONLY))
    before = await blocked_redis_clients(redis_url)
    body = multipart(("model", b"whisper-1", None), ("file", (corpus / "multilingual.mp3").read_bytes(), "long.mp3"))
    head = request_head("/v1/audio/transcriptions", len(body), Idempotency_Key="sdk-retry-1")

    def blocked(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await blocked_redis_clients(redis_url) == count

        return check

    async def wait_then_hang_up() -> None:
        _, writer = await connect(client, head + body)
        await until(blocked(before + 1), 30, "the route waits for its job")
        await hang_up(writer)
        # At once: a wait that noticed only after its blocking read (5 s) would still be there.
        await until(blocked(before), 3, "the wait's Redis connection is given back")
        await until(lambda: client.server.app[ADMISSION].uploads.inside == 0, 3, "the upload's place is free")

    await wait_then_hang_up()
    assert len(await job_keys(redis_url)) == 1
    await wait_then_hang_up()  # the SDK's retry, same key: it waits for the same job
    assert len(await job_keys(redis_url)) == 1
    assert temp_files(client.server.app[ACTORS].settings) == []


# --- timeouts that stop work or wait for it -------------------------------------------------------


@pytest.mark.slow
async def test_a_timed_out_transcription_keeps_its_slot_until_the_engine_is_done(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path, tmp_path: Path
) -> None:
    # 59 s of speech answered at once: many times the 1 s wait in engine time, on any machine.
    client = await make_client(with_limits(settings, transcribe_timeout_s=1.0, sync_max_duration_s=60.0))
    slots = client.server.app[ACTORS].slots
    jfk = audio.decode(corpus / "jfk.flac")
    clip = tmp_path / "five_jfk.wav"
    pause = np.zeros(audio.SAMPLE_RATE, np.float32)
    soundfile.write(clip, np.concatenate([jfk, pause] * 5), audio.SAMPLE_RATE)
    response = await client.post("/api/transcribe", data=upload(clip, language="en"))
    answer = await response.json()
    assert response.status == 503 and answer["error"]["code"] == "SERVICE_UNAVAILABLE", answer
    assert slots.busy == 1  # the caller has its 503; the slot's engine call goes on
    await until(lambda: slots.busy == 0, 120, "the slot is free once its transcription is done")


async def test_a_dispatch_that_timed_out_makes_no_job_and_frees_its_key(  # type: ignore[no-untyped-def]
    make_client, settings: Settings, corpus: Path, redis_url: str
) -> None:
    api = replace(settings, worker_mode=WorkerMode.API_ONLY)
    hurried = await make_client(with_limits(api, dispatch_timeout_s=0.01))
    headers = {"Idempotency-Key": "long-upload-1"}
    response = await hurried.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"), headers=headers)
    answer = await response.json()
    assert response.status == 503 and answer["error"]["code"] == "SERVICE_UNAVAILABLE", answer
    await hurried.close()  # its actors stop after the Dispatcher has finished with the upload
    store = aioredis.Redis.from_url(redis_url)
    try:
        assert await job_keys(redis_url) == []
        assert [k async for k in store.scan_iter(f"{keys.PREFIX}job:*")] == []  # no chunk audio either
        assert [k async for k in store.scan_iter(keys.idempotency("*"))] == []  # the key is free
    finally:
        await store.aclose()

    patient = await make_client(api)
    retried = await patient.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"), headers=headers)
    assert retried.status == 202, await retried.text()
    again = await patient.post("/api/transcribe", data=upload(corpus / "multilingual.mp3"), headers=headers)
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["data"]["jobId"] == (await retried.json())["data"]["jobId"]
    assert len(await job_keys(redis_url)) == 1


# --- orphaned upload files ------------------------------------------------------------------------


async def test_the_upload_actor_sweeps_orphans_while_it_runs(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    spec = ChildSpec("upload", "UploadActor", lambda sup, name: UploadActor.start(sup, name, folder, sweep_every_s=0.2))
    supervisor = Supervisor.start([spec], Directory(), Metrics("test-node", "all"), 5, 60.0)
    try:
        supervisor.ask(StartAll(), timeout=10)
        orphan, fresh = folder / INCOMING / "orphan.part", folder / INCOMING / "fresh.part"
        orphan.parent.mkdir(parents=True, exist_ok=True)  # the actor makes it too, on its own thread
        orphan.write_bytes(b"left by a crash")
        fresh.write_bytes(b"being written")
        hours_ago = orphan.stat().st_mtime - 2 * 3600
        os.utime(orphan, (hours_ago, hours_ago))
        await until(lambda: not orphan.exists(), 5, "the orphan is swept without a restart")
        assert fresh.exists()
    finally:
        supervisor.stop(block=True, timeout=10)
