"""Job-end callbacks: a signed POST of the result to a URL the uploader named.

The uploader chooses the URL, so the server must not become a way to reach what only it can
reach (its loopback, the private network, a cloud's metadata address):

- the host must be on the operator's allow-list (``SAYIT_CALLBACK_HOSTS``) and the port on
  ``SAYIT_CALLBACK_PORTS`` (80 and 443);
- the name is resolved when the callback is sent, and an answer with any loopback, private,
  link-local, multicast or reserved address refuses the delivery (unless
  ``SAYIT_CALLBACK_ALLOW_PRIVATE``). The socket then connects to an address that was checked,
  with the name in the Host header and in TLS (SNI and the certificate check): no second
  lookup can swap the address (DNS rebinding);
- one attempt has one deadline (``SAYIT_CALLBACK_TIMEOUT_S``) for connecting, sending and
  reading the answer's status line, so a receiver that drips bytes holds a sender no longer.
  Redirects are not followed and the answer's body is never read.

Every body is signed as Standard Webhooks specify (``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``), so a receiver can
refuse a replayed or stale body; ``X-SayIt-Signature`` (HMAC of the body alone) stays for
receivers written against it. The delivery id is the job's id and the event, the same on every
attempt and on every node, so a receiver can drop a repeat.

Which callbacks are due is kept in Redis, not here: a job that ends leaves an entry in the
outbox stream, and the CallbackDispatcher (sayit_actors/outbox.py) of any node hands it to a
``CallbackSender``. Sending runs on the sender's two threads fed by a bounded queue, so a slow
receiver never holds up an actor; a callback that finds the queue full is refused (counted).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from config import ApiSettings
from sayit_actors.errors import CallbackNotAllowed
from sayit_actors.store.merge import Transcript
from sayit_actors.wire import transcript_view

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-SayIt-Signature"
EVENT_HEADER = "X-SayIt-Event"
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
MAX_URL_CHARS = 2048
RETRY_BASE_S = 1.0
MAX_PENDING = 256  # callbacks waiting for a sender; more are dropped
SENDERS = 2
MAX_STATUS_LINE = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 prefixes that carry an IPv4 address a gateway may forward to (NAT64, RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TLS = ssl.create_default_context()

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SocketAddress = tuple[socket.AddressFamily, Any]  # a family and what connect() takes for it


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` of the body, keyed with the secret as configured (as GitHub's webhooks)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signing_key(secret: str) -> bytes:
    """The Standard Webhooks key: ``whsec_<base64>`` is the base64 of the key's bytes; any other
    secret is used as its UTF-8 bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def webhook_signature(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>``: HMAC-SHA256 of ``{id}.{timestamp}.{body}``, as Standard Webhooks specify."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()


def blocked(address: Address) -> bool:
    """True for an address the service must not call: anything but a public unicast address.

    IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by it too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and blocked(embedded):
            return True
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


@dataclass(frozen=True)
class Target:
    """A callback URL taken apart: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def target(url: str, settings: ApiSettings) -> Target:
    """The URL's parts if callbacks are on and the URL is allowed; raises CallbackNotAllowed.

    Needs no lookup (it runs on the event loop at upload): an address written in the URL is
    checked here, a name's addresses when the callback is sent.
    """
    if not settings.callback_hosts or not settings.callback_secret:
        raise CallbackNotAllowed("callbacks are not enabled on this server")
    if len(url) > MAX_URL_CHARS:
        raise CallbackNotAllowed("the URL is too long")
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise CallbackNotAllowed("the URL is malformed")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise CallbackNotAllowed("the URL is malformed") from None
    if parts.scheme not in DEFAULT_PORTS or not host:
        raise CallbackNotAllowed("use an http or https URL")
    if parts.username or parts.password:
        raise CallbackNotAllowed("credentials in the URL are not allowed")
    if host not in settings.callback_hosts:
        raise CallbackNotAllowed(f"the host {host[:100]!r} is not on the allow-list")
    port = port or DEFAULT_PORTS[parts.scheme]
    if port not in settings.callback_ports:
        raise CallbackNotAllowed(f"the port {port} is not allowed")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and blocked(literal) and not settings.callback_allow_private:
        raise CallbackNotAllowed("the address is not public")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path)


def check_url(url: str, settings: ApiSettings) -> str:
    """The URL if callbacks are on and it is allowed; raises CallbackNotAllowed otherwise."""
    target(url, settings)
    return url


def resolve(where: Target, settings: ApiSettings) -> list[SocketAddress]:
    """Every address of the host, each checked: one the service must not call refuses them all
    (a name that also points inside is not one to trust)."""
    found = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)
    addresses: list[SocketAddress] = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in found))
    if not settings.callback_allow_private:
        for _, sockaddr in addresses:
            if blocked(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])):
                raise CallbackNotAllowed(f"{where.host} resolves to an address that is not public")
    return addresses


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


def _connect(where: Target, addresses: list[SocketAddress], deadline: float) -> socket.socket:
    """A socket to the first checked address that answers, TLS-wrapped for https."""
    problem: OSError = OSError("no address")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(sockaddr)
            if where.scheme == "https":  # the handshake shares the socket's timeout as one deadline
                sock.settimeout(_left(deadline))
                return _TLS.wrap_socket(sock, server_hostname=where.host)
            return sock
        except OSError as exc:
            sock.close()
            problem = exc
    raise problem


def _status(sock: socket.socket, deadline: float) -> int:
    """The answer's status code, read within the deadline however slowly it arrives."""
    data = b""
    while b"\r\n" not in data:
        if len(data) > MAX_STATUS_LINE:
            raise ConnectionError("no status line")
        sock.settimeout(_left(deadline))
        piece = sock.recv(1024)
        if not piece:
            raise ConnectionError("closed before answering")
        data += piece
    version, _, rest = data.split(b"\r\n", 1)[0].partition(b" ")
    if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
        raise ConnectionError("not an HTTP answer")
    return int(rest[:3])


def post(where: Target, addresses: list[SocketAddress], headers: dict[str, str],
         body: bytes, deadline: float) -> int:  # fmt: skip
    """One POST to a checked address; its status code. Raises OSError (TimeoutError at the deadline)."""
    head = [f"POST {where.path} HTTP/1.1", f"Host: {where.host_header}", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{name}: {value}" for name, value in headers.items())]  # fmt: skip
    with _connect(where, addresses, deadline) as sock:
        sock.settimeout(_left(deadline))  # sendall: one timeout for the whole body
        sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        return _status(sock, deadline)


@dataclass
class Callback:
    """One callback to send; its future tells the sender's caller how it went."""

    url: str
    event: str
    payload: dict[str, Any]
    id: str
    future: Future[bool] = field(default_factory=Future)


def job_payload(job_id: str, event: str, job: dict[str, str], result: Transcript | None) -> dict[str, Any]:
    """What a receiver gets about an ended job, built when it is sent from the job's hash and result."""
    outcome = event.removeprefix("job.")
    return {
        "jobId": job_id,
        "status": outcome,
        "filename": job.get("filename"),
        "duration": int(job.get("duration_ms", 0)) / 1000,
        "result": transcript_view(result) if result is not None and outcome == "completed" else None,
        "error": {"code": "JOB_FAILED", "message": job.get("reason", "")} if outcome == "failed" else None,
    }


def delivery_id(event: str, payload: dict[str, Any]) -> str:
    """The same for every attempt, and for the same job's end sent again: a receiver can dedupe."""
    job_id = payload.get("jobId")
    if not job_id:
        return f"msg_{uuid.uuid4().hex}"
    return f"msg_{job_id}_{event.replace('.', '_')}"


class CallbackSender:
    """Two sender threads and a bounded queue; ``on_drop`` counts a callback the full queue refused."""

    def __init__(
        self, settings: ApiSettings, on_drop: Callable[[], None] | None = None, max_pending: int = MAX_PENDING
    ) -> None:
        self._settings = settings
        self._on_drop = on_drop
        self._queue: queue.Queue[Callback | None] = queue.Queue(max_pending)
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"callback-{i}", daemon=True) for i in range(SENDERS)]
        for thread in self._threads:
            thread.start()

    def send(self, url: str, event: str, payload: dict[str, Any]) -> Future[bool]:
        """Queue a delivery; its future says whether the receiver took it (False when dropped)."""
        delivery = Callback(url, event, payload, delivery_id(event, payload))
        if self._closed.is_set():
            delivery.future.cancel()
            return delivery.future
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            log.warning("callback for %s dropped: %d callbacks already wait", payload.get("jobId"), self._queue.maxsize)
            if self._on_drop is not None:
                self._on_drop()
            delivery.future.set_result(False)
        return delivery.future

    def close(self) -> None:
        """Stop: waiting callbacks are cancelled, one being sent ends at its next step."""
        self._closed.set()
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting.future.cancel()
        for _ in self._threads:  # wakes the senders; room was just made
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1.0)

    def _run(self) -> None:
        while not self._closed.is_set() and (delivery := self._queue.get()) is not None:
            if not delivery.future.set_running_or_notify_cancel():
                continue
            try:
                delivery.future.set_result(self._deliver(delivery))
            except Exception as exc:  # a sender thread must outlive any one callback
                log.exception("callback for %s failed", delivery.payload.get("jobId"))
                delivery.future.set_exception(exc)

    def _headers(self, delivery: Callback, body: bytes) -> dict[str, str]:
        secret = self._settings.callback_secret
        assert secret is not None
        timestamp = int(time.time())
        return {
            "Content-Type": "application/json",
            "User-Agent": "SayIt-Callback/1",
            EVENT_HEADER: delivery.event,
            SIGNATURE_HEADER: sign(secret, body),
            WEBHOOK_ID: delivery.id,
            WEBHOOK_TIMESTAMP: str(timestamp),
            WEBHOOK_SIGNATURE: webhook_signature(secret, delivery.id, timestamp, body),
        }

    def _deliver(self, delivery: Callback) -> bool:
        job_id = delivery.payload.get("jobId")
        try:
            where = target(delivery.url, self._settings)  # this node's settings, which may differ from the api node's
        except CallbackNotAllowed as exc:
            log.warning("callback for %s not sent: %s", job_id, exc.detail)
            return False
        payload = {"event": delivery.event, **delivery.payload, "sentAt": round(time.time(), 3)}
        body = json.dumps(payload, ensure_ascii=False).encode()
        attempts, problem = self._settings.callback_attempts, "not sent"
        for attempt in range(1, attempts + 1):
            deadline = time.monotonic() + self._settings.callback_timeout_s
            try:
                addresses = resolve(where, self._settings)  # again each attempt: every answer is checked
                status = post(where, addresses, self._headers(delivery, body), body, deadline)
            except CallbackNotAllowed as exc:
                log.warning("callback for %s not sent: %s", job_id, exc.detail)
                return False
            except OSError as exc:  # refused, reset, TLS, a name that does not resolve, the deadline
                problem = f"unreachable ({type(exc).__name__}: {exc})"
            else:
                if 200 <= status < 300:
                    return True
                problem = f"answered {status}"
                if 300 <= status < 500 and status not in (408, 429):
                    break  # a redirect is not followed, and a refused body is refused again
            log.warning("callback for %s attempt %d: %s", job_id, attempt, problem)
            if attempt < attempts and self._closed.wait(RETRY_BASE_S * 2 ** (attempt - 1)):
                break
        log.warning("callback for %s gave up: %s", job_id, problem)
        return False
