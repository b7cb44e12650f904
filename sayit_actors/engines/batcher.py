"""The node's batcher: every window any slot wants decoded goes through shared engine passes.

Slots (short uploads, queued chunks) hand their 30 s windows here and wait. The batcher's lanes
take waiting windows, short uploads' first, and decode them in batches. How the cores are shared
out is the batcher's one decision:

- Fewer windows waiting than there are lanes, no pass running, and none crowded the lanes within
  the last pass's time: one *wide* pass with every core. A lone request so gets the whole
  machine, and a busy node's lull between passes does not hold every lane for one window.
- Otherwise a *narrow* pass per lane, each with one core and its share of the waiting audio (a
  job's two longest windows in one pass would keep the other lane waiting for it): on a
  2-core CPU two one-thread passes side by side decode about twice as much as one pass split
  across both threads (docs/PERFORMANCE.md), because small matrices split badly across threads.

A wide pass holds every lane, so the cores are never shared out twice. A single lane (a GPU)
waits at most ``batch_wait_ms`` for more windows while passes are shared: clients answered by one
pass send their next upload while the others' windows wait, and without that wait the groups would
keep taking turns in half-full passes. Several lanes start at once (a lane decodes as much a
second with one window as with several). Queued chunks at an idle batcher wait too (the other
chunks of their job are on their way); a lone short upload never waits. Whatever the engine cannot
batch (a language detection) runs as a wide call between passes.

The engine's ``decode_batch`` answers each window on its own: a window that fails fails only its
own request or chunk. A window whose speech runs on past its last complete segment is answered
with a ``Rest``: what was heard, and where to decode again from (as faster-whisper's sequential
decoding seeks on). The rest goes back to the front of its queue and shares the next pass with
new windows, and its caller gets the whole window's transcript once the last rest is heard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from config import EngineSettings
from sayit_actors.audio import SAMPLE_RATE, silence
from sayit_actors.engines.base import Transcript, TranscriptionOptions, join_text

log = logging.getLogger(__name__)
T = TypeVar("T")


MAX_RESTS = 3  # passes over the rests of one window: the sequential path seeks on without a bound


@dataclass
class Window:
    """Samples to decode (at most 30 s for a batched pass) and where their transcript goes; after
    a ``Rest``, the samples left and the window's pieces heard so far."""

    samples: np.ndarray
    options: TranscriptionOptions
    urgent: bool = False  # a short upload's: its caller waits in its own response
    queued_at: float = field(default_factory=time.perf_counter)
    future: Future[Transcript] = field(default_factory=Future)
    offset_s: float = 0.0  # where ``samples`` starts in the window first handed over
    pieces: list[Transcript] = field(default_factory=list)

    @property
    def audio_s(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE

    @property
    def rests(self) -> int:
        return len(self.pieces)


@dataclass(frozen=True)
class Rest:
    """What a pass heard of a window, and the second from which the rest is decoded again."""

    heard: Transcript
    resume_s: float


@dataclass(frozen=True)
class BatchStats:
    windows: int
    audio_s: float
    waited_s: tuple[float, ...]  # each window's time between its hand-over and the start of its pass
    engine_s: float
    wide: bool  # the pass had every core


# The windows of one pass, and whether it has every core (``wide``) or one lane's (one core on a CPU).
DecodeBatch = Callable[[Sequence[Window], bool], Sequence[Transcript | Rest | BaseException]]


class Batcher:
    def __init__(
        self, decode_batch: DecodeBatch, *, batch_size: int, batch_wait_ms: float, name: str, lanes: int = 1
    ) -> None:  # fmt: skip
        self.batch_size = batch_size  # most windows of one pass
        self.lanes = lanes
        self._decode_batch = decode_batch
        self._wait_s = batch_wait_ms / 1000
        self._last_pass = (0, 0.0)  # windows and seconds of the last pass
        self._held = 0  # windows handed over and not yet answered (waiting or in a pass)
        self._crowded_at = -math.inf  # when the batcher last held a window for every lane
        self._urgent: deque[Window] = deque()
        self._queued: deque[Window] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._busy = 0  # lanes in a pass or a call
        self._wide = False  # a wide pass or a call holds every lane
        self._cond = threading.Condition()
        self.observers: set[Callable[[BatchStats], None]] = set()
        self._threads = [
            threading.Thread(target=self._loop, name=name if lanes == 1 else f"{name}-{i}", daemon=True)
            for i in range(lanes)
        ]
        for thread in self._threads:
            thread.start()

    def decode(
        self, windows: Sequence[np.ndarray], options: TranscriptionOptions, urgent: bool = False
    ) -> list[Transcript]:
        """Each window's transcript, decoded in the next passes; raises the first window's failure."""
        handed = [Window(samples, options, urgent) for samples in windows]
        with self._cond:
            (self._urgent if urgent else self._queued).extend(handed)
            self._held += len(handed)
            if self._held >= self.lanes:
                self._crowded_at = time.perf_counter()
            self._cond.notify_all()
        return [w.future.result() for w in handed]

    def call(self, fn: Callable[[], T]) -> T:
        """``fn`` run with every core between passes (work that is not batched)."""
        future: Future[T] = Future()
        with self._cond:
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future.result()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._urgent) + len(self._queued)

    def _loop(self) -> None:
        while True:
            call, batch, wide = self._next()
            try:
                if call is not None:
                    fn, future = call
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except BaseException as exc:
                            future.set_exception(exc)
                if batch:
                    self._run(batch, wide)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._wide = self._wide and not wide
                    self._cond.notify_all()

    def _next(self) -> tuple[tuple[Callable[[], Any], Future[Any]] | None, list[Window], bool]:
        """The next work of a lane, and whether it has every core; the lane is counted busy."""
        with self._cond:
            while True:
                self._cond.wait_for(lambda: bool(self._calls or self._urgent or self._queued) and not self._wide)
                if self._calls:  # a call waits for every lane, and no pass starts before it
                    if self._busy:
                        self._cond.wait()
                        continue
                    self._busy, self._wide = 1, True
                    return self._calls.popleft(), [], True
                since = time.perf_counter()
                while self._waiting() < self.batch_size * (self.lanes - self._busy) and not self._calls:
                    left = since + self._fill_wait_s() - time.perf_counter()
                    if left <= 0 or not self._cond.wait(left):
                        break
                waiting = self._waiting()
                if self._wide or self._calls or not waiting:  # taken, or overtaken, while this lane waited
                    continue
                wide = self._busy == 0 and (self.lanes == 1 or (waiting < self.lanes and not self._crowded()))
                size = self.batch_size if wide else min(self.batch_size, math.ceil(waiting / (self.lanes - self._busy)))
                # A narrow pass takes its lane's share of the waiting audio, so that the free lanes'
                # passes end together (the two longest windows of a job in one pass would not).
                share_s = math.inf if wide else self._waiting_s() / (self.lanes - self._busy)
                batch: list[Window] = []
                taken_s = 0.0
                for source in (self._urgent, self._queued):
                    while source and len(batch) < size and (not batch or taken_s < share_s):
                        batch.append(source.popleft())
                        taken_s += batch[-1].audio_s
                self._busy += 1
                self._wide = wide
                self._cond.notify_all()  # another lane may take what is left
                return None, batch, wide

    def _waiting(self) -> int:
        return len(self._urgent) + len(self._queued)

    def _waiting_s(self) -> float:
        return sum(w.audio_s for w in itertools.chain(self._urgent, self._queued))

    def _crowded(self) -> bool:
        """Whether the lanes had a window each within the last pass's time (at a hand-over, or at
        the end of a pass): the lull between two passes of a busy node, answered clients about to
        send their next upload, in which a wide pass would hold every lane for one window."""
        return time.perf_counter() - self._crowded_at < self._last_pass[1]

    def _fill_wait_s(self) -> float:
        """How long to wait for a fuller pass. While passes are shared: with lanes, not at all (a
        lane decodes as much a second with one window as with several, so a free lane starts at
        once); with one, at most a quarter of the last pass, so a fast device does not idle.
        Otherwise a short upload never waits, and queued chunks wait the whole ``batch_wait_ms``:
        the other chunks of their job are on their way, better spread over the lanes than started
        in a wide pass."""
        windows, seconds = self._last_pass
        if windows > 1 or self._busy:
            return 0.0 if self.lanes > 1 else min(self._wait_s, seconds / 4)
        return 0.0 if self._urgent else self._wait_s

    def _run(self, batch: list[Window], wide: bool) -> None:
        started = time.perf_counter()
        try:
            results = self._decode_batch(batch, wide)
        except BaseException as exc:  # the engine broke: every window of the pass hears of it
            log.exception("a batch of %d windows failed", len(batch))
            results = [exc] * len(batch)
        engine_s = time.perf_counter() - started
        self._last_pass = (len(batch), engine_s)
        stats = BatchStats(
            len(batch), sum(w.audio_s for w in batch), tuple(started - w.queued_at for w in batch), engine_s, wide
        )
        _give_back_freed_memory()
        again = [isinstance(r, Rest) and w.rests < MAX_RESTS for w, r in zip(batch, results, strict=True)]
        with self._cond:  # before any caller hears back and hands over its next window
            if self._held >= self.lanes:
                self._crowded_at = time.perf_counter()
            self._held -= again.count(False)
        rests: list[Window] = []
        for window, result, rest in zip(batch, results, again, strict=True):
            if isinstance(result, BaseException):
                window.future.set_exception(result)
            elif rest and isinstance(result, Rest):
                window.pieces.append(_shifted(result.heard, window.offset_s))
                window.samples = window.samples[round(result.resume_s * SAMPLE_RATE) :]
                window.offset_s += result.resume_s
                window.queued_at = time.perf_counter()
                rests.append(window)
            else:
                heard = result.heard if isinstance(result, Rest) else result
                window.future.set_result(_joined([*window.pieces, _shifted(heard, window.offset_s)]))
        with self._cond:
            for window in reversed(rests):  # first in the next pass: their callers wait longest
                (self._urgent if window.urgent else self._queued).appendleft(window)
        for observe in list(self.observers):
            try:
                observe(stats)
            except Exception:
                log.exception("a batch observer failed")


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``: a pass frees hundreds of MB of beam-search caches, which glibc would
    otherwise keep for the process (its heap grows by what the threads free in turn)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (macOS): its allocator gives memory back itself
        return None


_TRIM = _libc_trim()


def _give_back_freed_memory() -> None:
    if _TRIM is not None:
        _TRIM(0)


def _shifted(transcript: Transcript, offset_s: float) -> Transcript:
    if not offset_s:
        return transcript
    return replace(
        transcript,
        segments=tuple(
            replace(
                s,
                start=round(s.start + offset_s, 3),
                end=round(s.end + offset_s, 3),
                words=tuple(
                    replace(w, start=round(w.start + offset_s, 3), end=round(w.end + offset_s, 3)) for w in s.words
                ),
            )
            for s in transcript.segments
        ),
    )


def _joined(pieces: list[Transcript]) -> Transcript:
    """A window's transcript from its pieces: the first pass heard all of it, so it names the
    language and the duration."""
    if len(pieces) == 1:
        return pieces[0]
    segments = tuple(s for piece in pieces for s in piece.segments)
    return replace(pieces[0], text=join_text(segments), segments=segments)


class BatchedEngine:
    """What both engines share: their facts, one batcher fed by ``decode_batch``, and transcription
    through it (the silence rules choose the windows, the batcher decodes them)."""

    name: str
    wide_decoder_threads: int | None = None  # a CPU engine's: threads decoding one window of a wide pass

    def __init__(
        self, model: str, device: str, compute_type: str, workers: int, settings: EngineSettings,
        decode_batch: DecodeBatch, lanes: int = 1,
    ) -> None:  # fmt: skip
        self.model = model
        self.device = device
        self.compute_type = compute_type
        self.workers = workers
        self.batcher = Batcher(
            decode_batch,
            batch_size=settings.batch_size_for(device),
            batch_wait_ms=settings.batch_wait_ms,
            name=f"{self.name}-batcher",
            lanes=lanes,
        )

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions, urgent: bool = False) -> Transcript:
        return silence.transcribe(functools.partial(self.batcher.decode, urgent=urgent), audio, options)
