"""``sayit transcribe``: send local recordings to a SayIt server and write the transcripts.

Stdlib only (urllib), so the command works from any checkout without the server's dependencies
mattering. Short recordings are answered at once (200); long ones come back as a job (202) that
is polled, with a progress bar, until it completes and its result is fetched in the wanted format.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any

DEFAULT_URL = "http://localhost:3000"
BLOCK_BYTES = 256 * 1024
REQUEST_TIMEOUT_S = 600.0  # per socket operation: a sync answer may wait for a slot and the engine
MAX_RETRIES = 3  # of a 503, each after the server's Retry-After
DEFAULT_RETRY_AFTER_S = 5.0
MAX_RETRY_AFTER_S = 120.0
MAX_POLL_INTERVAL_S = 1.0
BAR_WIDTH = 30
PROG = "sayit transcribe"


def default_url() -> str:
    return os.environ.get("SAYIT_URL") or DEFAULT_URL


class TranscribeError(Exception):
    """One file failed: the server's error code and message (or a client-side stand-in)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No server answers at the URL: every other file would fail the same way, so stop."""


@dataclass(frozen=True)
class Options:
    """What to ask the server for; the same for every file of one command."""

    url: str = field(default_factory=default_url)
    language: str = "auto"
    fmt: str = "json"
    word_timestamps: bool = False
    prompt: str | None = None
    api_key: str | None = None

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    def text(self) -> str:
        charset = self.headers.get_content_charset() or "utf-8"
        return self.body.decode(charset, errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


# --- multipart ------------------------------------------------------------------------------


def _disposition_filename(name: str) -> str:
    """A ``filename`` every parser reads; non-ASCII names also get RFC 5987's ``filename*``."""
    safe = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    if safe == name:
        return f'filename="{safe}"'
    return f"filename=\"{safe}\"; filename*=utf-8''{urllib.parse.quote(name, safe='')}"


def multipart(path: Path, fields: dict[str, str]) -> tuple[Callable[[], Iterator[bytes]], int, str]:
    """A re-startable body stream, its length and content type: the file is read from disk in blocks.

    Knowing the length up front lets the server refuse an oversized upload before reading it,
    and a stream (rather than one bytes object) keeps a 100 MB recording out of memory.
    """
    boundary = f"sayit-{uuid.uuid4().hex}"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; {_disposition_filename(path.name)}\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as stream:
            while block := stream.read(BLOCK_BYTES):
                yield block
        yield tail

    return body, len(head) + size + len(tail), f"multipart/form-data; boundary={boundary}"


# --- HTTP -----------------------------------------------------------------------------------


def _error_of(response: Response) -> TranscribeError:
    """The API's ``{"success": false, "error": {...}}``, or the HTTP status for anything else."""
    try:
        error = response.json()["error"]
        return TranscribeError(str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return TranscribeError(f"HTTP_{response.status}", response.text().strip()[:200] or "no error body")


def _retry_after_s(response: Response) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:  # absent, or an HTTP date: wait the usual time
        return DEFAULT_RETRY_AFTER_S


def request(
    options: Options,
    method: str,
    path: str,
    body: Callable[[], Iterator[bytes]] | None = None,
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Response:
    """One API call; a 503 is retried after its Retry-After, up to MAX_RETRIES times.

    Returns 2xx responses; raises TranscribeError for an error answer and Unreachable when the
    connection cannot be made.
    """
    url = path if path.startswith(("http://", "https://")) else f"{options.base}{path}"
    for attempt in range(MAX_RETRIES + 1):
        req = urllib.request.Request(url, data=body() if body else None, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if options.api_key:
            req.add_header("Authorization", f"Bearer {options.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as raw:
                return Response(raw.status, raw.headers, raw.read())
        except urllib.error.HTTPError as exc:
            response = Response(exc.code, exc.headers, exc.read())
            exc.close()
        except urllib.error.URLError as exc:
            lost = (ConnectionResetError, BrokenPipeError, TimeoutError)  # reached, then cut off
            if isinstance(exc.reason, OSError) and not isinstance(exc.reason, lost):
                raise Unreachable(f"cannot reach {options.base}: {exc.reason}") from exc
            raise TranscribeError("CONNECTION_LOST", f"{method} {url}: {exc.reason}") from exc
        except (ConnectionError, TimeoutError) as exc:
            raise TranscribeError("CONNECTION_LOST", f"{method} {url}: {exc}") from exc
        if response.status == 503 and attempt < MAX_RETRIES:
            wait = _retry_after_s(response)
            error = _error_of(response)
            print(
                f"{PROG}: {error.code}, retrying in {wait:g} s ({attempt + 1}/{MAX_RETRIES})",
                file=sys.stderr,
                flush=True,
            )
            sleep(wait)
            continue
        raise _error_of(response)
    raise AssertionError("unreachable")  # the loop returns or raises


# --- progress -------------------------------------------------------------------------------


class Progress:
    """A job's progress on stderr: a redrawn bar on a terminal, a line per new percent elsewhere.

    Lines (not carriage returns) keep logs and CI output readable, and make the progress testable.
    """

    def __init__(self, name: str, stream: IO[str] | None = None) -> None:
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.last: float | None = None
        self.drawn = False

    def update(self, status: str, done: int, total: int, percent: float) -> None:
        if percent == self.last:
            return
        self.last = percent
        chunks = f"{done}/{total} chunks" if total else status
        if self.tty:
            filled = round(BAR_WIDTH * min(100.0, percent) / 100)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r{self.name} [{bar}] {percent:5.1f}% {chunks}  ")
            self.drawn = True
        else:
            self.stream.write(f"{self.name}: {percent:.1f}% ({chunks})\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line so the next message starts on its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


# --- one file -------------------------------------------------------------------------------


def render(fmt: str, response: Response) -> str:
    """What is written for a result: the ``data`` object as indented JSON, or the text body."""
    if fmt == "json":
        return json.dumps(response.json()["data"], indent=2, ensure_ascii=False) + "\n"
    return response.text()


def wait_for_job(
    options: Options,
    accepted: dict[str, Any],
    progress: Progress,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll a queued job until it completes, then fetch its result in ``options.fmt``."""
    job_id = str(accepted["jobId"])
    status_url = str(accepted.get("statusUrl") or f"/api/transcribe/{job_id}")
    interval = min(float(accepted.get("pollInterval", MAX_POLL_INTERVAL_S)), MAX_POLL_INTERVAL_S)
    try:
        while True:
            polled = request(options, "GET", status_url, sleep=sleep)
            data = polled.json()["data"]
            status = str(data.get("status"))
            progress_of = data.get("progress") or {}
            progress.update(
                status,
                int(progress_of.get("done", 0)),
                int(progress_of.get("total", 0)),
                float(progress_of.get("percent", 0.0)),
            )
            if status == "completed":
                break
            if status == "failed":
                error = data.get("error") or {}
                raise TranscribeError(str(error.get("code", "JOB_FAILED")), str(error.get("message", "the job failed")))
            interval = min(float(data.get("pollInterval", interval)), MAX_POLL_INTERVAL_S)
            sleep(interval)
    finally:
        progress.finish()
    if options.fmt == "json":  # the completed status is the JSON result
        return render("json", polled)
    separator = "&" if "?" in status_url else "?"
    return render(options.fmt, request(options, "GET", f"{status_url}{separator}format={options.fmt}", sleep=sleep))


def transcribe_file(
    path: Path,
    options: Options,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The transcript of one local file in ``options.fmt``, whether answered at once or queued."""
    fields = {
        "language": options.language,
        "format": options.fmt,
        "wordTimestamps": "true" if options.word_timestamps else "false",
    }
    if options.prompt:
        fields["prompt"] = options.prompt
    body, length, content_type = multipart(path, fields)
    headers = {"Content-Type": content_type, "Content-Length": str(length), "Accept": "application/json, */*"}
    response = request(options, "POST", "/api/transcribe", body=body, headers=headers, sleep=sleep)
    if response.status == 202:
        return wait_for_job(options, response.json()["data"], progress or Progress(path.name), sleep)
    return render(options.fmt, response)


# --- the command ----------------------------------------------------------------------------


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))  # Korean survives a C-locale terminal
        sys.stdout.buffer.flush()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def _usage_error(files: Sequence[Path], out: Path | None) -> str | None:
    """Why the command cannot start, found before the server is contacted; None when it can."""
    for path in files:
        if not path.exists():
            return f"{path}: no such file"
        if not path.is_file():
            return f"{path}: not a file"
    if out is not None and len(files) > 1:
        if out.exists() and not out.is_dir():
            return f"--out {out}: with several files --out is a folder, and this is a file"
        stems = [path.stem for path in files]
        if clash := sorted({stem for stem in stems if stems.count(stem) > 1}):
            return f"--out {out}: several files would be written as {clash[0]}.*"
    if out is not None and len(files) == 1 and out.is_dir():
        return f"--out {out}: with one file --out is a file path, and this is a folder"
    return None


def run(files: Sequence[Path], options: Options, out: Path | None = None) -> int:
    """Transcribe each file in turn: 0 when all succeed, 1 when any fails, 2 on a usage error."""
    if problem := _usage_error(files, out):
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    failed = False
    for path in files:
        target = out if out is None or len(files) == 1 else out / f"{path.stem}.{options.fmt}"
        try:
            _write(transcribe_file(path, options), target)
        except Unreachable as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        except TranscribeError as exc:
            print(f"{PROG}: {path}: {exc.code} {exc.message}", file=sys.stderr)
            failed = True
        except OSError as exc:  # reading the recording or writing the result
            print(f"{PROG}: {path}: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0
