"""What the edge reads about the whole cluster from Redis: the queue's depth (its live nodes:
``sayit_actors.store.nodes.live_nodes``)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from sayit_actors.store import keys


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
