"""Fixtures: a real redis-server, the real bundled model, the corpus, and an app per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import psutil
import pytest
import redis
import soundfile
from aiohttp.test_utils import TestClient

from config import ApiSettings, Limits, QueueSettings, Settings, load_settings
from http_edge import create_app
from sayit_actors import audio
from sayit_actors.engines.faster import FasterWhisperEngine
from sayit_actors.store.redis_server import EmbeddedRedis
from tests.clips import encode

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
DATA = Path(__file__).resolve().parent / "data"
SLOTS = 2


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session() -> Iterator[None]:
    """Every process a test started (nodes, redis-servers, watchdogs) is gone when the session ends."""
    yield
    deadline = time.monotonic() + 15
    while (left := psutil.Process().children(recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    running = []
    for child in left:
        with contextlib.suppress(psutil.Error):
            running.append(" ".join(child.cmdline()))
            child.kill()
    assert not running, f"processes outlived the test session: {running}"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "jfk.flac").is_file():
        pytest.skip(f"the speech corpus is not at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    yield redis_server.url
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FasterWhisperEngine:
    settings = load_settings({})
    return FasterWhisperEngine.load(settings.engine, workers=SLOTS, data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    base = load_settings({})
    return replace(
        base,
        worker_id="test-node",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        max_concurrent_chunks=SLOTS,
        cors_origins=("https://app.sayit.example",),
        limits=Limits(slot_wait_s=60.0),
        queue=QueueSettings(
            stall_interval_s=1.5, retry_backoff_s=0.2, max_attempts=2, poll_s=0.1, heartbeat_s=0.5, drain_timeout_s=5
        ),
        # Off, so that uploading a file again makes a new job; tests/test_clients.py turns it on.
        api=ApiSettings(result_cache=False),
    )


@pytest.fixture
async def make_client(aiohttp_client, engine: FasterWhisperEngine, redis_url: str):  # type: ignore[no-untyped-def]
    """Builds a test client for given settings; checks that no upload file outlives the test.

    Depends on ``redis_url`` so that Redis is flushed only after the apps have stopped.
    """
    made: list[tuple[Settings, TestClient]] = []

    async def make(settings: Settings, engine: Any = engine) -> TestClient:
        client = await aiohttp_client(create_app(settings, engine=engine))
        made.append((settings, client))
        return client

    yield make
    for settings, client in made:
        await client.close()  # stops the actors: every queued release is handled first
        left = [p for p in settings.upload_dir.rglob("*") if p.is_file()] if settings.upload_dir.exists() else []
        assert left == [], f"upload files left behind: {left}"


@pytest.fixture
async def client(make_client, settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    yield await make_client(settings)


@pytest.fixture(scope="session")
def clips(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Files made from jfk.flac: M4A/AAC, ADTS AAC, OGG/Opus, damaged ones, and non-audio."""
    folder = tmp_path_factory.mktemp("clips")
    jfk = audio.decode(corpus / "jfk.flac")
    flac_bytes = (corpus / "jfk.flac").read_bytes()
    made = {
        "m4a": encode(jfk, folder / "jfk.m4a", "mp4", "aac"),
        "aac": encode(jfk, folder / "jfk.aac", "adts", "aac"),
        "opus": encode(jfk, folder / "jfk.ogg", "ogg", "libopus", rate=48_000),
        "silence_wav": encode(np.zeros(16_000, np.float32), folder / "silence.wav", "wav", "pcm_s16le"),
    }
    truncated = folder / "truncated.flac"
    truncated.write_bytes(flac_bytes[: len(flac_bytes) // 5])
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(4000))
    text = folder / "notes.wav"
    text.write_bytes(b"these are meeting notes, not audio\n" * 50)
    made.update(truncated=truncated, corrupt=corrupt, text=text)
    yield made
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def recordings(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    clip = {name: audio.decode(corpus / name) for name in ("jfk.flac", "multilingual.mp3", "stereo_diarization.wav",
                                                           "hotwords.mp3")}  # fmt: skip
    pause = np.zeros(audio.SAMPLE_RATE // 2, np.float32)

    def write(name: str, parts: list[np.ndarray]) -> Path:
        path = folder / name
        soundfile.write(path, np.concatenate([p for part in parts for p in (part, pause)]), audio.SAMPLE_RATE,
                        subtype="PCM_16")  # fmt: skip
        return path

    mixed = [clip["multilingual.mp3"], clip["jfk.flac"], clip["stereo_diarization.wav"], clip["hotwords.mp3"]]
    return {
        "long": write("three_minutes.wav", [clip["multilingual.mp3"]] * 3 + [clip["jfk.flac"]]),  # 3 min 12 s
        "mixed": write("mixed.wav", mixed),  # 82 s, every part different
        "multilingual": corpus / "multilingual.mp3",
    }


async def wait_for_job(client: TestClient, job_id: str, timeout_s: float = 90.0) -> dict:
    """The job's data once it is completed or failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        response = await client.get(f"/api/transcribe/{job_id}")
        assert response.status == 200, await response.text()
        data = (await response.json())["data"]
        if data["status"] in ("completed", "failed"):
            return data
        assert loop.time() < deadline, f"job {job_id} still {data['status']}: {data['progress']}"
        await asyncio.sleep(0.2)


# The longest files, longest first: ``make test``'s two workers take whole files in this order, so
# the long ones start at once instead of ending the run alone.
LONGEST_FIRST = ("test_longform_accuracy.py", "test_mlx.py", "test_chaos.py", "test_clients.py", "test_topology.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that loads the model (the ``engine`` fixture, itself or through an app) is ``slow``,
    so ``make test-fast`` (``-m "not slow"``) runs only tests that need neither a model nor a node."""
    for item in items:
        if "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
