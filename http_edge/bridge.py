"""Waiting on Pykka futures from the event loop without blocking it.

A Pykka future's ``get`` blocks its thread, so each wait runs on a bridge thread and the event
loop awaits that thread's answer. A wait that ends early (a timeout, or the request cancelled
because its client hung up) ends only for the caller: the bridge thread goes on waiting for the
actor, so that what must follow its answer still does (a leased slot is given back once its
engine call is over, never while the slot still works). The request's ``Caller`` leaves, so that
work for it not yet begun is dropped; a job already committed to is waited for instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pykka

from sayit_actors.caller import Caller
from sayit_actors.errors import ServiceUnavailable
from sayit_actors.slots import SlotPool

ALIVE_CHECK_S = 1.0  # while waiting past a timeout: how often to see whether the actor died meanwhile


class ActorBridge:
    def __init__(self, max_threads: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="sayit-bridge")

    async def ask(
        self,
        ref: Callable[[], pykka.ActorRef[Any]],
        message: object,
        timeout_s: float = 30.0,
        then: Callable[[], None] | None = None,
        caller: Caller | None = None,
    ) -> Any:
        """The actor's answer to ``message``; ServiceUnavailable if none comes within ``timeout_s``.

        ``then`` runs once the actor has answered or died, which may be after the caller stopped
        waiting. ``caller`` leaves when the wait ends without an answer; if the actor had already
        committed a job to it, the wait goes on until the actor answers, so the caller gets its job.
        ``ref`` is called on the bridge thread, so a name looked up there finds a restarted actor.
        """
        answer: Future[Any] = Future()

        def wait() -> None:
            actor: pykka.ActorRef[Any] | None = None
            future: pykka.Future[Any] | None = None
            try:
                if caller is not None:
                    caller.check()  # hung up while this wait queued for a thread: send nothing
                actor = ref()
                future = actor.ask(message, block=False)
                answer.set_result(future.get(timeout=timeout_s))
            except pykka.Timeout as exc:
                assert actor is not None and future is not None
                if caller is None or caller.leave() is None:
                    answer.set_exception(exc)
                if then is not None or not answer.done():
                    _settle(actor, future)
                if not answer.done():
                    _copy(future, answer)
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
            raise
        except pykka.ActorDeadError as exc:
            raise ServiceUnavailable("an actor is restarting") from exc
        except pykka.Timeout as exc:
            raise ServiceUnavailable(f"no answer within {timeout_s:g} s") from exc

    async def lease(self, slots: SlotPool, wait_s: float) -> str | None:
        """A slot from ``slots`` within ``wait_s``; given back if the caller is cancelled meanwhile."""
        future = self._pool.submit(slots.acquire, wait_s)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: _release_unused(slots, f))
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)


def _settle(actor: pykka.ActorRef[Any], future: pykka.Future[Any]) -> None:
    """Block until ``actor`` has answered ``future`` (a value or an error) or has died."""
    while True:
        try:
            future.get(timeout=ALIVE_CHECK_S)
            return
        except pykka.Timeout:
            if not actor.is_alive():
                return
        except Exception:
            return


def _copy(future: pykka.Future[Any], answer: Future[Any]) -> None:
    """``future``'s outcome into ``answer``, once ``_settle`` has returned."""
    try:
        answer.set_result(future.get(timeout=0))
    except pykka.Timeout:
        answer.set_exception(pykka.ActorDeadError("the actor died before answering"))
    except Exception as exc:
        answer.set_exception(exc)


def _release_unused(slots: SlotPool, future: Future[str | None]) -> None:
    if not future.cancelled() and future.exception() is None and (name := future.result()) is not None:
        slots.release(name)
