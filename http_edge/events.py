"""``GET /api/transcribe/{jobId}/events``: a job's progress as Server-Sent Events.

Every change of a job is an entry of its Redis stream (``keys.job_events``), written in the same
atomic step as the change itself, so the events are the job's history, not a sample of it. An
event's id is its stream entry id: a client that reconnects with ``Last-Event-ID`` reads on from
there and misses nothing. The last event is ``completed`` (with the whole result) or ``failed``.

Each open stream holds a Redis connection in a blocking read, so a node keeps at most
``SAYIT_MAX_EVENT_STREAMS`` open (503 with Retry-After beyond), and a stream whose client hangs
up is cancelled at once (``http_edge.server``), which gives its place and its connection back.
With API keys, a job's events are its tenant's alone (``pipeline.may_see``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from http_edge.keys import ADMISSION, CLOSING, REDIS
from http_edge.pipeline import job_exists, job_id_of
from http_edge.views import job_data
from sayit_actors import errors
from sayit_actors.store import keys
from sayit_actors.store.merge import ChunkProgress
from sayit_actors.wire import chunk_progress_view

BLOCK_MS = 5_000  # under the Redis client's socket timeout; also the keep-alive period
FINAL = ("completed", "failed")
RETRY_MS = 2_000
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


async def read_events(client: aioredis.Redis, job_id: str, after: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The job's events after entry ``after`` as they come, ending with its final event.

    Yields ("", {}) after each quiet BLOCK_MS. A job that ended without a final event in its stream
    (kept from before events existed, or trimmed) gets one made up, with the last id read.
    """
    key = keys.job_events(job_id)
    block: int | None = BLOCK_MS
    ended = ""
    while True:
        reply: Any = await client.xread({key: after}, count=100, block=block)
        if (task := asyncio.current_task()) is not None and task.cancelling():
            # Cancelled as the command was sent: redis-py sends under Python 3.11's wait_for, which
            # then returns instead of raising, and the read above waited out its block.
            raise asyncio.CancelledError
        entries = [entry for _, stream in reply or [] for entry in stream]
        for raw_id, raw in entries:
            after = raw_id.decode()
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            yield after, fields
            if fields.get("type") in FINAL:
                return
        if entries:
            continue
        if ended:  # read once more without waiting: nothing came after the end
            yield after, {"type": ended}
            return
        status = await job_status(client, job_id)
        if status is None or status in FINAL:
            ended, block = status or "failed", None  # its last events may have landed since the wait began
            continue
        yield "", {}


async def job_status(client: aioredis.Redis, job_id: str) -> str | None:
    raw: Any = await client.hget(keys.job(job_id), "status")
    return raw.decode() if raw else None


def _progress(fields: dict[str, str]) -> dict[str, Any]:
    done, total = int(fields.get("done", 0)), int(fields.get("total", 0))
    return {"done": done, "total": total, "percent": round(100 * done / total, 1) if total else 0.0}


async def event_payload(request: web.Request, job_id: str, fields: dict[str, str]) -> dict[str, Any]:
    kind = fields.get("type", "")
    if kind in FINAL:
        # The whole job as the status route shows it: the final event stands on its own.
        return await job_data(request, job_id) or {"jobId": job_id, "status": kind}
    payload: dict[str, Any] = {"jobId": job_id, "status": "processing" if kind == "progress" else kind,
                               "progress": _progress(fields)}  # fmt: skip
    if "chunk" in fields:
        payload["chunk"] = chunk_progress_view(ChunkProgress.from_json(fields["chunk"]))
    return payload


def _frame(event_id: str, kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n".encode()


async def job_events(request: web.Request) -> web.StreamResponse:
    job_id = job_id_of(request)
    after = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or "0-0"
    if not _ENTRY_ID.match(after):
        raise errors.InvalidRequest("Last-Event-ID must be an id this stream sent", param="Last-Event-ID")
    with request.app[ADMISSION].streams.entered():
        return await _stream(request, job_id, after)


async def _stream(request: web.Request, job_id: str, after: str) -> web.StreamResponse:
    client = request.app[REDIS]
    if not await job_exists(request, job_id):  # unknown, or another tenant's
        raise errors.JobNotFound()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    async for event_id, fields in read_events(client, job_id, after):
        if not event_id:  # quiet
            if request.app[CLOSING].is_set():
                break  # the client reconnects (retry) to another node, or to this one restarted
            await response.write(b": keep-alive\n\n")  # keeps proxies from closing the stream
            continue
        kind = fields.get("type", "progress")
        await response.write(_frame(event_id, kind, await event_payload(request, job_id, fields)))
    await response.write_eof()
    return response


async def wait_for_job(request: web.Request, job_id: str, timeout_s: float) -> dict[str, Any]:
    """The job once it has ended (its status data); raises JobTimeout after ``timeout_s``."""

    async def until_final() -> None:
        async for _ in read_events(request.app[REDIS], job_id, "0-0"):
            pass  # the events end with the job

    try:
        async with asyncio.timeout(timeout_s):
            await until_final()
    except TimeoutError:
        raise errors.JobTimeout(f"job {job_id}: follow it at /api/transcribe/{job_id}") from None
    data = await job_data(request, job_id)
    if data is None:
        raise errors.JobNotFound()
    return data
