"""Accuracy on recordings of known text: does the job path keep every word the engine can hear?

A long upload is cut into chunks of at most 30 s and each chunk is decoded one window per pause
(``SAYIT_VAD=long``, see sayit_actors/audio/silence.py). This benchmark scores that against the text
that was spoken, next to the other ways the same model can transcribe the same file:
- sync: each passage uploaded alone (30 s or less: answered at once), the texts joined in order;
- job: the whole recording uploaded to a real ``sayit serve`` (202 and a job), polled until done;
- batched: faster-whisper's ``BatchedInferencePipeline`` on the same model and samples (its own
  Silero windows; language auto: detected per window, ``multilingual=True``);
- sequential: one ``WhisperModel.transcribe`` call on the whole recording, without VAD;
- how VAD could serve a chunk, on the job's own chunks: one window of the detected speech joined
  (faster-whisper's ``vad_filter=True``, how chunks were decoded before), or the chunk as one
  window (no VAD).

Recordings, built here from the corpus and written as 16-bit WAV (every path gets the same samples):
English at 1, 3 and 10 minutes (the first 30 s of multilingual.mp3, the MIT license read, and
jfk.flac in turn; at 1 and 3 minutes with pauses of 0.3–2 s of seeded lengths, at 10 minutes
with 1 s pauses, 14 times each); German and English, 3 minutes, language auto (multilingual.mp3
whole, three times); Korean, 2.5 minutes (ko/leopard_test_ko.wav 30 times, scored by characters
without spaces and punctuation). For the silence settings, one server per ``SAYIT_VAD`` value
(off, long, all) gets a recording of speech separated by 8–20 s of silence, white noise,
speech-shaped noise and synthetic music (a job), and short uploads of 20 s of each alone and of
jfk.flac followed by 15 s of music.

Scores: word (Korean: character) error rate against the known text, split into lost (deleted),
invented (inserted) and misheard (substituted) words; passages kept (a passage is kept when 60 %
of its words are found in place by a minimum-edit alignment) and the longest run of words that
were not spoken (a passage said twice shows as a run as long as it).

What it does not show: one machine, one run (no spread); the CPU int8 base model; synthetic
recordings whose passages repeat, and synthetic noise; the German reference is the license's
German translation as read, not a transcript checked by a German speaker.

    .venv/bin/python bench/accuracy.py [--slots 2] [--out docs/ACCURACY.md] [--results docs/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import numpy as np
import soundfile
from common import BenchError

from sayit_actors import audio
from sayit_actors.engines.textmetrics import Errors, align, characters, errors, words
from tests import known_speech
from tests.known_speech import JFK, PAUSES_S, SR, Passage, Placed, assemble

POLL_S = 0.1
FOUND = 0.6
VAD_SETTINGS = ("off", "long", "all")
NOISES = ("silence", "white noise", "speech-shaped noise", "music")


@dataclass
class Recording:
    name: str
    label: str
    language: str  # as uploaded: en, ko or auto
    samples: np.ndarray
    placed: Placed
    wav: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenize(self) -> Callable[[str], list[str]]:
        return characters if self.language == "ko" else words

    @property
    def reference(self) -> str:
        return " ".join(passage.text for _, passage in self.placed)


# --- recordings ----------------------------------------------------------------------------------


def build(
    name: str, label: str, language: str, units: Sequence[Sequence[Passage | np.ndarray]], count: int, seed: int,
    pauses: tuple[float, float] = PAUSES_S,
) -> Recording:  # fmt: skip
    return Recording(name, label, language, *assemble(units, count, seed, pauses))


def noises(seed: int, speech: np.ndarray) -> dict[str, Callable[[float], np.ndarray]]:
    """Non-speech of a given length: silence, white noise, speech-shaped noise (the spectrum of
    ``speech`` with random phases) and synthetic music (decaying tones)."""
    rng = np.random.default_rng(seed)

    def white(seconds: float) -> np.ndarray:
        return (rng.standard_normal(round(seconds * SR)) * 0.01).astype(np.float32)

    def babble(seconds: float) -> np.ndarray:
        size = round(seconds * SR)
        spectrum = np.abs(np.fft.rfft(np.resize(speech, size)))
        noise = np.fft.irfft(spectrum * np.exp(1j * rng.uniform(0, 2 * np.pi, spectrum.size)), size)
        return (noise / np.abs(noise).max() * 0.05).astype(np.float32)

    def music(seconds: float) -> np.ndarray:
        t = np.arange(round(seconds * SR)) / SR
        notes = np.array([220, 262, 330, 392, 440, 523])[(t * 2).astype(int) % 6]
        return (0.1 * np.sin(2 * np.pi * notes * t) * np.exp(-3 * (t % 0.5))).astype(np.float32)

    return {
        "silence": lambda s: np.zeros(round(s * SR), np.float32),
        "white noise": white,
        "speech-shaped noise": babble,
        "music": music,
    }


def recordings(passages: dict[str, Passage]) -> tuple[list[Recording], Recording, dict[str, np.ndarray]]:
    """The known-text recordings, the one with long gaps, and the short non-speech uploads."""
    license_, jfk, german, korean = (passages[n] for n in ("license", "jfk", "german", "korean"))
    english = [[license_], [jfk]]
    known = [
        build("en-1min", "English, 1 min", "en", english, count=3, seed=11),
        build("en-3min", "English, 3 min", "en", english, count=8, seed=12),
        build("en-10min", "English, 10 min", "en", english, count=28, seed=13, pauses=(1.0, 1.0)),
        build("de-en-3min", "German and English, 3 min (auto)", "auto", [[license_, german]], count=3, seed=14),
        build("ko-2.5min", "Korean, 2.5 min (CER)", "ko", [[korean]], count=30, seed=15),
    ]
    gap = noises(16, jfk.samples)
    gaps = build(
        "gaps", "speech with 8–20 s gaps of silence and noise", "en",
        [[jfk, gap["silence"](15)], [license_, gap["speech-shaped noise"](12)], [jfk, gap["music"](18)],
         [jfk, gap["white noise"](10)], [license_, gap["silence"](20)], [jfk, gap["speech-shaped noise"](20)],
         [jfk, gap["music"](9)]],
        count=7, seed=17,
    )  # fmt: skip
    short = {name: make(20.0) for name, make in gap.items()}
    short["jfk then music"] = np.concatenate([jfk.samples, gap["music"](15.0)])
    return known, gaps, short


def write(folder: Path, name: str, samples: np.ndarray) -> Path:
    path = folder / f"{name}.wav"
    soundfile.write(path, samples, SR, subtype="PCM_16")
    return path


# --- scores --------------------------------------------------------------------------------------


def score(recording: Recording, hypothesis: str) -> dict[str, Any]:
    """Errors against the known text, passages kept, and the longest run of unspoken tokens."""
    tokenize = recording.tokenize
    reference, heard = tokenize(recording.reference), tokenize(hypothesis)
    pairs = align(reference, heard)
    matched = [False] * len(reference)
    run = longest = 0
    for r, h in pairs:
        if r is not None and h is not None:
            matched[r] = reference[r] == heard[h]
        run = run + 1 if r is None else 0
        longest = max(longest, run)
    kept: dict[str, list[int]] = {}
    first = 0
    for _, passage in recording.placed:
        size = len(tokenize(passage.text))
        tally = kept.setdefault(passage.name, [0, 0])
        tally[0] += sum(matched[first : first + size]) >= FOUND * size
        tally[1] += 1
        first += size
    e = errors(reference, heard)
    return {
        "rate": e.rate, "substitutions": e.substitutions, "deletions": e.deletions, "insertions": e.insertions,
        "reference_tokens": e.reference, "passages_kept": kept, "longest_unspoken_run": longest,
        "text": hypothesis,
    }  # fmt: skip


def errors_of(reference: str, hypothesis: str) -> Errors:
    return errors(words(reference), words(hypothesis))


# --- the server phase ----------------------------------------------------------------------------


def sync_text(port: int, path: Path, language: str) -> dict[str, Any]:
    status, answer = common.request(port, "POST", "/api/transcribe", *common.multipart_body(path, language), 600)
    if status != 200:
        raise BenchError(f"sync POST of {path.name} answered {status}: {str(answer)[:300]}")
    return dict(answer["data"])


def job(port: int, path: Path, language: str) -> tuple[float, dict[str, Any]]:
    _, wall_s, data = common.run_job(port, *common.multipart_body(path, language), POLL_S)
    return wall_s, data


def server_phase(known: list[Recording], passages: dict[str, Passage], slots: int, folder: Path) -> None:
    """One node (``SAYIT_VAD=long``): each distinct passage alone, then each recording as a job."""
    with common.sayit_server(folder, "server-long", MAX_CONCURRENT_CHUNKS=str(slots), SAYIT_POLL_S=str(POLL_S)) as s:
        sync_text(s.port, write(folder, "warmup", passages["jfk"].samples), "en")
        alone: dict[tuple[str, str], str] = {}
        for recording in known:
            for _, passage in recording.placed:
                key = (passage.name, recording.language)
                if key not in alone:
                    data = sync_text(s.port, write(folder, passage.name, passage.samples), recording.language)
                    alone[key] = data["transcription"]
            sync = " ".join(alone[(p.name, recording.language)] for _, p in recording.placed)
            recording.results["sync"] = score(recording, sync)
            assert recording.wav is not None
            wall_s, data = job(s.port, recording.wav, recording.language)
            recording.results["job"] = {
                **score(recording, data["transcription"]), "wall_s": wall_s, "languages": data.get("languages"),
                "chunks": [(c["start"], c["duration"]) for c in data["chunks"]],
            }  # fmt: skip
            rates = f"{recording.results['job']['rate']:.2%}, sync {recording.results['sync']['rate']:.2%}"
            print(f"  {recording.label}: job {wall_s:.1f} s, {len(data['chunks'])} chunks, WER {rates}")


def silence_phase(gaps: Recording, short: dict[str, np.ndarray], slots: int, folder: Path) -> dict[str, Any]:
    """The gap recording as a job and the short uploads, on one node per SAYIT_VAD value."""
    assert gaps.wav is not None
    paths = {name: write(folder, name.replace(" ", "-"), samples) for name, samples in short.items()}
    results: dict[str, Any] = {}
    for vad in VAD_SETTINGS:
        node = {"MAX_CONCURRENT_CHUNKS": str(slots), "SAYIT_POLL_S": str(POLL_S), "SAYIT_VAD": vad}
        with common.sayit_server(folder, f"server-{vad}", **node) as s:
            sync_text(s.port, paths["jfk then music"], "en")  # warm-up
            wall_s, data = job(s.port, gaps.wav, "en")
            outcome: dict[str, Any] = {
                "job": {**score(gaps, data["transcription"]), "wall_s": wall_s,
                        "dropped_segments": data.get("droppedSegments", 0)},
                "short": {},
            }  # fmt: skip
            for name, path in paths.items():
                answer = sync_text(s.port, path, "en")
                said = JFK if name == "jfk then music" else ""
                e = errors_of(said, answer["transcription"])
                outcome["short"][name] = {
                    "text": answer["transcription"], "lost": e.deletions, "invented": e.insertions,
                    "misheard": e.substitutions, "dropped_segments": answer.get("droppedSegments", 0),
                    "segments": len(answer.get("segments", [])),
                }  # fmt: skip
            results[vad] = outcome
            print(f"  SAYIT_VAD={vad}: gaps job lost {outcome['job']['deletions']}, "
                  f"invented {outcome['job']['insertions']}")  # fmt: skip
    return results


# --- the direct phase ----------------------------------------------------------------------------


def direct_phase(known: list[Recording], variants: set[str]) -> dict[str, str]:
    """The engine in this process (one worker, all cores): batched, sequential, and the chunk variants."""
    from faster_whisper import BatchedInferencePipeline

    from config import SilenceSettings, load_settings
    from sayit_actors.audio.silence import drop_invented
    from sayit_actors.dispatcher import Choices, options_for
    from sayit_actors.engines.faster import FasterWhisperEngine

    settings = load_settings({})
    engine = FasterWhisperEngine.load(settings.engine, workers=1)
    pipeline = BatchedInferencePipeline(engine.whisper_model)
    off, long = SilenceSettings(vad="off"), SilenceSettings(vad="long")
    for recording in known:
        language = None if recording.language == "auto" else recording.language
        options = options_for(settings.profiles[recording.language], Choices(), off, queued=True)
        started = time.perf_counter()
        segments, _ = pipeline.transcribe(recording.samples, language=language, multilingual=language is None)
        text = " ".join(s.text.strip() for s in segments)
        recording.results["batched"] = {**score(recording, text), "wall_s": time.perf_counter() - started}
        started = time.perf_counter()
        text = engine.transcribe(recording.samples, options).text
        recording.results["sequential"] = {**score(recording, text), "wall_s": time.perf_counter() - started}
        if recording.name in variants:
            windowed = options_for(settings.profiles[recording.language], Choices(), long, queued=True)
            for variant, decode in (
                ("joined speech", lambda x, o=options: _vad_filter(engine.whisper_model, x, o)),
                ("whole chunk", lambda x, o=options: engine.transcribe(x, o)),
                ("window per pause", lambda x, o=windowed: engine.transcribe(x, o)),
            ):
                started, texts = time.perf_counter(), []
                for start, duration in recording.results["job"]["chunks"]:
                    chunk = recording.samples[round(start * SR) : round((start + duration) * SR)]
                    transcript = decode(chunk)
                    kept, _ = drop_invented(transcript, chunk, settings.silence.invented_phrases)
                    texts.append(kept.text)
                wall_s = time.perf_counter() - started
                recording.results[variant] = {**score(recording, " ".join(texts)), "wall_s": wall_s}
        print(f"  {recording.label}: batched {recording.results['batched']['rate']:.2%}, "
              f"sequential {recording.results['sequential']['rate']:.2%}")  # fmt: skip
    return {"model": engine.model, "device": engine.device, "compute_type": engine.compute_type}


def _vad_filter(model: Any, samples: np.ndarray, options: Any) -> Any:
    """A chunk decoded as faster-whisper's ``vad_filter=True`` does: its detected speech joined
    into one stretch (how queued chunks were decoded before the windows per pause)."""
    from sayit_actors.engines import Segment, Transcript, join_text

    segments, info = model.transcribe(
        samples, language=options.language, beam_size=options.beam_size, patience=options.patience,
        best_of=options.best_of, temperature=list(options.temperatures),
        condition_on_previous_text=options.condition_on_previous_text, vad_filter=True,
        no_speech_threshold=options.no_speech_threshold,
    )  # fmt: skip
    kept = tuple(Segment(s.start, s.end, s.text.strip(), no_speech_prob=s.no_speech_prob) for s in segments)
    return Transcript(join_text(kept), info.language, info.language_probability, info.duration, kept, options)


# --- the report ----------------------------------------------------------------------------------


def cell(result: dict[str, Any] | None) -> str:
    if not result:
        return "–"
    return f"{result['rate']:.2%} ({result['deletions']} lost, {result['insertions']} invented)"


def kept(result: dict[str, Any] | None) -> str:
    if not result:
        return "–"
    return ", ".join(f"{name} {k}/{n}" for name, (k, n) in result["passages_kept"].items())


def headline(runs: list[dict[str, Any]]) -> str:
    """The ten-minute recording in one sentence: what the job path kept, and its rate against the anchor."""
    ten = next((run["results"] for run in runs if run["name"] == "en-10min"), None)
    if ten is None:
        return ""
    job, batched = ten["job"], ten["batched"]
    passages = ", ".join(f"{k} of {n} {name} passages" for name, (k, n) in job["passages_kept"].items())
    return (f"On the ten-minute English recording the job path kept {passages}; its word error rate "
            f"was {job['rate']:.2%} against the batched pipeline's {batched['rate']:.2%} on the same file "
            f"(the sync path, each passage alone: {ten['sync']['rate']:.2%}).")  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    runs, silence = report["recordings"], report["silence"]
    m = report["machine"]
    lines = [
        "# Accuracy: long recordings of known text",
        "",
        f"- {report['timestamp']}, commit {report['commit']}, {m['cpu_model']} ({m['cpu_count']} CPUs); Whisper "
        f"{report['engine']['model']} {report['engine']['compute_type']} on {report['engine']['device']}; "
        f"server: {report['slots']} slots, `SAYIT_VAD=long` unless named",
        "- written by `bench/accuracy.py` (`make bench`); every figure in `docs/results/accuracy.json`",
        "",
        "Error rates against the text that was spoken: word error rate (Korean: character error rate,",
        "spaces and punctuation removed), with the words lost (deleted) and invented (inserted). A",
        "passage is *kept* when 60 % of its words are found in place.",
        "",
        headline(runs),
        "",
        "## By path",
        "",
        "| recording | sync (each passage alone) | job | batched pipeline | sequential (whole file) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        r = run["results"]
        lines.append(f"| {run['label']} ({run['duration_s']:.0f} s) | {cell(r.get('sync'))} | {cell(r.get('job'))} "
                     f"| {cell(r.get('batched'))} | {cell(r.get('sequential'))} |")  # fmt: skip
    lines += [
        "",
        "| recording | passages kept: job | batched pipeline | sequential | longest unspoken run: job / batched |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        r = run["results"]
        runs_ = f"{r['job']['longest_unspoken_run']} / {r['batched']['longest_unspoken_run']}"
        lines.append(f"| {run['label']} | {kept(r.get('job'))} | {kept(r.get('batched'))} | "
                     f"{kept(r.get('sequential'))} | {runs_} |")  # fmt: skip
    lines += [
        "",
        "## How voice-activity detection serves a chunk",
        "",
        "The job's own chunks, decoded by one engine in this process three ways: the detected speech",
        "joined into one window (faster-whisper's `vad_filter=True`, how chunks were decoded before),",
        "each chunk as one window (no VAD), and one window per pause with chunks without speech skipped",
        "(what the job path does now); the batched pipeline on the whole file for reference. The job",
        "column of the first table differs a little from the last one here: the server's engine runs",
        "two workers of one thread, this one a worker of two, and CTranslate2's sums differ with that.",
        "",
        "| recording | joined speech (before) | whole chunk | window per pause (now) | batched pipeline |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        r = run["results"]
        if "joined speech" in r:
            row = [
                f"{cell(r[v])}; {kept(r[v])}" for v in ("joined speech", "whole chunk", "window per pause", "batched")
            ]
            lines.append(f"| {run['label']} | {' | '.join(row)} |")
    lines += [
        "",
        "## What each silence setting costs and saves",
        "",
        f"One node per setting. Job: {report['gaps']['label']} ({report['gaps']['duration_s']:.0f} s,"
        f" {report['gaps']['words']} words spoken). Short uploads (answered at once): 20 s of each",
        "non-speech alone (every word written is invented), and jfk.flac followed by 15 s of music.",
        "",
        "| `SAYIT_VAD` | job: WER | lost | invented | dropped segments | job wall | short: invented words "
        "(silence / white / speech-shaped / music) | short: jfk then music, lost / invented |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for vad in VAD_SETTINGS:
        j, short = silence[vad]["job"], silence[vad]["short"]
        noise = " / ".join(str(short[n]["invented"]) for n in NOISES)
        jm = short["jfk then music"]
        lines.append(f"| `{vad}` | {j['rate']:.2%} | {j['deletions']} | {j['insertions']} | {j['dropped_segments']} | "
                     f"{j['wall_s']:.1f} s | {noise} | {jm['lost']} / {jm['invented']} |")  # fmt: skip
    lines += ["", report["notes"], ""]
    return "\n".join(lines)


NOTES = """## What the settings do

- `off`: every chunk and upload is decoded as one Whisper call, silence and all; only the
  invented-text guard (a segment that is a known invented phrase, a loop, bare punctuation or
  rated probably-not-speech, where Silero hears no speech) acts on silence.
- `long` (the default): each queued chunk is decoded one window per pause of 1 s or more between
  the stretches Silero hears speech in; a chunk where it hears none is not decoded. Nothing inside
  a decoded chunk is left out, so a word Silero misses is still heard. Short uploads as `off`.
- `all`: short uploads too.

## What it does not show

One machine, one run (no spread); the CPU int8 base model; synthetic recordings whose passages
repeat, and synthetic noise (Whisper base wrote little over it here, so the savings in invented
words are small in these figures); the German reference is the license's German translation as
read, not a transcript checked by a German speaker. Wall times were measured while other work may
have shared the machine: compare error rates, not times."""


def summary(r: Recording) -> dict[str, Any]:
    passages = [(round(at, 3), p.name) for at, p in r.placed]
    return {"name": r.name, "label": r.label, "language": r.language, "duration_s": r.samples.size / SR,
            "passages": passages, "results": r.results}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--slots", type=common.positive_int, default=2, help="MAX_CONCURRENT_CHUNKS (default 2)")
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "docs" / "ACCURACY.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    passages = known_speech.passages(common.CORPUS)
    known, gaps, short = recordings(passages)
    with common.workspace() as folder:
        for recording in [*known, gaps]:
            # Both phases get the same 16-bit samples, decoded back from the file the server gets.
            recording.wav = write(folder, recording.name, recording.samples)
            recording.samples = audio.decode(recording.wav)
        try:
            print("server phase")
            server_phase(known, passages, args.slots, folder)
            print("silence phase")
            silence = silence_phase(gaps, short, args.slots, folder)
            print("direct phase")
            engine = direct_phase(known, {"en-10min", "de-en-3min", "ko-2.5min"})
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    report: dict[str, Any] = {
        "benchmark": "accuracy",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": common.source_revision(),
        "machine": common.machine_info(),
        "engine": engine,
        "slots": args.slots,
        "recordings": [summary(r) for r in known],
        "gaps": {"label": gaps.label, "duration_s": gaps.samples.size / SR, "words": len(words(gaps.reference))},
        "silence": silence,
        "notes": NOTES,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "accuracy.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    args.out.write_text(markdown(report))
    print(f"results in {args.results / 'accuracy.json'} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
