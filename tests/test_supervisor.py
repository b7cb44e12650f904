"""The Supervisor's one-for-one restarts and its restart-intensity limit, with real actors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
from aiohttp.test_utils import TestClient

from http_edge.keys import ACTORS
from sayit_actors import system
from sayit_actors.metrics import Metrics
from sayit_actors.supervisor import (
    ActorBroken,
    ChildSpec,
    Directory,
    GetStatus,
    Restart,
    StartAll,
    SupervisedActor,
    Supervisor,
    Told,
)


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class Record(Told):
    """A told message about a job; ``fields`` lacks what the handler needs when it is bad data."""

    job_id: str
    fields: dict[str, int]


@dataclass(frozen=True)
class Corrupt(Told):
    """Told: the child's own state is broken."""


class Counter(SupervisedActor):
    """A child that counts and crashes when told to."""

    def __init__(self, supervisor: pykka.ActorRef[Supervisor], name: str) -> None:
        super().__init__(supervisor, name)
        self.count = 0

    def handle(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError("told to crash")
        if isinstance(message, Corrupt):
            raise ActorBroken("state corrupt")
        if isinstance(message, Record):
            self.count += message.fields["start_s"]
            return self.count
        self.count += 1
        return self.count


METRICS = Metrics("n", "all")


@pytest.fixture
def tree() -> Iterator[tuple[pykka.ActorRef[Supervisor], Directory]]:
    directory = Directory()
    specs = [ChildSpec(name, "Counter", lambda sup, n: Counter.start(sup, n)) for name in ("a", "b")]
    supervisor = Supervisor.start(specs, directory, METRICS, 2, 60.0)
    supervisor.ask(StartAll())
    yield supervisor, directory
    supervisor.stop()
    assert not any(ref.is_alive() for ref in pykka.ActorRegistry.get_by_class(Counter))


def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_crashed_child_is_replaced_and_siblings_keep_state(tree: tuple[pykka.ActorRef[Supervisor], Directory]) -> None:
    supervisor, directory = tree
    first_a = directory.get("a")
    directory.get("b").ask("tick")
    first_a.tell(Crash())
    wait_for(lambda: directory.get("a") is not first_a if _has(directory, "a") else False)
    assert not first_a.is_alive()
    assert directory.get("a").ask("tick") == 1  # a fresh child
    assert directory.get("b").ask("tick") == 2  # its sibling was left alone
    status = {s.name: s for s in supervisor.ask(GetStatus())}
    assert status["a"].restarts == 1 and status["b"].restarts == 0


def test_asking_a_dead_child_fails_fast(tree: tuple[pykka.ActorRef[Supervisor], Directory]) -> None:
    _, directory = tree
    ref = directory.get("a")
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("tick", timeout=1)


def test_restart_intensity_limit_gives_up(tree: tuple[pykka.ActorRef[Supervisor], Directory]) -> None:
    supervisor, directory = tree
    for expected_restarts in (1, 2):
        ref = directory.get("a")
        ref.tell(Crash())
        wait_for(lambda r=expected_restarts: _status(supervisor)["a"].restarts == r and _has(directory, "a"))
    directory.get("a").tell(Crash())  # a third crash within the window: over the limit of 2
    wait_for(lambda: _status(supervisor)["a"].given_up)
    assert not _has(directory, "a")
    assert directory.get("b").ask("tick") == 1
    # An operator's restart clears the given-up state.
    status = supervisor.ask(Restart("a", "operator"))
    assert status.alive and not status.given_up and directory.get("a").ask("tick") == 1


def _has(directory: Directory, name: str) -> bool:
    try:
        return directory.get(name).is_alive()
    except pykka.ActorDeadError:
        return False


def _status(supervisor: pykka.ActorRef[Supervisor]) -> dict[str, Any]:
    return {s.name: s for s in supervisor.ask(GetStatus())}


def test_a_bad_told_message_is_dropped_and_counted(tree: tuple[pykka.ActorRef[Supervisor], Directory]) -> None:
    supervisor, directory = tree
    a = directory.get("a")
    before = _dropped("a", "KeyError")
    a.ask("tick")
    for _ in range(5):  # more than the restart limit: a crash each time would give it up
        a.tell(Record("job-1", {}))
    a.tell(Record("job-2", {"start_s": 10}))
    assert a.ask("tick") == 12  # the same actor, its state kept: 1 + 10 + 1
    wait_for(lambda: _dropped("a", "KeyError") == before + 5)
    status = _status(supervisor)["a"]
    assert status.alive and status.restarts == 0 and not status.given_up


def test_an_asked_bad_message_fails_the_caller_only(tree: tuple[pykka.ActorRef[Supervisor], Directory]) -> None:
    supervisor, directory = tree
    with pytest.raises(RuntimeError, match="told to crash"):
        directory.get("a").ask(Crash(), timeout=5)
    assert directory.get("a").ask("tick") == 1
    assert _status(supervisor)["a"].restarts == 0


def test_broken_state_still_restarts_the_actor(tree: tuple[pykka.ActorRef[Supervisor], Directory]) -> None:
    supervisor, directory = tree
    first = directory.get("a")
    first.ask("tick")
    first.tell(Corrupt())
    wait_for(lambda: _status(supervisor)["a"].restarts == 1 and _has(directory, "a"))
    assert directory.get("a") is not first and directory.get("a").ask("tick") == 1


def _dropped(actor: str, reason: str) -> float:
    value = METRICS.registry.get_sample_value("sayit_messages_dropped_total", {"actor": actor, "reason": reason})
    return value or 0.0


@pytest.mark.slow
async def test_a_given_up_actor_makes_the_node_not_ready(client: TestClient) -> None:
    assert (await client.get("/health/ready")).status == 200
    actors = client.server.app[ACTORS]
    limit = actors.settings.limits.max_restarts
    for crash in range(1, limit + 1):  # a message no actor knows crashes it, every time: a crash loop
        actors.ref(system.RESULT).tell(Crash())
        wait_for(lambda n=crash: _restarts(actors, system.RESULT) == n and _has(actors.directory, system.RESULT))
    actors.ref(system.RESULT).tell(Crash())  # one more within the window: over the limit
    wait_for(lambda: _given_up(actors, system.RESULT))
    response = await client.get("/health/ready")
    assert response.status == 503
    assert (await response.json())["givenUp"] == [system.RESULT]


def _restarts(actors: system.ActorSystem, name: str) -> int:
    return next(s.restarts for s in actors.status() if s.name == name)


def _given_up(actors: system.ActorSystem, name: str) -> bool:
    return any(s.name == name and s.given_up for s in actors.status())
