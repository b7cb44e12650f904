"""Rate limits: uploads a minute and seconds of audio an hour, per tenant (per client address
without API keys), counted in Redis so that every api node shares them.

Each limit is a fixed window that starts with a client's first upload in it. One atomic script
checks and counts (``_TAKE``), so two nodes never both let the last upload through, and a
refused upload counts nothing. Uploads are counted before their body is read; audio once its
length is probed, before any work (a cached answer costs no audio). Answers of the upload routes
carry the IETF draft's ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``
(seconds until the window ends) of the uploads limit; a refusal (429 ``RATE_LIMITED``) carries
those of the limit it passed, and ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

from aiohttp import web

from http_edge.keys import RATE_LIMIT, REDIS, SETTINGS, TENANT
from sayit_actors import errors
from sayit_actors.store import keys

log = logging.getLogger(__name__)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000

_TAKE = """
-- KEYS: counter   ARGV: limit, cost, window_ms.   Returns {taken: 1 or 0, used, ms left of the window}
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = tonumber(ARGV[3]) end
if used + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return {0, used, left} end
used = redis.call('INCRBY', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, used, left}
"""


@dataclass(frozen=True)
class Quota:
    """One limit as a client sees it, in the unit of its ``RateLimit-*`` headers."""

    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(self.reset_s),
        }


class Refused(errors.RateLimited):
    """429 with the figures of the limit that was passed."""

    def __init__(self, detail: str, quota: Quota) -> None:
        super().__init__(detail, retry_after_s=max(1, quota.reset_s))
        self.quota = quota


def client_scope(request: web.Request) -> str:
    """Whom limits and Idempotency-Keys count for: the tenant with API keys, else the client's
    address (the peer's: a proxy in front makes its clients one)."""
    if TENANT in request:
        return f"tenant:{request[TENANT]}"
    return f"address:{request.remote or ''}"


def who(request: web.Request) -> str:
    """The caller as logs name it: its tenant (never its key), else its address."""
    return request.get(TENANT, request.remote or "-")


async def _take(request: web.Request, kind: str, limit: int, cost: int, window_ms: int) -> tuple[bool, int, int]:
    client = request.app[REDIS]
    digest = hashlib.sha256(client_scope(request).encode()).hexdigest()
    script = client.register_script(_TAKE)
    taken, used, left_ms = await script(keys=[keys.rate(kind, digest)], args=[limit, cost, window_ms])
    return bool(taken), int(used), math.ceil(int(left_ms) / 1000)


async def take_upload(request: web.Request) -> Quota | None:
    """Count one upload against the caller's uploads a minute; None when that limit is off.

    Raises ``Refused`` past the limit.
    """
    limit = request.app[SETTINGS].limits.rate_limit_per_min
    if not limit:
        return None
    taken, used, reset_s = await _take(request, "requests", limit, 1, MINUTE_MS)
    quota = Quota(limit, limit - used, reset_s)
    request[RATE_LIMIT] = quota.headers()
    if not taken:
        log.info("%s is over its limit of %d uploads a minute", who(request), limit)
        raise Refused(f"more than {limit} uploads a minute", quota)
    return quota


async def take_audio(request: web.Request, audio_s: float) -> None:
    """Count ``audio_s`` against the caller's audio an hour; raises ``Refused`` past the limit."""
    limit_s = request.app[SETTINGS].limits.audio_limit_s_per_hour
    if not limit_s:
        return
    limit_ms = round(limit_s * 1000)
    taken, used_ms, reset_s = await _take(request, "audio", limit_ms, round(audio_s * 1000), HOUR_MS)
    if not taken:
        log.info("%s is over its limit of %g s of audio an hour", who(request), limit_s)
        quota = Quota(math.floor(limit_s), math.floor((limit_ms - used_ms) / 1000), reset_s)
        request[RATE_LIMIT] = quota.headers()
        raise Refused(f"{audio_s:.0f} s more would pass the limit of {limit_s:g} s of audio an hour", quota)
