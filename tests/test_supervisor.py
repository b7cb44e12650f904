"""The Supervisor's one-for-one restarts and its restart-intensity limit, with real actors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from sayit_actors.metrics import Metrics
from sayit_actors.supervisor import ChildSpec, Directory, GetStatus, Restart, StartAll, SupervisedActor, Supervisor


@dataclass(frozen=True)
class Crash:
    pass


class Counter(SupervisedActor):
    """A child that counts and crashes when told to."""

    def __init__(self, supervisor: pykka.ActorRef[Supervisor], name: str) -> None:
        super().__init__(supervisor, name)
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError("told to crash")
        self.count += 1
        return self.count


@pytest.fixture
def tree() -> Iterator[tuple[pykka.ActorRef[Supervisor], Directory]]:
    directory = Directory()
    specs = [ChildSpec(name, "Counter", lambda sup, n: Counter.start(sup, n)) for name in ("a", "b")]
    supervisor = Supervisor.start(specs, directory, Metrics("n", "all"), 2, 60.0)
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
