"""A real cluster on loopback: redis-server, one api_only node and three queue_only nodes, each
its own process, as the reference deployment runs them. Chunks of one file are spread over the
nodes; a killed node, a drained node and a restarted Redis lose no chunk and double none."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sayit_actors.store import keys
from tests.clips import normalized
from tests.cluster import QUEUE_ENV, Cluster, finished, job, start_cluster, stop_cluster, submit, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
QUEUE_NODES = ("queue-1", "queue-2", "queue-3")
STALL_S = int(QUEUE_ENV["SAYIT_STALL_INTERVAL_S"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = start_cluster(tmp_path_factory.mktemp("cluster"), QUEUE_NODES)
    yield nodes
    stop_cluster(nodes)


def holder(cluster: Cluster, job_id: str) -> tuple[str, int]:
    """(queue node, chunk index) of a chunk of ``job_id`` being transcribed right now."""

    def find() -> tuple[str, int] | None:
        r = cluster.client()
        for row in r.xpending_range(keys.CHUNKS, keys.CHUNKS_GROUP, "-", "+", 100):
            entry = r.xrange(keys.CHUNKS, row["message_id"], row["message_id"])
            consumer = row["consumer"].decode()
            if entry and entry[0][1][b"job"].decode() == job_id and consumer in cluster.queue:
                return consumer, int(entry[0][1][b"index"])
        return None

    return tuple(wait(find, 30, f"a chunk of {job_id} in progress"))  # type: ignore[return-value]


def test_both_languages_of_a_switching_recording(cluster: Cluster, recordings: dict[str, Path]) -> None:
    data = finished(cluster, submit(cluster, recordings["multilingual"]))
    assert data["status"] == "completed"
    text = normalized(data["transcription"])
    assert "permission is hereby granted" in text and "der diese software" in text
    assert {"en", "de"} <= set(data["languages"])


def test_a_poisoned_job_fails_while_its_neighbours_complete(cluster: Cluster, recordings: dict[str, Path]) -> None:
    busy = [submit(cluster, recordings["mixed"], "en")]
    r = cluster.client()
    # The queue nodes are stopped (SIGSTOP) while the job is made and its chunk audio spoiled, so
    # that no worker can reach a chunk first; they go on (SIGCONT) right after.
    for node in cluster.queue.values():
        node.process.send_signal(signal.SIGSTOP)
    try:
        poisoned = submit(cluster, recordings["multilingual"])
        for index in range(3):  # the chunks can never be transcribed
            r.set(keys.chunk_audio(poisoned, index), b"not audio")
    finally:
        for node in cluster.queue.values():
            node.process.send_signal(signal.SIGCONT)
    beside = submit(cluster, recordings["mixed"], "en")
    failed = finished(cluster, poisoned)
    assert failed["status"] == "failed" and "failed 2 times" in failed["error"]["message"]
    assert all(finished(cluster, job)["status"] == "completed" for job in busy)
    assert finished(cluster, beside)["status"] == "completed"
    assert r.xlen(keys.DEAD_LETTERS) >= 1


def test_a_long_recording_is_shared_by_the_nodes_and_a_redis_restart_mid_job_loses_nothing(
    cluster: Cluster, recordings: dict[str, Path]
) -> None:
    job_id = submit(cluster, recordings["long"])
    wait(lambda: job(cluster, job_id)["progress"]["done"] >= 1, 60, "a first chunk")
    assert job(cluster, job_id)["status"] != "completed"  # the restart comes mid-job
    cluster.redis.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(1.0)
    cluster.redis.start()
    data = finished(cluster, job_id)
    assert data["status"] == "completed" and data["duration"] >= 180
    assert data["progress"]["done"] == data["progress"]["total"] == len(data["chunks"]) >= 7
    assert [c["index"] for c in data["chunks"]] == list(range(len(data["chunks"])))
    nodes = {chunk["node"] for chunk in data["chunks"]}
    assert len(nodes) > 1 and nodes <= set(QUEUE_NODES)
    assert normalized(data["transcription"]).count("permission is hereby granted") == 3


def test_a_draining_node_finishes_or_hands_back_its_chunks(cluster: Cluster, recordings: dict[str, Path]) -> None:
    job_id = submit(cluster, recordings["mixed"], "en")
    name, _ = holder(cluster, job_id)
    node = cluster.queue[name]
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(40) == 0
    assert cluster.client().get(keys.node(name)) is None  # it left the live list at once
    data = finished(cluster, job_id, timeout_s=STALL_S)  # no stall was needed to recover
    assert data["status"] == "completed"
    assert normalized(data["transcription"]).count("ask not what your country can do for you") == 1


def test_a_killed_node_loses_no_chunk_and_doubles_none(cluster: Cluster, recordings: dict[str, Path]) -> None:
    job_id = submit(cluster, recordings["mixed"], "en")
    name, index = holder(cluster, job_id)
    cluster.queue[name].process.send_signal(signal.SIGKILL)
    cluster.queue[name].process.wait(10)
    data = finished(cluster, job_id)
    assert data["status"] == "completed"
    assert [c["index"] for c in data["chunks"]] == list(range(len(data["chunks"])))
    assert data["chunks"][index]["node"] != name  # another node took over the chunk it held
    text = normalized(data["transcription"])
    assert text.count("ask not what your country can do for you") == 1
    assert text.count("permission is hereby granted") == 1
