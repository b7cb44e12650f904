"""Live queue nodes: each beats its own expiring key, and a registry lists who has beaten.

A node is live while its heartbeat key has not expired (three heartbeats). The registry
(``keys.NODES``) only says which keys to read, so no reader SCANs the whole keyspace: a member
whose key is gone is skipped, and dropped by the next beat once past its expiry (on the Redis
clock, so the nodes' clocks need not agree).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from sayit_actors.store import keys
from sayit_actors.store.records import now_ms


@dataclass(frozen=True)
class Node:
    """A queue node as its heartbeat shows it: its id, role, slots, how many are busy, and when."""

    id: str
    role: str
    slots: int
    busy: int = 0
    at: int = 0  # ms, the node's clock

    @classmethod
    def from_json(cls, raw: bytes | str) -> Node:
        beat = json.loads(raw)
        return cls(str(beat.get("id", "")), str(beat.get("role", "")), int(beat.get("slots", 0)),
                   int(beat.get("busy", 0)), int(beat.get("at", 0)))  # fmt: skip


_BEAT = """
-- KEYS: node, registry   ARGV: node id, heartbeat (json), lifetime ms
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])  -- gone with the last node's heartbeat
return 1
"""

_FORGET = """
-- KEYS: node, registry   ARGV: node id
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class NodeRegistry:
    """Beats for the QueueConsumer, reads for the Dispatcher (the edge reads with ``live_nodes``)."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py types each reply as a union of its sync and async forms: read them as Any.
        self.r: Any = client
        self._beat = client.register_script(_BEAT)
        self._forget = client.register_script(_FORGET)

    def beat(self, node: Node, heartbeat_s: float) -> None:
        """Live for three heartbeats from now."""
        beat = json.dumps({**asdict(node), "at": now_ms()})
        self._beat(keys=[keys.node(node.id), keys.NODES], args=[node.id, beat, round(heartbeat_s * 3000)])

    def forget(self, node_id: str) -> None:
        """Leave the live list at once (a node that stops), not three heartbeats later."""
        self._forget(keys=[keys.node(node_id), keys.NODES], args=[node_id])

    def live(self) -> list[Node]:
        ids = self.r.zrange(keys.NODES, 0, -1)
        return _parse(self.r.mget([keys.node(i.decode()) for i in ids]) if ids else [])


async def live_nodes(client: aioredis.Redis) -> list[Node]:
    """The live queue nodes, read with the edge's async client."""
    ids: Any = await client.zrange(keys.NODES, 0, -1)
    beats: Any = await client.mget([keys.node(i.decode()) for i in ids]) if ids else []
    return _parse(beats)


def _parse(beats: Sequence[bytes | str | None]) -> list[Node]:
    return sorted((Node.from_json(beat) for beat in beats if beat), key=lambda node: node.id)
