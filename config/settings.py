"""Settings of one node, read once from the environment and an optional TOML file.

Environment variables win over the TOML file (``SAYIT_CONFIG``), which wins over defaults.
The TOML file uses the same names as the variables, lower-cased and without ``SAYIT_``
(``port = 3000``, ``max_concurrent_chunks = 2``), plus ``[profiles.<lang>]`` tables.

Each setting is declared once, as a dataclass field made by ``setting``: its default, the parser
of its text, what it does and, where it differs from ``SAYIT_<NAME>``, its variable. The loader,
``known_variables`` and the tests read those fields, so a new setting cannot be half-declared.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
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


# A slot per window of a full CPU batch: the batcher decodes what every slot hands over together.
DEFAULT_SLOTS = {WorkerMode.ALL: 8, WorkerMode.API_ONLY: 8, WorkerMode.QUEUE_ONLY: 8}

_TENANT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def key_entry(entry: str) -> tuple[str, str]:
    """(name, key) of one ``SAYIT_API_KEYS`` entry: ``name:key``, or a bare key named by a digest
    of it (``key-`` and 8 hex digits), so that logs and Redis keys can name it without the secret."""
    name, sep, key = entry.partition(":")
    if sep and key and _TENANT_NAME.match(name):
        return name, key
    return f"key-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", entry


# --- parsers: text to value; a ValueError is refused, the docstring says what was expected ------


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


def _mode(raw: str) -> WorkerMode:
    return WorkerMode(raw)  # a ValueError for any other text


_mode.__doc__ = "one of " + ", ".join(WorkerMode)


def _list(raw: str) -> tuple[str, ...]:
    """a comma-separated list"""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _text(raw: str) -> str:
    """a non-empty string"""
    if not raw.strip():
        raise ValueError
    return raw.strip()


def _path(raw: str) -> Path:
    """a non-empty path"""
    return Path(_text(raw))


def _port(raw: str) -> int:
    """a TCP port from 1 to 65535"""
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError
    return value


def _ports(raw: str) -> tuple[int, ...]:
    """a comma-separated list of TCP ports"""
    ports = tuple(_port(item) for item in _list(raw))
    if not ports:
        raise ValueError
    return ports


def _bool(raw: str) -> bool:
    """true or false (also 1/0, yes/no, on/off)"""
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError


def _share(raw: str) -> float:
    """a number above 0 and at most 1"""
    value = float(raw)
    if not 0.0 < value <= 1.0:
        raise ValueError
    return value


def _secret(minimum: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if len(raw.strip()) < minimum:
            raise ValueError
        return raw.strip()

    parse.__doc__ = f"a secret of at least {minimum} characters"
    return parse


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


def _origins(raw: str) -> tuple[str, ...]:
    """a comma-separated list of origins (scheme://host[:port]; not *: CORS answers with credentials)"""
    origins = _list(raw)
    if any(origin == "*" or "://" not in origin for origin in origins):
        raise ValueError
    return origins


def _hosts(raw: str) -> tuple[str, ...]:
    """a comma-separated list of host names or addresses (no scheme, no path)"""
    hosts = tuple(item.lower() for item in _list(raw))
    if any("/" in host or " " in host for host in hosts):
        raise ValueError
    return hosts


def _redis_url(raw: str) -> str:
    """a redis:// or rediss:// or unix:// URL"""
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError
    return raw


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


# --- declaring a setting ------------------------------------------------------------------------

_SETTING = "sayit.setting"
# The metadata of a field holding a group of settings (its default_factory, a settings class).
SECTION: Mapping[str, bool] = {"sayit.section": True}


@dataclass(frozen=True, kw_only=True)
class SettingSpec:
    """How one field is read: kept in the field's metadata."""

    parse: Callable[[str], Any]  # its docstring says what a value must be, in error messages
    doc: str  # what the setting does
    env: str | None = None  # the variable where it is not SAYIT_<NAME>
    secret: bool = False  # never echoed in an error message: they end up in logs

    def variable(self, name: str) -> str:
        return self.env or f"SAYIT_{name.upper()}"


def setting(
    parse: Callable[[str], Any], doc: str, *, env: str | None = None, secret: bool = False
) -> Mapping[str, SettingSpec]:
    """The metadata of a field read from ``env`` (default ``SAYIT_<NAME>``) or the TOML key ``<name>``.

    Metadata of a plain ``field`` rather than a wrapper of it: linters and mypy still see the
    default, and mypy checks it against the field's type.
    """
    return {_SETTING: SettingSpec(parse=parse, doc=doc, env=env, secret=secret)}


# --- the settings -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    engine: str = field(
        default="auto",
        metadata=setting(
            _choice("auto", "faster-whisper", "mlx"),
            "the engine; auto: mlx on an Apple Silicon Mac where installed, faster-whisper elsewhere",
        ),
    )
    model: str = field(
        default="base",
        metadata=setting(_text, "base (bundled), small, medium (from a local model cache) or a model folder"),
    )
    device: str = field(
        default="auto", metadata=setting(_choice("auto", "cpu", "cuda"), "auto: CUDA where a GPU is present")
    )
    compute_type: str = field(
        default="auto",
        metadata=setting(
            _choice("auto", "int8", "int8_float16", "int8_float32", "float16", "float32"),
            "auto: int8 on CPU, float16 on CUDA",
        ),
    )
    cpu_threads: int = field(default=0, metadata=setting(_int(0), "the engine's threads; 0: every core"))
    batch_size: int = field(
        default=0,
        metadata=setting(_int(0), "most windows decoded in one pass; 0: 2 on a CPU, 16 on a GPU"),
    )
    batch_lanes: int = field(
        default=0,
        metadata=setting(
            _int(0),
            "passes decoded at once on a CPU when windows wait, one thread each; 0: one per engine thread, "
            "1: every pass with all of them (a GPU has one)",
        ),
    )
    batch_wait_ms: float = field(
        default=300.0,
        metadata=setting(
            _float(0.0),
            "longest wait for a fuller pass: a single lane's (a GPU) while passes are shared, "
            "queued chunks' at an idle node",
        ),
    )

    def batch_size_for(self, device: str) -> int:
        # On a CPU a one-thread pass decodes as much a second with one window as with several, and beam
        # search keeps each window's encoder output once per beam (about 90 MB a window for base):
        # two a pass keep a node's memory well within 1.5 GB (docs/PERFORMANCE.md).
        return self.batch_size or (16 if device == "cuda" else 2)

    def threads(self) -> int:
        return self.cpu_threads or os.cpu_count() or 1

    def batch_lanes_for(self, device: str) -> int:
        # One thread a pass decodes more per core than a pass split across threads (small matrices
        # split badly); a lone window still gets every thread (see the batcher).
        return 1 if device == "cuda" else min(self.batch_lanes or self.threads(), self.threads())


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_upload_bytes: int = field(default=100 * MB, metadata=setting(_int(1), "larger uploads get 413"))
    sync_max_duration_s: float = field(default=30.0, metadata=setting(_float(0.1), "longest upload answered at once"))
    sync_max_bytes: int = field(default=10 * MB, metadata=setting(_int(1), "largest upload answered at once"))
    slot_wait_s: float = field(
        default=10.0,
        metadata=setting(
            _float(0.0),
            "longest wait of a short upload for a slot (503 beyond); queued if a live queue would serve it sooner",
        ),
    )
    transcribe_timeout_s: float = field(
        default=300.0, metadata=setting(_float(1.0), "longest wait for one transcription")
    )
    retry_after_s: int = field(default=5, metadata=setting(_int(1), "the Retry-After of a 503"))
    max_restarts: int = field(
        default=5, metadata=setting(_int(0), "crashes within restart_window_s past which an actor stays stopped")
    )
    restart_window_s: float = field(default=60.0, metadata=setting(_float(0.1), "the window of max_restarts"))
    max_duration_s: float = field(
        default=4 * 3600.0,
        metadata=setting(_float(1.0), "longest recording taken (decoded length, not bytes): 413 beyond"),
    )
    upload_idle_timeout_s: float = field(
        default=30.0, metadata=setting(_float(0.1), "longest wait for the next bytes of a request body: 408 beyond")
    )
    # Each open event stream, and each OpenAI-route upload waiting for its job, holds one of the
    # edge's Redis connections: together they stay well under SAYIT_REDIS_MAX_CONNECTIONS.
    max_uploads_in_flight: int = field(
        default=16, metadata=setting(_int(1), "uploads received or worked on at once by a node: 503 beyond")
    )
    max_event_streams: int = field(default=32, metadata=setting(_int(1), "open event streams of a node: 503 beyond"))
    dispatch_timeout_s: float = field(
        default=120.0, metadata=setting(_float(1.0), "longest wait for a long upload to be decoded, cut and queued")
    )
    # Per tenant (per client address without API keys), shared by every node through Redis: 429 beyond.
    rate_limit_per_min: int = field(default=120, metadata=setting(_int(0), "uploads a minute per tenant; 0: off"))
    audio_limit_s_per_hour: float = field(
        default=0.0, metadata=setting(_float(0.0), "seconds of audio taken an hour per tenant; 0: off")
    )


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    """The chunk queue: Bull's at-least-once promises (30 s stall check, 1 stall) on Redis Streams."""

    chunk_s: float = field(
        default=30.0, metadata=setting(_float(5.0), "longest chunk (at most 30: one Whisper window)")
    )
    stall_interval_s: float = field(
        default=30.0, metadata=setting(_float(1.0), "when a chunk its node does not renew counts as stalled")
    )
    max_stalls: int = field(
        default=1, metadata=setting(_int(0), "how often a chunk may stall before it is dead-lettered")
    )
    max_attempts: int = field(default=3, metadata=setting(_int(1), "attempts of a failing chunk"))
    retry_backoff_s: float = field(
        default=2.0, metadata=setting(_float(0.0), "first backoff, doubled after each failed attempt")
    )
    max_queued_audio_s: float = field(
        default=4 * 3600.0, metadata=setting(_float(1.0), "queued audio beyond which new jobs get QUEUE_FULL")
    )
    # The most of that budget one tenant's jobs may hold (with two tenants or more): others keep room.
    tenant_queue_share: float = field(
        default=0.5,
        metadata=setting(_share, "with two tenants or more, the share of that budget one tenant's jobs may hold"),
    )
    result_ttl_s: int = field(default=24 * 3600, metadata=setting(_int(60), "how long a finished job is kept"))
    heartbeat_s: float = field(default=5.0, metadata=setting(_float(0.5), "queue node heartbeat"))
    drain_timeout_s: float = field(
        default=30.0, metadata=setting(_float(0.0), "on SIGTERM, how long running chunks may finish")
    )
    poll_s: float = field(default=0.5, metadata=setting(_float(0.05), "longest wait of one queue read"))


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


@dataclass(frozen=True, kw_only=True)
class SilenceSettings:
    """Voice-activity filtering and dropping text invented over silence."""

    vad: str = field(
        default="long",
        metadata=setting(_choice("long", "all", "off"), "Silero voice-activity filter; long: queued chunks only"),
    )
    invented_phrases: tuple[str, ...] = field(
        default=INVENTED_PHRASES, metadata=setting(_list, "text dropped where no speech is heard")
    )
    no_speech_threshold: float = field(
        default=0.6, metadata=setting(_float(0.0), "the no-speech probability past which such text is dropped")
    )


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """What clients get beyond the app's contract: OpenAI's route, callbacks, repeats."""

    openai_wait_s: float = field(
        default=600.0,
        metadata=setting(_float(1.0), "how long /v1/audio/* waits for a queued job (OpenAI's API is synchronous)"),
    )
    callback_hosts: tuple[str, ...] = field(
        default=(), metadata=setting(_hosts, "the only hosts a callbackUrl may name; empty: callbacks refused")
    )
    callback_secret: str | None = field(
        default=None,
        metadata=setting(
            _webhook_secret, "signs each callback body (HMAC-SHA256); required for callbacks", secret=True
        ),
    )
    callback_timeout_s: float = field(
        default=10.0,
        metadata=setting(_float(0.1), "the whole of one delivery attempt: connect, send, the answer's status line"),
    )
    callback_attempts: int = field(default=3, metadata=setting(_int(1), "delivery attempts of one callback"))
    callback_claim_s: float = field(
        default=60.0,
        metadata=setting(_float(1.0), "a delivery a node holds this long without renewing it is sent by another node"),
    )
    callback_ports: tuple[int, ...] = field(
        default=(80, 443), metadata=setting(_ports, "the only ports a callbackUrl may name")
    )
    callback_allow_private: bool = field(
        default=False,
        metadata=setting(
            _bool, "off: a host resolving to a loopback, private, link-local or reserved address is not called"
        ),
    )
    result_cache: bool = field(
        default=True, metadata=setting(_bool, "the same audio with the same options answers the stored result")
    )
    idempotency_ttl_s: int = field(
        default=24 * 3600, metadata=setting(_int(60), "how long Idempotency-Keys and cached results are kept")
    )


def _node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = field(default="0.0.0.0", metadata=setting(_text, "the address to listen on"))
    port: int = field(default=3000, metadata=setting(_port, "the port to listen on"))
    worker_mode: WorkerMode = field(
        default=WorkerMode.ALL, metadata=setting(_mode, "the node's role", env="WORKER_MODE")
    )
    worker_id: str = field(
        default_factory=_node_name, metadata=setting(_text, "this node's name in metrics and health", env="WORKER_ID")
    )
    max_concurrent_chunks: int = field(
        default=8,
        metadata=setting(
            _int(1), "transcription slots: chunks and uploads the node decodes at once", env="MAX_CONCURRENT_CHUNKS"
        ),
    )
    redis_url: str | None = field(
        default=None,
        metadata=setting(_redis_url, "the shared Redis; None: start an embedded redis-server", env="REDIS_URL"),
    )
    redis_max_connections: int = field(
        default=64, metadata=setting(_int(1), "the edge's pool; a request waits for a free connection, then 503")
    )
    data_dir: Path = field(
        default=Path("data"), metadata=setting(_path, "uploads in flight, the embedded Redis's data, converted models")
    )
    cors_origins: tuple[str, ...] = field(
        default=(), metadata=setting(_origins, "allowed origins, answered with credentials")
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata=setting(_api_keys, "entries name:key or a bare key (see tenants); set: keys required", secret=True),
    )
    api_keys_file: Path | None = field(
        default=None, metadata=setting(_keys_file, "more name:key entries, one a line; merged into api_keys")
    )
    admin_token: str | None = field(
        default=None,
        metadata=setting(_secret(16), "bearer token of /admin/*; None: those routes do not exist", secret=True),
    )
    engine: EngineSettings = field(default_factory=EngineSettings, metadata=SECTION)
    limits: Limits = field(default_factory=Limits, metadata=SECTION)
    queue: QueueSettings = field(default_factory=QueueSettings, metadata=SECTION)
    silence: SilenceSettings = field(default_factory=SilenceSettings, metadata=SECTION)
    api: ApiSettings = field(default_factory=ApiSettings, metadata=SECTION)
    # Read from the TOML file's [profiles.<lang>] tables, not from variables.
    profiles: Mapping[str, LanguageProfile] = field(default_factory=load_profiles)

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @functools.cached_property
    def tenants(self) -> tuple[tuple[str, str], ...]:
        """(tenant name, key) of every API key; several keys may share a name (rotation)."""
        return tuple(key_entry(entry) for entry in self.api_keys)


# --- loading ------------------------------------------------------------------------------------


def sections(kind: type[Any] = Settings) -> Iterator[tuple[str, type[Any]]]:
    """(field name, class) of each section of ``kind``."""
    for item in fields(kind):
        if item.metadata == SECTION and isinstance(item.default_factory, type):
            yield item.name, item.default_factory


def declared(kind: type[Any]) -> Iterator[tuple[str, SettingSpec]]:
    """(field name, spec) of each setting of ``kind`` itself (not of its sections)."""
    for item in fields(kind):
        if _SETTING in item.metadata:
            yield item.name, item.metadata[_SETTING]


def known_variables() -> set[str]:
    """Every environment variable the settings read."""
    kinds: list[type[Any]] = [Settings, *(part for _, part in sections())]
    names = {spec.variable(name) for kind in kinds for name, spec in declared(kind)}
    return names | {"SAYIT_CONFIG", "SAYIT_LOG_LEVEL"}


def _read(name: str, spec: SettingSpec, env: Mapping[str, str], toml: Mapping[str, Any]) -> Any:
    """The parsed value, or MISSING when neither source sets it.

    An empty variable counts as unset: compose files pass ``${VAR:-}`` as an empty string.
    """
    variable = spec.variable(name)
    if env.get(variable, "").strip():
        raw, source = env[variable], variable
    elif name in toml:
        value = toml[name]
        raw = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        source = f"{name} in the TOML file"
    else:
        return MISSING
    try:
        return spec.parse(raw)
    except ValueError:
        shown = "<hidden>" if spec.secret else repr(re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw))
        raise ConfigError(f"{source}={shown} is invalid: expected {spec.parse.__doc__}") from None


def _read_all(kind: type[Any], env: Mapping[str, str], toml: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``kind`` (not its sections) that the environment or the TOML file set."""
    found = {name: _read(name, spec, env, toml) for name, spec in declared(kind)}
    return {name: value for name, value in found.items() if value is not MISSING}


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
    top = _read_all(Settings, env, toml)
    parts = {name: part(**_read_all(part, env, toml)) for name, part in sections()}
    top.setdefault("max_concurrent_chunks", DEFAULT_SLOTS[top.get("worker_mode", WorkerMode.ALL)])
    if "api_keys_file" in top:
        try:
            top["api_keys"] = _distinct_keys((*top.get("api_keys", ()), *key_lines(top["api_keys_file"])))
        except (OSError, ValueError):  # changed since it was read, or a key also in SAYIT_API_KEYS
            raise ConfigError("SAYIT_API_KEYS and SAYIT_API_KEYS_FILE together give a key twice, or the file "
                              "cannot be read") from None  # fmt: skip
    try:
        top["profiles"] = load_profiles(toml.get("profiles"))
    except ValueError as exc:
        raise ConfigError(f"SAYIT_CONFIG: {exc}") from None
    top.update(parts)
    known = {item.name for item in fields(Settings)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")
        top[key] = value
    settings = Settings(**top)
    if settings.queue.chunk_s > 30.0:
        raise ConfigError("SAYIT_CHUNK_S must be at most 30 (one Whisper window)")
    if settings.limits.sync_max_bytes > settings.limits.max_upload_bytes:
        raise ConfigError("SAYIT_SYNC_MAX_BYTES must not exceed SAYIT_MAX_UPLOAD_BYTES")
    if settings.api.callback_hosts and not settings.api.callback_secret:
        raise ConfigError("SAYIT_CALLBACK_HOSTS needs SAYIT_CALLBACK_SECRET: every callback is signed")
    return settings
