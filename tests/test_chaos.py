"""The chaos soak: mixed load on a real cluster while its parts fail, and no accepted job is lost.

An api node and two queue nodes of real processes on one redis-server take, for ``SAYIT_CHAOS_S``
seconds (45 in CI; ``make chaos`` runs it for 5 minutes and writes ``docs/results/chaos.json``),
short uploads, long jobs, event streams read and dropped, and uploads hung up halfway, while
- a queue node is SIGKILLed and started again,
- Redis is restarted,
- Redis refuses writes for a while (``CONFIG SET maxmemory`` at what it uses).
Then every job that was accepted (202) must end ``completed`` exactly once, with each chunk
transcribed once, no actor given up, every node ready, and no process left when it is stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import pytest
import redis
import soundfile

from sayit_actors import audio
from sayit_actors.store import keys
from tests.cluster import Cluster, get, multipart, start_cluster, start_node, stop_cluster, wait

pytestmark = pytest.mark.slow

DURATION_S = float(os.environ.get("SAYIT_CHAOS_S", "45"))
REPORT = os.environ.get("SAYIT_CHAOS_REPORT")  # where to write the figures (make chaos)
SETTLE_S = 300.0  # after the load: how long accepted jobs may take to end
WRITES_REFUSED_S = 8.0


@dataclass
class Tally:
    """What the load saw: answers by kind and status, the jobs accepted, the faults injected."""

    answers: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # answers no upload should get, even under faults
    jobs: list[str] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    streams_read: int = 0
    hang_ups: int = 0


async def upload(session: aiohttp.ClientSession, url: str, path: Path, kind: str, tally: Tally) -> None:
    body, content_type = multipart(path, "en")
    try:
        async with session.post(f"{url}/api/transcribe", data=body, headers={"Content-Type": content_type}) as r:
            answer = await r.json(content_type=None)
            tally.answers[f"{kind} {r.status}"] += 1
            if r.status == 202:
                tally.jobs.append(answer["data"]["jobId"])
            elif r.status == 200 and not answer["data"]["transcription"]:
                tally.wrong.append(f"{kind}: an empty transcript")
            elif r.status not in (200, 503) or (r.status == 503 and "Retry-After" not in r.headers):
                tally.wrong.append(f"{kind}: {r.status} {answer}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.answers[f"{kind} no answer ({type(exc).__name__})"] += 1


async def read_and_drop_events(session: aiohttp.ClientSession, url: str, job_id: str, tally: Tally) -> None:
    """Read a job's first events, then hang up: the stream's place must be freed."""
    try:
        async with session.get(f"{url}/api/transcribe/{job_id}/events") as r:
            if r.status == 200:
                await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
                tally.streams_read += 1
            tally.answers[f"events {r.status}"] += 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        tally.answers[f"events no answer ({type(exc).__name__})"] += 1


async def hang_up_midway(url: str, path: Path, tally: Tally) -> None:
    body, content_type = multipart(path, "en")
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    head = f"POST /api/transcribe HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    writer.close()
    tally.hang_ups += 1


async def load(cluster: Cluster, short: Path, long: Path, stop: asyncio.Event, tally: Tally) -> None:
    url = cluster.api.url
    rng = random.Random(11)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:

        async def every(period_s: float, step: Any, at_once: int = 3) -> None:
            """Start ``step`` about every ``period_s``, at most ``at_once`` running; at the end, wait for
            every one started (an exception in any of them fails the test)."""
            started: list[asyncio.Task[None]] = []
            while not stop.is_set():
                if sum(not task.done() for task in started) < at_once:
                    started.append(asyncio.ensure_future(step()))
                await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))
            await asyncio.gather(*started)

        async def stream_one() -> None:
            if tally.jobs:
                await read_and_drop_events(session, url, rng.choice(tally.jobs), tally)

        await asyncio.gather(
            every(2.0, lambda: upload(session, url, short, "short", tally)),
            every(9.0, lambda: upload(session, url, long, "long", tally)),
            every(3.0, stream_one),
            every(7.0, lambda: hang_up_midway(url, long, tally)),
        )


async def faults(cluster: Cluster, folder: Path, stop: asyncio.Event, tally: Tally) -> None:
    started = time.monotonic()
    loop = asyncio.get_running_loop()

    async def at(share: float, what: str) -> None:
        await asyncio.sleep(max(0.0, started + share * DURATION_S - time.monotonic()))
        tally.faults.append((round(time.monotonic() - started, 1), what))

    await at(0.2, "SIGKILL queue node q1")
    q1 = cluster.queue["q1"]
    q1.process.send_signal(signal.SIGKILL)
    await loop.run_in_executor(None, q1.process.wait)
    await asyncio.sleep(3)
    cluster.queue["q1"] = await loop.run_in_executor(None, start_node, "q1", "queue_only", 2, cluster.redis.url, folder)

    await at(0.45, "restart Redis")
    await loop.run_in_executor(None, cluster.redis.stop)
    await asyncio.sleep(2)
    await loop.run_in_executor(None, cluster.redis.start)

    await at(0.7, f"Redis refuses writes for {WRITES_REFUSED_S:.0f} s")
    client = cluster.client()
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(used))
        await asyncio.sleep(WRITES_REFUSED_S)
    finally:
        client.config_set("maxmemory", "0")
        client.close()
    await asyncio.sleep(max(0.0, started + DURATION_S - time.monotonic()))
    stop.set()


def recording(folder: Path, corpus: Path) -> tuple[Path, Path]:
    """A short clip (jfk) and a long one (about 75 s: three chunks) of known speech."""
    jfk = audio.decode(corpus / "jfk.flac")
    license_ = audio.decode(corpus / "multilingual.mp3")[: 30 * audio.SAMPLE_RATE]
    pause = np.zeros(audio.SAMPLE_RATE, np.float32)
    long = folder / "long.wav"
    soundfile.write(long, np.concatenate([license_, pause, jfk, pause, license_, pause]), audio.SAMPLE_RATE)
    return corpus / "jfk.flac", long


def our_processes() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    before = our_processes()
    nodes = start_cluster(tmp_path, ("q1", "q2"))
    try:
        yield nodes
    finally:
        stop_cluster(nodes)
        left = [psutil.Process(pid).cmdline() for pid in our_processes() - before if psutil.pid_exists(pid)]
        assert not left, f"processes left running: {left}"


@pytest.mark.timeout(DURATION_S + SETTLE_S + 300)
async def test_no_accepted_job_is_lost_under_chaos(cluster: Cluster, tmp_path: Path, corpus: Path) -> None:
    short, long = recording(tmp_path, corpus)
    tally, stop = Tally(), asyncio.Event()
    started = time.monotonic()
    await asyncio.gather(load(cluster, short, long, stop, tally), faults(cluster, tmp_path, stop, tally))
    loaded_s = time.monotonic() - started
    assert tally.jobs, f"no job was accepted: {tally.answers}"

    loop = asyncio.get_running_loop()
    ends = await loop.run_in_executor(None, settle, cluster, tally.jobs)
    settled_s = time.monotonic() - started - loaded_s
    client = cluster.client()
    try:
        problems = [f"{job}: {problem}" for job in tally.jobs if (problem := check_job(client, job, ends[job]))]
    finally:
        client.close()
    given_up = [(n.name, a["name"]) for n in [cluster.api, *cluster.queue.values()]
                for a in get(f"{n.url}/health")[1]["data"]["services"]["workers"]["actors"]
                if a["givenUp"]]  # fmt: skip
    not_ready = [n.name for n in [cluster.api, *cluster.queue.values()] if get(f"{n.url}/health/ready")[0] != 200]
    figures = {
        "load_s": round(loaded_s, 1),
        "settle_s": round(settled_s, 1),
        "answers": dict(sorted(tally.answers.items())),
        "jobs_accepted": len(tally.jobs),
        "jobs_completed": sum(1 for e in ends.values() if e["status"] == "completed"),
        "jobs_lost": len(problems),
        "event_streams_read_and_dropped": tally.streams_read,
        "uploads_hung_up": tally.hang_ups,
        "faults": tally.faults,
        "actors_given_up": given_up,
        "nodes_not_ready": not_ready,
    }
    report(figures)
    assert not problems, "\n".join(problems)
    assert not given_up and not not_ready, figures
    assert not tally.wrong, tally.wrong


def report(figures: dict[str, Any]) -> None:
    print(json.dumps(figures, indent=2))
    if REPORT:
        Path(REPORT).write_text(json.dumps({"duration_s": DURATION_S, **figures}, indent=2) + "\n")


def settle(cluster: Cluster, jobs: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's final status data, waiting for the ones still running."""
    ends: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + SETTLE_S
    for job_id in jobs:
        left = max(1.0, deadline - time.monotonic())
        ends[job_id] = wait(lambda j=job_id: _ended(cluster, j), left, f"job {job_id} to end")
    return ends


def _ended(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    status, body = get(f"{cluster.api.url}/api/transcribe/{job_id}")
    data = body.get("data", {}) if status == 200 else {}
    return data if data.get("status") in ("completed", "failed") else None


def check_job(client: redis.Redis, job_id: str, data: dict[str, Any]) -> str:
    """What is wrong with an ended job ("" if nothing): it must be completed once, each chunk once."""
    if data["status"] != "completed":
        return f"ended {data['status']}: {data.get('error')}"
    total = data["progress"]["total"]
    indexes = [c["index"] for c in data["chunks"]]
    if indexes != list(range(total)):
        return f"chunks {indexes} of {total}"
    results = client.hlen(keys.chunk_results(job_id))
    if results != total:
        return f"{results} chunk results stored for {total} chunks"
    events = client.xrange(keys.job_events(job_id))
    completed = sum(1 for _, fields in events if fields.get(b"type") == b"completed")
    if completed != 1:
        return f"{completed} completed events"
    if "ask not what your country" not in data["transcription"].lower():
        return "the jfk sentence is missing from the transcript"
    return ""
