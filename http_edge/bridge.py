"""Waiting on Pykka futures from the event loop without blocking it.

A Pykka future's ``get`` blocks its thread, so each wait runs on a bridge thread and the event
loop awaits that thread's answer. A wait that ends early (a timeout, or the request cancelled
because its client hung up) ends only for the caller: the bridge thread goes on waiting for the
actor, so that what must follow its answer still does (a leased slot is given back once its
engine call is over, never while the slot still works; an answer nobody received is handed to
``unclaimed``, which gives back what it holds). The request's ``Caller`` leaves, so that work
for it not yet begun is dropped; a job already committed to is waited for instead.

An actor may answer with a ``Forward`` (``sayit_actors.replies``): it handed the work to
another actor, and the wait goes on for that one's answer, within the same timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pykka

from sayit_actors.caller import Caller
from sayit_actors.errors import ServiceUnavailable
from sayit_actors.replies import Asked, Forward
from sayit_actors.slots import SlotPool

ALIVE_CHECK_S = 1.0  # while waiting past a timeout: how often to see whether the actor died meanwhile
R = TypeVar("R")
Ref = Callable[[], pykka.ActorRef[Any]]


class ActorBridge:
    def __init__(self, max_threads: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="sayit-bridge")

    async def ask(
        self,
        ref: Ref,
        message: Asked[R],
        timeout_s: float = 30.0,
        then: Callable[[], None] | None = None,
        caller: Caller | None = None,
        unclaimed: Callable[[R], None] | None = None,
    ) -> R:
        """The actor's answer to ``message``; ServiceUnavailable if none comes within ``timeout_s``.

        ``then`` runs once the actor has answered or died, which may be after the caller stopped
        waiting. ``caller`` leaves when the wait ends without an answer; if the actor had already
        committed a job to it, the wait goes on until the actor answers, so the caller gets its job.
        ``unclaimed`` gets an answer that came when nobody waited for it any more.
        ``ref`` is called on the bridge thread, so a name looked up there finds a restarted actor.
        """
        answer: Future[Any] = Future()

        def wait() -> None:
            waiting: _Waiting | None = None
            try:
                if caller is not None:
                    caller.check()  # hung up while this wait queued for a thread: send nothing
                actor = ref()
                waiting = _Waiting(actor, actor.ask(message, block=False))
                answer.set_result(waiting.get(time.monotonic() + timeout_s))
            except pykka.Timeout as exc:
                assert waiting is not None
                if caller is None or caller.leave() is None:
                    answer.set_exception(exc)
                if then is not None or unclaimed is not None or not answer.done():
                    _late(waiting, answer, unclaimed)
            except BaseException as exc:
                answer.set_exception(exc)
            finally:
                if then is not None:
                    then()

        self._pool.submit(wait)
        try:
            # shield: the request's cancellation must not cancel ``answer``, which the thread sets.
            return await asyncio.shield(asyncio.wrap_future(answer))
        except asyncio.CancelledError:
            if caller is not None:
                caller.leave()
            if unclaimed is not None:
                answer.add_done_callback(lambda done: _hand_over(done, unclaimed))
            raise
        except pykka.ActorDeadError as exc:
            raise ServiceUnavailable("an actor is restarting") from exc
        except pykka.Timeout as exc:
            raise ServiceUnavailable(f"no answer within {timeout_s:g} s") from exc

    async def lease(self, slots: SlotPool, wait_s: float) -> str | None:
        """A slot from ``slots`` within ``wait_s``; given back if the caller is cancelled meanwhile."""
        future = self._pool.submit(slots.acquire, wait_s, True)  # urgent: a request waits on it
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: _release_unused(slots, f))
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)


class _Waiting:
    """The actor an answer is awaited from and its future; a ``Forward`` moves both on."""

    def __init__(self, actor: pykka.ActorRef[Any], future: pykka.Future[Any]) -> None:
        self.actor, self.future = actor, future

    def get(self, deadline: float | None) -> Any:
        """The final answer; pykka.Timeout past ``deadline``. Without one, it waits until the actor
        has answered or died (ActorDeadError)."""
        while True:
            if deadline is None:
                value = self._settled()
            else:
                value = self.future.get(timeout=max(0.0, deadline - time.monotonic()))
            if not isinstance(value, Forward):
                return value
            self.actor, self.future = value.actor, value.future

    def _settled(self) -> Any:
        while True:
            try:
                return self.future.get(timeout=ALIVE_CHECK_S)
            except pykka.Timeout:
                if not self.actor.is_alive():
                    try:
                        return self.future.get(timeout=0)  # it may have answered just before it stopped
                    except pykka.Timeout:
                        raise pykka.ActorDeadError("the actor died before answering") from None


def _late(waiting: _Waiting, answer: Future[Any], unclaimed: Callable[[Any], None] | None) -> None:
    """Wait for the answer past the timeout: into ``answer`` if nobody had one yet, else ``unclaimed``."""
    try:
        value = waiting.get(None)
    except BaseException as exc:
        if not answer.done():
            answer.set_exception(exc)
        return
    if not answer.done():
        answer.set_result(value)
    elif unclaimed is not None:
        unclaimed(value)


def _hand_over(answer: Future[Any], unclaimed: Callable[[Any], None]) -> None:
    if not answer.cancelled() and answer.exception() is None:
        unclaimed(answer.result())


def _release_unused(slots: SlotPool, future: Future[str | None]) -> None:
    if not future.cancelled() and future.exception() is None and (name := future.result()) is not None:
        slots.release(name)
