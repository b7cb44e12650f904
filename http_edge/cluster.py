"""What the edge reads about the whole cluster from Redis: live queue nodes and the queue's depth."""

from __future__ import annotations

import json
from typing import Any

import redis
import redis.asyncio as aioredis

from sayit_actors.store import keys


async def live_nodes(client: aioredis.Redis) -> list[dict[str, Any]]:
    """The queue nodes whose heartbeat has not expired."""
    names = [name async for name in client.scan_iter(match=keys.NODE_PATTERN, count=100)]
    values = await client.mget(sorted(names)) if names else []
    return [json.loads(value) for value in values if value]


async def queue_depth(client: aioredis.Redis) -> dict[str, int]:
    """Chunk tasks waiting (never delivered, or waiting out a retry), in progress, and dead-lettered."""
    waiting = in_progress = 0
    try:
        for group in await client.xinfo_groups(keys.CHUNKS):
            if group["name"] in (keys.CHUNKS_GROUP, keys.CHUNKS_GROUP.encode()):
                in_progress = int(group["pending"])
                waiting = int(group.get("lag") or 0)
    except redis.ResponseError:  # no stream yet: nothing was ever queued
        pass
    waiting += int(await client.zcard(keys.RETRIES))
    return {"waiting": waiting, "in_progress": in_progress, "dead_lettered": int(await client.xlen(keys.DEAD_LETTERS))}
