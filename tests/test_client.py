"""``sayit transcribe`` against a real ``sayit serve`` (one for the module), as a user runs it."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sayit_actors.store import keys
from sayit_actors.store.redis_server import free_port
from sayit_cli import client
from tests.clips import normalized
from tests.conftest import CORPUS
from tests.known_speech import JFK
from tests.processes import node_env, serve

ASK_NOT = "ask not what your country can do for you"
PROGRESS_LINE = re.compile(r"^multilingual\.mp3: (\d+\.\d)% \((\d+)/(\d+) chunks\)$", re.MULTILINE)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for every test here: starting one loads the model, which is the slow part."""
    if not (CORPUS / "jfk.flac").is_file():
        pytest.skip(f"the speech corpus is not at {CORPUS}")
    with serve(tmp_path_factory.mktemp("client-server") / "data", MAX_CONCURRENT_CHUNKS="2") as (_, base):
        yield base


def sayit(*args: str | Path, url: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would: a subprocess, stderr a pipe (not a terminal)."""
    env = node_env(**({"SAYIT_URL": url} if url else {}))
    return subprocess.run(
        [sys.executable, "-m", "sayit_cli.cli", "transcribe", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_file_prints_its_text(url: str) -> None:
    result = sayit(CORPUS / "jfk.flac", "--format", "txt", "--language", "en", url=url)
    assert result.returncode == 0, result.stderr
    assert ASK_NOT in normalized(result.stdout)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_srt_is_written_to_the_out_file(url: str, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "jfk.srt"
    result = sayit(CORPUS / "jfk.flac", "--url", url, "--format", "srt", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert out.read_text(encoding="utf-8").startswith("1\n00:00:00,000 -->")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_queued_job_shows_progress_lines_then_writes_the_text(url: str) -> None:
    result = sayit(CORPUS / "multilingual.mp3", "--url", url, "--format", "txt")
    assert result.returncode == 0, result.stderr
    progress = PROGRESS_LINE.findall(result.stderr)
    assert progress, result.stderr
    percents = [float(p) for p, _, _ in progress]
    assert percents == sorted(set(percents))  # one line per change, never backwards
    assert percents[-1] == 100.0
    assert "\r" not in result.stderr
    text = normalized(result.stdout)
    assert "permission is hereby granted" in text
    assert "software" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_several_files_go_to_a_folder_as_stem_dot_format(url: str, tmp_path: Path) -> None:
    out = tmp_path / "transcripts"
    result = sayit(CORPUS / "jfk.flac", CORPUS / "stereo_diarization.wav", "--url", url, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["jfk.json", "stereo_diarization.json"]
    jfk = json.loads((out / "jfk.json").read_text(encoding="utf-8"))
    assert normalized(jfk["transcription"]) == normalized(JFK)
    assert jfk["filename"] == "jfk.flac"
    assert json.loads((out / "stereo_diarization.json").read_text(encoding="utf-8"))["segments"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_file_the_server_refuses_fails_and_the_next_still_runs(url: str, tmp_path: Path) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("these are meeting notes, not audio\n" * 20)
    result = sayit(fake, CORPUS / "jfk.flac", "--url", url, "--format", "txt")
    assert result.returncode == 1
    assert f"sayit transcribe: {fake}: INVALID_FORMAT " in result.stderr
    assert ASK_NOT in normalized(result.stdout)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_word_timestamps_and_prompt_reach_the_server(url: str) -> None:
    options = client.Options(url=url, language="en", word_timestamps=True, prompt="Kennedy, Americans")
    data = json.loads(client.transcribe_file(CORPUS / "jfk.flac", options))
    assert normalized(data["transcription"]) == normalized(JFK)
    assert all(segment["words"] for segment in data["segments"])


@pytest.mark.timeout(60)
def test_a_missing_file_is_a_usage_error_before_any_request(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = sayit(CORPUS / "jfk.flac", tmp_path / "absent.flac", "--url", nowhere, timeout=50)
    assert result.returncode == 2
    assert f"{tmp_path / 'absent.flac'}: no such file" in result.stderr
    assert "cannot reach" not in result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(60)
def test_an_unreachable_server_says_so(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = sayit(audio, audio, url=nowhere, timeout=50)
    assert result.returncode == 1
    assert result.stderr.count(f"cannot reach {nowhere}") == 1  # stops instead of failing every file


QUEUE_BUDGET_S = 100


@pytest.fixture
def queue_server(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A node whose queue budget the test can fill: QUEUE_FULL is a real 503 with Retry-After (5 s)."""
    env = {
        "REDIS_URL": redis_url,
        "SAYIT_MAX_QUEUED_AUDIO_S": str(QUEUE_BUDGET_S),
        "SAYIT_RESULT_CACHE": "false",
        "SAYIT_STALL_INTERVAL_S": "2",
    }  # Retry-After of QUEUE_FULL: max(5 s, the stall interval)
    with serve(tmp_path / "data", MAX_CONCURRENT_CHUNKS="2", **env) as (_, base):
        yield base, redis.Redis.from_url(redis_url)


def fill_the_queue(r: redis.Redis) -> None:
    """As if other uploads had queued the whole budget of audio."""
    r.set(keys.QUEUED_AUDIO_MS, QUEUE_BUDGET_S * 1000)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_full_queue_is_retried_three_times_then_fails(queue_server: tuple[str, redis.Redis]) -> None:
    url, r = queue_server
    fill_the_queue(r)
    result = sayit(CORPUS / "multilingual.mp3", "--format", "txt", url=url, timeout=100)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("QUEUE_FULL, retrying in 5 s") == 3
    assert "multilingual.mp3: QUEUE_FULL" in result.stderr and result.stdout == ""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_full_queue_is_retried_until_it_has_room(queue_server: tuple[str, redis.Redis]) -> None:
    url, r = queue_server
    fill_the_queue(r)
    command = [sys.executable, "-m", "sayit_cli.cli", "transcribe", str(CORPUS / "multilingual.mp3"), "--format",
               "txt"]  # fmt: skip
    with subprocess.Popen(
        command, env=node_env(SAYIT_URL=url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None and process.stdout is not None
        first = process.stderr.readline()
        assert "QUEUE_FULL, retrying in 5 s (1/3)" in first, first
        r.set(keys.QUEUED_AUDIO_MS, 0)  # the other uploads are done
        out, err = process.communicate(timeout=150)
    assert process.returncode == 0, err
    text = normalized(out)
    assert "permission is hereby granted" in text and "der diese software" in text


def test_progress_redraws_one_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = client.Progress("long.mp3", stream)
    for done in (0, 0, 1, 2):
        progress.update("processing", done, 2, 50.0 * done)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "100.0% 2/2 chunks" in text
