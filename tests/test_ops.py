"""Operations: slot metrics summed over a real topology, and the shipped ops files kept true."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from aiohttp.test_utils import TestClient

from config.settings import known_variables, load_settings
from sayit_actors.store import keys
from sayit_actors.store.redis_server import EmbeddedRedis, free_port
from sayit_cli.cli import build_parser
from tests.cluster import Cluster, finished, get, start_cluster, stop_cluster, submit, wait

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
SAMPLE = re.compile(r'^(sayit_\w+)\{node="([^"]+)",role="([^"]+)"\} (\S+)$', re.M)


def slot_samples(url: str, metric: str) -> dict[str, float]:
    text = _scrape(url)
    return {node: float(value) for name, node, _, value in SAMPLE.findall(text) if name == metric}


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = start_cluster(tmp_path_factory.mktemp("ops-cluster"), ("queue-a", "queue-b"))
    yield nodes
    stop_cluster(nodes)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_slot_metrics_add_up_and_follow_a_long_job(cluster: Cluster, recordings: dict[str, Path]) -> None:
    urls = [cluster.api.url, *(n.url for n in cluster.queue.values())]
    capacity: dict[str, float] = {}
    for url in urls:
        capacity |= slot_samples(url, "sayit_chunk_slots")
    assert capacity == {"api": 4.0, "queue-a": 2.0, "queue-b": 2.0}
    assert sum(capacity.values()) == 8  # the configured total: 4 + 2 × 2

    peak = {"busy": 0.0}
    done = threading.Event()

    def watch() -> None:  # scrape the queue nodes while the job runs
        while not done.is_set():
            busy = sum(sum(slot_samples(n.url, "sayit_chunk_slots_busy").values()) for n in cluster.queue.values())
            peak["busy"] = max(peak["busy"], busy)
            done.wait(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        data = finished(cluster, submit(cluster, recordings["mixed"], "en"))  # 82 s: three chunks
    finally:
        done.set()
        watcher.join()
    assert data["status"] == "completed" and data["progress"]["total"] >= 3
    assert peak["busy"] >= 2  # several slots of the queue nodes worked at once
    for url in urls:
        wait(lambda u=url: sum(slot_samples(u, "sayit_chunk_slots_busy").values()) == 0, 10, f"idle slots at {url}")
    text = _scrape(cluster.api.url)
    assert "sayit_queue_nodes 2.0" in text and "sayit_queue_node_slots 4.0" in text
    assert 'sayit_queue_chunks{state="in_progress"} 0.0' in text
    completed = sum(
        float(v) for v in re.findall(r'^sayit_jobs_total\{outcome="completed"\} (\S+)$', "".join(
            _scrape(n.url) for n in cluster.queue.values()), re.M)
    )  # fmt: skip
    assert completed == 1
    status, health = get(f"{cluster.api.url}/health/ready")
    assert status == 200 and health["status"] == "ready"


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(sayit_[a-z_]+)", expression))


def _exported_name(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def test_every_metric_in_the_dashboard_and_alerts_is_exported(client: TestClient) -> None:
    text = await (await client.get("/metrics")).text()
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    dashboard = json.loads((OPS / "grafana/dashboards/sayit.json").read_text())
    used = {name for panel in dashboard["panels"] for t in panel["targets"] for name in _metric_names(t["expr"])}
    rules = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())
    used |= {name for group in rules["groups"] for rule in group["rules"] for name in _metric_names(rule["expr"])}
    assert len(used) >= 10
    exported = families | {_exported_name(family) for family in families}
    missing = {name for name in used if name not in exported and _exported_name(name) not in exported}
    assert missing == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is missing (Debian's prometheus package)")
def test_promtool_accepts_the_prometheus_files() -> None:
    config = subprocess.run(["promtool", "check", "config", str(OPS / "prometheus/prometheus.yml")],
                            capture_output=True, text=True)  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(["promtool", "check", "rules", str(OPS / "prometheus/alerts.yml")],
                           capture_output=True, text=True)  # fmt: skip
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_compose_file_is_well_formed_and_uses_only_what_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "queue", "prometheus", "grafana"}
    assert services["queue"]["deploy"]["replicas"] == 3 and "container_name" not in services["queue"]
    assert "ports" not in services["queue"]  # scalable: no fixed host port
    slots = int(services["api"]["environment"]["MAX_CONCURRENT_CHUNKS"]) + 3 * int(
        services["queue"]["environment"]["MAX_CONCURRENT_CHUNKS"]
    )
    assert slots == 10
    known = known_variables() | {"HF_HUB_OFFLINE"}
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for name in ("api", "queue"):
        service = services[name]
        assert set(service["environment"]) <= known, name
        command = service.get("command", ["sayit", "serve"])
        assert command[0] == "sayit" and command[1] in commands
    for volume in ("./ops/prometheus", "./ops/grafana/provisioning", "./ops/grafana/dashboards"):
        assert (ROOT / volume).is_dir()
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ops/scripts/healthcheck.py" in dockerfile and (ROOT / "ops/scripts/healthcheck.py").is_file()
    python_tooling = {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
    for line in re.findall(r"^ENV (.+)$", dockerfile, re.M):
        assert {pair.split("=")[0] for pair in line.split()} <= known | python_tooling
    datasource = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
SECRETS = ("REDIS_PASSWORD", "SAYIT_API_KEYS", "GRAFANA_ADMIN_PASSWORD")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """What compose makes of ``value``: ``${VAR:?msg}`` must be set, ``${VAR:-x}`` falls back to x."""

    def one(match: re.Match[str]) -> str:
        name, kind, word = match.groups()
        if env.get(name):
            return env[name]
        assert kind != "?", f"{name} is required: {word}"
        return word if kind == "-" else ""

    return _VARIABLE.sub(one, value)


def test_compose_secrets_are_required_and_redis_stays_private() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    assert "name" not in compose  # docker-compose 1.29 refuses a top-level name
    for secret in SECRETS:
        assert f"${{{secret}:?" in text, secret
    # No secret has a default someone could forget to change; an empty one means "off".
    defaults = re.findall(r"\$\{(\w*(?:PASSWORD|TOKEN|SECRET|KEYS)\w*):-([^}]+)\}", text)
    assert defaults == []
    services = compose["services"]
    redis_service = services["redis"]
    assert all(str(port).startswith("127.0.0.1:") for port in redis_service.get("ports", []))
    assert "--requirepass ${REDIS_PASSWORD:?" in " ".join(redis_service["command"])
    assert "PASSWORD" in redis_service["environment"]["REDISCLI_AUTH"]  # the health check authenticates
    assert all(str(port).startswith("127.0.0.1:") for port in services["prometheus"]["ports"])  # no login
    env = {"REDIS_PASSWORD": "pw0123456789", "SAYIT_API_KEYS": "k1", "GRAFANA_ADMIN_PASSWORD": "g"}
    for name in ("api", "queue"):
        url = _interpolate(services[name]["environment"]["REDIS_URL"], env)
        assert re.fullmatch(r"rediss?://:pw0123456789@redis:6379/0", url), url
        node_env = {k: _interpolate(str(v), env) for k, v in services[name]["environment"].items()}
        settings = load_settings(node_env)  # optional secrets left unset arrive empty: they count as unset
        assert settings.redis_url == url and settings.admin_token is None and settings.api.callback_hosts == ()
    assert load_settings({k: _interpolate(str(v), env) for k, v in services["api"]["environment"].items()}).api_keys
    with pytest.raises(AssertionError, match="REDIS_PASSWORD is required"):
        _interpolate(services["api"]["environment"]["REDIS_URL"], {})
    grafana = _interpolate(services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"], env)
    assert grafana == "g"


def test_compose_limits_fit_a_two_cpu_host() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        limits = service["deploy"]["resources"]["limits"]
        assert float(_interpolate(str(limits["cpus"]), {})) <= 2, name
        assert re.fullmatch(r"\d+[MG]", _interpolate(str(limits["memory"]), {})), name


def test_compose_smoke_script_is_valid_bash() -> None:
    script = OPS / "compose-smoke.sh"
    assert os.access(script, os.X_OK)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    if shutil.which("shellcheck"):
        linted = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout


@pytest.mark.slow
def test_healthcheck_script_exit_status(cluster: Cluster) -> None:
    script = OPS / "scripts/healthcheck.py"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["python3", str(script), *args], capture_output=True, text=True, timeout=30)

    assert run("--url", cluster.api.url).returncode == 0
    assert run("--url", cluster.queue["queue-a"].url, "--ready").returncode == 0
    down = run("--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "UNHEALTHY" in down.stdout


def _script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(OPS / "scripts" / name), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_cleanup_removes_orphans_only(tmp_path: Path, redis_url: str) -> None:
    uploads = tmp_path / "uploads"
    (uploads / "incoming").mkdir(parents=True)
    old, fresh = uploads / "old.wav", uploads / "incoming" / "fresh.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    r = redis.Redis.from_url(redis_url)
    r.hset(keys.job("a" * 32), "status", "completed")
    r.hset(keys.job("b" * 32), "status", "processing")
    r.set(keys.chunk_audio("a" * 32, 0), b"ended job")  # orphan
    r.set(keys.chunk_audio("c" * 32, 1), b"no job")  # orphan
    r.set(keys.chunk_audio("b" * 32, 0), b"running job")  # kept
    r.set(keys.chunk_audio("d" * 32, 0), b"job being created", ex=600)  # kept
    dry = _script("cleanup.py", "--uploads", str(uploads), "--redis-url", redis_url, "--dry-run")
    assert dry.returncode == 0 and "would remove 1 orphaned upload" in dry.stdout and old.exists()
    result = _script("cleanup.py", "--uploads", str(uploads), "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    assert not old.exists() and fresh.exists()
    assert sorted(k.decode() for k in r.keys("sayit:job:*:audio:*")) == sorted(
        [keys.chunk_audio("b" * 32, 0), keys.chunk_audio("d" * 32, 0)]
    )


def test_backup_copies_a_fresh_snapshot(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        redis.Redis.from_url(server.url).set("sayit:backup-test", "kept")
        result = _script("backup.py", "--redis-url", server.url, "--data-dir", str(tmp_path / "redis"),
                         "--out", str(tmp_path / "backups"))  # fmt: skip
        assert result.returncode == 0, result.stderr
        (copy,) = (tmp_path / "backups").iterdir()
        assert re.fullmatch(r"redis-\d{8}T\d{6}Z", copy.name)
        assert (copy / "dump.rdb").stat().st_size > 0
        assert (copy / "appendonlydir").is_dir() or (copy / "appendonly.aof").is_file()
    finally:
        server.stop()
