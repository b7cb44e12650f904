"""Typed answers: what an asked message answers, and an answer handed on to another actor.

``Asked[R]`` is the base of a message sent with ``ask`` whose answer is an ``R``, so that the
edge's bridge returns an ``R`` without a cast at each call site (``class Dispatch(Asked[Plan])``).

``Forward`` lets an actor that only decides hand the work to another one without waiting for
it: it answers ``Forward(actor, future)``, where ``future`` is that actor's answer to come, and
whoever asked waits for that one instead (``http_edge.bridge`` follows forwards). Its own inbox
is free again at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pykka

R = TypeVar("R")


class Asked(Generic[R]):
    """Base of messages sent with ``ask`` whose answer is an ``R`` (or a ``Forward`` to one)."""


@dataclass(frozen=True)
class Forward(Generic[R]):
    """The answer is ``actor``'s to ``future``: wait for that instead."""

    actor: pykka.ActorRef[Any]
    future: pykka.Future[R]
