"""Repeated uploads: an ``Idempotency-Key`` answers a retried request with its first response, and
the same audio with the same options answers the stored result instead of transcribing again.

A retry after a dropped connection must never create a second job, so the first request claims
its key in Redis before any work (``SET NX``), and stores its response when it has one. A claim
that is never completed (the node died) expires after ``PENDING_TTL_S``. A request that fails
gives its key back so that the client can retry it, unless a job was made for it (its client
hung up, or an error came after the job): then the key keeps the job, and a retry is answered
from that job as from the result cache (``cached``), instead of making a second one.

Both are scoped: with API keys, the tenant is part of every key's digest, so a tenant never
gets another's job id, filename or transcript, nor learns that someone uploaded the same bytes.
Without keys the result cache is shared (one user), but an Idempotency-Key still belongs to
one client address, so a guessable key cannot be taken by another client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web

from http_edge.keys import ACTORS, REDIS, SETTINGS, TENANT
from http_edge.limits import client_scope
from sayit_actors import errors
from sayit_actors.caller import Caller
from sayit_actors.dispatcher import Choices
from sayit_actors.store import keys

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
PENDING_TTL_S = 15 * 60  # longer than any single request may run
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, as Stripe's and the IETF draft's keys


class Upload(Protocol):
    """What a repeat needs of an upload: the hash of its bytes, and dropping it when not needed."""

    @property
    def sha256(self) -> str: ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class CacheHit:
    data: dict[str, Any] | None = None  # a short upload's stored result
    job_id: str | None = None  # the job that transcribes (or transcribed) the same audio


class Replay:
    """One request's view of its repeats: a stored response to replay, the cache, what to keep."""

    def __init__(
        self, client: aioredis.Redis, cache_key: str | None, idem_key: str | None, fingerprint: str, ttl_s: int
    ) -> None:
        self._redis = client
        self._cache_key = cache_key
        self._idem_key = idem_key
        self._fingerprint = fingerprint
        self._ttl_s = ttl_s
        self._job_id: str | None = None  # the job this key's first request made
        self.response: web.Response | None = None

    async def claim(self) -> None:
        """Claim the Idempotency-Key, or load the response it already has into ``response``."""
        if self._idem_key is None:
            return
        pending = json.dumps({"state": "pending", "fingerprint": self._fingerprint})
        if await self._redis.set(self._idem_key, pending, nx=True, ex=PENDING_TTL_S):
            return
        raw = await self._redis.get(self._idem_key)
        if raw is None:  # expired between the two calls: claim again
            await self.claim()
            return
        stored = json.loads(raw)
        if stored["fingerprint"] != self._fingerprint:
            raise errors.IdempotencyConflict("this key was used for a different upload or options")
        if stored["state"] == "pending":
            raise errors.IdempotencyConflict("a request with this key is still running", retry_after_s=5)
        if stored["state"] == "job":
            self._job_id = stored["jobId"]
            return
        response = web.Response(status=stored["status"], text=stored["body"], content_type=stored["contentType"])
        response.headers[REPLAYED_HEADER] = "true"
        self.response = response

    async def keep(self, response: web.Response | None, job_id: str | None) -> None:
        """Store the first response for the key's lifetime. Without one (the request failed, or
        was cancelled), the key keeps ``job_id``, the job made for the request; with no job either,
        it is freed."""
        if self._idem_key is None:
            return
        stored: dict[str, Any] = {"fingerprint": self._fingerprint}
        job_id = job_id or self._job_id  # a retry that only followed the key's job leaves it there
        if response is not None and response.status < 400 and isinstance(response.body, bytes):
            body, kind = response.body.decode(), response.content_type
            stored.update(state="done", status=response.status, body=body, contentType=kind)
        elif job_id is not None:
            stored.update(state="job", jobId=job_id)
        else:
            await self.abandon()
            return
        await self._redis.set(self._idem_key, json.dumps(stored, ensure_ascii=False), ex=self._ttl_s)

    async def abandon(self) -> None:
        if self._idem_key is not None:
            await self._redis.delete(self._idem_key)

    async def cached(self, shared: bool = True) -> CacheHit | None:
        """The job this key made before, else (if ``shared``) the result cache's entry for the same
        audio and options."""
        if self._job_id is not None:
            return CacheHit(job_id=self._job_id)
        if self._cache_key is None or not shared:
            return None
        raw = await self._redis.get(self._cache_key)
        if raw is None:
            return None
        stored = json.loads(raw)
        return CacheHit(data=stored.get("data"), job_id=stored.get("jobId"))

    async def forget(self) -> None:
        """Drop what ``cached`` found, a job gone or failed: the request makes a new one."""
        if self._job_id is not None:
            self._job_id = None
        elif self._cache_key is not None:
            await self._redis.delete(self._cache_key)

    async def remember_result(self, data: dict[str, Any]) -> None:
        if self._cache_key is not None:
            await self._redis.set(self._cache_key, json.dumps({"data": data}, ensure_ascii=False), ex=self._ttl_s)

    async def remember_job(self, job_id: str) -> None:
        if self._cache_key is not None:
            await self._redis.set(self._cache_key, json.dumps({"jobId": job_id}), ex=self._ttl_s)


async def once(
    replay: Replay, upload: Upload, caller: Caller, respond: Callable[[], Awaitable[web.Response]]
) -> web.Response:
    """The stored response for a repeated key, or ``respond()``'s, kept for the key.

    A failure frees the key unless a job was made for ``caller``; the upload is dropped with it.
    """
    if replay.response is not None:
        upload.discard()
        return replay.response
    try:
        response = await respond()
    except BaseException:
        upload.discard()  # a request cancelled before its upload reached the UploadActor
        # shield: a cancelled request's key is still settled (a second cancellation would leave it pending)
        await asyncio.shield(replay.keep(None, caller.job_id))
        raise
    await asyncio.shield(replay.keep(response, caller.job_id))
    return response


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def idempotency_scope(request: web.Request, given: str) -> list[str]:
    """What an Idempotency-Key's Redis key is made of: one client's key is not another's."""
    return [request.path, client_scope(request), given]


async def begin(
    request: web.Request, upload: Upload, language: str, choices: Choices, **request_options: Any
) -> Replay:
    """The request's Replay, with ``response`` set when its Idempotency-Key has one stored.

    ``request_options``: what changes the response but not the transcript (the output format...).
    """
    settings = request.app[SETTINGS]
    engine = request.app[ACTORS].engine
    what: dict[str, Any] = {
        "audio": upload.sha256,
        "language": language,
        "choices": asdict(choices),
        "engine": [engine.name, engine.model, engine.compute_type],
        "silence": asdict(settings.silence),
    }
    if TENANT in request:  # one tenant's results are not another's
        what["tenant"] = request[TENANT]
    cache_key = keys.result_cache(_digest(what)) if settings.api.result_cache else None
    idem_key = None
    if HEADER in request.headers:
        given = request.headers[HEADER]
        if not _KEY.match(given):
            raise errors.InvalidRequest(f"{HEADER} must be 1 to 255 printable ASCII characters", param=HEADER)
        idem_key = keys.idempotency(_digest(idempotency_scope(request, given)))
    replay = Replay(
        request.app[REDIS], cache_key, idem_key, _digest([what, request_options]), settings.api.idempotency_ttl_s
    )
    await replay.claim()
    return replay
