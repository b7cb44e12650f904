"""Job-end callbacks: a signed POST of the result to a URL the uploader named.

Only hosts on the operator's allow-list are called, redirects are not followed, and every body
is signed with HMAC-SHA256 so the receiver can tell it came from this service. Sending runs on a
small thread pool: a slow receiver never holds up the ResultActor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from config import ApiSettings
from sayit_actors.errors import CallbackNotAllowed

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-SayIt-Signature"
EVENT_HEADER = "X-SayIt-Event"
MAX_URL_CHARS = 2048
RETRY_BASE_S = 1.0


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>``, as GitHub's webhooks do; the receiver recomputes it over the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_url(url: str, settings: ApiSettings) -> str:
    """The URL if callbacks are on and its host is allowed; raises CallbackNotAllowed otherwise."""
    if not settings.callback_hosts or not settings.callback_secret:
        raise CallbackNotAllowed("callbacks are not enabled on this server")
    if len(url) > MAX_URL_CHARS:
        raise CallbackNotAllowed("the URL is too long")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise CallbackNotAllowed("the URL is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackNotAllowed("use an http or https URL")
    if parts.username or parts.password:
        raise CallbackNotAllowed("credentials in the URL are not allowed")
    if host not in settings.callback_hosts:
        raise CallbackNotAllowed(f"the host {host[:100]!r} is not on the allow-list")
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead off the allow-list: treat it as the receiver's answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class CallbackSender:
    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="callback")
        self._opener = urllib.request.build_opener(_NoRedirects)

    def send(self, url: str, event: str, payload: dict[str, Any]) -> Future[bool]:
        return self._pool.submit(self._deliver, url, event, payload)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, url: str, event: str, payload: dict[str, Any]) -> bool:
        try:
            check_url(url, self._settings)  # this node's allow-list, which may differ from the api node's
        except CallbackNotAllowed as exc:
            log.warning("callback for %s not sent: %s", payload.get("jobId"), exc)
            return False
        assert self._settings.callback_secret is not None
        body = json.dumps({"event": event, **payload, "sentAt": round(time.time(), 3)}, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "SayIt-Callback/1",
            EVENT_HEADER: event,
            SIGNATURE_HEADER: sign(self._settings.callback_secret, body),
        }
        for attempt in range(1, self._settings.callback_attempts + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self._settings.callback_timeout_s) as response:
                    if 200 <= response.status < 300:
                        return True
                    problem = f"answered {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"answered {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this body: sending it again changes nothing
            except (urllib.error.URLError, OSError) as exc:
                problem = f"unreachable ({exc})"
            log.warning("callback for %s attempt %d: %s", payload.get("jobId"), attempt, problem)
            if attempt < self._settings.callback_attempts:
                time.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
        log.warning("callback for %s gave up: %s", payload.get("jobId"), problem)
        return False
