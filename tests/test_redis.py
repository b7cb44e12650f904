"""Redis as the service needs it: AOF on, never evicting, and refused when it would evict."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from aiohttp import web

from config import Settings
from http_edge import create_app
from sayit_actors.store.redis_server import EmbeddedRedis, RedisPolicyError, free_port, redis_binary


def test_embedded_redis_runs_with_aof_and_noeviction(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    client.close()


def test_embedded_redis_keeps_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    client = redis.Redis.from_url(server.url)
    client.set("sayit:test", "kept")
    client.close()
    server.stop()
    server = EmbeddedRedis(tmp_path, port=server.port).start()
    client = redis.Redis.from_url(server.url)
    assert client.get("sayit:test") == b"kept"
    client.close()
    server.stop()
    assert (tmp_path / "appendonlydir").exists() or (tmp_path / "appendonly.aof").exists()


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[str]:
    """A real redis-server configured as the seed had it: allkeys-lru."""
    port = free_port()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    process = subprocess.Popen([*args, "--maxmemory-policy", "allkeys-lru"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(10)


async def test_the_service_refuses_an_evicting_redis(evicting_redis: str, settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    runner = web.AppRunner(create_app(replace(settings, redis_url=evicting_redis), engine=engine))
    with pytest.raises(RedisPolicyError, match="allkeys-lru"):
        await runner.setup()
    await runner.cleanup()
