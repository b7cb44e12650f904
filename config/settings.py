"""Settings of one node, read once from the environment and an optional TOML file.

Environment variables win over the TOML file (``SAYIT_CONFIG``), which wins over defaults.
The TOML file uses the same names as the variables, lower-cased and without ``SAYIT_``
(``port = 3000``, ``max_concurrent_chunks = 2``), plus ``[profiles.<lang>]`` tables.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.profiles import LanguageProfile, load_profiles

MB = 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value the service cannot start with."""


class WorkerMode(enum.StrEnum):
    ALL = "all"
    API_ONLY = "api_only"
    QUEUE_ONLY = "queue_only"


DEFAULT_SLOTS = {WorkerMode.ALL: 4, WorkerMode.API_ONLY: 4, WorkerMode.QUEUE_ONLY: 2}


@dataclass(frozen=True)
class EngineSettings:
    engine: str = "auto"  # auto | faster-whisper | mlx
    model: str = "base"  # base (bundled) | small | medium | a local model folder
    device: str = "auto"  # auto | cpu | cuda
    compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA
    cpu_threads: int = 0  # 0: the cores shared out evenly between the slots


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 100 * MB
    sync_max_duration_s: float = 30.0
    sync_max_bytes: int = 10 * MB
    slot_wait_s: float = 10.0
    transcribe_timeout_s: float = 300.0
    retry_after_s: int = 5
    max_restarts: int = 5
    restart_window_s: float = 60.0
    max_duration_s: float = 4 * 3600.0  # longest recording taken (decoded length, not bytes): 413 beyond
    upload_idle_timeout_s: float = 30.0  # longest wait for the next bytes of a request body: 408 beyond
    # Each open event stream, and each OpenAI-route upload waiting for its job, holds one of the
    # edge's Redis connections: together they stay well under SAYIT_REDIS_MAX_CONNECTIONS.
    max_uploads_in_flight: int = 16  # uploads received or worked on at once by a node: 503 beyond
    max_event_streams: int = 32  # open event streams of a node: 503 beyond
    dispatch_timeout_s: float = 120.0  # longest wait for a long upload to be decoded, cut and queued
    # Per tenant (per client address without API keys), shared by every node through Redis: 429 beyond.
    rate_limit_per_min: int = 120  # uploads a minute; 0: off
    audio_limit_s_per_hour: float = 0.0  # seconds of audio taken an hour; 0: off


@dataclass(frozen=True)
class QueueSettings:
    """The chunk queue: Bull's at-least-once promises (30 s stall check, 1 stall) on Redis Streams."""

    chunk_s: float = 30.0
    stall_interval_s: float = 30.0
    max_stalls: int = 1
    max_attempts: int = 3
    retry_backoff_s: float = 2.0  # doubled after each failed attempt
    max_queued_audio_s: float = 4 * 3600.0
    # The most of that budget one tenant's jobs may hold (with two tenants or more): others keep room.
    tenant_queue_share: float = 0.5
    result_ttl_s: int = 24 * 3600
    heartbeat_s: float = 5.0
    drain_timeout_s: float = 30.0
    poll_s: float = 0.5


# Text Whisper is known to invent over silence (dropped only where no speech is heard).
INVENTED_PHRASES = (
    "시청해주셔서 감사합니다",
    "시청해 주셔서 감사합니다",
    "구독과 좋아요 부탁드립니다",
    "thanks for watching",
    "thank you for watching",
    "thank you",
    "you",
    "please subscribe",
    "i'm sorry",
)


@dataclass(frozen=True)
class SilenceSettings:
    """Voice-activity filtering and dropping text invented over silence."""

    vad: str = "long"  # long: queued chunks only | all | off
    invented_phrases: tuple[str, ...] = INVENTED_PHRASES
    no_speech_threshold: float = 0.6


@dataclass(frozen=True)
class ApiSettings:
    """What clients get beyond the app's contract: OpenAI's route, callbacks, repeats."""

    openai_wait_s: float = 600.0  # how long /v1/audio/* waits for a queued job (OpenAI's API is synchronous)
    callback_hosts: tuple[str, ...] = ()  # the only hosts a callbackUrl may name; empty: callbacks refused
    callback_secret: str | None = None  # signs each callback body (HMAC-SHA256); required for callbacks
    callback_timeout_s: float = 10.0  # the whole of one delivery attempt: connect, send, the answer's status line
    callback_attempts: int = 3
    # A delivery a node holds this long without renewing it (the node died) is sent by another node.
    callback_claim_s: float = 60.0
    callback_ports: tuple[int, ...] = (80, 443)  # the only ports a callbackUrl may name
    # Off: a host that resolves to a loopback, private, link-local or reserved address is not called.
    callback_allow_private: bool = False
    result_cache: bool = True  # the same audio with the same options answers the stored result
    idempotency_ttl_s: int = 24 * 3600


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3000
    worker_mode: WorkerMode = WorkerMode.ALL
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_concurrent_chunks: int = 4
    redis_url: str | None = None  # None: start an embedded redis-server
    redis_max_connections: int = 64  # the edge's pool; a request waits for a free connection, then 503
    data_dir: Path = Path("data")
    cors_origins: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()  # entries ``name:key`` or a bare key (see ``tenants``)
    api_keys_file: Path | None = None  # more entries, one a line; merged into ``api_keys`` when loaded
    admin_token: str | None = None  # None: the admin routes do not exist
    engine: EngineSettings = EngineSettings()
    limits: Limits = Limits()
    queue: QueueSettings = QueueSettings()
    silence: SilenceSettings = SilenceSettings()
    api: ApiSettings = ApiSettings()
    profiles: Mapping[str, LanguageProfile] = field(default_factory=load_profiles)

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @functools.cached_property
    def tenants(self) -> tuple[tuple[str, str], ...]:
        """(tenant name, key) of every API key; several keys may share a name (rotation)."""
        return tuple(key_entry(entry) for entry in self.api_keys)


_TENANT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def key_entry(entry: str) -> tuple[str, str]:
    """(name, key) of one ``SAYIT_API_KEYS`` entry: ``name:key``, or a bare key named by a digest
    of it (``key-`` and 8 hex digits), so that logs and Redis keys can name it without the secret."""
    name, sep, key = entry.partition(":")
    if sep and key and _TENANT_NAME.match(name):
        return name, key
    return f"key-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", entry


def _int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    parse.__doc__ = f"an integer >= {minimum}"
    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if value < minimum:
            raise ValueError
        return value

    parse.__doc__ = f"a number >= {minimum}"
    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError
        return raw

    parse.__doc__ = "one of " + ", ".join(options)
    return parse


def _list(raw: str) -> tuple[str, ...]:
    """a comma-separated list"""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _text(raw: str) -> str:
    """a non-empty string"""
    if not raw.strip():
        raise ValueError
    return raw.strip()


def _port(raw: str) -> int:
    """a TCP port from 1 to 65535"""
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError
    return value


def _secret(minimum: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if len(raw.strip()) < minimum:
            raise ValueError
        return raw.strip()

    parse.__doc__ = f"a secret of at least {minimum} characters"
    return parse


def _origins(raw: str) -> tuple[str, ...]:
    """a comma-separated list of origins (scheme://host[:port]; not *: CORS answers with credentials)"""
    origins = _list(raw)
    if any(origin == "*" or "://" not in origin for origin in origins):
        raise ValueError
    return origins


def _distinct_keys(entries: tuple[str, ...]) -> tuple[str, ...]:
    keys = [key_entry(entry)[1] for entry in entries]
    if len(set(keys)) != len(keys):  # one key under two names: which tenant would it be?
        raise ValueError
    return entries


def _api_keys(raw: str) -> tuple[str, ...]:
    """comma-separated entries name:key or key (a name: letters, digits, . _ -; no key twice)"""
    return _distinct_keys(_list(raw))


def key_lines(path: Path) -> tuple[str, ...]:
    """The entries of a keys file: one ``name:key`` a line; blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    entries = tuple(line for line in lines if line and not line.startswith("#"))
    if not entries or any(key_entry(entry)[1] == entry for entry in entries):  # a line without a name
        raise ValueError
    return _distinct_keys(entries)


def _keys_file(raw: str) -> Path:
    """a readable file of name:key lines (no key twice)"""
    path = Path(raw.strip())
    try:
        key_lines(path)
    except (OSError, UnicodeDecodeError):
        raise ValueError from None
    return path


def _share(raw: str) -> float:
    """a number above 0 and at most 1"""
    value = float(raw)
    if not 0.0 < value <= 1.0:
        raise ValueError
    return value


def _redis_url(raw: str) -> str:
    """a redis:// or rediss:// or unix:// URL"""
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError
    return raw


# name (the TOML key; the variable is SAYIT_<NAME> unless given), parser, where it goes
_TOP: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "host": (_text, None),
    "port": (_port, None),
    "worker_mode": (_choice(*(m.value for m in WorkerMode)), "WORKER_MODE"),
    "worker_id": (_text, "WORKER_ID"),
    "max_concurrent_chunks": (_int(1), "MAX_CONCURRENT_CHUNKS"),
    "redis_url": (_redis_url, "REDIS_URL"),
    "redis_max_connections": (_int(1), None),
    "data_dir": (_text, None),
    "cors_origins": (_origins, None),
    "api_keys": (_api_keys, None),
    "api_keys_file": (_keys_file, None),
    "admin_token": (_secret(16), None),
}
_ENGINE: dict[str, Callable[[str], Any]] = {
    "engine": _choice("auto", "faster-whisper", "mlx"),
    "model": _text,
    "device": _choice("auto", "cpu", "cuda"),
    "compute_type": _choice("auto", "int8", "int8_float16", "int8_float32", "float16", "float32"),
    "cpu_threads": _int(0),
}
_LIMITS: dict[str, Callable[[str], Any]] = {
    "max_upload_bytes": _int(1),
    "sync_max_duration_s": _float(0.1),
    "sync_max_bytes": _int(1),
    "slot_wait_s": _float(0.0),
    "transcribe_timeout_s": _float(1.0),
    "retry_after_s": _int(1),
    "max_restarts": _int(0),
    "restart_window_s": _float(0.1),
    "max_duration_s": _float(1.0),
    "upload_idle_timeout_s": _float(0.1),
    "max_uploads_in_flight": _int(1),
    "max_event_streams": _int(1),
    "dispatch_timeout_s": _float(1.0),
    "rate_limit_per_min": _int(0),
    "audio_limit_s_per_hour": _float(0.0),
}


_QUEUE: dict[str, Callable[[str], Any]] = {
    "chunk_s": _float(5.0),
    "stall_interval_s": _float(1.0),
    "max_stalls": _int(0),
    "max_attempts": _int(1),
    "retry_backoff_s": _float(0.0),
    "max_queued_audio_s": _float(1.0),
    "tenant_queue_share": _share,
    "result_ttl_s": _int(60),
    "heartbeat_s": _float(0.5),
    "drain_timeout_s": _float(0.0),
    "poll_s": _float(0.05),
}


_SILENCE: dict[str, Callable[[str], Any]] = {
    "vad": _choice("long", "all", "off"),
    "invented_phrases": _list,
    "no_speech_threshold": _float(0.0),
}


def _bool(raw: str) -> bool:
    """true or false (also 1/0, yes/no, on/off)"""
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError


def _hosts(raw: str) -> tuple[str, ...]:
    """a comma-separated list of host names or addresses (no scheme, no path)"""
    hosts = tuple(item.lower() for item in _list(raw))
    if any("/" in host or " " in host for host in hosts):
        raise ValueError
    return hosts


def _webhook_secret(raw: str) -> str:
    """a non-empty secret, or whsec_ and base64 (Standard Webhooks)"""
    value = _text(raw)
    if value.startswith("whsec_"):
        try:
            if not base64.b64decode(value.removeprefix("whsec_"), validate=True):
                raise ValueError
        except binascii.Error:
            raise ValueError from None
    return value


def _ports(raw: str) -> tuple[int, ...]:
    """a comma-separated list of TCP ports"""
    ports = tuple(_port(item) for item in _list(raw))
    if not ports:
        raise ValueError
    return ports


_API: dict[str, Callable[[str], Any]] = {
    "openai_wait_s": _float(1.0),
    "callback_hosts": _hosts,
    "callback_secret": _webhook_secret,
    "callback_timeout_s": _float(0.1),
    "callback_attempts": _int(1),
    "callback_claim_s": _float(1.0),
    "callback_ports": _ports,
    "callback_allow_private": _bool,
    "result_cache": _bool,
    "idempotency_ttl_s": _int(60),
}


# Never echoed in an error message: they end up in logs.
_SECRETS = frozenset({"admin_token", "api_keys", "callback_secret"})


def known_variables() -> set[str]:
    """Every environment variable the settings read."""
    names = {env or f"SAYIT_{name.upper()}" for name, (_, env) in _TOP.items()}
    names |= {f"SAYIT_{name.upper()}" for table in (_ENGINE, _LIMITS, _QUEUE, _SILENCE, _API) for name in table}
    return names | {"SAYIT_CONFIG", "SAYIT_LOG_LEVEL"}


def _read(
    name: str,
    parse: Callable[[str], Any],
    env: Mapping[str, str],
    toml: Mapping[str, Any],
    env_name: str | None = None,
) -> Any:
    """The parsed value, or None when neither source sets it.

    An empty variable counts as unset: compose files pass ``${VAR:-}`` as an empty string.
    """
    variable = env_name or f"SAYIT_{name.upper()}"
    if env.get(variable, "").strip():
        raw, source = env[variable], variable
    elif name in toml:
        value = toml[name]
        raw = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        source = f"{name} in the TOML file"
    else:
        return None
    try:
        return parse(raw)
    except ValueError:
        shown = "<hidden>" if name in _SECRETS else repr(re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw))
        raise ConfigError(f"{source}={shown} is invalid: expected {parse.__doc__}") from None


def _read_toml(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get("SAYIT_CONFIG")
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"SAYIT_CONFIG={path!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"SAYIT_CONFIG={path!r} is not valid TOML: {exc}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``env`` (default: the process environment); ``overrides`` win over both."""
    env = os.environ if env is None else env
    toml = _read_toml(env)
    top = {k: v for k, (p, e) in _TOP.items() if (v := _read(k, p, env, toml, e)) is not None}
    engine = {k: v for k, p in _ENGINE.items() if (v := _read(k, p, env, toml)) is not None}
    limits = {k: v for k, p in _LIMITS.items() if (v := _read(k, p, env, toml)) is not None}
    queue = {k: v for k, p in _QUEUE.items() if (v := _read(k, p, env, toml)) is not None}
    silence = {k: v for k, p in _SILENCE.items() if (v := _read(k, p, env, toml)) is not None}
    api = {k: v for k, p in _API.items() if (v := _read(k, p, env, toml)) is not None}

    mode = WorkerMode(top.pop("worker_mode", WorkerMode.ALL))
    top.setdefault("max_concurrent_chunks", DEFAULT_SLOTS[mode])
    if "data_dir" in top:
        top["data_dir"] = Path(top["data_dir"])
    if "api_keys_file" in top:
        try:
            top["api_keys"] = _distinct_keys((*top.get("api_keys", ()), *key_lines(top["api_keys_file"])))
        except (OSError, ValueError):  # changed since it was read, or a key also in SAYIT_API_KEYS
            raise ConfigError("SAYIT_API_KEYS and SAYIT_API_KEYS_FILE together give a key twice, or the file "
                              "cannot be read") from None  # fmt: skip
    try:
        profiles = load_profiles(toml.get("profiles"))
    except ValueError as exc:
        raise ConfigError(f"SAYIT_CONFIG: {exc}") from None
    fields: dict[str, Any] = {
        **top,
        "worker_mode": mode,
        "engine": EngineSettings(**engine),
        "limits": Limits(**limits),
        "queue": QueueSettings(**queue),
        "silence": SilenceSettings(**silence),
        "api": ApiSettings(**api),
        "profiles": profiles,
    }
    for key, value in overrides.items():
        if key not in Settings.__dataclass_fields__:
            raise ConfigError(f"unknown setting {key!r}")
        fields[key] = value
    settings = Settings(**fields)
    if settings.queue.chunk_s > 30.0:
        raise ConfigError("SAYIT_CHUNK_S must be at most 30 (one Whisper window)")
    if settings.limits.sync_max_bytes > settings.limits.max_upload_bytes:
        raise ConfigError("SAYIT_SYNC_MAX_BYTES must not exceed SAYIT_MAX_UPLOAD_BYTES")
    if settings.api.callback_hosts and not settings.api.callback_secret:
        raise ConfigError("SAYIT_CALLBACK_HOSTS needs SAYIT_CALLBACK_SECRET: every callback is signed")
    return settings
