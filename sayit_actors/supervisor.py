"""The Supervisor: starts the node's actors, restarts a crashed one, and names them all.

One-for-one: a child that fails is replaced by a fresh one from its spec, the others keep
running. A child that fails more than ``max_restarts`` times within ``window_s`` is left
stopped (a crash loop is not healed by restarting faster) and reported as given up.
Children tell the Supervisor of their failure from ``on_failure`` (see ``SupervisedActor``).

An actor never dies of one bad message: a told message (``Told``: nobody waits on its answer)
that fails for reasons of its own (bad data, a missing key) is logged once with its job id,
counted (``sayit_messages_dropped_total{actor,reason}``), and the actor goes on. Only
``ActorBroken`` (the actor's own state is broken) still stops it, so that it gets replaced.
An asked message's failure goes back to the one who asked, as Pykka does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka

from sayit_actors import activity
from sayit_actors.metrics import Metrics
from sayit_actors.replies import Asked

log = logging.getLogger(__name__)

Factory = Callable[["pykka.ActorRef[Supervisor]", str], "pykka.ActorRef[Any]"]


@dataclass(frozen=True)
class ChildSpec:
    name: str
    kind: str
    factory: Factory


class Told:
    """Base of messages sent with ``tell``: nobody waits on their answer, so a failure is dropped."""


class ActorBroken(RuntimeError):
    """The actor's own state is broken: raised from ``handle``, it has the Supervisor replace the actor."""


@dataclass(frozen=True)
class MessageDropped:
    actor: str
    reason: str


@dataclass(frozen=True)
class ChildFailed:
    name: str
    error: str


@dataclass(frozen=True)
class StartAll:
    pass


@dataclass(frozen=True)
class Restart(Asked["ChildStatus"]):
    name: str
    reason: str = "requested"


@dataclass(frozen=True)
class GetStatus(Asked[list["ChildStatus"]]):
    pass


@dataclass(frozen=True)
class ChildStatus:
    name: str
    kind: str
    alive: bool
    restarts: int
    given_up: bool
    started_at: float
    doing: str = "idle"
    since: float | None = None


@dataclass
class _Child:
    spec: ChildSpec
    ref: pykka.ActorRef[Any] | None = None
    restarts: int = 0
    given_up: bool = False
    started_at: float = 0.0
    recent: deque[float] = field(default_factory=deque)


class Directory:
    """Thread-safe name → ActorRef lookup, written by the Supervisor, read by everyone.

    Callers look a child up at each use, so a restarted child is found under its old name.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, pykka.ActorRef[Any]] = {}

    def get(self, name: str) -> pykka.ActorRef[Any]:
        with self._lock:
            ref = self._refs.get(name)
        if ref is None:
            raise pykka.ActorDeadError(f"no running actor named {name!r}")
        return ref

    def _set(self, name: str, ref: pykka.ActorRef[Any] | None) -> None:
        with self._lock:
            if ref is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = ref


class SupervisedActor(pykka.ThreadingActor):
    """A child of the Supervisor: reports its own crash so that it gets replaced."""

    def __init__(self, supervisor: pykka.ActorRef[Supervisor], name: str) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.name = name

    def handle(self, message: Any) -> Any:
        """The actor's own message handling (what ``on_receive`` is to a plain Pykka actor)."""
        raise TypeError(f"unexpected message {message!r}")

    def on_receive(self, message: Any) -> Any:
        try:
            return self.handle(message)
        except ActorBroken:
            raise
        except Exception as exc:
            if not isinstance(message, Told):
                raise  # asked: the caller gets the error; told and unknown: a crash, as before
            self._dropped(message, exc)
            return None

    def _dropped(self, message: Told, exc: Exception) -> None:
        job = job_of(message)
        log.error(
            "%s dropped %s%s: %s",
            self.name,
            type(message).__name__,
            f" of job {job}" if job else "",
            repr(exc),
            exc_info=exc,
        )
        if self.supervisor.is_alive():
            self.supervisor.tell(MessageDropped(self.name, type(exc).__name__))

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Show ``what`` as this actor's activity (admin endpoint) while the block runs."""
        activity.set_doing(self.actor_urn, what)
        try:
            yield
        finally:
            activity.clear(self.actor_urn)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.supervisor.is_alive():
            self.supervisor.tell(ChildFailed(self.name, repr(exception_value)))


def tell_later(ref: pykka.ActorRef[Any], message: object, delay_s: float) -> threading.Timer | None:
    """Tell ``message`` to ``ref`` now (``delay_s`` <= 0) or from a daemon timer after ``delay_s``
    (the timer is returned, to cancel it); an actor that stopped meanwhile just misses it."""
    if delay_s <= 0:
        tell_if_alive(ref, message)
        return None
    timer = threading.Timer(delay_s, tell_if_alive, [ref, message])
    timer.daemon = True
    timer.start()
    return timer


def tell_if_alive(ref: pykka.ActorRef[Any], message: object) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def job_of(message: object) -> str | None:
    """The job a message is about, for the log: its ``job_id``, or its delivery's task's."""
    job = getattr(message, "job_id", None)
    if job is None:
        task = getattr(getattr(message, "delivery", None), "task", None)
        job = getattr(task, "job_id", None)
    return str(job) if job else None


class Supervisor(pykka.ThreadingActor):
    def __init__(
        self,
        specs: list[ChildSpec],
        directory: Directory,
        metrics: Metrics,
        max_restarts: int,
        window_s: float,
    ) -> None:
        super().__init__()
        self._children = {spec.name: _Child(spec) for spec in specs}
        self._directory = directory
        self._metrics = metrics
        self._max_restarts = max_restarts
        self._window_s = window_s

    def on_receive(self, message: Any) -> Any:
        match message:
            case StartAll():
                for child in self._children.values():
                    self._start(child)
                return None
            case MessageDropped(actor, reason):
                self._metrics.messages_dropped.labels(actor, reason).inc()
                return None
            case ChildFailed(name, error):
                self._child_failed(name, error)
                return None
            case Restart(name, reason):
                return self._restart(name, reason)
            case GetStatus():
                return self.status()
        raise TypeError(f"unexpected message {message!r}")

    def status(self) -> list[ChildStatus]:
        statuses = []
        for name, c in self._children.items():
            alive = bool(c.ref and c.ref.is_alive())
            doing = activity.get(c.ref.actor_urn) if c.ref is not None and alive else None
            statuses.append(
                ChildStatus(
                    name,
                    c.spec.kind,
                    alive,
                    c.restarts,
                    c.given_up,
                    c.started_at,
                    doing[0] if doing else ("idle" if alive else "stopped"),
                    doing[1] if doing else None,
                )
            )
        return statuses

    def on_stop(self) -> None:
        for child in reversed(list(self._children.values())):
            if child.ref is not None:
                child.ref.stop(block=True, timeout=30)
                self._directory._set(child.spec.name, None)
                self._metrics.actor_up.labels(child.spec.name, child.spec.kind).set(0)

    def _start(self, child: _Child) -> None:
        child.ref = child.spec.factory(self.actor_ref, child.spec.name)
        child.started_at = time.time()
        self._directory._set(child.spec.name, child.ref)
        self._metrics.actor_up.labels(child.spec.name, child.spec.kind).set(1)

    def _child_failed(self, name: str, error: str) -> None:
        child = self._children.get(name)
        if child is None or child.given_up:
            return
        self._metrics.actor_up.labels(name, child.spec.kind).set(0)
        now = time.monotonic()
        while child.recent and now - child.recent[0] > self._window_s:
            child.recent.popleft()
        if len(child.recent) >= self._max_restarts:
            child.given_up = True
            self._directory._set(name, None)
            log.error(
                "actor %s failed (%s) %d times within %.0f s: not restarting it again",
                name,
                error,
                len(child.recent) + 1,
                self._window_s,
            )
            return
        child.recent.append(now)
        log.warning("actor %s failed (%s): restarting it", name, error)
        self._replace(child)

    def _restart(self, name: str, reason: str) -> ChildStatus:
        child = self._children.get(name)
        if child is None:
            raise KeyError(name)
        log.info("restarting actor %s (%s)", name, reason)
        if child.ref is not None and child.ref.is_alive():
            child.ref.stop(block=True, timeout=30)
        child.given_up = False
        child.recent.clear()
        self._replace(child)
        return next(s for s in self.status() if s.name == name)

    def _replace(self, child: _Child) -> None:
        child.restarts += 1
        self._metrics.actor_restarts.labels(child.spec.name).inc()
        self._start(child)
