"""Routes besides transcription: health and metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import redis
from aiohttp import web

from http_edge import openai_api, pipeline
from http_edge.admin import add_admin_routes
from http_edge.cluster import queue_depth
from http_edge.events import job_events
from http_edge.keys import ACTORS, BRIDGE, METRICS, REDIS, STARTED_AT
from http_edge.openapi import openapi_json
from http_edge.transcribe import detect_language, job_status, transcribe
from sayit_actors.store.nodes import Node, live_nodes
from sayit_actors.supervisor import ChildStatus, GetStatus

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 2.0


async def _redis_status(request: web.Request) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), HEALTH_TIMEOUT_S)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        request.app[METRICS].redis_up.set(0)
        return {"status": "down", "error": type(exc).__name__}
    request.app[METRICS].redis_up.set(1)
    return {"status": "up", "latencyMs": round((time.perf_counter() - started) * 1000, 2)}


async def health(request: web.Request) -> web.Response:
    actors = request.app[ACTORS]
    redis_status = await _redis_status(request)
    children = await _children(request)
    slots_alive = sum(1 for c in children if c.kind == "WhisperActor" and c.alive)
    engine = actors.engine
    whisper = {
        "status": "up" if slots_alive else "down",
        "engine": engine.name,
        "model": engine.model,
        "device": engine.device,
        "computeType": engine.compute_type,
        "batchSize": engine.batcher.batch_size,
        "batchLanes": engine.batcher.lanes,
        "wideDecoderThreads": engine.wide_decoder_threads,
    }
    workers = {
        "node": actors.settings.worker_id,
        "role": actors.settings.worker_mode.value,
        "slots": actors.slots.capacity,
        "slotsAlive": slots_alive,
        "busy": actors.slots.busy,
        "actors": [
            {"name": c.name, "kind": c.kind, "alive": c.alive, "restarts": c.restarts, "givenUp": c.given_up}
            for c in children
        ],
    }
    stats: dict[str, Any] | None = None
    queue_nodes: list[Node] = []
    if redis_status["status"] == "up":
        try:
            queue_nodes = await live_nodes(request.app[REDIS])
        except redis.RedisError as exc:
            log.warning("queue nodes unavailable for /health: %s", exc)
        try:
            stats = (await asyncio.wait_for(pipeline.daily_stats(request), HEALTH_TIMEOUT_S)).to_dict()
        except Exception as exc:  # health must answer whatever a part does
            log.warning("stats unavailable for /health: %s", exc)
    healthy = redis_status["status"] == "up" and slots_alive > 0 and all(c.alive for c in children)
    data = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "uptime": round(time.time() - request.app[STARTED_AT], 1),
        "services": {
            "whisper": whisper,
            "redis": redis_status,
            "workers": workers,
            "queue": {
                "nodes": [{"id": n.id, "role": n.role, "slots": n.slots, "busy": n.busy} for n in queue_nodes],
                "slots": sum(n.slots for n in queue_nodes),
            },
        },
        "stats": stats,
    }
    # The app's envelope; the request itself succeeded whatever the node's state (503 says that).
    return web.json_response({"success": True, "data": data}, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    if (await _redis_status(request))["status"] == "up":
        try:
            client = request.app[REDIS]
            for state, count in (await queue_depth(client)).items():
                registry.queue_depth.labels(state).set(count)
            nodes = await live_nodes(client)
            registry.queue_nodes.set(len(nodes))
            registry.queue_node_slots.set(sum(n.slots for n in nodes))
            memory = await client.info("memory")
            registry.redis_memory_used.set(int(memory["used_memory"]))
            registry.redis_memory_max.set(int(memory["maxmemory"]))
        except redis.RedisError as exc:
            log.warning("queue figures unavailable for /metrics: %s", exc)
    return web.Response(body=registry.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def live(request: web.Request) -> web.Response:
    """The process answers: a container probe restarts it when this fails."""
    return web.json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    """Redis answers, a slot is alive and no actor was given up on: a load balancer may send traffic.

    An actor the Supervisor stopped restarting (a crash loop) is named, so that the node is taken
    out of rotation and an operator knows what to restart (``POST /admin/actors/{name}/restart``).
    """
    redis_status = await _redis_status(request)
    children = await _children(request)
    alive = sum(1 for c in children if c.kind == "WhisperActor" and c.alive)
    given_up = [c.name for c in children if c.given_up]
    is_ready = redis_status["status"] == "up" and alive > 0 and not given_up
    body = {
        "status": "ready" if is_ready else "not ready",
        "redis": redis_status["status"],
        "slotsAlive": alive,
        "givenUp": given_up,
    }
    return web.json_response(body, status=200 if is_ready else 503)


async def _children(request: web.Request) -> list[ChildStatus]:
    actors = request.app[ACTORS]
    children = await request.app[BRIDGE].ask(lambda: actors.supervisor, GetStatus(), timeout_s=HEALTH_TIMEOUT_S)
    return children


def add_routes(app: web.Application, serves_uploads: bool, admin: bool) -> None:
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    if admin:
        add_admin_routes(app)
    if serves_uploads:
        app.router.add_post("/api/transcribe", transcribe)
        app.router.add_get("/api/transcribe/{job_id}", job_status)
        app.router.add_get("/api/transcribe/{job_id}/events", job_events)
        app.router.add_post("/api/detect-language", detect_language)
        app.router.add_post("/v1/audio/transcriptions", openai_api.transcriptions)
        app.router.add_post("/v1/audio/translations", openai_api.translations)
        app.router.add_get("/v1/models", openai_api.models)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
