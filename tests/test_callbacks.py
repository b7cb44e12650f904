"""Which callback URLs are allowed, and how bodies are signed."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from config import ApiSettings
from sayit_actors.callbacks import check_url, sign
from sayit_actors.errors import CallbackNotAllowed

ALLOWED = ApiSettings(callback_hosts=("hooks.example", "127.0.0.1"), callback_secret="k")


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example/sayit", "http://HOOKS.example:8443/a?b=c", "http://127.0.0.1:9000/hook"],
)
def test_allowed_hosts_pass(url: str) -> None:
    assert check_url(url, ALLOWED) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data", "allow-list"),
        ("http://localhost/hook", "allow-list"),
        ("http://hooks.example.evil.test/hook", "allow-list"),
        ("ftp://hooks.example/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("https://user:pass@hooks.example/hook", "credentials"),
        ("http://hooks.example:99999/hook", "malformed"),
        ("https://hooks.example/" + "a" * 3000, "too long"),
    ],
)
def test_other_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(CallbackNotAllowed, match=why):
        check_url(url, ALLOWED)


def test_callbacks_off_without_hosts() -> None:
    with pytest.raises(CallbackNotAllowed, match="not enabled"):
        check_url("https://hooks.example/sayit", ApiSettings())


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"jobId": "x"}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign("k", body) != sign("other", body)
