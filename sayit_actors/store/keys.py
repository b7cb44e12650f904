"""Every Redis key SayIt uses, built here and nowhere else.

All keys start with ``sayit:``:

| key | type | what | kept |
|---|---|---|---|
| ``sayit:stats:<YYYY-MM-DD>`` | hash | requests, successes, failures, processing, audio and chunk ms | 90 days |
| ``sayit:chunks`` | stream | one entry per chunk task (job, index); group ``workers`` | until acked and trimmed |
| ``sayit:chunks:dead`` | stream | tasks past the retry or stall limit, with the reason | ~10 000 newest |
| ``sayit:chunks:retry`` | sorted set | tasks waiting out a retry backoff (score: due, ms) | until due |
| ``sayit:callbacks`` | stream | callback outbox: job, event, url per ended job; group ``senders`` | until sent |
| ``sayit:queue:audio_ms`` | string | audio ms of chunks not yet transcribed (the budget) | always |
| ``sayit:queue:tenant:<name>`` | string | the same, of one tenant's jobs (its share of the budget) | while above 0 |
| ``sayit:rate:<kind>:<sha256>`` | string | a client's uploads (``requests``) or audio ms (``audio``) | its window |
| ``sayit:job:<id>`` | hash | status, language, total, done, durations, reason, times, callback | 24 h after it ends |
| ``sayit:job:<id>:audio:<n>`` | string | chunk n's audio, FLAC 16 kHz mono | until chunk n is done |
| ``sayit:job:<id>:results`` | hash | chunk n → its transcript (JSON); a second write is ignored | 24 h after it ends |
| ``sayit:job:<id>:attempts`` | hash | chunk n → failed attempts | 24 h after it ends |
| ``sayit:job:<id>:result`` | string | the merged transcript (JSON, ``merge.Transcript``) | 24 h |
| ``sayit:job:<id>:events`` | stream | queued, progress per chunk (with segments), completed, failed | 24 h after end |
| ``sayit:idem:<sha256>`` | string | an Idempotency-Key's request fingerprint and first response (JSON) | 24 h |
| ``sayit:cache:<sha256>`` | string | audio and options → the stored result or the job that makes it (JSON) | 24 h |
| ``sayit:node:<id>`` | string | a live queue node's heartbeat: id, role, slots, busy, at (JSON) | 3 heartbeats |
| ``sayit:nodes`` | sorted set | ids of nodes that beat (score: their key's expiry, ms, Redis clock) | 3 heartbeats |
"""

from __future__ import annotations

import datetime as dt

PREFIX = "sayit:"
STATS_TTL_S = 90 * 24 * 3600

CHUNKS = f"{PREFIX}chunks"
CHUNKS_GROUP = "workers"
DEAD_LETTERS = f"{PREFIX}chunks:dead"
RETRIES = f"{PREFIX}chunks:retry"
QUEUED_AUDIO_MS = f"{PREFIX}queue:audio_ms"
CALLBACKS = f"{PREFIX}callbacks"
CALLBACKS_GROUP = "senders"
NODES = f"{PREFIX}nodes"


def stats(day: dt.date) -> str:
    return f"{PREFIX}stats:{day.isoformat()}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def chunk_audio(job_id: str, index: int) -> str:
    return f"{PREFIX}job:{job_id}:audio:{index}"


def chunk_results(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:results"


def chunk_attempts(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:attempts"


def job_result(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:result"


def job_events(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:events"


def idempotency(key_digest: str) -> str:
    """``key_digest``: SHA-256 of the client's Idempotency-Key (any bytes a client sends stay out of key names)."""
    return f"{PREFIX}idem:{key_digest}"


def tenant_queued_audio_ms(tenant: str) -> str:
    """Tenant names are letters, digits and ``._-`` (``config.settings.key_entry``); "" gives the prefix."""
    return f"{PREFIX}queue:tenant:{tenant}"


def rate(kind: str, scope_digest: str) -> str:
    """``scope_digest``: SHA-256 of the tenant or client address the limit counts for."""
    return f"{PREFIX}rate:{kind}:{scope_digest}"


def result_cache(fingerprint: str) -> str:
    return f"{PREFIX}cache:{fingerprint}"


def node(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"
