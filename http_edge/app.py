"""The application factory: one cleanup context per resource, as in aiohttp's own examples."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff

from config import Settings, WorkerMode
from http_edge.admission import Admission
from http_edge.bridge import ActorBridge
from http_edge.keys import ACTORS, ADMISSION, BRIDGE, CLOSING, METRICS, REDIS, REDIS_URL, SETTINGS, STARTED_AT
from http_edge.middlewares import MIDDLEWARES, add_headers
from http_edge.routes import add_routes
from sayit_actors.engines import Engine, create_engine
from sayit_actors.metrics import Metrics
from sayit_actors.store.redis_server import EmbeddedRedis, check_policy, client_options
from sayit_actors.system import ActorSystem

log = logging.getLogger(__name__)
REDIS_POOL_WAIT_S = 5.0  # how long a request waits for a free Redis connection before its 503


def create_app(settings: Settings, *, engine: Engine | None = None) -> web.Application:
    """The edge of one node. ``engine``: an already loaded engine to share (tests, benchmarks)."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.limits.max_upload_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics(settings.worker_id, settings.worker_mode.value)
    app[STARTED_AT] = time.time()
    app[CLOSING] = asyncio.Event()
    app[ADMISSION] = Admission(settings.limits)
    app.on_response_prepare.append(add_headers)
    app.on_shutdown.append(_closing)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_actors_ctx(engine))
    add_routes(app, serves_uploads=settings.worker_mode is not WorkerMode.QUEUE_ONLY, admin=bool(settings.admin_token))
    return app


async def _closing(app: web.Application) -> None:
    """Open event streams end within one read instead of holding the shutdown up."""
    app[CLOSING].set()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Redis: the configured server, or an embedded redis-server when there is none.

    The node's one client draws on a bounded pool that makes a request wait for a free
    connection (``SAYIT_REDIS_MAX_CONNECTIONS``), not fail at once, and never grows past it.
    """
    settings = app[SETTINGS]
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    loop = asyncio.get_running_loop()
    if url is None:
        embedded = await loop.run_in_executor(None, EmbeddedRedis(settings.data_dir / "redis").start)
        url = embedded.url
    options = client_options()
    options["retry"] = AsyncRetry(ExponentialBackoff(cap=2.0, base=0.1), retries=5)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections, timeout=REDIS_POOL_WAIT_S, **options
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        check_policy(await client.info("memory"))
        app[METRICS].redis_up.set(1)
        app[REDIS], app[REDIS_URL] = client, url
        yield
    finally:
        await client.aclose()
        if embedded is not None:
            await loop.run_in_executor(None, embedded.stop)


def _actors_ctx(engine: Engine | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, metrics = app[SETTINGS], app[METRICS]
        loop = asyncio.get_running_loop()
        loaded = engine
        if loaded is None:
            started = time.perf_counter()
            loaded = await loop.run_in_executor(
                None, create_engine, settings.engine, settings.max_concurrent_chunks, str(settings.data_dir)
            )
            metrics.model_load_seconds.labels(loaded.name).set(time.perf_counter() - started)
        actors = await loop.run_in_executor(
            None, lambda: ActorSystem(settings, loaded, metrics, app[REDIS_URL]).start()
        )
        app[ACTORS], app[BRIDGE] = actors, ActorBridge()
        try:
            yield
        finally:
            await loop.run_in_executor(None, actors.drain, settings.queue.drain_timeout_s)
            await loop.run_in_executor(None, actors.stop)
            app[BRIDGE].close()

    return ctx
