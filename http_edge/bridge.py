"""Waiting on Pykka futures from the event loop without blocking it.

A Pykka future's ``get`` blocks its thread, so each wait runs on a bridge thread and the event
loop awaits that thread's result. Work handed to a bridge thread always runs to its end, even
when the request that asked for it is cancelled (a client hung up): a slot that was leased is
then still given back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pykka

from sayit_actors.errors import ServiceUnavailable
from sayit_actors.slots import SlotPool

T = TypeVar("T")


class ActorBridge:
    def __init__(self, max_threads: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="sayit-bridge")

    async def ask(
        self,
        ref: Callable[[], pykka.ActorRef[Any]],
        message: object,
        timeout_s: float = 30.0,
        then: Callable[[], None] | None = None,
    ) -> Any:
        """The actor's answer to ``message``; ``then`` runs once the actor has answered or died.

        ``ref`` is called on the bridge thread, so a name looked up there finds a restarted actor.
        """

        def wait() -> Any:
            try:
                return ref().ask(message, block=False).get(timeout=timeout_s)
            finally:
                if then is not None:
                    then()

        try:
            return await self._run(wait)
        except pykka.ActorDeadError as exc:
            raise ServiceUnavailable("an actor is restarting") from exc
        except pykka.Timeout as exc:
            raise ServiceUnavailable(f"no answer within {timeout_s:.0f} s") from exc

    async def lease(self, slots: SlotPool, wait_s: float) -> str | None:
        """A slot from ``slots`` within ``wait_s``; given back if the caller is cancelled meanwhile."""
        future = self._pool.submit(slots.acquire, wait_s)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: _release_unused(slots, f))
            raise

    async def _run(self, fn: Callable[[], T]) -> T:
        # shield: a cancelled request must not cancel the bridge thread's work before it starts.
        return await asyncio.shield(asyncio.wrap_future(self._pool.submit(fn)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)


def _release_unused(slots: SlotPool, future: Future[str | None]) -> None:
    if not future.cancelled() and future.exception() is None and (name := future.result()) is not None:
        slots.release(name)
