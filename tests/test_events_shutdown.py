"""An open event stream does not hold a node's shutdown up."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from config import Settings, WorkerMode

pytestmark = pytest.mark.slow


async def test_an_open_event_stream_ends_when_the_node_stops(make_client, settings: Settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    # An api_only node with no queue node anywhere: the job stays queued and its stream stays open.
    client = await make_client(replace(settings, worker_mode=WorkerMode.API_ONLY))
    form = aiohttp.FormData()
    form.add_field("file", (corpus / "multilingual.mp3").read_bytes(), filename="multilingual.mp3")
    job = (await (await client.post("/api/transcribe", data=form)).json())["data"]
    stream = await client.get(f"/api/transcribe/{job['jobId']}/events")
    first = await stream.content.readuntil(b"\n\n")
    assert first.startswith(b"retry:")
    assert b"event: queued" in await stream.content.readuntil(b"\n\n")

    async def rest() -> bytes:
        return await stream.content.read()

    reading = asyncio.create_task(rest())
    # Without the shutdown signal the stream would keep the server's shutdown waiting on it.
    await asyncio.wait_for(client.server.close(), timeout=50)  # aiohttp would wait 60 s on the stream
    assert (await asyncio.wait_for(reading, timeout=5)).count(b"event:") == 0
