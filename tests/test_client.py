"""``sayit transcribe`` against a real ``sayit serve`` (one for the module), as a user runs it."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sayit_actors import client
from sayit_actors.redis_server import free_port
from tests.clips import normalized
from tests.conftest import CORPUS, JFK
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
        [sys.executable, "-m", "sayit_actors.cli", "transcribe", *map(str, args)],
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


class _Busy(BaseHTTPRequestHandler):
    """Answers 503 SERVER_BUSY with Retry-After: 0 for the first ``busy`` requests, then a result."""

    busy = 0
    seen = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        if type(self).seen <= type(self).busy:
            body = {"success": False, "error": {"code": "SERVER_BUSY", "message": "every slot is busy"}}
            self._send(503, json.dumps(body).encode(), {"Retry-After": "0"})
        else:
            self._send(200, b"hello\n", {"Content-Type": "text/plain; charset=utf-8"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def busy_server() -> Iterator[tuple[str, type[_Busy]]]:
    handler = type("Busy", (_Busy,), {"busy": 0, "seen": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("busy", "status"), [(2, 0), (4, 1)])
def test_503_is_retried_three_times_after_retry_after(
    busy_server: tuple[str, type[_Busy]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    busy: int,
    status: int,
) -> None:
    url, handler = busy_server
    handler.busy = busy
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(1000))
    assert client.run([audio], client.Options(url=url, fmt="txt")) == status
    out, err = capsys.readouterr()
    assert handler.seen == min(busy + 1, 4)
    assert err.count("SERVER_BUSY, retrying in 0 s") == min(busy, 3)
    if status:
        assert f"{audio}: SERVER_BUSY every slot is busy" in err
    else:
        assert out == "hello\n"


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
