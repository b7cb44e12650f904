"""Typed keys of the objects the application holds."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiohttp import web

from config import Settings
from http_edge.admission import Admission
from http_edge.bridge import ActorBridge
from sayit_actors.metrics import Metrics
from sayit_actors.system import ActorSystem

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
REDIS = web.AppKey("redis", aioredis.Redis)
REDIS_URL = web.AppKey("redis_url", str)
ACTORS = web.AppKey("actors", ActorSystem)
BRIDGE = web.AppKey("bridge", ActorBridge)
STARTED_AT = web.AppKey("started_at", float)
ADMISSION = web.AppKey("admission", Admission)  # the gates of uploads and event streams
CLOSING = web.AppKey("closing", asyncio.Event)  # set on shutdown: long-lived responses (event streams) end
REQUEST_ID = web.RequestKey("request_id", str)
# The caller's tenant: the name of its API key (``config.settings.key_entry``), never the key itself.
# Set by the API-key middleware when keys are configured; absent without them (one user).
TENANT = web.RequestKey("tenant", str)
# The RateLimit-* headers of the limit a request was counted against: every answer to it carries them.
RATE_LIMIT = web.RequestKey("rate_limit", dict)
