"""The live queue nodes, read from their heartbeats in Redis."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from sayit_actors import keys


async def live_nodes(client: aioredis.Redis) -> list[dict[str, Any]]:
    names = [name async for name in client.scan_iter(match=keys.NODE_PATTERN, count=100)]
    values = await client.mget(sorted(names)) if names else []
    return [json.loads(value) for value in values if value]
