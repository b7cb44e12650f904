"""The batcher: windows from many callers share passes, short uploads first, a failure stays its own.

The first tests drive the batcher with a recording decoder: they check how windows are gathered and
answered, which is the batcher's own work whatever the engine does. The slow ones run the real
model's batched passes against its own sequential decoding.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from config import load_settings
from http_edge.keys import ACTORS
from sayit_actors import audio
from sayit_actors.engines import Segment, Transcript, TranscriptionOptions
from sayit_actors.engines.batcher import Batcher, BatchStats, Rest, Window
from sayit_actors.engines.faster import FasterWhisperEngine
from sayit_actors.engines.textmetrics import word_error_rate
from sayit_actors.metrics import Metrics
from sayit_actors.slots import SlotPool

OPTIONS = TranscriptionOptions(
    profile="en", language="en", beam_size=1, patience=1.0, best_of=1, temperatures=(0.0,),
    condition_on_previous_text=False,
)  # fmt: skip


def _transcript(window: Window) -> Transcript:
    """A transcript naming the window by its first sample, so each caller can check it got its own."""
    return Transcript(f"w{int(window.samples[0])}", "en", 1.0, window.audio_s, (), window.options)


class Recorder:
    """A decoder that notes each pass and fails the windows whose first sample is negative."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []
        self.wide: list[bool] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, windows: Sequence[Window], wide: bool) -> list[Transcript | BaseException]:
        self.entered.set()
        self.gate.wait(10)
        self.passes.append([int(w.samples[0]) for w in windows])
        self.wide.append(wide)
        return [ValueError("bad window") if w.samples[0] < 0 else _transcript(w) for w in windows]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _window(n: int) -> np.ndarray:
    return np.full(1600, n, dtype=np.float32)


def _held(batcher: Batcher, recorder: Recorder) -> threading.Event:
    """The batcher busy with a pass of its own until the returned event is set."""
    recorder.gate.clear()
    threading.Thread(target=lambda: batcher.decode([_window(999)], OPTIONS), daemon=True).start()
    assert recorder.entered.wait(10)
    return recorder.gate


def _wait_for(batcher: Batcher, waiting: int) -> None:
    for _ in range(500):
        if batcher.waiting == waiting:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{batcher.waiting} windows waiting, not {waiting}")


def test_windows_handed_together_share_one_pass(recorder: Recorder) -> None:
    batcher = Batcher(recorder, batch_size=4, batch_wait_ms=50, name="test-batcher")
    transcripts = batcher.decode([_window(n) for n in range(6)], OPTIONS)
    assert [t.text for t in transcripts] == [f"w{n}" for n in range(6)]
    assert recorder.passes == [[0, 1, 2, 3], [4, 5]]


def test_windows_of_many_callers_share_a_pass_and_each_gets_its_own(recorder: Recorder) -> None:
    batcher = Batcher(recorder, batch_size=8, batch_wait_ms=0, name="test-batcher")
    gate = _held(batcher, recorder)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(batcher.decode, [_window(n)], OPTIONS) for n in range(6)]
        _wait_for(batcher, 6)
        gate.set()
        answers = [f.result(10)[0].text for f in futures]
    assert answers == [f"w{n}" for n in range(6)]
    assert sorted(recorder.passes[1]) == list(range(6)), recorder.passes


def test_short_uploads_go_first(recorder: Recorder) -> None:
    batcher = Batcher(recorder, batch_size=2, batch_wait_ms=0, name="test-batcher")
    gate = _held(batcher, recorder)
    with ThreadPoolExecutor(4) as pool:
        queued = [pool.submit(batcher.decode, [_window(n)], OPTIONS) for n in (1, 2, 3)]
        _wait_for(batcher, 3)
        urgent = pool.submit(batcher.decode, [_window(7)], OPTIONS, True)
        _wait_for(batcher, 4)
        gate.set()
        assert urgent.result(10)[0].text == "w7"
        assert [f.result(10)[0].text for f in queued] == ["w1", "w2", "w3"]
    assert recorder.passes[1] == [7, 1], recorder.passes


def test_a_failed_window_fails_only_its_own_caller(recorder: Recorder) -> None:
    batcher = Batcher(recorder, batch_size=8, batch_wait_ms=0, name="test-batcher")
    gate = _held(batcher, recorder)
    with ThreadPoolExecutor(3) as pool:
        good = [pool.submit(batcher.decode, [_window(n)], OPTIONS) for n in (1, 2)]
        bad = pool.submit(batcher.decode, [_window(-1)], OPTIONS)
        _wait_for(batcher, 3)
        gate.set()
        with pytest.raises(ValueError, match="bad window"):
            bad.result(10)
        assert [f.result(10)[0].text for f in good] == ["w1", "w2"]
    assert len(recorder.passes) == 2


def test_a_broken_pass_fails_its_windows_and_the_batcher_carries_on() -> None:
    calls = []

    def breaks_once(windows: Sequence[Window], wide: bool) -> list[Transcript | BaseException]:
        calls.append(len(windows))
        if len(calls) == 1:
            raise RuntimeError("the engine broke")
        return [_transcript(w) for w in windows]

    batcher = Batcher(breaks_once, batch_size=4, batch_wait_ms=0, name="test-batcher")
    with pytest.raises(RuntimeError, match="the engine broke"):
        batcher.decode([_window(1), _window(2)], OPTIONS)
    assert batcher.decode([_window(3)], OPTIONS)[0].text == "w3"


def test_a_rest_shares_the_next_pass_and_its_caller_gets_the_whole_window() -> None:
    """A window whose speech ran on is decoded again from where its last segment ended, in the next
    pass beside new windows; its caller gets one transcript on the clock of the whole window."""
    passes: list[list[tuple[int, int]]] = []

    def rests_once(windows: Sequence[Window], wide: bool) -> list[Transcript | Rest | BaseException]:
        passes.append([(int(w.samples[0]), w.samples.size) for w in windows])
        out: list[Transcript | Rest | BaseException] = []
        for w in windows:
            seconds = w.samples.size / audio.SAMPLE_RATE
            said = Segment(0.0, min(1.0, seconds), f"part{w.rests}")
            heard = Transcript(said.text, "en", 1.0, seconds, (said,), w.options)
            out.append(Rest(heard, 1.0) if int(w.samples[0]) == 5 and w.rests == 0 else heard)
        return out

    batcher = Batcher(rests_once, batch_size=8, batch_wait_ms=0, name="test-batcher")
    long = np.full(3 * audio.SAMPLE_RATE, 5, dtype=np.float32)
    with ThreadPoolExecutor(2) as pool:
        whole = pool.submit(batcher.decode, [long], OPTIONS)
        while not passes:
            threading.Event().wait(0.01)
        other = pool.submit(batcher.decode, [_window(1)], OPTIONS)
        transcript = whole.result(10)[0]
        assert other.result(10)[0].text == "part0"
    assert transcript.text == "part0 part1" and transcript.duration_s == 3.0
    assert [(s.start, s.end) for s in transcript.segments] == [(0.0, 1.0), (1.0, 2.0)]
    assert passes[0] == [(5, 3 * audio.SAMPLE_RATE)]
    assert (5, 2 * audio.SAMPLE_RATE) in passes[1] or (5, 2 * audio.SAMPLE_RATE) in passes[-1]


def test_while_passes_are_shared_a_pass_waits_to_fill_and_a_lone_caller_never_waits(recorder: Recorder) -> None:
    slow = Recorder()

    def decode(windows: Sequence[Window], wide: bool) -> list[Transcript | BaseException]:
        if len(windows) == 2:
            threading.Event().wait(4)  # a shared pass of 4 s: the next one may wait up to 1 s to fill
        return slow(windows, wide)

    batcher = Batcher(decode, batch_size=4, batch_wait_ms=30_000, name="test-batcher")
    assert [t.text for t in batcher.decode([_window(1)], OPTIONS, True)] == ["w1"]  # a lone upload: no 30 s wait
    batcher.decode([_window(2), _window(3)], OPTIONS, True)  # a pass of two: passes are shared now
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.decode, [_window(4)], OPTIONS)
        rest = [pool.submit(batcher.decode, [_window(n)], OPTIONS) for n in (5, 6, 7)]
        assert [f.result(10)[0].text for f in (first, *rest)] == ["w4", "w5", "w6", "w7"]
    assert slow.passes == [[1], [2, 3], [4, 5, 6, 7]]


def test_queued_chunks_at_an_idle_batcher_wait_for_their_job_s_other_chunks(recorder: Recorder) -> None:
    batcher = Batcher(recorder, batch_size=4, batch_wait_ms=30_000, name="test-batcher")
    with ThreadPoolExecutor(4) as pool:
        chunks = [pool.submit(batcher.decode, [_window(n)], OPTIONS) for n in (1, 2, 3, 4)]
        assert [f.result(10)[0].text for f in chunks] == ["w1", "w2", "w3", "w4"]
    assert [sorted(p) for p in recorder.passes] == [[1, 2, 3, 4]]


def test_calls_run_on_the_batcher_thread_and_passes_are_observed(recorder: Recorder) -> None:
    batcher = Batcher(recorder, batch_size=4, batch_wait_ms=0, name="test-batcher")
    seen: list[BatchStats] = []
    batcher.observers.add(seen.append)
    assert batcher.call(lambda: threading.current_thread().name) == "test-batcher"
    batcher.decode([_window(1), _window(2)], OPTIONS)
    assert [(s.windows, round(s.audio_s, 2)) for s in seen] == [(2, 0.2)]
    assert all(w >= 0 for w in seen[0].waited_s) and seen[0].engine_s >= 0


class Lanes:
    """A decoder for a batcher with lanes: each pass holds until the test lets it go, and the
    decoder notes which passes ran at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[tuple[tuple[int, ...], bool]] = []
        self.together: list[set[tuple[tuple[int, ...], bool]]] = []
        self.passes: list[tuple[tuple[int, ...], bool]] = []
        self.gate = threading.Event()
        self.hold_s = 0.0

    def __call__(self, windows: Sequence[Window], wide: bool) -> list[Transcript | BaseException]:
        me = (tuple(int(w.samples[0]) for w in windows), wide)
        with self.lock:
            self.running.append(me)
            self.together.append(set(self.running))
            self.passes.append(me)
        self.gate.wait(10)
        threading.Event().wait(self.hold_s)
        with self.lock:
            self.running.remove(me)
        return [_transcript(w) for w in windows]

    def wait_running(self, count: int) -> None:
        for _ in range(500):
            with self.lock:
                if len(self.running) == count:
                    return
            threading.Event().wait(0.01)
        raise AssertionError(f"{self.running} running, not {count} passes")


def test_a_lone_window_gets_every_core_and_waiting_windows_share_the_lanes() -> None:
    lanes = Lanes()
    batcher = Batcher(lanes, batch_size=6, batch_wait_ms=0, name="test-batcher", lanes=2)
    lanes.gate.set()
    assert batcher.decode([_window(1)], OPTIONS, True)[0].text == "w1"
    assert lanes.together == [{((1,), True)}]  # wide: one pass with every core
    lanes.together.clear()
    lanes.gate.clear()
    with ThreadPoolExecutor(5) as pool:
        handed = pool.submit(batcher.decode, [_window(n) for n in (2, 3, 4, 5, 6)], OPTIONS)
        lanes.wait_running(2)  # two narrow passes side by side, the windows split between them
        assert sorted(p for p, _ in lanes.running) == [(2, 3, 4), (5, 6)]
        assert not any(wide for _, wide in lanes.running)
        lanes.gate.set()
        assert [t.text for t in handed.result(10)] == [f"w{n}" for n in (2, 3, 4, 5, 6)]


def test_each_lane_takes_its_share_of_the_waiting_audio_not_of_the_windows() -> None:
    lanes = Lanes()
    batcher = Batcher(lanes, batch_size=2, batch_wait_ms=0, name="test-batcher", lanes=2)
    seconds = {1: 26, 2: 21, 3: 5}  # a job's windows: one lane gets the longest, the other the two others
    windows = [np.full(s * audio.SAMPLE_RATE, n, dtype=np.float32) for n, s in seconds.items()]
    with ThreadPoolExecutor(3) as pool:
        handed = pool.submit(batcher.decode, windows, OPTIONS)
        lanes.wait_running(2)
        assert sorted(p for p, _ in lanes.running) == [(1,), (2, 3)]
        lanes.gate.set()
        assert [t.text for t in handed.result(10)] == ["w1", "w2", "w3"]


def test_a_busy_node_s_lull_between_passes_does_not_hold_every_lane_for_one_window() -> None:
    lanes = Lanes()
    lanes.gate.set()
    lanes.hold_s = 0.5
    batcher = Batcher(lanes, batch_size=1, batch_wait_ms=0, name="test-batcher", lanes=2)
    batcher.decode([_window(1), _window(2)], OPTIONS)  # a window for each lane: narrow passes
    batcher.decode([_window(3)], OPTIONS, True)  # the next upload right after: still narrow
    threading.Event().wait(0.7)  # a lull longer than a pass: the node is idle again
    batcher.decode([_window(4)], OPTIONS, True)
    assert sorted(lanes.passes) == [((1,), False), ((2,), False), ((3,), False), ((4,), True)]


def test_a_wide_pass_holds_every_lane_and_a_call_waits_for_the_passes() -> None:
    lanes = Lanes()
    batcher = Batcher(lanes, batch_size=6, batch_wait_ms=0, name="test-batcher", lanes=2)
    with ThreadPoolExecutor(4) as pool:
        lone = pool.submit(batcher.decode, [_window(1)], OPTIONS, True)
        lanes.wait_running(1)
        later = pool.submit(batcher.decode, [_window(2)], OPTIONS, True)
        _wait_for(batcher, 1)  # the other lane is free, but the wide pass has its core
        called = pool.submit(batcher.call, lambda: len(lanes.running))
        threading.Event().wait(0.2)
        assert batcher.waiting == 1 and not called.done()
        lanes.gate.set()
        assert lone.result(10)[0].text == "w1" and later.result(10)[0].text == "w2"
        assert called.result(10) == 0  # the call ran with no pass beside it
    assert all(len(together) == 1 for together in lanes.together), lanes.together


# The real model: a batched pass against the same model's sequential decoding.


@pytest.fixture(scope="module")
def profiles() -> Iterator[dict[str, TranscriptionOptions]]:
    settings = load_settings({})
    yield {name: TranscriptionOptions.from_profile(p) for name, p in settings.profiles.items()}


@pytest.mark.slow
def test_a_pass_of_many_windows_writes_what_the_sequential_path_writes(
    engine: FasterWhisperEngine, corpus: Path, profiles: dict[str, TranscriptionOptions]
) -> None:
    options = profiles["en"]
    jfk = audio.decode(corpus / "jfk.flac")
    license_half = audio.decode(corpus / "multilingual.mp3")[: 28 * audio.SAMPLE_RATE]
    windows = [jfk, license_half, jfk[: 6 * audio.SAMPLE_RATE]]
    batched = engine.batcher.decode(windows, options)
    for window, transcript in zip(windows, batched, strict=True):
        alone = engine._sequential(window, options)
        assert transcript.language == "en"
        assert word_error_rate(alone.text, transcript.text) <= 0.1, (alone.text, transcript.text)
        assert transcript.segments and transcript.segments[-1].end <= window.shape[0] / audio.SAMPLE_RATE + 0.5


@pytest.mark.slow
def test_a_wide_pass_writes_the_same_whether_every_thread_or_the_lanes_decode_it(
    engine: FasterWhisperEngine,
    corpus: Path,
    profiles: dict[str, TranscriptionOptions],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = profiles["en"]
    jfk = audio.decode(corpus / "jfk.flac")
    license_half = audio.decode(corpus / "multilingual.mp3")[: 28 * audio.SAMPLE_RATE]
    windows = [Window(w, options) for w in (jfk, license_half, jfk[: 6 * audio.SAMPLE_RATE])]
    heard = {}
    for every_thread in (True, False):  # on two lanes the lanes take windows 1 and 3, and 2
        monkeypatch.setattr(engine, "_decodes_wide", every_thread)
        heard[every_thread] = engine._pass(windows, wide=True)
    for by_all, by_lanes in zip(heard[True], heard[False], strict=True):
        assert isinstance(by_all, Transcript | Rest) and isinstance(by_lanes, type(by_all))
        one, other = (t.heard if isinstance(t, Rest) else t for t in (by_all, by_lanes))
        assert one.language == other.language == "en"
        assert one.text and word_error_rate(one.text, other.text) <= 0.1, (one.text, other.text)


@pytest.mark.slow
def test_each_window_of_a_pass_hears_its_own_language(
    engine: FasterWhisperEngine, corpus: Path, profiles: dict[str, TranscriptionOptions]
) -> None:
    options = replace(profiles["auto"], word_timestamps=True)
    assert options.language is None
    english = audio.decode(corpus / "jfk.flac")
    korean = audio.decode(corpus / "ko" / "leopard_test_ko.wav")
    german = audio.decode(corpus / "multilingual.mp3")[31 * audio.SAMPLE_RATE : 59 * audio.SAMPLE_RATE]
    heard = engine.batcher.decode([english, korean, german], options)
    assert [t.language for t in heard] == ["en", "ko", "de"]
    for window, transcript in zip((english, korean, german), heard, strict=True):
        words = [w for s in transcript.segments for w in s.words]
        assert words, transcript
        assert all(a.start <= b.start for a, b in itertools.pairwise(words))
        assert words[-1].end <= window.shape[0] / audio.SAMPLE_RATE + 0.5


@pytest.mark.slow
def test_a_window_longer_than_thirty_seconds_is_decoded_whole(
    engine: FasterWhisperEngine, corpus: Path, profiles: dict[str, TranscriptionOptions]
) -> None:
    jfk = audio.decode(corpus / "jfk.flac")
    long = np.concatenate([jfk, np.zeros(12 * audio.SAMPLE_RATE, dtype=np.float32), jfk])  # 34 s
    transcript = engine.transcribe(long, profiles["en"])
    assert transcript.text.lower().count("ask not what your country") == 2, transcript.text


# Slots: short uploads before queued chunks, and a wait judged by the slots' pace.


def test_a_waiting_short_upload_gets_the_next_slot_before_a_chunk() -> None:
    slots = SlotPool(["slot-0"], Metrics("test-node", "all"))
    held = slots.acquire(0)
    assert held == "slot-0" and slots.expected_wait_s() is None  # nothing given back yet: no pace known
    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(slots.acquire, 10, True)
        for _ in range(500):
            if slots.urgent_waiting:
                break
            threading.Event().wait(0.01)
        assert slots.urgent_waiting == 1
        slots.release(held)
        assert upload.result(10) == "slot-0"
    assert slots.acquire(0) is None  # taken by the upload
    slots.release("slot-0")
    assert slots.expected_wait_s() == 0.0
    assert slots.acquire(0) == "slot-0"
    paced = slots.expected_wait_s()  # two holds given back: a pace to judge by
    assert paced is not None and paced >= 0.0


def test_a_chunk_gets_no_slot_while_a_short_upload_waits() -> None:
    slots = SlotPool(["slot-0", "slot-1"], Metrics("test-node", "all"))
    first, second = slots.acquire(0), slots.acquire(0)
    assert first and second
    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(slots.acquire, 10, True)
        for _ in range(500):
            if slots.urgent_waiting:
                break
            threading.Event().wait(0.01)
        slots.release(first)
        assert upload.result(10) == first
        slots.release(second)
    assert slots.acquire(0) == second  # nobody waits any more: chunks get slots again


@pytest.mark.slow
async def test_a_short_upload_waits_for_a_slot_it_will_soon_get(make_client, settings, corpus: Path) -> None:  # type: ignore[no-untyped-def]
    """With one slot busy and a live queue, an upload waits for the slot when the slots' pace says it
    comes soon (here within the 60 s the settings allow), instead of becoming a job."""
    client = await make_client(replace(settings, max_concurrent_chunks=1))
    form = {"language": "en"}

    async def post() -> int:
        with (corpus / "jfk.flac").open("rb") as handle:
            response = await client.post("/api/transcribe", data={**form, "file": handle})
            return response.status

    assert await post() == 200  # the slot's pace is known from here on
    first = asyncio.create_task(post())
    for _ in range(500):
        if client.app[ACTORS].slots.busy:
            break
        await asyncio.sleep(0.01)
    assert await post() == 200
    assert await first == 200
